"""Tests for evaluation.py: hand-computed DocRED / bio scores, errors, CLI, and checks on real data."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from evaluation import bio_scores, docred_scores, load_docs, to_official  # noqa: E402
from utils import DataError  # noqa: E402

DATA = "/work/shared/data"


def mention(name, sent_id):
    return {"name": name, "pos": [0, 1], "sent_id": sent_id, "type": "LOC"}


def label(h, t, r):
    return {"h": h, "t": t, "r": r, "evidence": []}


def entry(title, h, t, r):
    return {"title": title, "h_idx": h, "t_idx": t, "r": r}


def alpha_doc():
    """Three sentences, four entities, four gold facts.

    entity 0: "Paris" (sent 0) and "City of Light" (sent 2); 1: "France" (0); 2: "Europe" (1);
    3: "Seine" (1). Gold: (0,1,P17) intra (sent 0), (1,2,P30) inter, (0,2,P30) inter,
    (3,2,P30) intra (sent 1). (0,1), (1,2), (0,2) form the triangle 0 -> 1 -> 2 with 0 -> 2;
    (3,2) is an unrelated fact.
    """
    return {"title": "Alpha", "sents": [["a"], ["b"], ["c"]],
            "vertexSet": [[mention("Paris", 0), mention("City of Light", 2)], [mention("France", 0)],
                          [mention("Europe", 1)], [mention("Seine", 1)]],
            "labels": [label(0, 1, "P17"), label(1, 2, "P30"), label(0, 2, "P30"), label(3, 2, "P30")]}


# Dedup gives 4 predictions: (0,1,P17) ok, (3,2,P30) ok, (1,2,P30) ok, (0,3,P17) wrong.
SUBMISSION = [entry("Alpha", 0, 1, "P17"), entry("Alpha", 0, 1, "P17"), entry("Alpha", 3, 2, "P30"),
              entry("Alpha", 1, 2, "P30"), entry("Alpha", 0, 3, "P17")]


def train_doc():
    """Train facts: ("City of Light","France",P17) matches Alpha's (0,1,P17) through entity 0's
    second mention; ("France","Paris",P17) is the reverse direction and ("Seine","Europe",P17) the
    wrong relation, so neither makes another prediction "in train"."""
    return {"title": "Train", "sents": [["x"]],
            "vertexSet": [[mention("City of Light", 0)], [mention("France", 0)],
                          [mention("Paris", 0)], [mention("Seine", 0)], [mention("Europe", 0)]],
            "labels": [label(0, 1, "P17"), label(1, 2, "P17"), label(3, 4, "P17")]}


def test_plain_scores_with_duplicates():
    s = docred_scores(SUBMISSION, [alpha_doc()])
    # 3 correct of 4 unique predictions, 4 gold facts: P = R = F1 = 3/4.
    assert (s["num_pred"], s["num_gold"], s["num_correct"]) == (4, 4, 3)
    assert s["precision"] == pytest.approx(75.0)
    assert s["recall"] == pytest.approx(75.0)
    assert s["f1"] == pytest.approx(75.0)


def test_ign_f1_ignores_facts_seen_in_train():
    s = docred_scores(SUBMISSION, [alpha_doc()], [train_doc()])
    # One correct prediction is in train: ign P = (3 - 1) / (4 - 1) = 2/3, R = 3/4,
    # ign F1 = 2 * (2/3) * (3/4) / (2/3 + 3/4) = 12/17.
    assert s["num_correct_in_train"] == 1
    assert s["ign_precision"] == pytest.approx(100 * 2 / 3)
    assert s["ign_f1"] == pytest.approx(100 * 12 / 17)
    assert s["f1"] == pytest.approx(75.0)


def test_ign_f1_equals_f1_without_train():
    s = docred_scores(SUBMISSION, [alpha_doc()])
    assert s["ign_f1"] == s["f1"] and s["ign_precision"] == s["precision"]


def test_intra_inter_split():
    s = docred_scores(SUBMISSION, [alpha_doc()])
    # Intra: gold (0,1) and (3,2), both predicted, no other intra prediction -> 100 / 100 / 100.
    assert (s["intra_precision"], s["intra_recall"], s["intra_f1"]) == pytest.approx((100, 100, 100))
    # Inter: gold (1,2) and (0,2); predictions (1,2) ok and (0,3) wrong
    # (entity 0 in sents {0,2}, entity 3 in {1}) -> P = 1/2, R = 1/2, F1 = 1/2.
    assert (s["inter_precision"], s["inter_recall"], s["inter_f1"]) == pytest.approx((50, 50, 50))
    assert (s["num_gold_intra"], s["num_gold_inter"]) == (2, 2)


def test_infer_f1_counts_only_triangle_pairs():
    cycle = {"title": "Cycle", "sents": [["a"]],
             "vertexSet": [[mention("A", 0)], [mention("B", 0)], [mention("C", 0)]],
             # A directed cycle 0 -> 1 -> 2 -> 0 has no (h,o),(o,t),(h,t) triangle: not in G.
             "labels": [label(0, 1, "P1"), label(1, 2, "P1"), label(2, 0, "P1")]}
    submission = [entry("Alpha", 0, 1, "P17"),   # in G, correct
                  entry("Alpha", 1, 2, "P30"),   # in G, correct
                  entry("Alpha", 0, 2, "P17"),   # G pair (0,2), wrong relation: counts in P_G
                  entry("Alpha", 3, 2, "P30"),   # correct but unrelated fact: outside G and P_G
                  entry("Alpha", 2, 3, "P30"),   # wrong, pair outside G
                  entry("Cycle", 0, 1, "P1")]    # correct, outside G
    s = docred_scores(submission, [alpha_doc(), cycle])
    # G = {(0,1,P17), (1,2,P30), (0,2,P30)} of Alpha; P_G = 3 predictions; |P & G| = 2.
    assert s["num_gold_infer"] == 3
    assert s["infer_precision"] == pytest.approx(100 * 2 / 3)
    assert s["infer_recall"] == pytest.approx(100 * 2 / 3)
    assert s["infer_f1"] == pytest.approx(100 * 2 / 3)


def test_unknown_titles_count_as_submitted_but_never_correct():
    s = docred_scores(SUBMISSION + [entry("Nowhere", 0, 1, "P17")], [alpha_doc()])
    # As the official scorer: 5 submitted, 3 correct -> P = 3/5; recall unchanged 3/4.
    assert s["num_pred_unknown_title"] == 1 and s["num_pred"] == 5
    assert s["precision"] == pytest.approx(60.0)
    assert s["recall"] == pytest.approx(75.0)
    # Intra/inter and infer ignore it: intra P still 100, inter P still 1/2.
    assert s["intra_precision"] == pytest.approx(100.0)
    assert s["inter_precision"] == pytest.approx(50.0)


def test_empty_submission_scores_zero():
    s = docred_scores([], [alpha_doc()], [train_doc()])
    assert s["f1"] == s["ign_f1"] == s["precision"] == s["infer_f1"] == 0.0


def test_to_official_round_trip():
    features = [{"title": "Alpha", "hts": [[0, 1], [1, 2], [0, 3]]},
                {"title": "Empty", "hts": []}]
    id2rel = {1: "P17", 2: "P30"}
    preds = [np.array([[0, 1, 0],    # (0,1) P17
                       [1, 0, 0],    # (1,2) Na only: nothing
                       [0, 1, 1]]),  # (0,3) P17 and P30
             np.zeros((0, 3))]
    entries = to_official(preds, features, id2rel)
    assert entries == [entry("Alpha", 0, 1, "P17"), entry("Alpha", 0, 3, "P17"),
                       entry("Alpha", 0, 3, "P30")]
    assert all(type(e["h_idx"]) is int and type(e["t_idx"]) is int for e in entries)
    json.dumps(entries)  # must be JSON-serialisable as a CodaLab result.json
    s = docred_scores(entries, [alpha_doc()])
    assert s["num_correct"] == 1 and s["num_pred"] == 3


def test_to_official_rejects_misaligned_predictions():
    with pytest.raises(DataError, match="pairs"):
        to_official([np.zeros((2, 3))], [{"title": "Alpha", "hts": [[0, 1]]}], {1: "P17", 2: "P30"})


def test_bio_scores_hand_case():
    features = [{"title": "d1", "hts": [[0, 1], [1, 0], [0, 2]], "labels": [[1], [], [1]]},
                {"title": "d2", "hts": [[0, 1], [1, 0]], "labels": [[], [1]]}]
    preds = [np.array([[0, 1], [0, 1], [1, 0]]), [[1, 0], [0, 1]]]
    s = bio_scores(preds, features)
    # Predicted positive: d1 (0,1) tp, d1 (1,0) fp, d2 (1,0) tp -> 3 predicted, 2 tp; 3 gold.
    assert s["precision"] == pytest.approx(100 * 2 / 3)
    assert s["recall"] == pytest.approx(100 * 2 / 3)
    assert s["f1"] == pytest.approx(100 * 2 / 3)


def test_gold_without_labels_raises():
    doc = alpha_doc()
    del doc["labels"]
    with pytest.raises(DataError, match="no relation labels"):
        docred_scores(SUBMISSION, [doc])
    with pytest.raises(DataError, match="no relation labels"):
        docred_scores([], [dict(alpha_doc(), labels=[])])


@pytest.mark.parametrize("bad, field", [({"h_idx": 0, "t_idx": 1, "r": "P17"}, "title"),
                                         ({"title": "Alpha", "t_idx": 1, "r": "P17"}, "h_idx"),
                                         ({"title": "Alpha", "h_idx": 0, "t_idx": "1", "r": "P17"}, "t_idx"),
                                         ({"title": "Alpha", "h_idx": 0, "t_idx": 1}, "r"),
                                         ({"title": "Alpha", "h_idx": 9, "t_idx": 1, "r": "P17"}, "h_idx")])
def test_bad_submission_entry_names_file_index_and_field(bad, field):
    with pytest.raises(DataError) as e:
        docred_scores(SUBMISSION + [bad], [alpha_doc()], pred_path="result.json")
    assert "result.json" in str(e.value) and "entry 5" in str(e.value) and repr(field) in str(e.value)


def test_load_docs_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    obj = tmp_path / "obj.json"
    obj.write_text('{"title": "x"}')
    for path in (tmp_path / "missing.json", bad, obj):
        with pytest.raises(DataError, match=path.name):
            load_docs(str(path))


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "evaluation.py"), *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_success(tmp_path):
    pred, gold, train = tmp_path / "pred.json", tmp_path / "gold.json", tmp_path / "train.json"
    pred.write_text(json.dumps(SUBMISSION))
    gold.write_text(json.dumps([alpha_doc()]))
    train.write_text(json.dumps([train_doc()]))
    out = run_cli("--pred", str(pred), "--gold", str(gold), "--train", str(train))
    assert out.returncode == 0, out.stderr
    scores = json.loads(out.stdout)
    assert list(scores)[:7] == ["precision", "recall", "f1", "ign_f1", "intra_f1", "inter_f1", "infer_f1"]
    assert scores["f1"] == pytest.approx(75.0)
    assert scores["ign_f1"] == pytest.approx(100 * 12 / 17, abs=1e-4)


def test_cli_errors(tmp_path):
    pred, gold = tmp_path / "pred.json", tmp_path / "gold.json"
    pred.write_text(json.dumps(SUBMISSION))
    doc = alpha_doc()
    del doc["labels"]
    gold.write_text(json.dumps([doc]))
    for args, needle in ((("--pred", str(tmp_path / "nope.json"), "--gold", str(gold)), "nope.json"),
                         (("--pred", str(pred), "--gold", str(gold)), "no relation labels")):
        out = run_cli(*args)
        assert out.returncode == 2
        assert out.stderr.startswith("error: ") and needle in out.stderr
        assert "Traceback" not in out.stderr and out.stdout == ""


def real_file(*parts):
    path = os.path.join(DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} not available")
    return path


def gold_submission(docs):
    return [entry(d["title"], lab["h"], lab["t"], lab["r"]) for d in docs for lab in d["labels"]]


def test_real_gold_as_prediction_scores_100():
    gold = load_docs(real_file("redocred", "dev_mini.json"))
    s = docred_scores(gold_submission(gold), gold)
    for part in ("", "intra_", "inter_", "infer_"):
        assert s[part + "f1"] == pytest.approx(100.0)
    assert s["num_gold_infer"] > 0 and s["num_gold_intra"] > 0 and s["num_gold_inter"] > 0


def test_real_ign_f1_matches_independent_computation():
    gold = load_docs(real_file("redocred", "dev_mini.json"))
    train = load_docs(real_file("redocred", "train_mini.json"))
    # Gold plus one wrong prediction per document (a relation the first labelled pair lacks), so
    # that removing train facts from the correct ones lowers precision.
    wrong = []
    for d in (d for d in gold if d["labels"]):
        h, t = d["labels"][0]["h"], d["labels"][0]["t"]
        have = {lab["r"] for lab in d["labels"] if (lab["h"], lab["t"]) == (h, t)}
        wrong.append(entry(d["title"], h, t, next(r for r in ("P17", "P131", "P27") if r not in have)))
    s = docred_scores(gold_submission(gold) + wrong, gold, train)

    seen = set()
    for d in train:
        for lab in d["labels"]:
            seen.update((m1["name"], m2["name"], lab["r"])
                        for m1 in d["vertexSet"][lab["h"]] for m2 in d["vertexSet"][lab["t"]])
    n_gold = len({(d["title"], lab["r"], lab["h"], lab["t"]) for d in gold for lab in d["labels"]})
    in_train = sum(any((m1["name"], m2["name"], lab["r"]) in seen
                       for m1 in d["vertexSet"][lab["h"]] for m2 in d["vertexSet"][lab["t"]])
                   for d in gold for lab in d["labels"])
    n_pred = n_gold + len(wrong)
    ign_p = (n_gold - in_train) / (n_pred - in_train)
    expected = 100 * 2 * ign_p / (ign_p + 1)  # recall is 1
    assert s["num_correct_in_train"] == in_train
    assert s["ign_f1"] == pytest.approx(expected)
    if in_train:
        assert s["ign_f1"] < s["f1"] < 100


def test_real_test_json_has_no_labels():
    test = load_docs(real_file("docred", "test.json"))
    with pytest.raises(DataError, match="no relation labels"):
        docred_scores([], test, gold_path="test.json")

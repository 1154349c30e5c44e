"""Tests for what a user runs in scripts/: the synthetic demo data (scripts/make_demo_data.py), its report
(scripts/demo_report.py) and the shell scripts. Made-up documents only."""
import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest

import demo_report
import evaluation
import helpers
import make_demo_data
import prepro


# ---------------------------------------------------------------- demo report
def report_gold():
    """Two documents: 4 stated and 3 inferred facts in all; one fact listed twice (counted once)."""
    vertex = [[{"name": n, "sent_id": 0, "pos": [0, 1], "type": "LOC"}] for n in ("A", "B", "C", "D")]
    d0 = {"title": "d0", "sents": [["w"]], "vertexSet": vertex, "labels": [
        {"h": 0, "t": 1, "r": "P19", "inferred": False},
        {"h": 1, "t": 2, "r": "P17"},  # no key: stated
        {"h": 0, "t": 2, "r": "P27", "inferred": True},
        {"h": 0, "t": 2, "r": "P27", "inferred": True}]}
    d1 = {"title": "d1", "sents": [["w"]], "vertexSet": vertex, "labels": [
        {"h": 0, "t": 1, "r": "P159", "inferred": False},
        {"h": 1, "t": 3, "r": "P17", "inferred": False},
        {"h": 0, "t": 3, "r": "P17", "inferred": True},
        {"h": 2, "t": 3, "r": "P27", "inferred": True}]}
    return [d0, d1]


def report_preds():
    k0 = [{"title": "d0", "h_idx": 0, "t_idx": 1, "r": "P19"}, {"title": "d0", "h_idx": 1, "t_idx": 2, "r": "P17"},
          {"title": "d1", "h_idx": 0, "t_idx": 1, "r": "P159"}, {"title": "d1", "h_idx": 0, "t_idx": 2, "r": "P17"}]
    k3 = k0 + [{"title": "d0", "h_idx": 0, "t_idx": 2, "r": "P27"}, {"title": "d1", "h_idx": 0, "t_idx": 3, "r": "P17"},
               {"title": "d1", "h_idx": 0, "t_idx": 3, "r": "P17"}]  # a duplicate entry counts once
    return k0, k3


def test_demo_report_numbers():
    gold = report_gold()
    k0, k3 = report_preds()
    rows = demo_report.report(gold, [("K=0", k0), ("K=3", k3)])
    assert [r["label"] for r in rows] == ["K=0", "K=3"]
    a, b = rows
    # precision within the slots, with its interval over resampled documents: 3/3 in both documents -> 100
    # in every resample; the one prediction in an inferred fact's slot (d1, P17, head 0) names the wrong country
    assert a["stated"] == {"recall": 75.0, "correct": 3, "gold": 4, "precision": 100.0, "predicted": 3,
                           "precision_ci95": [100.0, 100.0]}
    assert a["inferred"] == {"recall": 0.0, "correct": 0, "gold": 3, "precision": 0.0, "predicted": 1,
                             "precision_ci95": [0.0, 0.0]}
    assert (a["num_correct"], a["num_pred"], a["num_gold"]) == (3, 4, 7)
    assert math.isclose(a["precision"], 75.0) and math.isclose(a["recall"], 300 / 7)
    assert b["stated"] == a["stated"]
    assert math.isclose(b["inferred"]["recall"], 200 / 3) and b["inferred"]["correct"] == 2
    assert math.isclose(b["inferred"]["precision"], 200 / 3) and b["inferred"]["predicted"] == 3
    assert (b["num_correct"], b["num_pred"]) == (5, 6)
    official = evaluation.docred_scores(k3, gold)
    assert all(math.isclose(b[k], official[k]) for k in ("precision", "recall", "f1"))
    assert b["by_relation"]["P27"] == {"recall": 50.0, "correct": 1, "gold": 2, "predicted": 1, "precision": 100.0}
    assert b["by_relation"]["P17"] == {"recall": 100 * 2 / 3, "correct": 2, "gold": 3, "predicted": 3,
                                       "precision": 100 * 2 / 3}
    # K=3's inferred slots: d0 1/1, d1 1/2 -> resamples give 1/2, 2/3 or 2/2: the interval spans 50 to 100
    assert b["inferred"]["precision_ci95"] == [50.0, 100.0]
    table = demo_report.format_table(rows).splitlines()
    assert table[2] == ("| K=0 | 75.00 | 42.86 | 54.55 | 75.00 (3/4) | 100.00 (3/3) [100.00, 100.00] | 0.00 (0/3) | "
                        "0.00 (0/1) [0.00, 0.00] |")
    assert table[3] == ("| K=3 | 83.33 | 71.43 | 76.92 | 75.00 (3/4) | 100.00 (3/3) [100.00, 100.00] | 66.67 (2/3) | "
                        "66.67 (2/3) [50.00, 100.00] |")


def test_demo_report_precision_interval():
    same = np.tile([3.0, 4.0, 5.0, 0.0], (6, 1))  # every document 3 of 4: no spread
    assert demo_report.precision_interval(same) == [75.0, 75.0]
    mixed = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]] * 20)  # 20 of 40 right
    low, high = demo_report.precision_interval(mixed, samples=2000)
    assert 30 < low < 50 < high < 70
    # several runs (training seeds): identical runs give the one run's interval; runs that disagree widen it
    assert demo_report.precision_interval(np.stack([mixed] * 3)) == demo_report.precision_interval(mixed)
    right, wrong = np.tile([1.0, 1.0, 1.0, 0.0], (40, 1)), np.tile([0.0, 1.0, 1.0, 0.0], (40, 1))
    assert demo_report.precision_interval(right) == [100.0, 100.0]
    low, high = demo_report.precision_interval(np.stack([right, wrong]), samples=2000)
    assert low == 0.0 and high == 100.0  # the seeds drawn decide: both wrong, both right, or one each (50)
    low, high = demo_report.precision_interval(np.stack([right, right, wrong] * 2), samples=2000)
    assert 0 < low < 200 / 3 < high


def test_demo_report_unmarked_gold_and_cli(tmp_path, capsys):
    gold = report_gold()
    for doc in gold:
        for lab in doc["labels"]:
            lab.pop("inferred", None)  # DocRED / Re-DocRED: no label says whether it is stated
    k0, k3 = report_preds()
    paths = {name: helpers.write_docs(tmp_path, f"{name}.json", docs)
             for name, docs in (("gold", gold), ("k0", k0), ("k3", k3))}
    out = tmp_path / "report.json"
    assert demo_report.main(["--gold", paths["gold"], "--pred", f"K=0 (base module)={paths['k0']}",
                             "--pred", paths["k3"], "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| predictions | precision | recall | F1 |" and lines[1] == "|---|---|---|---|"
    assert lines[2] == "| K=0 (base module) | 75.00 | 42.86 | 54.55 |"
    assert lines[3].startswith(f"| {paths['k3']} | 83.33 |")  # a bare path labels itself
    rows = json.loads(out.read_text())
    assert rows[0]["stated"] is None and rows[0]["inferred"] is None and rows[1]["num_correct"] == 5
    # --max_docs 1: the first gold document alone (3 unique facts) and the predictions for it
    assert demo_report.main(["--gold", paths["gold"], "--pred", f"a={paths['k0']}", "--max_docs", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[2] == "| a | 100.00 | 66.67 | 80.00 |"


def test_demo_report_errors(tmp_path, capsys):
    gold = helpers.write_docs(tmp_path, "gold.json", report_gold())
    k0 = helpers.write_docs(tmp_path, "k0.json", report_preds()[0])
    cases = [(["--gold", str(tmp_path / "nope.json"), "--pred", k0], "nope.json"),
             (["--gold", gold, "--pred", f"K=0={tmp_path / 'missing.json'}"], "missing.json"),
             (["--gold", gold, "--pred", helpers.write_docs(tmp_path, "obj.json", {"title": "d0"})], "obj.json"),
             (["--gold", gold, "--pred", helpers.write_docs(tmp_path, "bad.json", [{"title": "d0", "h_idx": 0}])],
              "bad.json"),
             (["--gold", gold, "--pred", helpers.write_docs(tmp_path, "str.json", ["d0 0 1 P17"])], "str.json"),
             (["--gold", k0, "--pred", k0], "k0.json")]  # a submission given as the gold file: no labels
    for argv, name in cases:
        assert demo_report.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and name in err, err
    proc = subprocess.run([sys.executable, str(helpers.ROOT / "scripts" / "demo_report.py"), "--gold", gold,
                           "--pred", str(tmp_path / "missing.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_shell_scripts_parse():
    for path in sorted((helpers.ROOT / "scripts").glob("*.sh")):
        subprocess.run(["bash", "-n", str(path)], check=True)


def test_scripts_do_not_depend_on_experiments():
    """What a user runs stands alone: nothing in scripts/ imports or calls the laboratory in experiments/."""
    paths = sorted((helpers.ROOT / "scripts").iterdir())
    assert {p.name for p in paths} >= {"run_demo.sh", "demo_report.py", "make_demo_data.py"}
    assert [p.name for p in paths if "experiments" in p.read_text()] == []


# ---------------------------------------------------------------- synthetic demo data
def check_demo_doc(doc):
    """The generator's contract for one labelled document (see scripts/make_demo_data.py)."""
    vs, sents, labels = doc["vertexSet"], doc["sents"], doc["labels"]
    types = [e[0]["type"] for e in vs]
    assert all(e for e in vs)  # every entity is mentioned
    for e in vs:
        for m in e:
            assert sents[m["sent_id"]][m["pos"][0]:m["pos"][1]] == m["name"].split() == e[0]["name"].split()
    sent_ids = [{m["sent_id"] for m in e} for e in vs]
    stated = {(lab["h"], lab["t"], lab["r"]) for lab in labels if not lab["inferred"]}
    for lab in labels:
        h, t, r = lab["h"], lab["t"], lab["r"]
        assert isinstance(lab["inferred"], bool)
        # exactly the citizenships and the organisations' countries are inferred
        assert lab["inferred"] == (r == "P27" or (r == "P17" and types[h] == "ORG"))
        if not lab["inferred"]:  # stated: one sentence mentions both, and it is the evidence
            assert lab["evidence"] == sorted(sent_ids[h] & sent_ids[t]) and len(lab["evidence"]) == 1
            continue
        # never stated: no sentence mentions head and tail (by the annotation), and no sentence that holds the
        # head's name holds a word of the tail's name (by the text, whatever the annotation says)
        assert not sent_ids[h] & sent_ids[t]
        head_words, tail_words = set(vs[h][0]["name"].split()), set(vs[t][0]["name"].split())
        for sent in sents:
            assert not (head_words <= set(sent) and tail_words & set(sent))
        # but it follows from two stated facts: head -> city (P19 / P159) and city -> country (P17)
        first = {"P27": "P19", "P17": "P159"}[r]
        bridges = [x for x in range(len(vs)) if (h, x, first) in stated and (x, t, "P17") in stated]
        assert len(bridges) == 1
        assert lab["evidence"] == sorted(sent_ids[h] & sent_ids[bridges[0]] | sent_ids[bridges[0]] & sent_ids[t])
    # one inferred fact per person and per organisation
    inferred_heads = sorted(lab["h"] for lab in labels if lab["inferred"])
    assert inferred_heads == [e for e, kind in enumerate(types) if kind in ("PER", "ORG")]


def test_demo_data_marks_inferred_facts_and_never_states_them():
    for counts in ({}, {"countries": 3, "cities": 4, "orgs": 3, "people": 4, "assign": "even"},
                   {"countries": 1, "cities": 3, "orgs": 1, "people": 5, "assign": "random"}):
        docs = make_demo_data.make_splits({"train": 40, "dev": 10}, seed=5, **counts)
        titles = [d["title"] for split in docs.values() for d in split]
        assert len(set(titles)) == len(titles) == 50
        for split in docs.values():
            for doc in split:
                check_demo_doc(doc)
    even = make_demo_data.make_doc(random.Random(0), 0, countries=2, cities=4, orgs=2, people=4, assign="even")
    births = sorted(lab["t"] for lab in even["labels"] if lab["r"] == "P19")
    assert len(set(births)) == 4  # as many cities as people: each born in another city


def test_demo_data_gap_keeps_the_two_hops_apart(tokenizer):
    """--gap N: the sentences stating first hops come first, the cities' countries last, and between them
    filler that mentions no entity and is at least N tokens of the bundled tokenizer long (one per word), so
    no window of N tokens holds both facts a never-stated one follows from."""
    assert set(make_demo_data.FILLER) and all(
        len(tokenizer.tokenize(text)) == len(text.split()) for text in make_demo_data.FILLER)
    for gap in (1, 40):
        for doc in make_demo_data.make_splits({"train": 30}, seed=3, gap=gap, people=3)["train"]:
            check_demo_doc(doc)
            mentioned = {m["sent_id"] for e in doc["vertexSet"] for m in e}
            relation_of = {s: lab["r"] for lab in doc["labels"] if not lab["inferred"] for s in lab["evidence"]}
            kinds = ["city" if relation_of.get(i) == "P17" else "hop" if i in mentioned else "filler"
                     for i in range(len(doc["sents"]))]
            first, last = kinds.index("filler"), len(kinds) - 1 - kinds[::-1].index("filler")
            assert set(kinds[:first]) == {"hop"} and set(kinds[first:last + 1]) == {"filler"}
            assert set(kinds[last + 1:]) == {"city"} and kinds.count("city") == 2
            filler = [w for sent in doc["sents"][first:last + 1] for w in sent[:-1]]
            assert len(tokenizer.tokenize(" ".join(filler))) >= gap
            assert len(filler) < gap + max(len(t.split()) for t in make_demo_data.FILLER)  # no more than needed
    with pytest.raises(ValueError, match="gap >= 0"):
        make_demo_data.make_doc(random.Random(0), 0, gap=-1)


def test_demo_data_files_score_and_load(tmp_path, tokenizer, capsys):
    out = tmp_path / "demo"
    assert make_demo_data.main(["--out", str(out), "--train", "6", "--dev", "4", "--test", "3", "--seed", "2"]) == 0
    dev = json.loads((out / "dev.json").read_text())
    assert all("labels" not in d for d in json.loads((out / "test.json").read_text()))
    # scorer and reader ignore the extra "inferred" key: the gold facts as predictions score F1 100
    gold_as_pred = [{"title": d["title"], "h_idx": lab["h"], "t_idx": lab["t"], "r": lab["r"]}
                    for d in dev for lab in d["labels"]]
    scores = evaluation.docred_scores(gold_as_pred, dev, json.loads((out / "train.json").read_text()))
    assert scores["f1"] == 100.0 and scores["num_gold"] == len(gold_as_pred)
    feats = prepro.load_features(str(out / "dev.json"), "docred", tokenizer, 512, cache_dir=str(tmp_path / "c"))
    assert sum(1 for f in feats for lab in f["labels"] if lab) == len(gold_as_pred)  # no two facts share a pair
    with pytest.raises(SystemExit):
        make_demo_data.main(["--out", str(out), "--countries", "3", "--cities", "2"])
    assert "cities >= countries" in capsys.readouterr().err


def test_demo_report_over_seeds(tmp_path, capsys):
    """--runs: per-kind F1 from recall and in-slot precision, averaged over seeds, with the seeds x documents
    bootstrap of the difference; the base module's predictions are read from run_demo.sh's k0/ folder or from
    a train.py stage 2's dev_result_k0.json; run folders whose full models use different K are refused."""
    gold = helpers.write_docs(tmp_path, "gold.json", report_gold())
    k0, k3 = report_preds()
    runs = []
    for seed, k in ((1, 3), (2, 3), (3, 2)):
        run = tmp_path / f"s{seed}"
        (run / "k0").mkdir(parents=True)
        if seed == 2:  # train.py's layout: dev_result_k0.json wins over a k0/ folder beside it (a decoy here)
            helpers.write_docs(run, "dev_result_k0.json", k0)
            helpers.write_docs(run / "k0", "dev_result.json", k3)
        else:
            helpers.write_docs(run / "k0", "dev_result.json", k0)
        helpers.write_docs(run, "dev_result.json", k3)
        helpers.write_docs(run, "eval_scores.json", {"dev_by_k": {str(i): 0.0 for i in range(k + 1)}})
        runs.append(str(run))
    out = tmp_path / "seeds.json"
    assert demo_report.main(["--gold", gold, "--runs", *runs[:2], "--json", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| facts | seeds | F1 K=0 | F1 K=3 |")
    rows = {r["facts"]: r for r in json.loads(out.read_text())}
    # stated: recall 3/4 and precision 3/3 at both K; inferred: 0/3 and 0/1 at K=0, 2/3 and 2/3 at K=3
    assert rows["stated"]["recall"] == [75.0, 75.0] and rows["stated"]["precision"] == [100.0, 100.0]
    assert math.isclose(rows["stated"]["f1"][0], 100 * 2 * 0.75 / 1.75)
    assert rows["inferred"]["f1"][0] == 0.0 and math.isclose(rows["inferred"]["f1"][1], 200 / 3)
    assert rows["inferred"]["f1_diff"]["point"] == rows["inferred"]["f1"][1]
    assert rows["stated"]["f1_diff"]["ci95"] == [0.0, 0.0]  # identical predictions at both K
    assert math.isclose(rows["all"]["f1"][1], evaluation.docred_scores(k3, report_gold())["f1"])
    assert rows["all"]["seeds"] == 2
    assert demo_report.main(["--gold", gold, "--runs", *runs]) == 2
    assert "different numbers of passes: [2, 3]" in capsys.readouterr().err

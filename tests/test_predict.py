"""predict.Predictor and predict.py's command line on a tiny trained checkpoint, and portable checkpoints: best.pt
loads with torch.load(weights_only=True) and predicts after being moved to a fresh folder, offline, with the
encoder folder it was trained from deleted. Predictions equal those of train.py --evaluate_only (one code path)."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

import helpers
import predict
import prepro
import train
from utils import DataError, UsageError

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with helpers.one_thread():
        yield


def always_predict(ckpt, rel="P17"):
    """Large classifier biases: every pair gets ``rel``, with the threshold class second (so that the
    prediction files have content, with margins of a known sign)."""
    rid = json.load(open(os.path.join(helpers.ROOT, "meta", "rel2id.json")))[rel]
    for name in ("base.classifier.bias", "inference.classifier.bias"):
        ckpt["model"][name][rid] += 1000.0
        ckpt["model"][name][0] += 500.0
    return ckpt


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """1 + 1 epochs with a tiny encoder in its own folder; then best.pt (biased to predict P17 everywhere) is
    copied to a fresh folder and the encoder folder is deleted: every test below runs without it."""
    root = tmp_path_factory.mktemp("predict")
    data = helpers.write_dataset(root / "data", test_labelled=False)
    encoder = helpers.tiny_model(root / "encoder")
    run = root / "run"
    assert train.cli(helpers.train_args(data, encoder, run, root / "cache", stage1=1, stage2=1, lr=3e-3)) == 0
    fresh = root / "fresh"
    fresh.mkdir()
    ckpt = always_predict(torch.load(run / "best.pt", weights_only=True))
    torch.save(ckpt, fresh / "best.pt")
    stage1 = always_predict(torch.load(run / "best_stage1.pt", weights_only=True))
    torch.save(stage1, fresh / "best_stage1.pt")
    shutil.rmtree(encoder)
    return {"root": root, "data": data, "run": run, "ckpt": fresh / "best.pt", "stage1": fresh / "best_stage1.pt",
            "encoder": encoder, "cache": str(root / "cache")}


def test_best_pt_is_weights_only_and_carries_its_encoder(env):
    ckpt = torch.load(env["run"] / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["stage"] == 2 and ckpt["args"]["model_name_or_path"] == str(env["encoder"])
    assert ckpt["encoder"]["config"]["hidden_size"] == 32 and ckpt["encoder"]["config"]["model_type"] == "bert"
    assert "tokenizer.json" in ckpt["encoder"]["tokenizer"]
    assert ckpt["id2rel"][0] == "Na" and len(ckpt["id2rel"]) == 97
    assert torch.load(env["run"] / "best_stage1.pt", weights_only=True)["stage"] == 1


def evaluate_only(env, ckpt, out, test_file, *extra):
    """train.py --evaluate_only on a test file: its predictions.json and result.json."""
    assert train.cli(["--evaluate_only", "--load_path", str(ckpt), "--data_dir", env["data"]["dir"], "--dev_file", "",
                      "--test_file", test_file, "--save_path", str(out), "--cache_dir", env["cache"],
                      "--amp", "none", "--device", "cpu", *extra]) == 0
    return json.loads((out / "predictions.json").read_text()), json.loads((out / "result.json").read_text())


def test_predictor_equals_evaluate_only(env):
    """The same triples, names and margins as train.py --evaluate_only (which needs no encoder folder either)."""
    rows, result = evaluate_only(env, env["ckpt"], env["root"] / "eval", "test.json")
    docs = json.load(open(env["data"]["test"]))
    predictor = predict.Predictor.from_checkpoint(str(env["ckpt"]), device="cpu", amp="none")
    assert predictor.num_iterations == 2  # the run's K
    out = predictor.predict(docs)
    assert len(out) == len(docs)
    assert [dict(t, title=d["title"]) for d, triples in zip(docs, out) for t in triples] == rows
    n = [len(d["vertexSet"]) for d in docs]
    assert [len(t) for t in out] == [k * (k - 1) for k in n]  # every pair gets P17
    for d, triples in zip(docs, out):
        for t in triples:
            assert set(t) == {"h_idx", "t_idx", "head", "tail", "r", "relation", "score"}
            assert (t["r"], t["relation"]) == ("P17", "country") and t["score"] > 0
            assert t["head"] == d["vertexSet"][t["h_idx"]][0]["name"]
    features, scores = predictor.scores(docs)
    assert predictor.official(features, scores) == result


def test_predictor_batching_and_k(env):
    docs = [helpers.make_doc(700 + i, num_entities=2 + i % 4, labelled=False) for i in range(5)]
    one = predict.Predictor.from_checkpoint(str(env["ckpt"]), device="cpu", amp="none", batch_size=1)
    many = predict.Predictor.from_checkpoint(str(env["ckpt"]), device="cpu", amp="none", batch_size=4)
    a, b = one.predict(docs), many.predict(docs)
    assert [[(t["h_idx"], t["t_idx"], t["r"]) for t in x] for x in a] == \
        [[(t["h_idx"], t["t_idx"], t["r"]) for t in x] for x in b]
    assert all(abs(s["score"] - t["score"]) < 1e-3 for x, y in zip(a, b) for s, t in zip(x, y))
    # K = 0 is the base module; a stage-1 checkpoint always predicts with K = 0
    assert predict.Predictor.from_checkpoint(str(env["ckpt"]), device="cpu", num_iterations=0).num_iterations == 0
    assert predict.Predictor.from_checkpoint(str(env["stage1"]), device="cpu", num_iterations=3).num_iterations == 0


def test_stage1_checkpoint_without_inference_weights(env, tmp_path):
    """A stage-1 checkpoint is evaluated with its base module only (K = 0), so one that stores no inference
    module (experiments/gpu_carry.py's copy for another machine) predicts exactly what the whole one does."""
    ckpt = torch.load(env["stage1"], weights_only=True)
    assert any(k.startswith("inference.") for k in ckpt["model"])
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if k.startswith("base.")}
    torch.save(ckpt, tmp_path / "base_only.pt")
    _, whole = evaluate_only(env, env["stage1"], tmp_path / "whole", "test.json")
    _, base_only = evaluate_only(env, tmp_path / "base_only.pt", tmp_path / "base_only", "test.json")
    assert whole and base_only == whole
    docs = json.load(open(env["data"]["test"]))
    a = predict.Predictor.from_checkpoint(str(env["stage1"]), device="cpu", amp="none").predict(docs)
    b = predict.Predictor.from_checkpoint(str(tmp_path / "base_only.pt"), device="cpu", amp="none").predict(docs)
    assert a == b and sum(map(len, a)) > 0
    # a stage-2 checkpoint still needs its inference module
    ckpt = torch.load(env["ckpt"], weights_only=True)
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if k.startswith("base.")}
    torch.save(ckpt, tmp_path / "stage2_base_only.pt")
    with pytest.raises(UsageError, match="does not fit this model"):
        predict.Predictor.from_checkpoint(str(tmp_path / "stage2_base_only.pt"), device="cpu")


def test_names_optional_and_small_documents(env):
    predictor = predict.Predictor.from_checkpoint(str(env["ckpt"]), device="cpu", amp="none")
    doc = helpers.make_doc(800, num_entities=3, labelled=False)
    for entity in doc["vertexSet"]:
        for m in entity:
            del m["name"], m["type"]
    single = helpers.make_doc(801, num_entities=1, labelled=False)
    labelled = helpers.make_doc(802, num_entities=2)  # labels are ignored
    labelled["labels"].append({"h": 0, "t": 1, "r": "not a relation"})
    out = predictor.predict([doc, single, labelled])
    assert len(out[0]) == 6 and all(t["head"] is None and t["tail"] is None for t in out[0])
    assert out[1] == [] and len(out[2]) == 2


@pytest.mark.parametrize("bad,words", [
    (lambda d: d["vertexSet"][1][0].update(pos=[5, 99]), ["vertexSet[1][0].pos", "[5, 99]"]),
    (lambda d: d.pop("sents"), ["missing key 'sents'"]),
    (lambda d: d["vertexSet"][0][0].update(sent_id=7), ["vertexSet[0][0].sent_id", "7"]),
], ids=["pos", "sents", "sent_id"])
def test_bad_document_names_document_and_field(env, bad, words):
    predictor = predict.Predictor.from_checkpoint(str(env["ckpt"]), device="cpu")
    docs = [helpers.make_doc(900, labelled=False), helpers.make_doc(901, labelled=False)]
    bad(docs[1])
    with pytest.raises(DataError) as e:
        predictor.predict(docs, source="my docs")
    assert str(e.value).startswith('my docs: document 1 ("Doc 901"): ')
    for word in words:
        assert word in str(e.value)
    with pytest.raises(DataError, match="expected a list of documents"):
        predictor.predict({"title": "x"})


def test_cli_in_a_fresh_folder_offline(env, tmp_path):
    """The documented command in a folder holding only best.pt and the documents, offline, encoder folder gone."""
    shutil.copy(env["ckpt"], tmp_path / "best.pt")
    shutil.copy(env["data"]["test"], tmp_path / "docs.json")
    cmd = [sys.executable, str(helpers.ROOT / "predict.py"), "--checkpoint", "best.pt", "--input", "docs.json",
           "--output", "preds.json", "--amp", "none"]
    env_vars = helpers.subprocess_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env_vars, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows, result = evaluate_only(env, env["ckpt"], env["root"] / "eval_cli", "test.json")
    assert json.loads((tmp_path / "preds.json").read_text()) == rows
    assert json.loads((tmp_path / "result.json").read_text()) == result
    # outputs are not replaced without --overwrite; bad input is one line naming the file and the document
    (tmp_path / "bad.json").write_text(json.dumps([{"title": "T", "sents": [["a"]], "vertexSet": [[{}]]}]))
    assert predict.cli(["--checkpoint", str(tmp_path / "best.pt"), "--input", str(tmp_path / "docs.json"),
                        "--output", str(tmp_path / "preds.json")]) == 2
    assert predict.cli(["--checkpoint", str(tmp_path / "best.pt"), "--input", str(tmp_path / "bad.json"),
                        "--output", str(tmp_path / "p2.json"), "--overwrite"]) == 2


def test_cli_errors_are_one_line(env, tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps([{"title": "T", "sents": [["a"]], "vertexSet": [[{}]]}]))
    assert predict.cli(["--checkpoint", str(env["ckpt"]), "--input", str(tmp_path / "bad.json"),
                        "--output", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f'error: {tmp_path / "bad.json"}: document 0 ("T"): vertexSet[0][0]: expected a mention ' \
                      f"with 'pos' and 'sent_id'"
    assert not (tmp_path / "p.json").exists()
    # last.pt is no weights-only checkpoint: the message says which file to use
    with pytest.raises(UsageError, match="weights-only"):
        predict.Predictor.from_checkpoint(str(env["run"] / "last.pt"))


def test_cli_warns_of_bf16_on_a_cpu_without_it(env, tmp_path, capsys, monkeypatch):
    helpers.cpu_instructions(monkeypatch)
    assert predict.cli(["--checkpoint", str(env["ckpt"]), "--input", str(env["data"]["test"]), "--device", "cpu",
                        "--output", str(tmp_path / "p.json"), "--amp", "bf16"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: --amp bf16 on a CPU without bf16 matrix instructions") and err.count("\n") == 1
    assert json.loads((tmp_path / "p.json").read_text())


def test_old_style_checkpoint(env, tmp_path):
    """A best.pt without the encoder entry (as written before it existed) still loads, from the encoder folder."""
    ckpt = torch.load(env["ckpt"], weights_only=True)
    for key in ("encoder", "id2rel", "weights_id"):
        del ckpt[key]
    torch.save(ckpt, tmp_path / "old.pt")
    docs = json.load(open(env["data"]["test"]))
    with pytest.raises(UsageError, match="no such model folder"):
        predict.Predictor.from_checkpoint(str(tmp_path / "old.pt"), device="cpu")
    helpers.tiny_model(env["encoder"])  # the same folder again (same seed, same tokenizer)
    try:
        old = predict.Predictor.from_checkpoint(str(tmp_path / "old.pt"), device="cpu", amp="none").predict(docs)
        rows, _ = evaluate_only(env, tmp_path / "old.pt", tmp_path / "eval", "test.json")
    finally:
        shutil.rmtree(env["encoder"])
    new = predict.Predictor.from_checkpoint(str(env["ckpt"]), device="cpu", amp="none").predict(docs)
    assert old == new
    assert rows == [dict(t, title=d["title"]) for d, triples in zip(docs, new) for t in triples]


def test_oracle_relations_diagnostic(env, tmp_path, capsys):
    """experiments/oracle_relations.py: its "as trained" row is the model's own predictions; the first pass's
    given R_0 decodes to the stated gold facts (the inferred ones and pairs without a fact: no relation)."""
    import demo_report
    import make_demo_data
    import oracle_relations
    docs = make_demo_data.make_splits({"dev": 3}, seed=4)["dev"]
    gold = helpers.write_docs(tmp_path, "gold.json", docs)
    out = tmp_path / "rows.json"
    assert oracle_relations.main(["--checkpoint", str(env["ckpt"]), "--gold", gold, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    predictor = predict.Predictor.from_checkpoint(env["ckpt"], device="cpu")
    own = predictor.official(*predictor.scores(docs))
    assert rows[0]["f1"] == demo_report.score_predictions(docs, own)["f1"]
    features = prepro.docred_features(docs, predictor.tokenizer, 512, predictor.rel2id)
    for f, doc in zip(features, docs):
        decoded = oracle_relations.stated_relations(f, doc, 97).argmax(-1).tolist()
        stated = {(lab["h"], lab["t"]): predictor.rel2id[lab["r"]] for lab in doc["labels"] if not lab["inferred"]}
        assert decoded == [stated.get((h, t), 0) for h, t in f["hts"]]
    # two seeds (here the same checkpoint twice): counts pooled, the intervals those of one run
    twice = tmp_path / "twice.json"
    assert oracle_relations.main(["--checkpoint", str(env["ckpt"]), str(env["ckpt"]), "--gold", gold,
                                  "--json", str(twice)]) == 0
    pooled = json.loads(twice.read_text())["rows"]
    for one, both in zip(rows, pooled):
        assert both["label"] == one["label"] + ", 2 runs" and math.isclose(both["f1"], one["f1"])
        for kind in ("stated", "inferred"):
            assert both[kind]["correct"] == 2 * one[kind]["correct"]
            assert both[kind]["precision_ci95"] == one[kind]["precision_ci95"]
            assert math.isclose(both[kind]["precision"], one[kind]["precision"])
    assert oracle_relations.main(["--checkpoint", str(env["stage1"]), "--gold", gold]) == 2
    assert "stage-1 checkpoint" in capsys.readouterr().err


def test_oracle_relations_test_logits_override(env, tmp_path):
    """--test_logits replaces the run's test-time score: the base module predicts P17 everywhere, each pass's own
    logits predict nothing, so "last" predicts no relation and "sum" (base + passes) P17 for every pair."""
    import make_demo_data
    import oracle_relations
    rid = json.load(open(os.path.join(helpers.ROOT, "meta", "rel2id.json")))["P17"]
    ckpt = torch.load(env["run"] / "best.pt", weights_only=True)
    ckpt["model"]["base.classifier.bias"][rid] += 1000.0
    ckpt["model"]["base.classifier.bias"][0] += 500.0
    ckpt["model"]["inference.classifier.bias"][0] += 100.0  # K = 2 passes: 1000 > 500 + 2 x 100
    path = tmp_path / "best.pt"
    torch.save(ckpt, path)
    gold = helpers.write_docs(tmp_path, "gold.json", make_demo_data.make_splits({"dev": 2}, seed=5)["dev"])
    recall = {}
    for how in ("last", "sum"):
        out = tmp_path / f"{how}.json"
        assert oracle_relations.main(["--checkpoint", str(path), "--gold", gold, "--test_logits", how,
                                      "--json", str(out)]) == 0
        report = json.loads(out.read_text())
        assert report["test_logits"] == how
        recall[how] = [row["recall"] for row in report["rows"]]
    assert recall["last"] == [0.0, 0.0]
    assert all(r > 0 for r in recall["sum"])


def test_pack_rows_places_each_document_row_at_its_packed_pair():
    features = [{"input_ids": [1, 2, 3], "entity_pos": [[(0, 1)], [(1, 2)], [(2, 3)]], "num_entities": 3,
                 "num_class": 4, "hts": [[0, 1], [2, 0], [1, 2]], "labels": [[], [], []]},
                {"input_ids": [1, 2], "entity_pos": [[(0, 1)], [(1, 2)]], "num_entities": 2, "num_class": 4,
                 "hts": [[1, 0]], "labels": [[]]}]
    batch = predict.collate_fn(features)
    rows = [torch.arange(12.0).view(3, 4) + 1, torch.full((1, 4), -7.0)]
    packed = predict.pack_rows(batch, rows, predict.packed_index(batch))
    b, s, o = batch["pair_index"]
    assert packed.shape == (len(b), 4)
    expected = {(0, 0, 1): rows[0][0], (0, 2, 0): rows[0][1], (0, 1, 2): rows[0][2], (1, 1, 0): rows[1][0]}
    for i, key in enumerate(zip(b.tolist(), s.tolist(), o.tolist())):
        assert torch.equal(packed[i], expected.get(key, torch.zeros(4)))


def test_composition_probe_trains_the_inference_module_only(env, tmp_path, capsys):
    """experiments/composition_probe.py: the base module is untouched, the inference module changes and its training
    loss falls; the report's first row reads the stated gold facts; a stage-1 checkpoint is refused."""
    import composition_probe
    import make_demo_data
    splits = make_demo_data.make_splits({"train": 4, "dev": 3}, seed=4)
    paths = {k: helpers.write_docs(tmp_path, f"{k}.json", docs) for k, docs in splits.items()}
    before = torch.load(env["ckpt"], weights_only=True)["model"]
    args = composition_probe.parse_args(["--checkpoint", str(env["ckpt"]), "--train", paths["train"], "--dev",
                                         paths["dev"], "--epochs", "3", "--lr", "1e-2", "--device", "cpu"])
    history, model = composition_probe.probe(args)
    trained = model.state_dict()
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert [r["label"] for r in history[-1]["rows"]] == ["R_0 = the stated gold facts", "R_0 from the base module"]
    assert [r["label"] for r in history[0]["rows"]] == ["R_0 = the stated gold facts"]
    assert "train_rows" not in history[0] and history[-1]["train_rows"][0]["stated"]["gold"] == sum(
        1 for doc in splits["train"] for lab in doc["labels"] if not lab["inferred"])
    for row in history[-1]["rows"]:
        low, high = row["inferred"]["precision_ci95"]
        assert low <= row["inferred"]["precision"] <= high
    changed = {k for k in before if not torch.equal(before[k], trained[k])}
    assert changed and all(k.startswith("inference.") for k in changed)
    out = tmp_path / "probe.json"
    assert composition_probe.main(["--checkpoint", str(env["ckpt"]), "--train", paths["train"], "--dev",
                                   paths["dev"], "--epochs", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["epochs"][0]["rows"][0]["label"] == "R_0 = the stated gold facts"
    assert "| R_0 from the base module |" in capsys.readouterr().out
    assert composition_probe.main(["--checkpoint", str(env["stage1"]), "--train", paths["train"], "--dev",
                                   paths["dev"]]) == 2
    assert "stage-1 checkpoint has no inference module" in capsys.readouterr().err

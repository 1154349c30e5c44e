"""Tests for train.py (Issue 3): stage-1 and stage-2 CPU training on made-up documents with a tiny random
BERT, the outputs of a run, --evaluate_only reproducing the stored dev scores, and stage 2 (plus the
ablation flags) from a stage-1 checkpoint given with --load_path."""
import json
import os

import pytest
import torch

import helpers
import predict
import train

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with helpers.one_thread():
        yield


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return helpers.run_env(tmp_path_factory, "train")


def run(env, save, *extra, stage1=2, stage2=0, lr=None):
    rc = train.cli(helpers.train_args(env["data"], env["model"], save, env["cache"], *extra,
                                      stage1=stage1, stage2=stage2, lr=lr))
    assert rc == 0
    return save


@pytest.fixture(scope="module")
def stage1_run(env):
    """2 stage-1 epochs (no stage 2) on 4 documents at a high learning rate."""
    return run(env, env["root"] / "stage1", stage1=2, stage2=0, lr=3e-3)


@pytest.fixture(scope="module")
def stage2_run(env):
    """1 stage-1 epoch then 2 stage-2 epochs."""
    return run(env, env["root"] / "stage12", stage1=1, stage2=2, lr=3e-3)


def test_stage1_loss_falls_and_metrics(stage1_run):
    lines = helpers.read_metrics(stage1_run)
    assert [(m["stage"], m["epoch"]) for m in lines] == [(1, 0), (1, 1)]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert [m["step"] for m in lines] == [2, 4]  # 4 documents, batch 2
    for m in lines:
        assert m["skipped_steps"] == 0
        assert set(m["dev"]) >= {"precision", "recall", "f1", "ign_f1"}
        assert 0 <= m["dev"]["f1"] <= 100
        assert m["dev"]["num_gold"] == 6  # 2 dev documents x 3 labelled pairs
    assert lines[0]["best"] is True  # the first epoch always beats the initial -1


def test_stage1_outputs(env, stage1_run):
    for name in ("best.pt", "last.pt", "args.json", "result.json", "dev_result.json", "predictions.json",
                 "eval_scores.json"):
        assert os.path.isfile(stage1_run / name), name
    saved = json.loads((stage1_run / "args.json").read_text())
    assert saved["stage1_epochs"] == 2 and saved["seed"] == 7 and saved["inference_dim"] == 16
    best = torch.load(stage1_run / "best.pt", weights_only=False)
    assert best["stage"] == 1 and isinstance(best["dev"], dict) and "f1" in best["dev"]
    last = torch.load(stage1_run / "last.pt", weights_only=False)
    assert (last["stage"], last["epoch"], last["step_in_epoch"]) == (1, 2, 0)
    result = json.loads((stage1_run / "result.json").read_text())
    assert isinstance(result, list)
    rel2id = json.load(open(os.path.join(helpers.ROOT, "meta", "rel2id.json")))
    test_docs = json.load(open(env["data"]["test"]))
    sizes = {d["title"]: len(d["vertexSet"]) for d in test_docs}
    for entry in result:
        assert set(entry) == {"title", "h_idx", "t_idx", "r"}
        assert entry["title"] in sizes
        assert entry["r"] in rel2id and entry["r"] != "Na"
        assert 0 <= entry["h_idx"] < sizes[entry["title"]] and 0 <= entry["t_idx"] < sizes[entry["title"]]
        assert entry["h_idx"] != entry["t_idx"]
    rows = json.loads((stage1_run / "predictions.json").read_text())
    assert sorted((r["title"], r["h_idx"], r["t_idx"], r["r"]) for r in rows) == \
        sorted((e["title"], e["h_idx"], e["t_idx"], e["r"]) for e in result)


def test_evaluate_only_reproduces_dev_stage1(env, stage1_run, capsys):
    out = env["root"] / "eval1"
    rc = train.cli(["--evaluate_only", "--load_path", str(stage1_run / "best.pt"), "--data_dir", env["data"]["dir"],
                    "--dev_file", "dev.json", "--test_file", "test.json", "--save_path", str(out),
                    "--cache_dir", env["cache"], "--test_batch_size", "4", "--device", "cpu"])
    assert rc == 0
    stored = torch.load(stage1_run / "best.pt", weights_only=False)["dev"]
    scores = json.loads((out / "eval_scores.json").read_text())["dev"]
    assert {k: round(v, 4) for k, v in scores.items()} == stored
    assert "stage-1 checkpoint" in capsys.readouterr().out
    # the test predictions of the evaluation equal those written at the end of training
    assert json.loads((out / "result.json").read_text()) == json.loads((stage1_run / "result.json").read_text())


def test_stage2_run(stage2_run):
    lines = helpers.read_metrics(stage2_run)
    assert [(m["stage"], m["epoch"]) for m in lines] == [(1, 0), (2, 0), (2, 1)]
    for m in lines[1:]:
        assert {"train_inference", "train_base", "train_contrastive", "train_loss"} <= set(m)
        assert set(m["dev_by_k"]) == {"0", "1", "2"}  # --num_iterations 2
        assert m["dev_base"]["f1"] == m["dev_by_k"]["0"]
    best = torch.load(stage2_run / "best.pt", weights_only=False)
    assert best["stage"] == 2
    assert os.path.isfile(stage2_run / "best_stage1.pt")


def test_evaluate_only_reproduces_dev_stage2(env, stage2_run, monkeypatch):
    out = env["root"] / "eval2"
    used = []
    pass_scores = predict.pass_scores
    monkeypatch.setattr(predict, "pass_scores", lambda *a: used.append(a[-1]) or pass_scores(*a))
    rc = train.cli(["--evaluate_only", "--load_path", str(stage2_run / "best.pt"), "--data_dir", env["data"]["dir"],
                    "--dev_file", "dev.json", "--test_file", "", "--save_path", str(out),
                    "--cache_dir", env["cache"], "--test_batch_size", "4", "--device", "cpu"])
    assert rc == 0
    stored = torch.load(stage2_run / "best.pt", weights_only=False)["dev"]
    scores = json.loads((out / "eval_scores.json").read_text())["dev"]
    # --num_iterations is taken from the checkpoint (2) when not given
    assert {k: round(v, 4) for k, v in scores.items()} == stored
    assert not (out / "result.json").exists()  # --test_file ''
    assert used == [2]
    # the scores after every pass, from the same forward passes: the last is the final score, pass 0 the
    # base module's score that training logged for the same epoch
    by_k = json.loads((out / "eval_scores.json").read_text())["dev_by_k"]
    assert sorted(by_k) == ["0", "1", "2"] and by_k["2"] == scores
    best_line = [m for m in helpers.read_metrics(stage2_run) if m["best"]][-1]
    assert {k: round(v, 4) for k, v in by_k["0"].items()} == best_line["dev_base"]
    assert {k: round(v["f1"], 4) for k, v in by_k.items()} == best_line["dev_by_k"]


@pytest.mark.parametrize("flags", [[], ["--no_fusion"], ["--eca", "full"], ["--contrastive", "none"]],
                         ids=["default", "no_fusion", "eca_full", "contrastive_none"])
def test_stage2_from_stage1_checkpoint(env, stage1_run, flags):
    save = env["root"] / ("s2" + "_".join(f.strip("-") for f in flags))
    ckpt = stage1_run / "best.pt"
    # stage1_epochs keeps its default (30): only stage 2 may run. A zero base LR keeps the base module
    # exactly as loaded, which shows the stage-1 weights were used.
    args = helpers.train_args(env["data"], env["model"], save, env["cache"], "--load_path", str(ckpt),
                              "--stage2_base_lr", "0", *flags, stage1=30, stage2=1)
    assert train.cli(args) == 0
    lines = helpers.read_metrics(save)
    assert [(m["stage"], m["epoch"]) for m in lines] == [(2, 0)]
    assert not (save / "best_stage1.pt").exists()
    best = torch.load(save / "best.pt", weights_only=False)
    assert best["stage"] == 2
    stage1 = torch.load(ckpt, weights_only=False)["model"]
    base = {k: v for k, v in best["model"].items() if k.startswith("base.")}
    assert base.keys() == {k for k in stage1 if k.startswith("base.")}
    assert all(torch.equal(v, stage1[k]) for k, v in base.items())
    saved = best["args"]
    assert saved["no_fusion"] == ("--no_fusion" in flags)
    assert saved["eca"] == ("full" if "full" in flags else "eca")
    assert saved["contrastive"] == ("none" if "none" in flags else "simsiam")
    if "none" in flags:
        assert "train_contrastive" not in lines[0]
        assert not any(k.startswith("predictor.") for k in best["model"])
    else:
        assert "train_contrastive" in lines[0]
    if "--no_fusion" in flags:
        default = torch.load(env["root"] / "s2" / "best.pt", weights_only=False)["model"] \
            if (env["root"] / "s2" / "best.pt").exists() else None
        if default is not None:  # the fusion sub-layer's parameters are gone
            assert set(best["model"]) < set(default)


def test_bilinear_pair_features_travel_with_the_checkpoint(env, stage1_run, capsys):
    """--pair_features bilinear is a base-module flag: stage 2 from its stage-1 checkpoint and predict.py build
    the same base module; a checkpoint that does not record the flag (older runs) is "fnn"; a block size that
    does not divide the pair-feature width is refused before anything is written."""
    save = run(env, env["root"] / "bilinear", "--pair_features", "bilinear", "--block_size", "8", stage1=1)
    stage2 = run(env, env["root"] / "bilinear2", "--load_path", str(save / "best.pt"), stage1=30, stage2=1)
    best = torch.load(stage2 / "best.pt", weights_only=False)
    assert (best["args"]["pair_features"], best["args"]["block_size"]) == ("bilinear", 8)
    assert best["model"]["base.pair_fnn.0.weight"].shape == (32, 32 * 8)  # emb 32 (the tiny encoder's width)
    predictor = predict.Predictor.from_checkpoint(str(stage2 / "best.pt"), device="cpu")
    assert predictor.model.base.pair_form == "bilinear"
    old = torch.load(stage1_run / "best.pt", weights_only=False)
    del old["args"]["pair_features"], old["args"]["block_size"]
    torch.save(old, env["root"] / "old.pt")
    assert predict.Predictor.from_checkpoint(str(env["root"] / "old.pt"), device="cpu").model.base.pair_form == "fnn"
    bad = env["root"] / "bad_block"
    rc = train.cli(helpers.train_args(env["data"], env["model"], bad, env["cache"], "--pair_features", "bilinear",
                                      "--block_size", "5", stage1=1))
    assert rc == 2
    assert ("--block_size 5 --encoder_window 0: the grouped bilinear needs a block size that divides the "
            "pair-feature width 32, got 5" in capsys.readouterr().err)
    assert not (bad / "metrics.jsonl").exists()


def test_atlop_pair_features_train_both_stages_and_predict(env):
    """--pair_features atlop: stage 1 trains ATLOP's head (the classifier on the emb * block grouped bilinear, no
    pair FNN); stage 2 from its checkpoint feeds those emb * block features to the inference module's projection;
    predict.py rebuilds the same model (every weight in its place) and runs its K passes."""
    save = run(env, env["root"] / "atlop", "--pair_features", "atlop", "--block_size", "8", stage1=1, lr=3e-3)
    stage2 = run(env, env["root"] / "atlop2", "--load_path", str(save / "best.pt"), stage1=30, stage2=1, lr=3e-3)
    best = torch.load(stage2 / "best.pt", weights_only=False)
    assert best["args"]["pair_features"] == "atlop" and best["stage"] == 2
    weights = best["model"]
    assert not any(k.startswith("base.pair_fnn.") for k in weights)
    assert weights["base.classifier.weight"].shape[1] == 32 * 8  # emb 32 (the tiny encoder's width) x block 8
    assert weights["inference.reduce.0.weight"].shape == (16, 32 * 8)  # --inference_dim 16
    predictor = predict.Predictor.from_checkpoint(str(stage2 / "best.pt"), device="cpu")  # strict state_dict
    assert predictor.model.base.pair_form == "atlop" and predictor.model.base.feat_dim == 256
    features, scores = predictor.scores(json.load(open(env["data"]["test"])))
    for f, passes in zip(features, scores):  # per document, passes 0..K (K = 2) of its pairs
        assert len(passes) == 3
        assert all(p.shape == (len(f["hts"]), 97) and torch.isfinite(p).all() for p in passes)
        assert not torch.equal(passes[0], passes[-1])  # the passes read the atlop features


def test_encoder_window_travels_with_the_checkpoint(env, stage1_run, capsys):
    """--encoder_window is a base-module flag: stage 2 from its stage-1 checkpoint and predict.py encode with the
    same window; a checkpoint that does not record it (older runs) gets the encoder's own (512 here); a window
    with no room between the special tokens, or longer than the encoder's positions, is refused before anything
    is written."""
    save = run(env, env["root"] / "window", "--encoder_window", "16", stage1=1)
    stage2 = run(env, env["root"] / "window2", "--load_path", str(save / "best.pt"), stage1=30, stage2=1)
    best = torch.load(stage2 / "best.pt", weights_only=False)
    assert best["args"]["encoder_window"] == 16
    assert predict.Predictor.from_checkpoint(str(stage2 / "best.pt"), device="cpu").model.base.encoder.window == 16
    old = torch.load(stage1_run / "best.pt", weights_only=False)
    del old["args"]["encoder_window"]
    torch.save(old, env["root"] / "old_window.pt")
    assert predict.Predictor.from_checkpoint(str(env["root"] / "old_window.pt"),
                                             device="cpu").model.base.encoder.window == 512
    for window, message in [("2", "window 2 leaves no room for tokens between the 1 start and 1 end special tokens"),
                            ("513", "window 513 is longer than the encoder's 512 positions")]:
        bad = env["root"] / f"bad_window{window}"
        rc = train.cli(helpers.train_args(env["data"], env["model"], bad, env["cache"], "--encoder_window", window,
                                          stage1=1))
        assert rc == 2
        assert f"--encoder_window {window}: {message}" in capsys.readouterr().err
        assert not (bad / "metrics.jsonl").exists()


def test_cdr_run_writes_per_document_counts_of_every_pass(env, tmp_path):
    """CDR: a stage-1 + stage-2 run scores dev and test after every pass, and <split>_counts.json holds each
    document's (#correct, #predicted, #gold) of every pass, whose sums are those scores."""
    from test_prepro import cdr_line, second_line
    data = tmp_path / "cdr"
    data.mkdir()
    lines = [cdr_line(pmid="1001"), second_line(pmid="1002"), cdr_line(positive="1:NR:2", pmid="1003")]
    for name in ("train.data", "dev.data", "test.data"):
        (data / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    save = tmp_path / "run"
    assert train.cli(["--dataset", "cdr", "--data_dir", str(data), "--train_file", "train.data", "--dev_file",
                      "dev.data", "--test_file", "test.data", "--num_labels", "1", "--model_name_or_path",
                      env["model"], "--inference_dim", "16", "--train_batch_size", "2", "--stage1_epochs", "1",
                      "--stage2_epochs", "1", "--num_iterations", "2", "--save_path", str(save), "--cache_dir",
                      env["cache"], "--device", "cpu", "--amp", "none", "--seed", "7"]) == 0
    scores = json.loads((save / "eval_scores.json").read_text())
    for split in ("dev", "test"):
        counts = json.loads((save / f"{split}_counts.json").read_text())
        assert counts["titles"] == ["1001", "1002", "1003"] and sorted(counts["counts_by_k"]) == ["0", "1", "2"]
        for k, rows in counts["counts_by_k"].items():
            assert len(rows) == 3 and all(len(r) == 3 for r in rows)
            assert [r[2] for r in rows] == [1, 1, 0]  # gold CID pairs per document
            correct, predicted, gold = (sum(col) for col in zip(*rows))
            s = scores[f"{split}_by_k"][k]
            assert (s["num_correct"], s["num_pred"], s["num_gold"]) == (correct, predicted, gold)

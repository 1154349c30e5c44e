"""Reliability of train.py (Issue 5): atomic checkpoints, SIGTERM/SIGINT + --resume, determinism,
non-finite steps, bad input (one-line `error: ...`, exit status 2), and predicting new documents.

Runs use made-up documents and a tiny random BERT (tests/helpers.py). The interruption tests run
train.py as a real subprocess whose train_step is wrapped to take at least half a second (SLOW_TRAIN).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import helpers
import model as model_module
import train

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with helpers.one_thread():
        yield


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    return {"root": root, "model": helpers.tiny_model(root / "model"), "cache": str(root / "cache"),
            "data": helpers.write_dataset(root / "data", n_train=4, n_dev=2, n_test=2),
            "data8": helpers.write_dataset(root / "data8", n_train=8, n_dev=2, n_test=2)}


def flags(env, save, *extra, data="data", stage1=1, stage2=1):
    return helpers.train_args(env[data], env["model"], save, env["cache"], *extra, stage1=stage1, stage2=stage2,
                              lr=3e-3)


# train.py's command line in a subprocess whose optimiser steps each take 0.5 s more, so that a signal can be
# sent while an epoch is under way.
SLOW_TRAIN = ("import sys, time, train\n"
              "step = train.train_step\n"
              "train.train_step = lambda *a: (time.sleep(0.5), step(*a))[1]\n"
              "sys.exit(train.cli(sys.argv[1:]))")


def last_line(text):
    lines = [x for x in text.replace("\r", "\n").split("\n") if x.strip()]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------- atomic checkpoints
@pytest.mark.parametrize("where", ["replace", "write"])
def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch, where):
    path = tmp_path / "best.pt"
    old = {"model": {"w": torch.arange(5.0)}, "args": {"seed": 1}, "stage": 1, "epoch": 0}
    train.save_checkpoint(str(path), old)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    if where == "replace":
        monkeypatch.setattr(os, "replace", boom)
    else:  # the temporary file is half written when the write fails
        monkeypatch.setattr(os, "fsync", boom)
    new = {"model": {"w": torch.zeros(5)}, "args": {"seed": 2}, "stage": 2, "epoch": 3}
    with pytest.raises(OSError, match="simulated"):
        train.save_checkpoint(str(path), new)
    monkeypatch.undo()
    assert path.read_bytes() == before
    loaded = train.load_checkpoint(str(path))
    assert torch.equal(loaded["model"]["w"], torch.arange(5.0)) and loaded["epoch"] == 0
    assert sorted(os.listdir(tmp_path)) == ["best.pt"]  # no temporary file left behind


# ---------------------------------------------------------------- determinism
@pytest.fixture(scope="module")
def reference_inproc(env):
    """An uninterrupted in-process run: 4 documents, 1 epoch per stage."""
    save = env["root"] / "ref_inproc"
    assert train.cli(flags(env, save)) == 0
    return save


def test_same_seed_same_metrics(env, reference_inproc):
    save = env["root"] / "ref_inproc_again"
    assert train.cli(flags(env, save)) == 0
    first, second = helpers.read_metrics(reference_inproc), helpers.read_metrics(save)
    assert [(m["stage"], m["epoch"]) for m in first] == [(1, 0), (2, 0)]
    assert first == second
    assert (save / "result.json").read_text() == (reference_inproc / "result.json").read_text()
    # another seed changes the run (the test can fail)
    other = env["root"] / "other_seed"
    assert train.cli(flags(env, other, "--seed", "8")) == 0
    assert helpers.read_metrics(other) != first


# ---------------------------------------------------------------- SIGTERM / SIGINT and --resume
@pytest.fixture(scope="module")
def reference_run(env):
    """Uninterrupted subprocess run: 8 documents, batch 2 (4 steps an epoch), 2 epochs per stage."""
    save = env["root"] / "ref"
    proc = helpers.run_train(flags(env, save, data="data8", stage1=2, stage2=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save


@pytest.mark.parametrize("stage,sig", [(1, signal.SIGTERM), (2, signal.SIGTERM), (1, signal.SIGINT)],
                         ids=["stage1-SIGTERM", "stage2-SIGTERM", "stage1-SIGINT"])
def test_signal_then_resume_matches_uninterrupted(env, reference_run, stage, sig):
    save = env["root"] / f"int{stage}{sig.name}"
    # metrics lines written before the signal: stage 1 epoch 0 (-> stop in stage 1 epoch 1), or stage 1's
    # two epochs and stage 2 epoch 0 (-> stop in stage 2 epoch 1)
    lines_before = 1 if stage == 1 else 3
    cmd = [sys.executable, "-c", SLOW_TRAIN, *flags(env, save, data="data8", stage1=2, stage2=2)]
    proc = subprocess.Popen(cmd, cwd=helpers.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=helpers.subprocess_env())
    try:
        metrics = save / "metrics.jsonl"
        deadline = time.time() + 240
        last_pt = save / "last.pt"
        while time.time() < deadline and proc.poll() is None:
            # the epoch's metrics line is written, then last.pt (after best.pt): only then has the next
            # epoch begun, however slow the checkpoint writes are on a loaded machine
            if (metrics.exists() and len(metrics.read_text().splitlines()) >= lines_before and last_pt.exists()
                    and last_pt.stat().st_mtime_ns >= metrics.stat().st_mtime_ns):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.25)  # into the first step (0.5 s) of the next epoch
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err
    msg = last_line(err)
    assert msg.startswith(f"{sig.name}: stopped; state saved to ") and f"--resume {save}" in msg, msg
    last = torch.load(save / "last.pt", weights_only=False)
    assert last["stage"] == stage and last["epoch"] == 1 and 0 < last["step_in_epoch"] < 4
    for key in ("model", "optimizer", "scaler", "rng", "best", "loss_sum", "global_step", "lr_step"):
        assert key in last
    assert len(helpers.read_metrics(save)) == lines_before

    proc = helpers.run_train(["--resume", str(save)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert helpers.read_metrics(save) == helpers.read_metrics(reference_run)
    assert (save / "result.json").read_text() == (reference_run / "result.json").read_text()


def test_stop_at_end_of_stage1_then_resume(env, reference_inproc, monkeypatch):
    """A signal during stage 1's last evaluation: last.pt is at the stage boundary; --resume runs stage 2
    with the RNG state of that moment, as the uninterrupted run did."""
    save = env["root"] / "boundary"
    end_of_epoch = train.end_of_epoch

    def signal_during_eval(run, model, stage, *rest):
        if stage == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by train.py's handler: sets a flag
        return end_of_epoch(run, model, stage, *rest)

    monkeypatch.setattr(train, "end_of_epoch", signal_during_eval)
    assert train.cli(flags(env, save)) == 128 + signal.SIGTERM
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler was restored
    last = torch.load(save / "last.pt", weights_only=False)
    assert (last["stage"], last["epoch"], last["step_in_epoch"]) == (1, 1, 0)
    assert train.cli(["--resume", str(save)]) == 0
    assert helpers.read_metrics(save) == helpers.read_metrics(reference_inproc)


def test_resume_without_last_pt(tmp_path, capsys):
    assert train.cli(["--resume", str(tmp_path)]) == 2
    assert last_line(capsys.readouterr().err) == f"error: checkpoint not found: {tmp_path / 'last.pt'}"


# ---------------------------------------------------------------- non-finite steps
class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def patch_forward(monkeypatch, bad_calls, kind="loss"):
    """Make DocREModel.forward's loss NaN (or its gradients infinite) on the given calls (0-based)."""
    forward = model_module.DocREModel.forward
    calls = {"n": 0}

    def patched(self, batch, stage):
        out = forward(self, batch, stage)
        if calls["n"] in bad_calls:
            out["loss"] = out["loss"] * float("nan") if kind == "loss" else _InfGrad.apply(out["loss"])
        calls["n"] += 1
        return out

    monkeypatch.setattr(model_module.DocREModel, "forward", patched)
    return calls


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_steps_are_skipped_and_counted(env, monkeypatch, kind):
    save = env["root"] / f"nan_{kind}"
    # 4 documents, batch 2: calls 0-1 are stage 1 epoch 0, 2-3 stage 2 epoch 0
    calls = patch_forward(monkeypatch, {1, 2}, kind)
    assert train.cli(flags(env, save)) == 0
    assert calls["n"] == 4
    lines = helpers.read_metrics(save)
    assert [m["skipped_steps"] for m in lines] == [1, 1]
    for m in lines:
        assert all(v == v and abs(v) != float("inf") for k, v in m.items() if k.startswith("train_"))
    assert lines[0]["step"] == 2


def test_too_many_nonfinite_steps_stop_the_run(env, monkeypatch, capsys):
    save = env["root"] / "nan_stop"
    # stage 1 epoch 0 is fine (calls 0-1); from stage 1 epoch 1 on every step is NaN
    patch_forward(monkeypatch, set(range(2, 100)))
    rc = train.cli(flags(env, save, "--max_bad_steps", "2", stage1=3))
    assert rc == 1
    msg = last_line(capsys.readouterr().err)
    assert msg.startswith("error: stage 1 epoch 1: 2 non-finite steps in a row"), msg
    last = train.load_checkpoint(str(save / "last.pt"))  # the state saved after epoch 0 (weights: best.pt's)
    assert (last["stage"], last["epoch"], last["step_in_epoch"]) == (1, 1, 0)
    best = torch.load(save / "best.pt", weights_only=False)
    assert all(torch.equal(v, best["model"][k]) for k, v in last["model"].items())
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert len(helpers.read_metrics(save)) == 1


# ---------------------------------------------------------------- bad input
def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def crafted_checkpoint(src, dst, **args):
    ckpt = torch.load(src, weights_only=False)
    ckpt["args"].update(args)
    if "model_name_or_path" in args:  # the encoder then comes from that folder, not from the checkpoint
        ckpt.pop("encoder", None)
    train.save_checkpoint(str(dst), ckpt)
    return str(dst)


CDR_LINE = ("123\tAspirin causes pain .\t1:CID:2\tR2L\tNON-CROSS\t0-1\t2-3\t0\t1\taspirin\tChemical\t0\t1"
            "\t2\tpain\tDisease\t0\n")


def bad_cases(env, ckpt, tmp):
    """(argv, words the one-line error must contain) for every kind of bad input."""
    data = env["data"]
    train_flags = lambda *extra: flags(env, tmp / "out", *extra)  # noqa: E731
    evaluate = lambda load, *extra: ["--evaluate_only", "--load_path", str(load), "--data_dir", data["dir"],  # noqa
                                     "--save_path", str(tmp / "out"), "--cache_dir", env["cache"], *extra]
    small = write(tmp / "rel_small.json", json.dumps({"Na": 0, "P17": 1, "P19": 2}))
    other = helpers.tiny_model(env["root"] / "model48", hidden_size=48)
    cdr = write(tmp / "pairs.data", CDR_LINE)
    single = [helpers.make_doc(400, num_entities=1), helpers.make_doc(401, num_entities=0, labelled=False)]
    no_pairs = helpers.write_docs(tmp, "no_pairs.json", single)
    dup = helpers.write_docs(tmp, "dup.json", [helpers.make_doc(0), helpers.make_doc(1), helpers.make_doc(0)])
    return {
        "missing_data_file": (train_flags("--train_file", "nope.json"),
                              ["data file not found", os.path.join(data["dir"], "nope.json")]),
        "missing_model_folder": (helpers.train_args(data, str(tmp / "no_model"), tmp / "out", env["cache"]),
                                 ["--model_name_or_path", str(tmp / "no_model"), "no such model folder"]),
        "cdr_file_as_docred": (train_flags("--test_file", cdr), [cdr, "not DocRED JSON"]),
        "docred_file_as_cdr": (train_flags("--dataset", "cdr"), [data["dev"], "DocRED-format JSON", "--dataset"]),
        "fewer_classes_flag": (evaluate(ckpt, "--rel2id", small), [str(ckpt), "--rel2id", small]),
        "fewer_classes_weights": (evaluate(crafted_checkpoint(ckpt, tmp / "c.pt", rel2id=small)),
                                  [str(tmp / "c.pt"), "does not fit this model", "classifier"]),
        "other_encoder_flag": (evaluate(ckpt, "--model_name_or_path", other),
                               [str(ckpt), "--model_name_or_path", other]),
        "other_encoder_weights": (evaluate(crafted_checkpoint(ckpt, tmp / "e.pt", model_name_or_path=other)),
                                  [str(tmp / "e.pt"), "does not fit this model"]),
        "not_a_checkpoint": (evaluate(write(tmp / "notes.txt", "not a checkpoint\n")),
                             [str(tmp / "notes.txt"), "is not a DocRE-II checkpoint"]),
        "no_document_with_two_entities": (evaluate(ckpt, "--test_file", no_pairs),
                                          [no_pairs, "no document has an entity pair"]),
        "duplicated_titles": (train_flags("--train_file", dup),
                              [dup, "documents 0 and 2 have the same title", '"Doc 0"']),
        "negative_lr": (train_flags("--encoder_lr", "-0.1"), ["--encoder_lr", "-0.1"]),
        "negative_num_iterations": (train_flags("--num_iterations", "-1"), ["--num_iterations", "-1"]),
        "resume_not_a_run": (["--resume", str(tmp)], ["checkpoint not found", str(tmp / "last.pt")]),
    }


BAD_CASES = ["missing_data_file", "missing_model_folder", "cdr_file_as_docred", "docred_file_as_cdr",
             "fewer_classes_flag", "fewer_classes_weights", "other_encoder_flag", "other_encoder_weights",
             "not_a_checkpoint", "no_document_with_two_entities", "duplicated_titles", "negative_lr",
             "negative_num_iterations", "resume_not_a_run"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_one_line_error(env, reference_inproc, tmp_path, capsys, case):
    argv, words = bad_cases(env, reference_inproc / "best.pt", tmp_path)[case]
    capsys.readouterr()
    assert train.cli([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.replace("\r", "\n").split("\n") if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == last_line(err), err[-2000:]
    for word in words:
        assert word in errors[0], (word, errors[0])
    out = tmp_path / "out"  # nothing was trained or predicted
    assert not any((out / name).exists() for name in train.OUTPUTS)


def test_bad_input_subprocess_exit_status(env, tmp_path):
    """The real exit status and stderr of the process: one line, no traceback."""
    proc = helpers.run_train(flags(env, tmp_path / "out", "--dev_file", str(tmp_path / "missing.json")))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        f"error: data file not found: {tmp_path / 'missing.json'} (see dataset/README.md)"
    assert "Traceback" not in proc.stderr
    proc = helpers.run_train(["--num_iterations", "-1"])
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: --num_iterations must be >= 0, got -1")


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_existing_outputs_need_overwrite(env, reference_inproc, tmp_path, capsys):
    save = tmp_path / "run"
    shutil.copytree(reference_inproc, save)
    before = snapshot(save)
    assert train.cli(flags(env, save)) == 2
    msg = last_line(capsys.readouterr().err)
    assert msg.startswith(f"error: {save} already holds metrics.jsonl, best.pt") and "--overwrite" in msg
    # a bad input on top changes nothing either
    assert train.cli(flags(env, save, "--train_file", "nope.json")) == 2
    # --evaluate_only into a folder that holds predictions
    assert train.cli(["--evaluate_only", "--load_path", str(save / "best.pt"), "--data_dir", env["data"]["dir"],
                      "--save_path", str(save), "--cache_dir", env["cache"]]) == 2
    assert "already holds result.json" in last_line(capsys.readouterr().err)
    assert snapshot(save) == before
    # with --overwrite the run starts anew: same seed, same metrics
    assert train.cli(flags(env, save, "--overwrite")) == 0
    assert helpers.read_metrics(save) == helpers.read_metrics(reference_inproc)


# ---------------------------------------------------------------- documents with < 2 entities, long documents
def test_documents_without_pairs_get_no_predictions(env, reference_inproc, tmp_path, capsys):
    docs = [helpers.make_doc(500, num_entities=0, labelled=False), helpers.make_doc(501, labelled=False),
            helpers.make_doc(502, num_entities=1, labelled=False)]
    path = helpers.write_docs(tmp_path, "few.json", docs)
    ckpt = crafted_checkpoint(reference_inproc / "best.pt", tmp_path / "always.pt")
    always_predict(ckpt)
    rc = train.cli(["--evaluate_only", "--load_path", ckpt, "--dev_file", "", "--test_file", path,
                    "--save_path", str(tmp_path / "out"), "--cache_dir", env["cache"]])
    assert rc == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and path in warning[0] and "'Doc 500'" in warning[0] and "'Doc 502'" in warning[0]
    assert "'Doc 501'" not in warning[0]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert {e["title"] for e in result} == {"Doc 501"} and len(result) == 4 * 3  # every pair of Doc 501


def test_training_with_truncated_and_single_entity_documents(env, tmp_path, capsys, caplog):
    long_docs = [helpers.make_doc(i, num_sents=10, num_entities=8) for i in range(4)]
    long_docs.append(helpers.make_doc(9, num_entities=1))
    path = helpers.write_docs(tmp_path, "long.json", long_docs)
    save = tmp_path / "out"
    assert train.cli(flags(env, save, "--train_file", path, "--max_seq_length", "48")) == 0
    err = capsys.readouterr().err
    # prepro's truncation report (a logging warning: on stderr when train.py runs as a program)
    assert f"{path}: 4 of 5 documents truncated to max_seq_length=48" in caplog.text
    assert "'Doc 9'" in err  # the warning about the single-entity document
    lines = helpers.read_metrics(save)
    assert [(m["stage"], m["skipped_steps"]) for m in lines] == [(1, 0), (2, 0)]
    assert all(v == v for m in lines for k, v in m.items() if k.startswith("train_"))
    assert lines[0]["step"] == 2  # 4 documents with pairs, batch 2: the single-entity one is left out


# ---------------------------------------------------------------- predicting new documents
def always_predict(path, rel="P17"):
    """Make a checkpoint predict ``rel`` for every pair (large classifier biases), so that the
    prediction files have content to check."""
    ckpt = torch.load(path, weights_only=False)
    rid = json.load(open(os.path.join(helpers.ROOT, "meta", "rel2id.json")))[rel]
    for name in ("base.classifier.bias", "inference.classifier.bias"):
        ckpt["model"][name][rid] += 1000.0
        ckpt["model"][name][0] += 500.0  # the threshold class: above every other relation
    train.save_checkpoint(str(path), ckpt)


def test_predict_new_documents(env, reference_inproc, tmp_path):
    ckpt = crafted_checkpoint(reference_inproc / "best.pt", tmp_path / "model.pt")
    always_predict(ckpt)
    docs = [helpers.make_doc(600, labelled=False), helpers.make_doc(601, num_entities=3, labelled=False)]
    new = helpers.write_docs(tmp_path, "NEW.json", docs)
    out = tmp_path / "OUT"
    # the documented command (README / report), plus a cache folder inside tmp_path
    proc = helpers.run_train(["--evaluate_only", "--load_path", ckpt, "--dev_file", "", "--test_file", new,
                              "--save_path", out, "--cache_dir", env["cache"]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    rows = json.loads((out / "predictions.json").read_text())
    assert len(result) == 4 * 3 + 3 * 2
    assert sorted((e["title"], e["h_idx"], e["t_idx"], e["r"]) for e in result) == \
        sorted((title, h, t, "P17") for title, n in (("Doc 600", 4), ("Doc 601", 3))
               for h in range(n) for t in range(n) if h != t)
    assert sorted((r["title"], r["h_idx"], r["t_idx"], r["r"]) for r in rows) == \
        sorted((e["title"], e["h_idx"], e["t_idx"], e["r"]) for e in result)
    by_title = {d["title"]: d for d in docs}
    for row in rows:
        assert set(row) == {"title", "h_idx", "t_idx", "head", "tail", "r", "relation", "score"}
        vs = by_title[row["title"]]["vertexSet"]
        assert row["head"] == vs[row["h_idx"]][0]["name"] and row["tail"] == vs[row["t_idx"]][0]["name"]
        assert row["relation"] == "country" and row["score"] > 0
    scores = json.loads((out / "eval_scores.json").read_text())
    assert scores == {"test": {}}  # no labels: nothing to score

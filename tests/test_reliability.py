"""Reliability of train.py (Issue 5): atomic checkpoints, SIGTERM/SIGINT + --resume, determinism,
non-finite steps, bad input (one-line `error: ...`, exit status 2), and predicting new documents.

Runs use made-up documents and a tiny random BERT (tests/helpers.py). The interruption tests run
train.py as a real subprocess whose train_step is wrapped to take at least half a second (SLOW_TRAIN).
"""
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import helpers
import rundir
import model as model_module
import train
from flags import RUNTIME_KEYS

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with helpers.one_thread():
        yield


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = helpers.run_env(tmp_path_factory, "rel")  # its "data": 4 / 2 / 2 documents
    env["data8"] = helpers.write_dataset(env["root"] / "data8", n_train=8, n_dev=2, n_test=2)
    return env


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
    rundir.save_checkpoint(str(path), old)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    if where == "replace":
        monkeypatch.setattr(os, "replace", boom)
    else:  # the temporary file is half written when the write fails
        monkeypatch.setattr(os, "fsync", boom)
    new = {"model": {"w": torch.zeros(5)}, "args": {"seed": 2}, "stage": 2, "epoch": 3}
    with pytest.raises(OSError, match="simulated"):
        rundir.save_checkpoint(str(path), new)
    monkeypatch.undo()
    assert path.read_bytes() == before
    loaded = rundir.load_checkpoint(str(path))
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
        timing = save / "timing.jsonl"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            # an epoch ends with last.pt, best.pt, its metrics line, then its timing line: only then has the
            # next epoch begun, however slow the checkpoint writes are on a loaded machine
            if timing.exists() and len(timing.read_text().splitlines()) >= lines_before:
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
    assert not (save / rundir.LOCK_FILE).exists()  # released on the way out

    proc = helpers.run_train(["--resume", str(save)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert helpers.read_metrics(save) == helpers.read_metrics(reference_run)
    assert (save / "result.json").read_text() == (reference_run / "result.json").read_text()


def test_stop_at_end_of_stage1_then_resume(env, reference_inproc, monkeypatch):
    """A signal during stage 1's last evaluation: last.pt is at the stage boundary; --resume runs stage 2
    with the RNG state of that moment, as the uninterrupted run did."""
    save = env["root"] / "boundary"
    end_of_epoch = train.evaluate_epoch

    def signal_during_eval(run, model, stage, *rest):
        if stage == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by train.py's handler: sets a flag
        return end_of_epoch(run, model, stage, *rest)

    monkeypatch.setattr(train, "evaluate_epoch", signal_during_eval)
    assert train.cli(flags(env, save)) == 128 + signal.SIGTERM
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler was restored
    last = torch.load(save / "last.pt", weights_only=False)
    assert (last["stage"], last["epoch"], last["step_in_epoch"]) == (1, 1, 0)
    assert train.cli(["--resume", str(save)]) == 0
    assert helpers.read_metrics(save) == helpers.read_metrics(reference_inproc)


def test_sigterm_during_final_predictions_then_resume(env, reference_inproc, tmp_path, monkeypatch, capsys):
    save = tmp_path / "run"
    write_predictions = train.write_predictions

    def signal_first(*a):
        os.kill(os.getpid(), signal.SIGTERM)
        return write_predictions(*a)

    monkeypatch.setattr(train, "write_predictions", signal_first)
    capsys.readouterr()
    assert train.cli(flags(env, save)) == 128 + signal.SIGTERM
    monkeypatch.undo()
    assert last_line(capsys.readouterr().err) == "error: interrupted by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert not (save / rundir.LOCK_FILE).exists() and not (save / "result.json").exists()
    assert train.cli(["--resume", str(save)]) == 0
    assert helpers.read_metrics(save) == helpers.read_metrics(reference_inproc)
    assert (save / "result.json").read_text() == (reference_inproc / "result.json").read_text()


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
    last = rundir.load_checkpoint(str(save / "last.pt"))  # the state saved after epoch 0 (weights: best.pt's)
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
    rundir.save_checkpoint(str(dst), ckpt)
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
    empty_model = tmp / "empty_model"
    empty_model.mkdir()
    broken_model = tmp / "broken_model"  # the tokenizer files are there, config.json names no model type
    shutil.copytree(env["model"], broken_model)
    write(broken_model / "config.json", '{"hidden_size": 32}')
    wrong_config = tmp / "wrong_config"  # a field of the wrong type
    shutil.copytree(env["model"], wrong_config)
    write(wrong_config / "config.json", '{"model_type": "bert", "hidden_size": "big"}')
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
        "negative_seed": (train_flags("--seed", "-1"), ["--seed", "-1"]),
        "withhold_above_one": (train_flags("--withhold_max", "1.5"), ["--withhold_max", "[0, 1]", "1.5"]),
        "negative_num_workers": (train_flags("--num_workers", "-1"), ["--num_workers", "-1"]),
        "empty_model_folder": (train_flags("--model_name_or_path", str(empty_model)),
                               ["--model_name_or_path", str(empty_model), "config.json"]),
        "broken_model_config": (train_flags("--model_name_or_path", str(broken_model)),
                                ["--model_name_or_path", str(broken_model), "config.json"]),
        "wrong_model_config": (train_flags("--model_name_or_path", str(wrong_config)),
                               ["--model_name_or_path", str(wrong_config), "config.json", "hidden_size"]),
        "nothing_to_train": (train_flags("--stage1_epochs", "0", "--stage2_epochs", "0"),
                             ["nothing to train", "--stage1_epochs", "--stage2_epochs"]),
        "freeze_base_without_stage1": (train_flags("--freeze_base", "--skip_stage1"),
                                       ["--freeze_base", "--skip_stage1"]),
        "roberta_type_on_bert_model": (train_flags("--transformer_type", "roberta"),
                                       ["--transformer_type roberta", env["model"], "bert"]),
    }


BAD_CASES = ["missing_data_file", "missing_model_folder", "cdr_file_as_docred", "docred_file_as_cdr",
             "fewer_classes_flag", "fewer_classes_weights", "other_encoder_flag", "other_encoder_weights",
             "not_a_checkpoint", "no_document_with_two_entities", "duplicated_titles", "negative_lr",
             "negative_num_iterations", "resume_not_a_run", "negative_seed", "withhold_above_one",
             "negative_num_workers", "empty_model_folder", "broken_model_config", "wrong_model_config",
             "nothing_to_train", "freeze_base_without_stage1", "roberta_type_on_bert_model"]


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
    out = tmp_path / "out"  # nothing was trained, predicted or even created: the save path is left as it was
    assert not out.exists()
    assert not (tmp_path / rundir.LOCK_FILE).exists()


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
    assert f"--resume {save}" in msg  # it has a last.pt to continue from
    # a bad input on top changes nothing either
    assert train.cli(flags(env, save, "--train_file", "nope.json")) == 2
    # --evaluate_only into a folder that holds predictions
    assert train.cli(["--evaluate_only", "--load_path", str(save / "best.pt"), "--data_dir", env["data"]["dir"],
                      "--save_path", str(save), "--cache_dir", env["cache"]]) == 2
    assert "already holds result.json" in last_line(capsys.readouterr().err)
    assert snapshot(save) == before
    assert not (save / rundir.LOCK_FILE).exists()
    # without last.pt there is nothing to resume: --resume is not suggested
    no_last = tmp_path / "no_last"
    shutil.copytree(save, no_last)
    os.remove(no_last / "last.pt")
    assert train.cli(flags(env, no_last)) == 2
    msg = last_line(capsys.readouterr().err)
    assert msg.startswith(f"error: {no_last} already holds metrics.jsonl") and "--resume" not in msg, msg
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
    rundir.save_checkpoint(str(path), ckpt)


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


def test_predict_documents_without_mention_names(env, reference_inproc, tmp_path):
    """Mention names are optional in new documents: an entity is named by its first mention that has a name,
    and an entity none of whose mentions has one gets null."""
    ckpt = crafted_checkpoint(reference_inproc / "best.pt", tmp_path / "model.pt")
    always_predict(ckpt)
    doc = helpers.make_doc(700, labelled=False)
    for entity in doc["vertexSet"]:
        del entity[0]["name"]  # entities 0 and 2 keep the name of their second mention, 1 and 3 have none
    new = helpers.write_docs(tmp_path, "NEW.json", [doc])
    out = tmp_path / "OUT"
    proc = helpers.run_train(["--evaluate_only", "--load_path", ckpt, "--dev_file", "", "--test_file", new,
                              "--save_path", out, "--cache_dir", env["cache"]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "predictions.json").read_text())
    assert len(rows) == 4 * 3
    names = {0: doc["vertexSet"][0][1]["name"], 1: None, 2: doc["vertexSet"][2][1]["name"], 3: None}
    for row in rows:
        assert (row["head"], row["tail"]) == (names[row["h_idx"]], names[row["t_idx"]])


# ---------------------------------------------------------------- a hard crash (SIGKILL) at the worst moments
# train.py's command line in a subprocess that kills itself with SIGKILL (no handler runs, nothing is cleaned up)
# before or after the first call of a function (of train.py or rundir.py) that meets a condition on its arguments
# ``a`` and on ``n``, the number of calls so far: the crash comes at exactly that point, however loaded the
# machine is.
KILL_AT = ("import importlib, os, signal, sys, train\n"
           "module, name, when, condition = importlib.import_module(sys.argv[1]), *sys.argv[2:5]\n"
           "inner, calls = getattr(module, name), []\n"
           "def wrapped(*a):\n"
           "    calls.append(1)\n"
           "    hit = eval(condition, {'a': a, 'n': len(calls), 'os': os})\n"
           "    if hit and when == 'before':\n"
           "        os.kill(os.getpid(), signal.SIGKILL)\n"
           "    out = inner(*a)\n"
           "    if hit and when == 'after':\n"
           "        os.kill(os.getpid(), signal.SIGKILL)\n"
           "    return out\n"
           "setattr(module, name, wrapped)\n"
           "sys.exit(train.cli(sys.argv[5:]))\n")


def last_pt_at(stage, epoch):
    """Condition: the save_checkpoint call that writes last.pt at the start of (stage, epoch)."""
    return (f"os.path.basename(a[0]) == 'last.pt' and "
            f"(a[1]['stage'], a[1]['epoch'], a[1]['step_in_epoch']) == ({stage}, {epoch}, 0)")


def best_pt_of(stage, epoch):
    """Condition: the save_checkpoint call that writes best.pt for (stage, epoch)."""
    return f"os.path.basename(a[0]) == 'best.pt' and (a[1]['stage'], a[1]['epoch']) == ({stage}, {epoch})"


# data8, 2 + 2 epochs of 4 optimiser steps (see reference_run)
CRASHES = {
    "between_steps": ("train", "train_step", "after", "n == 6"),  # stage 1 epoch 1, after its second step
    "after_eval_before_checkpoint": ("rundir", "save_checkpoint", "before", last_pt_at(1, 1)),  # epoch evaluated
    "after_best_pt": ("rundir", "save_checkpoint", "after", best_pt_of(1, 0)),  # the first epoch's best.pt
    "after_last_pt_at_stage_end": ("rundir", "save_checkpoint", "after", last_pt_at(1, 2)),
    "stage2_before_checkpoint": ("rundir", "save_checkpoint", "before", last_pt_at(2, 1)),
    "final_predictions": ("train", "write_predictions", "before", "n == 1"),
}


@pytest.mark.parametrize("crash", sorted(CRASHES))
def test_sigkill_then_resume_matches_uninterrupted(env, reference_run, crash, capsys):
    save = env["root"] / f"kill_{crash}"
    module, function, when, condition = CRASHES[crash]
    cmd = [sys.executable, "-c", KILL_AT, module, function, when, condition,
           *flags(env, save, data="data8", stage1=2, stage2=2)]
    proc = subprocess.run(cmd, cwd=helpers.ROOT, capture_output=True, text=True, env=helpers.subprocess_env(),
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    capsys.readouterr()
    assert train.cli(["--resume", str(save)]) == 0  # in this process (one thread, as the subprocesses)
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    # the dead run's lock was taken over, with a warning naming it
    assert len(warnings) == 1 and "no longer running" in warnings[0], warnings
    assert helpers.read_metrics(save) == helpers.read_metrics(reference_run)
    timing = [json.loads(x) for x in (save / "timing.jsonl").read_text().splitlines()]
    assert [(t["stage"], t["epoch"]) for t in timing] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert (save / "result.json").read_text() == (reference_run / "result.json").read_text()
    best, ref = (torch.load(p / "best.pt", weights_only=False) for p in (save, reference_run))
    assert (best["stage"], best["epoch"]) == (ref["stage"], ref["epoch"])
    assert all(torch.equal(v, ref["model"][k]) for k, v in best["model"].items())
    assert not (save / rundir.LOCK_FILE).exists()


# ---------------------------------------------------------------- one run per save path (a lock file)
def lock_of(save):
    return json.loads((save / rundir.LOCK_FILE).read_text())


def test_second_run_on_a_busy_save_path_is_refused(env, tmp_path, capsys):
    save = tmp_path / "busy"
    first = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, *flags(env, save)], cwd=helpers.ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=helpers.subprocess_env())
    try:
        deadline = time.time() + 120
        while not (save / "last.pt").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert first.poll() is None, "the first run ended before the second one started"
        held = lock_of(save)
        assert held["pid"] == first.pid
        for extra in ([], ["--overwrite"]):
            capsys.readouterr()
            assert train.cli(flags(env, save, *extra)) == 2
            msg = last_line(capsys.readouterr().err)
            assert msg.startswith(f"error: {save} is in use by another run: process {first.pid} on "
                                  f"{held['host']}, started {held['started']}"), msg
        assert train.cli(["--resume", str(save)]) == 2
        assert f"process {first.pid}" in last_line(capsys.readouterr().err)
        out, err = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    # only the first run wrote: one line per epoch
    assert [(m["stage"], m["epoch"]) for m in helpers.read_metrics(save)] == [(1, 0), (2, 0)]
    assert not (save / rundir.LOCK_FILE).exists()


def test_lock_of_a_dead_process_is_taken_over(env, reference_inproc, tmp_path, capsys):
    save = tmp_path / "stale"
    save.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # exited and reaped: no such process any more
    (save / rundir.LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                                    "started": "2024-01-01T00:00:00"}))
    assert train.cli(flags(env, save)) == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and f"process {pid}" in warnings[0] and "no longer running" in warnings[0]
    assert helpers.read_metrics(save) == helpers.read_metrics(reference_inproc)
    assert not (save / rundir.LOCK_FILE).exists()
    # a lock of another machine cannot be checked: it is respected
    (save / rundir.LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere.example",
                                                    "started": "2024-01-01T00:00:00"}))
    assert train.cli(flags(env, save, "--overwrite")) == 2
    msg = last_line(capsys.readouterr().err)
    assert "process 1 on elsewhere.example, started 2024-01-01T00:00:00" in msg and rundir.LOCK_FILE in msg
    assert helpers.read_metrics(save) == helpers.read_metrics(reference_inproc)


# ---------------------------------------------------------------- write errors: one line, status 2
def read_only(folder, monkeypatch):
    """Make ``folder`` read-only (chmod a-w). root ignores file modes, so for root creating anything in it
    also fails as on a read-only folder (os.open and os.mkdir: what tempfile, the lock and makedirs use)."""
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return
    inside = str(folder) + os.sep
    real_open, real_mkdir = os.open, os.mkdir

    def guarded_open(path, flags_, *a, **k):
        if flags_ & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and os.path.abspath(path).startswith(inside):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags_, *a, **k)

    def guarded_mkdir(path, *a, **k):
        if os.path.abspath(path).startswith(inside):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


def test_read_only_save_path(env, reference_inproc, tmp_path, monkeypatch, capsys):
    save = tmp_path / "run"
    shutil.copytree(reference_inproc, save)
    before = snapshot(save)
    loaded = []  # nothing is loaded before the save path is known to be writable
    load_tokenizer = train.prepro.load_tokenizer
    monkeypatch.setattr(train.prepro, "load_tokenizer", lambda *a, **k: loaded.append(a) or load_tokenizer(*a, **k))
    read_only(save, monkeypatch)
    try:
        for argv, path in ((["--resume", str(save)], save),
                           (flags(env, save / "sub"), save / "sub")):
            capsys.readouterr()
            assert train.cli(argv) == 2
            err = capsys.readouterr().err
            assert "Traceback" not in err
            msg = last_line(err)
            assert msg.startswith(f"error: cannot write to {path}: ") and "ermission denied" in msg, msg
    finally:
        save.chmod(0o755)
    assert loaded == []
    assert snapshot(save) == before


@pytest.mark.parametrize("target,nth", [("last.pt", 2), ("best.pt", 2), ("metrics.jsonl", 2), ("result.json", 1)])
def test_full_disk_one_line_error_and_resume(env, reference_inproc, tmp_path, monkeypatch, capsys, target, nth):
    """The nth write of ``target`` fails with ENOSPC (at the rename that would publish it): one error line
    naming the file and the cause, status 2, everything written before intact, and --resume completes the
    run as if nothing had happened."""
    save = tmp_path / "run"
    replace, writes, kept = os.replace, [], {}

    def full_disk(src, dst, *a, **k):
        if os.path.basename(dst) == target:
            writes.append(dst)
            if len(writes) == nth:
                kept.update(snapshot(save))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", full_disk)
    capsys.readouterr()
    assert train.cli(flags(env, save)) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert last_line(err) == f"error: cannot write {save / target}: {os.strerror(errno.ENOSPC)}"
    after = snapshot(save)
    # what was there when the write failed is intact, and no temporary file is left behind (a hidden copy of the
    # previous best.pt, which last.pt may still refer to, may be)
    assert not [k for k in after if k.endswith(".tmp")]
    assert {k: v for k, v in after.items() if not k.startswith(".")} == \
        {k: v for k, v in kept.items() if not k.startswith(".") and k != rundir.LOCK_FILE}
    assert train.cli(["--resume", str(save)]) == 0
    assert helpers.read_metrics(save) == helpers.read_metrics(reference_inproc)
    assert (save / "result.json").read_text() == (reference_inproc / "result.json").read_text()


# ---------------------------------------------------------------- every input checked before outputs change
def nameless_gold(tmp_path, name="dev_nameless.json", base=100):
    """Labelled documents where one mention has no name (the scorer reads mention names for Ign F1)."""
    docs = [helpers.make_doc(base), helpers.make_doc(base + 1)]
    del docs[1]["vertexSet"][2][0]["name"]
    return helpers.write_docs(tmp_path, name, docs)


@pytest.mark.parametrize("bad", ["dev_gold", "missing_test_file", "empty_model_folder"])
def test_overwrite_with_bad_input_keeps_the_old_outputs(env, reference_inproc, tmp_path, capsys, bad):
    save = tmp_path / "run"
    shutil.copytree(reference_inproc, save)
    before = snapshot(save)
    (tmp_path / "empty").mkdir()
    extra = {"dev_gold": ["--dev_file", nameless_gold(tmp_path)],
             "missing_test_file": ["--test_file", str(tmp_path / "missing.json")],
             "empty_model_folder": ["--model_name_or_path", str(tmp_path / "empty")]}[bad]
    capsys.readouterr()
    assert train.cli(flags(env, save, "--overwrite", *extra)) == 2
    assert last_line(capsys.readouterr().err).startswith("error: ")
    assert snapshot(save) == before


@pytest.mark.parametrize("case", ["dev_mention_without_name", "dev_without_labels", "test_mention_without_name",
                                  "train_mention_without_name"])
def test_gold_checked_before_training(env, tmp_path, monkeypatch, capsys, case):
    """What the scorer reads of the dev/test gold (and of the train file, for Ign F1) is checked at start:
    the error names the file, and no step is trained."""
    data = env["data"]
    if case == "dev_without_labels":
        docs = json.loads(open(data["dev"]).read())
        for d in docs:
            del d["labels"]
        path = helpers.write_docs(tmp_path, "dev_unlabelled.json", docs)
        extra, words = ["--dev_file", path], [path, "labels"]
    elif case == "train_mention_without_name":
        path = nameless_gold(tmp_path, "train_nameless.json", base=0)
        extra, words = ["--train_file", path], [path, "name"]
    else:
        split = case.split("_")[0]
        path = nameless_gold(tmp_path, f"{split}_nameless.json")
        extra, words = [f"--{split}_file", path], [path, "vertexSet[2][0].name"]

    def no_training(*a):
        raise AssertionError("a step was trained before the error")

    monkeypatch.setattr(train, "train_step", no_training)
    capsys.readouterr()
    assert train.cli(flags(env, tmp_path / "out", *extra)) == 2
    msg = last_line(capsys.readouterr().err)
    assert msg.startswith("error: ") and all(w in msg for w in words), msg
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- --resume: which flags may change
def test_resume_refuses_flags_that_change_the_run(env, reference_inproc, tmp_path, capsys):
    save = tmp_path / "run"
    shutil.copytree(reference_inproc, save)
    before = snapshot(save)
    capsys.readouterr()
    assert train.cli(["--resume", str(save), "--seed", "9", "--train_batch_size", "4", "--threads", "1"]) == 2
    msg = last_line(capsys.readouterr().err)
    assert msg.startswith(f"error: --resume {save} continues the run as it was started; these flags would change "
                          f"it: --seed, --train_batch_size (only "), msg
    assert all(f"--{k}" in msg for k in RUNTIME_KEYS)
    assert snapshot(save) == before
    # the value the run was started with is no change
    assert train.cli(["--resume", str(save), "--seed", "7", "--threads", "1"]) == 0


def test_resume_accepts_runtime_flags(env, tmp_path):
    """Interrupted after stage 1 (SIGTERM during its evaluation), resumed with other runtime flags."""
    save = tmp_path / "run"
    assert train.cli(flags(env, save, stage2=0)) == 0  # a finished stage 1 ...
    last = torch.load(save / "last.pt", weights_only=False)
    last["args"]["stage2_epochs"] = 1  # ... that was to be followed by a stage 2
    rundir.save_checkpoint(str(save / "last.pt"), last)
    assert train.cli(["--resume", str(save), "--num_workers", "1", "--threads", "1", "--log_every", "1",
                      "--device", "cpu"]) == 0
    saved = json.loads((save / "args.json").read_text())
    assert (saved["num_workers"], saved["threads"], saved["log_every"]) == (1, 1, 1)
    assert saved["stage2_epochs"] == 1 and saved["seed"] == 7
    assert [(m["stage"], m["epoch"]) for m in helpers.read_metrics(save)] == [(1, 0), (2, 0)]

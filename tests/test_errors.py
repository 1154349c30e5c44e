"""One error path for every command line (train.py, predict.py, evaluation.py share utils.run_cli) and one place
for the checks of flags and of the Python API's arguments (flags.py): an expected failure ends with one `error:`
line at the start of a line, its status and no traceback, and the Python API raises the same error with the same
message. Checkpoints that do not fit their weights are refused alike by every loader; run folders and checkpoints
of earlier layouts load with today's defaults. The property-based tests (hypothesis) feed random flag values,
random API arguments and damaged documents to the same code.
"""
import contextlib
import errno
import io
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import evaluation
import flags
import helpers
import predict
import rundir
import train
from test_properties import SETTINGS, mutate, valid_docs
from utils import DataError, OutputError, UsageError

pytestmark = pytest.mark.filterwarnings("ignore")

# Flags added after the first runs were written: a run folder or checkpoint of an earlier layout lacks them.
NEWER_FLAGS = ("attention", "encoder_window", "withhold_max")


@pytest.fixture(scope="module", autouse=True)
def env(tmp_path_factory):
    """A tiny encoder, 4 / 2 / 2 documents and a finished 1 + 1 epoch run (its best.pt carries its encoder); one
    torch thread for every test of the module (helpers.one_thread)."""
    with helpers.one_thread():
        env = helpers.run_env(tmp_path_factory, "errors")
        env["run"] = env["root"] / "run"
        assert train.cli(run_flags(env, env["run"], stage2=1)) == 0
        env["best"] = env["run"] / "best.pt"
        yield env


@pytest.fixture(scope="module")
def predictor(env):
    return predict.Predictor.from_checkpoint(str(env["best"]), device="cpu", amp="none")


def run_flags(env, save, *extra, stage2=0):
    return helpers.train_args(env["data"], env["model"], save, env["cache"], *extra, stage1=1, stage2=stage2, lr=3e-3)


def predict_flags(env, output, *extra, checkpoint=None):
    return ["--checkpoint", str(checkpoint or env["best"]), "--input", env["data"]["test"], "--output", str(output),
            "--device", "cpu", "--amp", "none", *extra]


def error_lines(err):
    """The lines of stderr that begin with `error:`, lines ending at a newline only (as grep reads a log)."""
    return [line for line in err.split("\n") if line.startswith("error:")]


def the_error(capsys):
    """The one `error:` line of what the command wrote to stderr (none else, no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(error_lines(err)) == 1, err[-2000:]
    return error_lines(err)[0]


# ---------------------------------------------------------------- predict.py: output, arguments, signals
def test_predict_output_that_cannot_be_written(env, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"  # a file where the output's folder would have to be created
    blocker.write_text("x")
    output = blocker / "sub" / "preds.json"
    assert predict.cli(predict_flags(env, output)) == 2
    assert the_error(capsys) == f"error: cannot write {output}: {os.strerror(errno.ENOTDIR)}"
    # a folder as the output, even with --overwrite: refused before anything (result.json) is written
    folder = tmp_path / "preds"
    folder.mkdir()
    (tmp_path / "result.json").write_text("old")
    assert predict.cli(predict_flags(env, folder, "--overwrite")) == 2
    assert the_error(capsys) == f"error: --output {folder}: {folder} is a folder, not a file"
    assert (tmp_path / "result.json").read_text() == "old" and os.listdir(folder) == []


@pytest.mark.parametrize("argument,value,message", [
    ("batch_size", 0, "batch_size must be >= 1, got 0"),
    ("batch_size", 2.0, "batch_size must be an integer, got 2.0"),
    ("num_iterations", -1, "num_iterations must be >= 0, got -1"),
    ("num_iterations", True, "num_iterations must be an integer, got True"),
    ("amp", "fp64", "amp must be one of auto, none, bf16, fp16, got 'fp64'"),
    ("device", "gpu", "device must be auto, cpu, cuda or a torch.device, got 'gpu'")])
def test_predictor_arguments_are_checked(env, argument, value, message):
    with pytest.raises(UsageError) as e:
        predict.Predictor.from_checkpoint(str(env["best"]), **{argument: value})
    assert str(e.value) == message


def test_predict_batch_size_zero_is_refused_not_replaced(env, tmp_path, capsys):
    """0 used to mean the run's batch size; the API and the command line now refuse it with one message."""
    output = tmp_path / "preds.json"
    assert predict.cli(predict_flags(env, output, "--batch_size", "0")) == 2
    assert the_error(capsys) == "error: batch_size must be >= 1, got 0"
    assert not output.exists()


# predict.py or evaluation.py in a subprocess that sends itself a signal in the middle of its work (SIGINT as a
# terminal's Ctrl-C delivers it, whatever the test runner does with it).
SIGNAL_DURING = ("import importlib, os, signal, sys\n"
                 "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
                 "module = importlib.import_module(sys.argv[1])\n"
                 "inner = getattr(module, sys.argv[2])\n"
                 "def interrupted(*a, **k):\n"
                 "    os.kill(os.getpid(), getattr(signal, sys.argv[3]))\n"
                 "    return inner(*a, **k)\n"
                 "setattr(module, sys.argv[2], interrupted)\n"
                 "sys.exit((module.cli if hasattr(module, 'cli') else module.main)(sys.argv[4:]))\n")


@pytest.mark.parametrize("program,function,sig", [("predict", "pass_scores", signal.SIGINT),
                                                  ("predict", "pass_scores", signal.SIGTERM),
                                                  ("evaluation", "docred_scores", signal.SIGINT)])
def test_signal_ends_a_command_with_one_line(env, tmp_path, program, function, sig):
    output = tmp_path / "preds.json"
    output.write_text("old")  # replaced only by a finished run
    argv = predict_flags(env, output, "--overwrite") if program == "predict" else \
        ["--pred", env["data"]["dev"], "--gold", env["data"]["dev"]]
    proc = subprocess.run([sys.executable, "-c", SIGNAL_DURING, program, function, sig.name, *argv],
                          cwd=helpers.ROOT, capture_output=True, text=True, env=helpers.subprocess_env(), timeout=300)
    assert (proc.returncode, error_lines(proc.stderr)) == (128 + sig, [f"error: interrupted by {sig.name}"]), \
        proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert output.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["preds.json"]


# ---------------------------------------------------------------- train.py: flags
@pytest.mark.parametrize("extra,message", [
    (["--encoder_lr", "nan"], "--encoder_lr must be a finite number, got nan"),
    (["--encoder_lr", "-1e-5"], "--encoder_lr must be >= 0, got -1e-05"),
    (["--warmup_ratio", "inf"], "--warmup_ratio must be a finite number, got inf"),
    (["--loss_weights", "nan,1,1,1"],
     "--loss_weights: 4 finite non-negative numbers (base, view A, view B, contrastive) expected, got 'nan,1,1,1'"),
    (["--classifier_lr", "0", "--encoder_lr", "0"],
     "stage 1 would train nothing: every learning rate it uses is 0 (--encoder_lr, --classifier_lr)"),
    (["--inference_lr", "0", "--stage2_base_lr", "0"],
     "stage 2 would train nothing: every learning rate it uses is 0 (--inference_lr, --stage2_base_lr)"),
    (["--inference_lr", "0", "--freeze_base", "--load_path", "x.pt"],
     "stage 2 would train nothing: every learning rate it uses is 0 (--inference_lr; --freeze_base keeps the base "
     "module as it is)"),
    (["--loss_weights", "1,0,0,0", "--freeze_base", "--load_path", "x.pt"],
     "stage 2 would train nothing: --loss_weights 1,0,0,0 gives weight 0 to every loss it has (base AT unless "
     "--freeze_base, view-A AT, view-B AT, contrastive unless --contrastive none)"),
    (["--max_grad_norm", "0"], "--max_grad_norm 0 would clip every gradient to 0: nothing would train"),
    (["--num_labels", "-1"], "--num_labels must be >= 0, got -1"),
    (["--seed", "1e3"], "argument --seed: invalid int value: '1e3'"),
    (["--no_such_flag"], "unrecognized arguments: --no_such_flag")],
    ids=["nan_lr", "negative_lr_exponent", "inf_warmup", "nan_loss_weight", "stage1_lrs_0", "stage2_lrs_0",
         "frozen_base_inference_lr_0", "frozen_base_only_base_loss", "clip_to_0", "negative_num_labels",
         "int_in_exponent_notation", "unknown_flag"])
def test_flags_refused_with_one_line(env, tmp_path, capsys, extra, message):
    save = tmp_path / "out"
    assert train.cli(run_flags(env, save, *extra, stage2=1)) == 2
    assert the_error(capsys) == f"error: {message}"
    assert not save.exists()


def test_every_numeric_flag_has_a_range():
    numeric = {a.dest for a in flags.build_parser()._actions if a.type in (int, float) and not a.choices}
    assert numeric == set(flags.RANGES)


def test_help_says_what_zero_means():
    helps = {a.dest: a.help for a in flags.build_parser()._actions}
    for flag, meaning in {"num_labels": "0 = no limit", "max_train_docs": "0 = all", "max_eval_docs": "0 = all",
                          "emb_size": "0 = encoder hidden size", "encoder_window": "0 = ATLOP's 512",
                          "num_iterations": "0 evaluates the base module alone", "withhold_max": "0 = off",
                          "threads": "0 = torch's default", "num_workers": "0 = none",
                          "negative_ratio": "all scored pairs (0, paper)"}.items():
        assert meaning in helps[flag], flag


def test_evaluation_usage_error_is_one_line(capsys):
    assert evaluation.main(["--pred", "p.json"]) == 2
    assert the_error(capsys) == "error: the following arguments are required: --gold"


def test_error_after_a_progress_bar_starts_a_line(env, tmp_path, monkeypatch, capsys):
    """A write failing in the middle of an epoch: the bar ends its line, so `grep '^error:'` finds the error."""
    def full_disk(*a):
        raise OutputError(f"cannot write {tmp_path / 'x'}: {os.strerror(errno.ENOSPC)}")

    monkeypatch.setattr(train, "train_step", full_disk)
    assert train.cli(run_flags(env, tmp_path / "run")) == 2
    assert the_error(capsys) == f"error: cannot write {tmp_path / 'x'}: {os.strerror(errno.ENOSPC)}"


# ---------------------------------------------------------------- checkpoints that do not fit their weights
def misfit(env, tmp_path, case):
    """best.pt with one recorded fact changed: (path, the message every loader refuses it with)."""
    ckpt = torch.load(env["best"], weights_only=True)
    path = tmp_path / f"{case}.pt"
    if case == "family":
        ckpt["args"]["transformer_type"] = "roberta"
        message = (f"{path} does not fit its weights: it records --transformer_type roberta, but its encoder is a "
                   f"bert model (--transformer_type bert)")
    elif case == "relations":
        del ckpt["id2rel"][max(ckpt["id2rel"])]
        message = f"{path} does not fit its weights: it names 96 relations (id2rel), but its classifier has 97 classes"
    else:  # the recorded encoder config is wider than the weights
        ckpt["encoder"]["config"]["hidden_size"] = 48
        message = None  # load_weights' message, naming the first tensor of another shape
    torch.save(ckpt, path)
    return path, message


@pytest.mark.parametrize("case", ["family", "relations", "config"])
def test_misfit_checkpoint_refused_alike_by_every_loader(env, tmp_path, capsys, case):
    path, message = misfit(env, tmp_path, case)
    with pytest.raises(UsageError) as e:
        predict.Predictor.from_checkpoint(str(path), device="cpu")
    assert message is None or str(e.value) == message
    assert str(e.value).startswith(f"{path} does not fit ")
    assert predict.cli(predict_flags(env, tmp_path / "preds.json", checkpoint=path)) == 2
    assert the_error(capsys) == f"error: {e.value}"
    save = tmp_path / "eval"
    assert train.cli(["--evaluate_only", "--load_path", str(path), "--data_dir", env["data"]["dir"], "--save_path",
                      str(save), "--cache_dir", env["cache"], "--device", "cpu"]) == 2
    assert the_error(capsys) == f"error: {e.value}"
    assert not save.exists() and not (tmp_path / "preds.json").exists()


# ---------------------------------------------------------------- earlier layouts: today's defaults
def test_run_folder_of_an_earlier_layout_resumes(env, tmp_path):
    save = tmp_path / "run"
    assert train.cli(run_flags(env, save)) == 0  # stage 1 done ...
    last = torch.load(save / "last.pt", weights_only=False)
    saved = json.loads((save / "args.json").read_text())
    for key in NEWER_FLAGS:
        del last["args"][key], saved[key]
    last["args"]["stage2_epochs"] = 1  # ... with a stage 2 to go
    rundir.save_checkpoint(str(save / "last.pt"), last)
    (save / "args.json").write_text(json.dumps(saved))
    assert train.cli(["--resume", str(save)]) == 0
    assert [(m["stage"], m["epoch"]) for m in helpers.read_metrics(save)] == [(1, 0), (2, 0)]
    resumed = json.loads((save / "args.json").read_text())
    assert {key: resumed[key] for key in NEWER_FLAGS} == {"attention": "eager", "encoder_window": 0, "withhold_max": 0.0}


def test_checkpoint_of_an_earlier_layout_predicts(env, predictor, tmp_path):
    ckpt = torch.load(env["best"], weights_only=True)
    for key in NEWER_FLAGS:
        del ckpt["args"][key]
    torch.save(ckpt, tmp_path / "old.pt")
    docs = json.loads(open(env["data"]["test"]).read())
    old = predict.Predictor.from_checkpoint(str(tmp_path / "old.pt"), device="cpu", amp="none")
    assert old.predict(docs) == predictor.predict(docs)


# ---------------------------------------------------------------- property-based: accepted, or the documented error
NUMBER_TEXT = st.one_of(st.integers(-10 ** 12, 10 ** 12).map(str), st.floats().map(repr),
                        st.sampled_from(["nan", "-nan", "inf", "-inf", "1e400", "-1e-5", "0", "-0", "0.0", "1e3",
                                         "", "x", "0x10", "1_000", " 1"]))


@settings(max_examples=400, **SETTINGS)
@given(flag=st.sampled_from(sorted(flags.RANGES) + ["loss_weights"]), text=NUMBER_TEXT, joined=st.booleans())
def test_random_flag_values_accepted_or_refused_by_name(flag, text, joined):
    if flag == "loss_weights":
        text = ",".join([text, "1", text, "1"])
    argv = [f"--{flag}={text}"] if joined else [f"--{flag}", text]
    try:
        args = flags.parse_args(argv)
        flags.validate_args(args)
    except UsageError as e:
        assert f"--{flag}" in str(e), (argv, str(e))
        event("refused")
        return
    event("accepted")
    if flag != "loss_weights":
        low, high, ends = flags.RANGES[flag]
        value = getattr(args, flag)
        assert math.isfinite(value) and low <= value <= high and not (value == low and ends[0] == "(") and \
            not (value == high and ends[1] == ")"), (argv, value)


ODD_ARGUMENTS = [None, 0, 1, 2, -1, 2.0, float("nan"), float("inf"), True, "", "2", "cpu", "cuda:x", "none", [1]]


@settings(max_examples=60, **SETTINGS)
@given(argument=st.sampled_from(["num_iterations", "batch_size", "amp", "device"]),
       value=st.one_of(st.sampled_from(ODD_ARGUMENTS), st.integers(-3, 5), st.floats()))
def test_random_predictor_arguments_accepted_or_refused_by_name(env, argument, value):
    try:
        loaded = predict.Predictor.from_checkpoint(str(env["best"]), **{argument: value})
    except UsageError as e:
        assert str(e).startswith(argument), (argument, value, str(e))
        event("refused")
        return
    event("accepted")
    assert loaded.batch_size >= 1 and loaded.num_iterations >= 0 and loaded.amp in ("none", "bf16", "fp16")


@settings(max_examples=200, **SETTINGS)
@given(data=st.data())
def test_predictor_takes_damaged_documents(data, predictor):
    docs = mutate(data, valid_docs())
    try:
        triples = predictor.predict(docs, source="docs")
    except DataError as e:
        assert str(e).startswith("docs: "), str(e)
        event("DataError")
        return
    event("predicted")
    assert len(triples) == len(docs) and all(isinstance(t, list) for t in triples)


@settings(max_examples=25, **SETTINGS)
@given(data=st.data())
def test_predict_command_takes_damaged_documents(data, env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("damaged")
    path = folder / "docs.json"
    path.write_text(json.dumps(mutate(data, valid_docs())), encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = predict.cli(["--checkpoint", str(env["best"]), "--input", str(path), "--output",
                              str(folder / "preds.json"), "--device", "cpu", "--amp", "none"])
    event(f"exit status {status}")
    assert "Traceback" not in err.getvalue()
    if status == 2:
        assert error_lines(err.getvalue()) == [err.getvalue().strip().splitlines()[-1]]
        assert str(path) in error_lines(err.getvalue())[0]
    else:
        assert status == 0 and isinstance(json.loads((folder / "preds.json").read_text()), list)

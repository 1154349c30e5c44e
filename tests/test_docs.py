"""Every command shown in README.md, docs/ and experiments/README.md still runs, so that a moved script or a renamed
flag breaks a test instead of a reader's first try.

* Each shell code block (and each `python ...` / `bash ...` span in the text) is run by bash with `python`,
  `torchrun` and `bash` replaced by functions that record their arguments (and no other program on the PATH);
  the shell scripts of scripts/ that the docs name are then run the same way, so their own `python` calls are
  recorded too. Every recorded program must exist, and its arguments must pass its own parser (argparse; for
  experiments/runner.py also its run names).
* README's own commands run for real at toy size: the demo (`bash scripts/run_demo.sh`, with a tiny random
  encoder and a few synthetic documents), then the evaluate, score and predict commands and the Python API on
  the demo's checkpoint and data.
"""
import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import runpy
import subprocess
import sys

import helpers

ROOT = helpers.ROOT
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "experiments" / "README.md",
        ROOT / "dataset" / "README.md"]
PROGRAMS = ("python", "python3", "bash", "sh", "torchrun")
ASSIGNMENT = re.compile(r"""[A-Za-z_]\w*=("[^"]*"|'[^']*'|[^\s;&|`$]+)(\s+#.*)?""")  # D=../shared/data/redocred
# the recording functions: each call appends its words and an RS character (the end of the call) to $RECORD
RECORDER = r"""
record() { printf '%s\0' "$@" $'\x1e' >> "$RECORD"; }
python() { record python "$@"; }
python3() { record python "$@"; }
torchrun() { record torchrun "$@"; }
bash() { record bash "$@"; }
sh() { record bash "$@"; }
export -f record python python3 torchrun bash sh
"""


# ---------------------------------------------------------------- the commands the docs show
def shell_snippets(path):
    """(line, text) of every shell code block of a Markdown file and every inline `python ...` / `bash ...` span
    (a span may go on over the next lines of its paragraph)."""
    snippets, fence, block, paragraph = [], None, [], []
    for number, line in enumerate(path.read_text().splitlines() + [""], 1):
        opening = re.match(r"\s*```(\w*)", line)
        if fence is None and (opening or not line.strip()) and paragraph:
            text = " ".join(text for _, text in paragraph)
            snippets += [(paragraph[0][0], span) for span in re.findall(r"`([^`]+)`", text)
                         if calls_a_program(span) or ASSIGNMENT.fullmatch(span)]
            paragraph = []
        if opening:
            if fence is None:
                fence, start, block = opening.group(1), number, []
            else:
                if fence in ("bash", "sh", "shell"):
                    snippets.append((start, "\n".join(block)))
                elif fence == "":  # a block of commands, or of output: its lines that call a program
                    lines = re.sub(r"\\\n", " ", "\n".join(block)).splitlines()
                    snippets += [(start, line) for line in lines if calls_a_program(line)]
                fence = None
        elif fence is not None:
            block.append(line)
        elif line.strip():
            paragraph.append((number, line.strip()))
    return snippets


def calls_a_program(text):
    """Whether a line starts (after VAR=value settings, or in a `for` loop) with python, bash or torchrun and an
    argument."""
    words = [w for w in text.split() if not re.match(r"[A-Za-z_]+=", w)]
    if words[:1] == ["for"] and "; do " in text:
        words = text.split("; do ", 1)[1].split()
    return len(words) > 1 and words[0] in PROGRAMS


def without_placeholders(text):
    """Optional parts of a usage line (` [--num_iterations K]`, ` [SEED ...]`) and a lone `...` are dropped."""
    text = re.sub(r"(?<=\s)\[[^\]\n]*(--|\.\.\.)[^\]\n]*\]", "", text)
    return re.sub(r"(?<=\s)\.\.\.(?=\s|$)", "", text)


def recorded_calls(record):
    """The calls in a record file: lists of words."""
    if not record.exists():
        return []
    words = record.read_bytes().split(b"\0")[:-1]
    calls, call = [], []
    for word in words:
        if word == b"\x1e":
            calls.append(call)
            call = []
        else:
            call.append(word.decode())
    return calls


def run_recorded(script, tmp_path, env_path):
    """Run a shell snippet with the recording functions; its calls."""
    record = tmp_path / "record"
    record.unlink(missing_ok=True)
    # OUT: the one variable the docs use without setting it (the folder a GPU machine sends back)
    env = {"HOME": str(tmp_path), "PATH": env_path, "RECORD": str(record), "LANG": "C.UTF-8",
           "OUT": str(tmp_path / "out")}
    subprocess.run(["/bin/bash", "--noprofile", "--norc", "-c", RECORDER + script], cwd=tmp_path, env=env,
                   capture_output=True, text=True, timeout=60)
    return recorded_calls(record)


def documented_calls(tmp_path):
    """Every call of python/torchrun/bash that the docs show, with where it is shown: [(place, words)]."""
    calls = []
    empty = tmp_path / "no_programs"  # the snippets run with no program on the PATH: only bash and the recorder
    empty.mkdir(exist_ok=True)
    for path in DOCS:
        settings = []  # a variable set once (`D=../shared/data/redocred`) holds for the snippets after it
        for line, text in shell_snippets(path):
            settings += [s for s in text.splitlines() if ASSIGNMENT.fullmatch(s.strip())]
            script = "\n".join(settings + [without_placeholders(text)])
            calls += [(f"{path.relative_to(ROOT)}:{line}", words) for words in run_recorded(script, tmp_path,
                                                                                            str(empty))]
    return calls


# ---------------------------------------------------------------- checking one call
class Parsed(Exception):
    """Raised by the patched argparse once the arguments parsed: the program is not run further."""

    def __init__(self, namespace):
        super().__init__()
        self.namespace = namespace


@contextlib.contextmanager
def parse_only():
    """argparse parses, then raises Parsed instead of returning; errors exit with status 2 as usual."""
    saved = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_intermixed_args

    def stop(original):
        def parse(self, args=None, namespace=None):
            raise Parsed(original(self, args, namespace))
        return parse

    argparse.ArgumentParser.parse_args = stop(saved[0])
    argparse.ArgumentParser.parse_intermixed_args = stop(saved[1])
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_intermixed_args = saved


def program_and_args(words):
    """(the Python program or script a call runs, its arguments), or (None, why it is not checked)."""
    name, rest = words[0], words[1:]
    if name == "torchrun" or rest[:2] == ["-m", "torch.distributed.run"]:
        rest = rest[2:] if name != "torchrun" else rest
        scripts = [i for i, w in enumerate(rest) if w.endswith(".py")]
        return (rest[scripts[0]], rest[scripts[0] + 1:]) if scripts else (None, "torchrun without a script")
    if name == "bash":
        return rest[0], rest[1:]
    if rest[:1] == ["-m"]:
        return ("-m " + rest[1], rest[2:])
    if not rest or rest[0] in ("-", "-c"):
        return None, "inline code"
    return rest[0], rest[1:]


def check_python(program, args):
    """An error message, or None: the program exists and its parser takes the arguments."""
    path = ROOT / program
    if not path.is_file():
        return f"no such file: {program}"
    if program == "experiments/runner.py":
        return check_runner(args)
    saved, stderr = (sys.argv, list(sys.path)), io.StringIO()
    sys.argv, sys.path[:0] = [str(path), *args], [str(path.parent)]  # as `python PROGRAM ARGS` has them
    try:
        with parse_only(), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(path), run_name="__main__")
        return f"{program} ran past its argument parser"  # every program here parses its arguments first
    except Parsed:
        return None
    except SystemExit as e:
        return None if e.code == 0 else f"{program} exits {e.code}: {stderr.getvalue().strip()[-600:]}"
    except Exception as e:
        return f"{program}: {type(e).__name__}: {e}"
    finally:
        sys.argv, sys.path[:] = saved


def check_runner(args):
    """experiments/runner.py: its flags, its run names, and the train.py command each run starts with."""
    import runner
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parsed = runner.parse_args(args)
        runs = runner.Plan(parsed, print).runs(runner.run_names(parsed))
    except SystemExit as e:
        return None if e.code == 0 else f"experiments/runner.py exits {e.code}: {stderr.getvalue().strip()[-600:]}"
    except runner.UsageError as e:
        return f"experiments/runner.py: {e}"
    for run in runs:
        argv, _ = next(iter(run.steps()), (None, None))  # the later steps wait for the first one
        if argv and argv[1] == "train.py":
            error = check_python("train.py", argv[2:])
            if error:
                return f"experiments/runner.py, run {run.name}: {error}"
    return None


def test_every_documented_command_runs(tmp_path):
    calls = documented_calls(tmp_path)
    scripts = sorted({words[1] for _, words in calls if words[0] == "bash" and words[1:2]
                      and words[1].startswith("scripts/")})
    assert "scripts/run_demo.sh" in scripts and "scripts/run_bert.sh" in scripts, scripts
    # the user scripts the docs name, run for real with `python` recorded (the PATH they need, no bash on it)
    for script in scripts:
        if (ROOT / script).is_file():
            calls += [(script, words) for words in run_recorded(f"cd {ROOT} && . {script}", tmp_path,
                                                                 "/usr/bin:/bin")]
    errors, checked = [], 0
    for place, words in calls:
        program, args = program_and_args(words)
        if program is None:
            continue
        if program.startswith("-m "):
            module = program[3:]
            if importlib.util.find_spec(module) is None:
                errors.append(f"{place}: python -m {module}: no such module")
            continue
        if words[0] == "bash" or program.endswith(".sh"):
            if not (ROOT / program).is_file():
                errors.append(f"{place}: no such script: {program}")
            elif subprocess.run(["/bin/bash", "-n", str(ROOT / program)]).returncode:
                errors.append(f"{place}: {program} does not parse")
            continue
        error = check_python(program, [a for a in args if a != "..."])
        checked += 1
        if error:
            errors.append(f"{place}: {' '.join(words)[:300]}\n    {error}")
    assert not errors, "\n".join(errors)
    assert checked >= 100  # the docs show well over a hundred python commands: the extraction found them


def test_a_broken_command_is_caught(tmp_path):
    """The check can fail: a flag no parser knows, a script that moved, a run name the runner refuses."""
    error = check_python("train.py", ["--dev_file", "d.json", "--no_such_flag"])
    assert error and "unrecognized arguments: --no_such_flag" in error
    assert check_python("scripts/bootstrap.py", []) == "no such file: scripts/bootstrap.py"
    assert "not a run name" in check_python("experiments/runner.py", ["runs/x", "paper/nothing/66"])
    assert check_python("predict.py", ["--checkpoint", "a.pt", "--input", "b.json", "--output", "c.json"]) is None
    calls = run_recorded(without_placeholders("python predict.py --checkpoint C [--num_iterations K] \\\n  --x ..."),
                         tmp_path, "")
    assert calls == [["python", "predict.py", "--checkpoint", "C", "--x"]]


# ---------------------------------------------------------------- README's commands, for real, at toy size
def readme_block(start):
    """The README code block whose first line starts with ``start``."""
    blocks = [text for _, text in shell_snippets(ROOT / "README.md")]
    text = (ROOT / "README.md").read_text()
    python_blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    found = [b for b in blocks + python_blocks if b.lstrip().startswith(start)]
    assert found, f"README has no code block starting with {start!r}"
    return found[0]


def test_readme_commands_run_at_toy_size(tmp_path):
    """The quick start's demo, then README's evaluate, score and predict commands and its Python API, on the
    demo's own checkpoint and data (a tiny random encoder, 16 synthetic training documents)."""
    model = helpers.tiny_model(tmp_path / "model")
    demo, save = tmp_path / "demo_data", tmp_path / "demo_run"
    env = helpers.subprocess_env(DEMO_DIR=str(demo), DEMO_GEN="--train 16 --dev 4 --test 4", SAVE=str(save))
    if (ROOT / "dataset" / "redocred" / "train_mini.json").exists():  # the demo trains on it when it is there
        env["DEMO_TRAIN_DOCS"] = "16"
    tiny = ["--model_name_or_path", str(model), "--inference_dim", "16", "--max_train_docs", "16",
            "--max_eval_docs", "4", "--stage1_epochs", "1", "--stage2_epochs", "1", "--threads", "1",
            "--cache_dir", str(tmp_path / "cache")]
    quick_start = readme_block("bash scripts/run_demo.sh").splitlines()[0].split("#")[0].split()
    proc = subprocess.run(quick_start + tiny, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (save / "best.pt").is_file() and (save / "demo_report.json").is_file()
    # the data the demo trained on, under the names README's commands use (a few documents of each split)
    data = tmp_path / "data"
    data.mkdir()
    trained_on = {"train_annotated.json": "train.json", "dev.json": "dev.json", "test.json": "test.json"} \
        if (demo / "train.json").exists() else \
        {"train_annotated.json": "train_mini.json", "dev.json": "dev_mini.json", "test.json": "dev_mini.json"}
    source = demo if (demo / "train.json").exists() else ROOT / "dataset" / "redocred"
    for name, real in trained_on.items():
        (data / name).write_text(json.dumps(json.loads((source / real).read_text())[:16 if "train" in name else 4]))
    docs = json.loads((data / "test.json").read_text())[:3]
    (tmp_path / "my_docs.json").write_text(json.dumps(docs))

    def concrete(text):
        for placeholder, real in (("runs/x", save), ("dataset/docred", data),
                                  ("my_docs.json", tmp_path / "my_docs.json"),
                                  ("my_preds.json", tmp_path / "my_preds.json")):
            text = text.replace(placeholder, str(real))
        return text

    for block in (readme_block("python train.py --evaluate_only"), readme_block("python predict.py")):
        for line in re.sub(r"\\\n\s*", " ", without_placeholders(block)).splitlines():
            words = concrete(line).split() + ["--cache_dir", str(tmp_path / "cache")] * ("train.py" in line)
            proc = subprocess.run([sys.executable, *words[1:]], cwd=ROOT, env=helpers.subprocess_env(),
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"
    assert json.loads((save / "k4" / "eval_scores.json").read_text())["dev_by_k"].keys() == {"0", "1", "2", "3", "4"}
    rows = json.loads((tmp_path / "my_preds.json").read_text())
    api = concrete(readme_block("from predict import Predictor"))
    scope = {"docs": docs}
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exec(api, scope)
    finally:
        os.chdir(cwd)
    assert [dict(r, title=d["title"]) for d, triples in zip(docs, scope["triples"]) for r in triples] == rows

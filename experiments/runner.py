"""The runs behind docs/RESULTS.md, from one list: trained JOBS at a time on this machine's CPU, or on a lent GPU
machine within a time budget; every run resumable (experiments/README.md has the commands of each section).

    python experiments/runner.py OUT RUN [RUN ...] [--seeds SEED ...] [--device cpu|gpu] [settings]
    python experiments/runner.py OUT --preset NAME [RUN ...] [--seeds SEED ...] [...]

A RUN names what is trained and its folder, OUT/<the name without its seed>/s<SEED> (the log: that path + .log):
  stage1/SEED          a stage 1 (--stage1_epochs at head LR 1e-3, batch --train_batch_size; its best epoch
                       scored at K = 0)
  RECIPE/VARIANT/SEED  a stage 2 of RECIPE (paper, authors), --stage2_epochs, from the --stage1 checkpoint (a
                       {seed} in its path: the seed's own) or, without --stage1, from OUT/stage1/s<SEED>: the run
                       stage1/SEED, placed before the seed's first run where the list lacks it, and waited for.
                       VARIANT: full, no_contrastive, no_fusion, no_eca, freeze_base, ni1, withhold (positives
                       withheld from R_0, --withhold_max 1.0), control (the base module's loss alone at the
                       recipe's weight, its epoch selected at K = 0; its passes untrained). Then best.pt is scored
                       at K = 0..4 (eval_k4), in the run's precision.
  KIND/SEED            a whole run of --recipe, stage 1 then stage 2 with the seed's own stage 1, head and
                       inference LR 1e-3: bf16, fp32, nopre (w/o pre-training: stage 2 alone from the encoder for
                       as many epochs as both stages), ctrl (bf16, stage 2 with the base module's loss alone, as
                       control above); then best_stage1.pt at K = 0 (eval_stage1; not nopre) and best.pt at
                       K = 0..4 (eval_k4)
  RECIPE/SEED          the synthetic mechanism test: scripts/run_demo.sh --seed SEED --recipe RECIPE on the
                       documents in --demo_dir; then, per recipe, the report over its seeds (OUT/RECIPE/seeds.json)
                       and the same models with the stated gold facts as the first pass's input (oracle.json)
  stage1_eval          the --stage1 checkpoint itself on dev (OUT/stage1_eval)
With --seeds, each RUN is named without its seed and the list is taken seed by seed; a --preset's list is used
where no RUN is named (its seeds replaced by --seeds). A run named twice runs once.

A finished run is skipped and a stopped one resumed (python train.py --resume DIR), so the same command goes on
after a stop. Run names are checked before anything trains. Exit status: 2 for a bad run name or setting, 1
when a run is unfinished (they are named), 0 when all have finished.

--device gpu (a lent GPU machine: no ../shared, no package registry; here first: python experiments/gpu_carry.py
[--stage1 CKPT] --out .gpu, and the ujson wheel into .whl/ where its Python lacks ujson, see experiments/README.md)
trains from the carried .gpu/ folder, logs the environment, installs ujson from .whl/, shares the GPU between
the runs through CUDA MPS where it starts, stops the runs after --budget seconds (SIGTERM: they save last.pt;
SIGKILL 30 s later), and writes into --bundle what comes back: runner.log, halves.json (Figure 5: the classifier
halves of every stage-2 best.pt) and runs.tar.gz (OUT without checkpoints). On either device a SIGINT or SIGTERM
to the runner stops its runs the same way. --tiny: a smoke test at toy size (one epoch per stage, 8 training
and 8 dev documents, CUDA MPS not started), e.g. of the GPU commands on a CPU.
"""
import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import lent_gpu
import run_pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {"paper": 1, "authors": 5}  # the recipes of train.py and their base-loss weight (the control keeps it)
VARIANTS = {"full": [], "no_contrastive": ["--contrastive", "none"], "no_fusion": ["--no_fusion"],
            "no_eca": ["--eca", "full"], "freeze_base": ["--freeze_base"], "ni1": ["--num_inference_layers", "1"],
            "withhold": ["--withhold_max", "1.0"], "control": None}  # control: control_flags(recipe)
WHOLE = {"bf16": "bf16", "fp32": "none", "nopre": "bf16", "ctrl": "bf16"}  # whole-run kinds: their --amp
NAMES = (f"stage1/SEED, RECIPE/VARIANT/SEED, KIND/SEED, RECIPE/SEED or stage1_eval (RECIPE: {', '.join(RECIPES)}; "
         f"VARIANT: {', '.join(VARIANTS)}; KIND: {', '.join(WHOLE)})")

# name: (default, type, help); a --preset's value, then --tiny's, wins over the default where a flag is not given
SETTINGS = {
    "dataset": ("docred", str, "train.py --dataset"),
    "data_dir": ("dataset/redocred", str, "train.py --data_dir (--device gpu: .gpu/redocred)"),
    "train_file": ("train_mini.json", str, "train.py --train_file"),
    "dev_file": ("dev_mini.json", str, "train.py --dev_file"),
    "test_file": ("", str, "train.py --test_file (a labelled test file: scored too)"),
    "model_name_or_path": ("", str, "the encoder of stage 1 and whole runs (empty: the bundled one; --device gpu: "
                                    ".gpu/encoder)"),
    "stage1": (None, str, "the stage-1 checkpoint of stage-2 runs; {seed} in it: the seed's own"),
    "stage1_epochs": (16, int, "stage-1 epochs of stage 1 and whole runs"),
    "stage2_epochs": (6, int, "stage-2 epochs of stage-2 and whole runs"),
    "train_batch_size": (4, int, "train.py --train_batch_size"),
    "jobs": (2, int, "runs at once"),
    "lanes": (False, None, "a lane per seed: a seed's runs one after another, JOBS seeds at once"),
    "threads": (1, int, "CPU threads per run"),
    "amp": ("auto", str, "train.py --amp of stage 1, stage-2 runs and their scoring (whole runs: their KIND's)"),
    "recipe": ("authors", str, "the recipe of whole runs"),
    "inference_lr": (None, str, "train.py --inference_lr of stage-2 runs (unset: train.py's)"),
    "extra": ("", str, "more train.py flags for every training run, last (they win); --extra='--flag ...'"),
    "stage1_extra": ("", str, "more train.py flags for stage-1 runs"),
    "make_data": (None, str, "write synthetic documents first: scripts/make_demo_data.py --out OUT/data --test 0 "
                             "MAKE_DATA; every run trains on OUT/data (train.json, dev.json)"),
    "demo_dir": ("dataset/demo", str, "the synthetic documents of RECIPE/SEED runs"),
    "demo_gen": ("", str, "scripts/make_demo_data.py flags of those documents"),
    "budget": (None, int, "seconds from the start after which the runs still going are stopped"),
}
GPU = {"data_dir": ".gpu/redocred", "model_name_or_path": ".gpu/encoder"}  # experiments/gpu_carry.py's folder
TINY = {"stage1_epochs": 1, "stage2_epochs": 1, "jobs": 3, "amp": "auto"}
TINY_LIMITS = ["--max_train_docs", "8", "--max_eval_docs", "8"]
TINY_DATA = "--train 8 --dev 4"

GPU_SEEDS = (66, 67, 68, 69, 70)
# name: (what, [(run names, their seeds; () for names without a seed)], settings)
PRESETS = {
    "evidence": ("RESULTS 'On a GPU: the main comparison': the stage-1 checkpoint on dev, both recipes' full model "
                 "for seeds 66-70, then Table 4's variants of the authors' recipe seed by seed",
                 [(["stage1_eval"], ()), (["paper/full", "authors/full"], GPU_SEEDS),
                  (["authors/no_contrastive", "authors/no_fusion", "authors/no_eca", "authors/freeze_base"],
                   GPU_SEEDS)],
                 {"stage1": ".gpu/stage1.pt", "inference_lr": "1e-3", "jobs": 12, "budget": 470}),
    "whole": ("RESULTS 'On a GPU: whole runs': bf16 over seeds 66-70, fp32 and w/o pre-training over 66-68",
              [(["bf16"], GPU_SEEDS), (["fp32"], GPU_SEEDS[:3]), (["nopre"], GPU_SEEDS[:3])],
              {"jobs": 11, "budget": 480}),
    "plateau": ("a 32-epoch stage 1 per seed 66-70, then the paper recipe's full model and control and the authors' "
                "full model from each",
                [(["paper/full", "paper/control", "authors/full"], GPU_SEEDS)],
                {"stage1_epochs": 32, "inference_lr": "1e-3", "amp": "bf16", "jobs": 15, "budget": 540}),
    "plateau_cpu": ("the same design on a CPU, a lane per seed 66, 67: its 32-epoch stage 1, then the authors' full "
                    "model, w/o fusion, the paper recipe's full model and its control",
                    [(["authors/full", "authors/no_fusion", "paper/full", "paper/control"], GPU_SEEDS[:2])],
                    {"stage1_epochs": 32, "inference_lr": "1e-3", "lanes": True}),
    "far": ("RESULTS 'Facts the encoder cannot compose' at full size: documents of about 690 tokens (--gap 512), per "
            "seed 2-5 a bilinear stage 1, then the paper recipe and the authors' with positives withheld",
            [(["paper/full", "authors/withhold"], (2, 3, 4, 5))],
            {"make_data": "--train 1000 --dev 200 --gap 512 --seed 1", "stage1_epochs": 4, "stage2_epochs": 4,
             "stage1_extra": "--encoder_lr 1e-4 --pair_features bilinear", "inference_lr": "1e-3", "amp": "bf16",
             "jobs": 8, "budget": 540}),
}


class UsageError(Exception):
    pass


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", metavar="OUT", help="the runs' folder")
    p.add_argument("runs", nargs="*", metavar="RUN")
    p.add_argument("--seeds", nargs="+", type=int, help="the seeds of RUNs named without one")
    p.add_argument("--preset", choices=PRESETS, help="; ".join(f"{k}: {v[0]}" for k, v in PRESETS.items()))
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--bundle", help="--device gpu: the folder of what comes back (runner.log, halves.json, "
                                    "runs.tar.gz)")
    p.add_argument("--tiny", action="store_true", help="a smoke test at toy size")
    group = p.add_argument_group("settings")
    for name, (default, kind, text) in SETTINGS.items():
        if kind is None:
            group.add_argument(f"--{name}", action="store_true", default=None, help=text)
        else:
            group.add_argument(f"--{name}", type=kind, help=f"{text} (default: {default!r})")
    args = p.parse_intermixed_args(argv)
    layers = [TINY if args.tiny else {}, PRESETS[args.preset][2] if args.preset else {},
              GPU if args.device == "gpu" else {}]
    for name, (default, _, _) in SETTINGS.items():
        if getattr(args, name) is None:
            setattr(args, name, next((layer[name] for layer in layers if name in layer), default))
    args.limits = TINY_LIMITS if args.tiny else []
    if args.make_data is not None:
        args.make_data += f" {TINY_DATA}" if args.tiny else ""
        args.data_dir, args.train_file, args.dev_file, args.test_file = \
            os.path.join(args.out, "data"), "train.json", "dev.json", ""
    return args


def run_names(args):
    """The names of the runs, in order: the RUNs (over --seeds) or the --preset's list."""
    if args.runs:
        blocks = [(args.runs, args.seeds or ())]
    elif args.preset:
        blocks = [(names, seeds and (args.seeds or seeds)) for names, seeds in PRESETS[args.preset][1]]
    else:
        raise UsageError("no runs: name them, or a --preset")
    names = []
    for block, seeds in blocks:
        names += [f"{name}/{seed}" for seed in seeds for name in block] if seeds else block
    return list(dict.fromkeys(names))


def parse_name(name):
    """(kind, seed, the name's parts before the seed) of a run name."""
    if name == "stage1_eval":
        return "stage1_eval", None, []
    *head, seed = name.split("/")
    if re.fullmatch(r"[0-9]+", seed):
        if head == ["stage1"]:
            return "stage1", int(seed), head
        if len(head) == 1 and head[0] in WHOLE:
            return "whole", int(seed), head
        if len(head) == 1 and head[0] in RECIPES:
            return "demo", int(seed), head
        if len(head) == 2 and head[0] in RECIPES and head[1] in VARIANTS:
            return "stage2", int(seed), head
    raise UsageError(f"not a run name: {name!r}; one is {NAMES}")


def one_stage1(args):
    """--stage1 where it names one checkpoint for every run (no {seed}), else None."""
    return args.stage1 if args.stage1 and "{seed}" not in args.stage1 else None


def trained(folder):
    """train.py scores every run it ends (FOLDER/eval_scores.json): the run has trained, and can be scored."""
    return os.path.isfile(os.path.join(folder, "eval_scores.json"))


def control_flags(recipe):
    """Stage 2 with every loss but the base module's switched off, at the recipe's base-loss weight (it matters
    through gradient clipping), its epoch selected at K = 0."""
    return ["--loss_weights", f"{RECIPES[recipe]},0,0,0", "--contrastive", "none", "--num_iterations", "0"]


class Run:
    """One run: its name, seed, folder, the file that says it has finished, the run it needs first, and its
    commands (a generator: each step decides when it is reached, after the ones before it have run)."""

    def __init__(self, name, kind, seed, folder, done_file, steps, say):
        self.name, self.kind, self.seed, self.folder, self.done_file = name, kind, seed, folder, done_file
        self.steps, self.say, self.needs = steps, say, None

    def done(self):
        return os.path.isfile(self.done_file)

    def execute(self, sessions):
        """Its commands one after another (output in FOLDER.log) until one fails; nothing when it has finished."""
        if self.done():
            self.say(f"done: {self.folder}")
            return
        os.makedirs(os.path.dirname(self.folder), exist_ok=True)
        with open(f"{self.folder}.log", "a") as log:
            for argv, env in self.steps():
                if sessions.call(argv, log, env) != 0:
                    return


class Plan:
    """The runs of one command line and the commands of each."""

    def __init__(self, args, say):
        self.a, self.say = args, say
        self.python = shutil.which("python") or shutil.which("python3") or sys.executable

    def runs(self, names):
        """Run objects for the names (stage 1s added before the runs that need them), in order."""
        runs, by_name = [], {}
        for name in names:
            kind, seed, head = parse_name(name)
            if kind == "stage2" and not self.a.stage1 and f"stage1/{seed}" not in by_name:
                stage1 = by_name[f"stage1/{seed}"] = self.make("stage1", seed, ["stage1"])
                runs.append(stage1)
            if name not in by_name:
                by_name[name] = self.make(kind, seed, head)
                runs.append(by_name[name])
        for run in runs:
            if run.kind == "stage2" and not self.a.stage1:
                run.needs = by_name[f"stage1/{run.seed}"]
        return runs

    def make(self, kind, seed, head):
        folder = os.path.join(self.a.out, *head, f"s{seed}") if seed is not None else os.path.join(self.a.out, kind)
        done = {"stage1": "eval_scores.json", "stage1_eval": "eval_scores.json", "demo": "demo_report.json"}.get(
            kind, os.path.join("eval_k4", "eval_scores.json"))
        steps = {"stage1": self.stage1, "stage2": self.stage2, "whole": self.whole, "demo": self.demo,
                 "stage1_eval": self.stage1_eval}[kind]
        name = "/".join([*head, str(seed)]) if seed is not None else kind
        return Run(name, kind, seed, folder, os.path.join(folder, done), lambda: steps(folder, seed, *head), self.say)

    def train(self, *flags):
        return [self.python, "train.py", *map(str, flags)], None

    def train_or_resume(self, folder, *flags):
        """The one rule for a run that may have finished or stopped before: nothing where train.py wrote
        FOLDER/eval_scores.json, --resume where it left FOLDER/last.pt, else a run saving into FOLDER."""
        if trained(folder):
            return
        if os.path.isfile(os.path.join(folder, "last.pt")):
            yield self.train("--resume", folder, "--threads", self.a.threads)
        else:
            yield self.train("--save_path", folder, "--overwrite", *flags)

    def data(self):
        a = self.a
        return ["--dataset", a.dataset, "--data_dir", a.data_dir, "--train_file", a.train_file, "--dev_file",
                a.dev_file, "--test_file", a.test_file, "--threads", a.threads, *a.limits]

    def model(self):
        return ["--model_name_or_path", self.a.model_name_or_path] if self.a.model_name_or_path else []

    def evaluate(self, folder, checkpoint, k, into, *flags):
        """CHECKPOINT of the run scored on dev after every pass 0..K (FOLDER/INTO)."""
        return self.train(*self.data(), *flags, "--evaluate_only", "--load_path", os.path.join(folder, checkpoint),
                          "--num_iterations", k, "--save_path", os.path.join(folder, into), "--overwrite")

    def stage1(self, folder, seed, _):
        a = self.a
        yield from self.train_or_resume(
            folder, *self.data(), "--amp", a.amp, *self.model(), "--stage1_epochs", a.stage1_epochs,
            "--stage2_epochs", 0, "--num_iterations", 0, "--classifier_lr", "1e-3", "--train_batch_size",
            a.train_batch_size, "--seed", seed, *shlex.split(a.stage1_extra), *shlex.split(a.extra))

    def stage2(self, folder, seed, recipe, variant):
        a = self.a
        checkpoint = a.stage1.replace("{seed}", str(seed)) if a.stage1 else \
            os.path.join(a.out, "stage1", f"s{seed}", "best_stage1.pt")
        flags = control_flags(recipe) if variant == "control" else VARIANTS[variant]
        lr = ["--inference_lr", a.inference_lr] if a.inference_lr else []
        yield from self.train_or_resume(
            folder, *self.data(), "--amp", a.amp, "--load_path", checkpoint, "--recipe", recipe, "--seed", seed,
            "--stage2_epochs", a.stage2_epochs, "--train_batch_size", a.train_batch_size, *flags, *lr,
            *shlex.split(a.extra))
        if trained(folder):
            yield self.evaluate(folder, "best.pt", 4, "eval_k4", "--amp", a.amp)

    def whole(self, folder, seed, kind):
        a = self.a
        stages = ["--skip_stage1", "--stage2_epochs", a.stage1_epochs + a.stage2_epochs] if kind == "nopre" else \
            ["--stage1_epochs", a.stage1_epochs, "--stage2_epochs", a.stage2_epochs]
        if kind == "ctrl":
            stages += control_flags(a.recipe)
        precision = ["--amp", WHOLE[kind], *self.model()]
        yield from self.train_or_resume(
            folder, *self.data(), *precision, "--recipe", a.recipe, "--seed", seed, *stages, "--classifier_lr",
            "1e-3", "--inference_lr", "1e-3", "--train_batch_size", a.train_batch_size, *shlex.split(a.extra))
        if not trained(folder):
            return
        if kind != "nopre":
            yield self.evaluate(folder, "best_stage1.pt", 0, "eval_stage1", *precision)
        yield self.evaluate(folder, "best.pt", 4, "eval_k4", *precision)

    def demo(self, folder, seed, recipe):
        a = self.a
        env = dict(os.environ, DEMO_DIR=a.demo_dir, DEMO_GEN=a.demo_gen, SAVE=folder)
        yield ["bash", "scripts/run_demo.sh", "--seed", str(seed), "--recipe", recipe, "--threads", str(a.threads),
               *a.limits, *shlex.split(a.extra)], env

    def stage1_eval(self, folder, _):
        yield self.train("--evaluate_only", "--load_path", self.a.stage1, *self.data(), "--amp", self.a.amp,
                         "--save_path", folder, "--overwrite")

    def tool(self, script, *flags):
        """A step before the runs: SCRIPT with FLAGS, its output in the runner's log; whether it succeeded."""
        self.say(f"{script} {shlex.join(map(str, flags))}")
        proc = subprocess.run([self.python, script, *map(str, flags)], capture_output=True, text=True)
        self.say((proc.stdout + proc.stderr).strip())
        return proc.returncode == 0

    def prepare(self, runs):
        """What the runs need first: the carried stage-1 checkpoint rebuilt, synthetic documents written."""
        a, stage1 = self.a, one_stage1(self.a)
        steps = []
        if stage1 and not os.path.isfile(stage1):
            steps.append(("experiments/gpu_carry.py", "--rebuild", stage1))
        if a.make_data is not None:
            steps.append(("scripts/make_demo_data.py", "--out", os.path.join(a.out, "data"), "--test", 0,
                          *shlex.split(a.make_data)))
        if any(run.kind == "demo" for run in runs):
            steps.append(("scripts/make_demo_data.py", "--out", a.demo_dir, *shlex.split(a.demo_gen)))
        if not all(self.tool(*step) for step in steps):
            return False
        if stage1 and not os.path.isfile(stage1):
            self.say(f"no {stage1} after experiments/gpu_carry.py --rebuild")
            return False
        return True

    def demo_reports(self, runs):
        """Per recipe, over its finished seeds: the stated vs never-stated report and the oracle diagnostic."""
        gold = os.path.join(self.a.demo_dir, "dev.json")
        for recipe in dict.fromkeys(r.name.split("/")[0] for r in runs if r.kind == "demo"):
            done = [r.folder for r in runs if r.kind == "demo" and r.name.startswith(f"{recipe}/") and r.done()]
            if not done:
                print(f"{recipe}: no finished run (see {os.path.join(self.a.out, recipe)}/s*.log)", file=sys.stderr)
                continue
            print(f"## {recipe} ({len(done)} seeds)", flush=True)
            subprocess.run([self.python, "scripts/demo_report.py", "--gold", gold, "--runs", *done, "--json",
                            os.path.join(self.a.out, recipe, "seeds.json")])
            subprocess.run([self.python, "experiments/oracle_relations.py", "--gold", gold, "--checkpoint",
                            *(os.path.join(d, "best.pt") for d in done), "--json",
                            os.path.join(self.a.out, recipe, "oracle.json")])


def check(args, runs):
    """Bad settings for these runs, before anything is started (UsageError)."""
    kinds, stage1 = {run.kind for run in runs}, one_stage1(args)
    if args.device == "gpu" and not args.bundle:
        raise UsageError("--device gpu needs --bundle (the folder of what comes back)")
    if "stage1_eval" in kinds and not stage1:
        raise UsageError("stage1_eval needs --stage1: one checkpoint, no {seed}")
    if stage1 and kinds & {"stage2", "stage1_eval"}:
        head = os.path.join(os.path.dirname(stage1), "stage1_head.pt")
        if not any(os.path.isfile(os.path.join(ROOT, path)) for path in (stage1, head)):
            raise UsageError(f"--stage1 {stage1}: no such checkpoint, nor a carried {head} "
                             "(experiments/gpu_carry.py --stage1 writes one)")
    if "demo" in kinds and os.path.isfile(os.path.join(ROOT, "dataset", "redocred", "train_mini.json")):
        raise UsageError("dataset/redocred is present, so scripts/run_demo.sh would train on Re-DocRED; "
                         "move it aside")


class Log:
    """The runner's messages, with the time: on stdout and, with --bundle, in BUNDLE/runner.log."""

    def __init__(self, path=None):
        self.path = path

    def __call__(self, text):
        for line in str(text).splitlines():
            stamped = f"[{time.strftime('%H:%M:%S', time.gmtime())}] {line}"
            print(stamped, flush=True)
            if self.path:
                with open(self.path, "a") as fh:
                    fh.write(stamped + "\n")


def main(argv=None):
    started = time.monotonic()
    args = parse_args(argv)
    say = Log()
    plan = Plan(args, say)
    try:
        runs = plan.runs(run_names(args))
        check(args, runs)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    os.makedirs(args.out, exist_ok=True)
    gpu = args.device == "gpu"
    if gpu:
        os.makedirs(args.bundle, exist_ok=True)
        say.path = os.path.join(args.bundle, "runner.log")
        os.environ.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
        lent_gpu.environment(plan.python, say)
        if not lent_gpu.ujson(plan.python, say):
            return 1
        if not args.tiny:
            lent_gpu.mps_start(plan.python, say)
    if not plan.prepare(runs):
        return 1
    say(f"{len(runs)} runs, {args.jobs} at a time{' (a lane per seed)' if args.lanes else ''}"
        f"{f', budget {args.budget} s' if args.budget is not None else ''}: {' '.join(r.name for r in runs)}")
    stopped = run_pool.run_all(run_pool.lanes(runs) if args.lanes else runs, run_pool.Sessions(), say, args.jobs,
                               one_per_seed=args.lanes,
                               deadline=None if args.budget is None else started + args.budget,
                               progress=gpu and (lambda: f"{sum(r.done() for r in runs)} of {len(runs)} runs done"))
    if stopped is None:
        plan.demo_reports(runs)
    if gpu:
        if stopped is None:
            best = [os.path.join(r.folder, "best.pt") for r in runs if r.kind == "stage2"]
            lent_gpu.bundle(args.out, args.bundle, [b for b in best if os.path.isfile(b)], plan.python, say)
        lent_gpu.mps_stop()
    if stopped is not None:
        return stopped
    unfinished = [r.folder for r in runs if not r.done()]
    if unfinished:
        print("unfinished (see DIR.log): " + " ".join(unfinished), file=sys.stderr)
        return 1
    say(f"finished: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

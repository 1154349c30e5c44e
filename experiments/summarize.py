"""Mean ± std of the scores of several runs (e.g. seeds), as markdown tables (the paper reports dev mean ± std
over 5 seeds).

    python experiments/summarize.py runs/seed1 runs/seed2 runs/seed3            one group: full model and base module
    python experiments/summarize.py "full=runs/a1,runs/a2" "w/o fusion=runs/b1,runs/b2" --model full
                                                                           one row per group (Table 4)
    python experiments/summarize.py --split test "CDR=runs/cdr_s1,runs/cdr_s2"  test scores from eval_scores.json
    python experiments/summarize.py --by_k "N_I 2=runs/a/eval_k4" "N_I 1=runs/b/eval_k4"
                                                                           F1 after each pass k (Table 2)
    python experiments/summarize.py --by_epoch 2 "control=runs/c1,runs/c2" "full=runs/a1,runs/a2"
                                                              dev F1 after every epoch of a stage, full minus control

A group is LABEL=RUN[,RUN...]; plain RUN arguments form one unlabelled group. A run is a --save_path folder.
Dev scores (--split dev) are those of the epoch kept as best.pt: the last line marked "best" in its
metrics.jsonl, "dev" for the full model (K passes) and "dev_base" for the base module of the same checkpoint
(--num_iterations 0; stage-2 runs only, a stage-1 run is a base module). Test scores (--split test) come from
the run's eval_scores.json: "test" and, for the base module, pass 0 of "test_by_k". --by_k reads the
"dev_by_k" (with --split test: "test_by_k") of eval_scores.json written by `train.py --evaluate_only
--num_iterations K`. --by_epoch STAGE reads every epoch of that stage in metrics.jsonl ("dev": the full model in
stage 2; with --model base "dev_base", the base module's of the same epochs), with no checkpoint selection;
each group after the first also gets a row of its paired differences to the first (runs paired by position,
e.g. by seed), with a 95% interval from a bootstrap over the pairs alone: the dev documents stay fixed, so it
is narrower than experiments/bootstrap.py's seeds x documents interval.
"""
import argparse
import json
import os
import random
import statistics
import sys

DEFAULT_METRICS = ["f1", "ign_f1", "intra_f1", "inter_f1", "infer_f1"]


def read_metrics(run):
    """The lines of a run's metrics.jsonl (``run``: its --save_path folder, or the file itself)."""
    path = os.path.join(run, "metrics.jsonl") if os.path.isdir(run) else run
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def best_line(path):
    """The metrics.jsonl line of the epoch saved as best.pt."""
    lines = read_metrics(path)
    if not lines:
        raise ValueError(f"{path}: no epochs recorded")
    marked = [ln for ln in lines if ln.get("best")]
    return (marked or lines)[-1]


def eval_scores(run):
    path = os.path.join(run, "eval_scores.json")
    with open(path) as fh:
        return json.load(fh), path


def run_scores(run, split):
    """{"full": scores, "base": scores or None} of one run on a split."""
    if split == "dev":
        line = best_line(run)
        if line["stage"] == 1:  # no inference module was trained: the run is a base module
            return {"full": None, "base": line["dev"]}
        return {"full": line["dev"], "base": line.get("dev_base")}
    scores, path = eval_scores(run)
    if split not in scores:
        raise ValueError(f"{path}: no {split!r} scores (unlabelled, or not predicted)")
    by_k = scores.get(f"{split}_by_k", {})
    return {"full": scores[split], "base": by_k.get("0")}


def mean_std(values):
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def cells(score_dicts, metrics):
    """One cell per metric: mean ± std over the runs, '—' where a run lacks it."""
    out = []
    for m in metrics:
        vals = [s[m] for s in score_dicts if s is not None and m in s]
        out.append(mean_std(vals) if vals and len(vals) == len(score_dicts) else "—")
    return out


def parse_groups(items):
    """["LABEL=A,B", ...] -> [(label, [A, B])]; plain paths form one group labelled ''."""
    groups, plain = [], []
    for item in items:
        if "=" in item:
            label, runs = item.rsplit("=", 1)
            groups.append((label, [r for r in runs.split(",") if r]))
        else:
            plain.append(item)
    return ([("", plain)] if plain else []) + groups


def table(groups, metrics, split="dev", model="both"):
    rows = {"both": ("full", "base"), "full": ("full",), "base": ("base",)}[model]
    names = {"full": "full model (K passes)", "base": "base module (K = 0)"}
    out = ["| model | runs | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for label, runs in groups:
        scores = [run_scores(r, split) for r in runs]
        present = [key for key in ("full", "base") if any(s[key] is not None for s in scores)]
        # a stage-1 run (base module only) keeps its row in a --model full table: e.g. ATLOP beside the ablations
        for key in [k for k in rows if k in present] or present:
            per_run = [s[key] for s in scores]
            name = names[key] if not label else (label if model != "both" else f"{label}: {names[key]}")
            out.append(f"| {name} | {len(runs)} | " + " | ".join(cells(per_run, metrics)) + " |")
    return "\n".join(out)


def by_k_table(groups, metric="f1", split="dev"):
    """Rows: groups (e.g. N_I); columns: K = 0 .. the largest K evaluated; cells: mean ± std of the metric on
    the split."""
    data = []
    for label, runs in groups:
        per_run = []
        for run in runs:
            scores, path = eval_scores(run)
            if f"{split}_by_k" not in scores:
                raise ValueError(f"{path}: no '{split}_by_k' (evaluate with train.py --evaluate_only "
                                 f"--num_iterations K{' and a labelled --test_file' if split == 'test' else ''})")
            per_run.append(scores[f"{split}_by_k"])
        data.append((label, per_run))
    max_k = max(int(k) for _, per_run in data for by_k in per_run for k in by_k)
    out = [f"| {metric} | runs | " + " | ".join(f"K = {k}" for k in range(max_k + 1)) + " |",
           "|---" * (max_k + 3) + "|"]
    for label, per_run in data:
        row = [cells([by_k.get(str(k)) for by_k in per_run], [metric])[0] for k in range(max_k + 1)]
        out.append(f"| {label or 'runs'} | {len(per_run)} | " + " | ".join(row) + " |")
    return "\n".join(out)


def epoch_scores(run, stage, metric, key="dev"):
    """The metric after each epoch of one stage of a run, in epoch order; key "dev_base": the base module's."""
    lines = sorted((ln for ln in read_metrics(run) if ln["stage"] == stage), key=lambda ln: ln["epoch"])
    if not lines:
        raise ValueError(f"{run}: no stage-{stage} epochs in metrics.jsonl")
    if any(key not in ln for ln in lines):
        raise ValueError(f"{run}: a stage-{stage} epoch without \"{key}\" scores in metrics.jsonl")
    return [ln[key][metric] for ln in lines]


def group_epoch_scores(label, runs, stage, metric, key="dev"):
    """epoch_scores of each run of a group, which must all have the same number of epochs in the stage."""
    per_run = [epoch_scores(r, stage, metric, key) for r in runs]
    if len({len(s) for s in per_run}) != 1:
        raise ValueError(f"group {label or 'runs'}: runs with different numbers of stage-{stage} epochs")
    return per_run


def paired_cell(diffs, samples=10_000, seed=0):
    """Mean of paired differences and a percentile bootstrap 95% interval over the pairs."""
    mean = statistics.mean(diffs)
    if len(diffs) == 1:
        return f"{mean:+.2f}"
    rng = random.Random(seed)
    means = sorted(statistics.mean(rng.choices(diffs, k=len(diffs))) for _ in range(samples))
    return f"{mean:+.2f} [{means[int(0.025 * samples)]:+.2f}, {means[int(0.975 * samples) - 1]:+.2f}]"


def by_epoch_table(groups, stage, metric="f1", key="dev"):
    """Rows: groups, then each later group minus the first; columns: the epochs of the stage and their mean."""
    data = []
    for label, runs in groups:
        data.append((label or "runs", group_epoch_scores(label, runs, stage, metric, key)))
    if len({len(per_run[0]) for _, per_run in data}) != 1:
        raise ValueError(f"groups with different numbers of stage-{stage} epochs")
    n = len(data[0][1][0])
    data = [(label, [s + [statistics.mean(s)] for s in per_run]) for label, per_run in data]  # + the mean column
    out = [f"| {metric} | runs | " + " | ".join(f"epoch {e + 1}" for e in range(n)) + " | mean over epochs |",
           "|---" * (n + 3) + "|"]
    for label, per_run in data:
        out.append(f"| {label} | {len(per_run)} | " + " | ".join(mean_std([s[e] for s in per_run])
                                                                 for e in range(n + 1)) + " |")
    first_label, first = data[0]
    for label, per_run in data[1:]:
        if len(per_run) != len(first):
            raise ValueError(f"{label} and {first_label}: different numbers of runs, cannot pair them")
        out.append(f"| {label} minus {first_label} | {len(per_run)} | " + " | ".join(
            paired_cell([b[e] - a[e] for a, b in zip(first, per_run)]) for e in range(n + 1)) + " |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders, or LABEL=RUN[,RUN...] groups")
    p.add_argument("--metrics", nargs="+", default=DEFAULT_METRICS)
    p.add_argument("--split", choices=["dev", "test"], default="dev")
    p.add_argument("--model", choices=["both", "full", "base"], default="both",
                   help="rows per group: full model, base module, or both (--by_epoch: base reads the base module's "
                        "scores, the others the full model's)")
    p.add_argument("--by_k", action="store_true", help="F1 after each pass k (Table 2); the first metric is used")
    p.add_argument("--by_epoch", type=int, choices=[1, 2], metavar="STAGE",
                   help="dev score after every epoch of stage 1 or 2, and paired differences to the first group; "
                        "the first metric is used")
    args = p.parse_args(argv)
    try:
        groups = parse_groups(args.runs)
        if args.by_epoch:
            key = "dev_base" if args.model == "base" else "dev"
            print(by_epoch_table(groups, args.by_epoch, args.metrics[0], key))
        else:
            print(by_k_table(groups, args.metrics[0], args.split) if args.by_k else
                  table(groups, args.metrics, args.split, args.model))
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

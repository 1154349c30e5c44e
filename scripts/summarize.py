"""Mean ± std of the dev scores of several runs (e.g. seeds), as a markdown table.

For each run (a --save_path folder, or its metrics.jsonl) the epoch kept is the one best.pt holds: the
last line marked "best" in metrics.jsonl. Rows: the full model ("dev") and, for stage-2 runs, the base
module of the same checkpoint ("dev_base", i.e. --num_iterations 0).

    python scripts/summarize.py runs/seed1 runs/seed2 runs/seed3 [--metrics f1 ign_f1 intra_f1]
"""
import argparse
import json
import os
import statistics
import sys

DEFAULT_METRICS = ["f1", "ign_f1", "intra_f1", "inter_f1", "infer_f1"]


def best_line(path):
    """The metrics.jsonl line of the epoch saved as best.pt."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    with open(path) as fh:
        lines = [json.loads(line) for line in fh if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no epochs recorded")
    marked = [ln for ln in lines if ln.get("best")]
    return (marked or lines)[-1]


def mean_std(values):
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(runs, metrics):
    rows = {"full model (K passes)": "dev", "base module (K = 0)": "dev_base"}
    lines = [best_line(r) for r in runs]
    out = [f"| model ({len(runs)} run{'s' if len(runs) > 1 else ''}) | " + " | ".join(metrics) + " |",
           "|---" * (len(metrics) + 1) + "|"]
    for label, key in rows.items():
        if not all(key in ln for ln in lines):
            continue
        cells = []
        for m in metrics:
            vals = [ln[key][m] for ln in lines if m in ln[key]]
            cells.append(mean_std(vals) if len(vals) == len(lines) else "—")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders or metrics.jsonl files")
    p.add_argument("--metrics", nargs="+", default=DEFAULT_METRICS)
    args = p.parse_args(argv)
    try:
        print(table(args.runs, args.metrics))
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

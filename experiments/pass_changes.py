"""What each inference pass changes (the paper's "easy-to-hard" reading of Fig. 2): from pass k to pass k + 1, how
many entity pairs change their predicted relations, and how many triples each change fixes or breaks.

    python experiments/pass_changes.py --gold dataset/redocred/dev_mini.json RUN/eval_k4 [RUN2/eval_k4 ...]
        [--json out.json] [--plot out.png]

A RUN folder holds the dev predictions of one evaluation after every pass: dev_result_k0.json (the base module),
dev_result_k1.json, ..., and dev_result.json (the last pass), as `train.py --evaluate_only --num_iterations K`
writes them. A triple (title, h_idx, t_idx, r) that pass k + 1 adds is a fix when it is gold and a break when it
is not; one that it drops is a break when it is gold and a fix when it is not. With several runs (seeds) the
table shows mean ± std over them.
"""
import argparse
import glob
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluation  # noqa: E402
from utils import DataError  # noqa: E402

FIELDS = ("pairs_changed", "added", "dropped", "fixes", "breaks", "net_correct")


def pass_files(run):
    """[dev_result_k0.json, ..., dev_result.json] of one evaluation folder, in pass order."""
    ks = sorted(int(os.path.basename(p)[len("dev_result_k"):-len(".json")])
                for p in glob.glob(os.path.join(run, "dev_result_k*.json")))
    if not ks or ks != list(range(len(ks))):
        raise DataError(f"{run}: no dev_result_k0.json ... dev_result_k<K-1>.json (write them with "
                        f"train.py --evaluate_only --num_iterations K)")
    return [os.path.join(run, f"dev_result_k{k}.json") for k in ks] + [os.path.join(run, "dev_result.json")]


def triples(path):
    entries = evaluation.load_docs(path)
    return {(e["title"], e["h_idx"], e["t_idx"], e["r"]) for e in entries}


def changes(before, after, gold):
    """Counts of one step between two sets of predicted triples."""
    added, dropped = after - before, before - after
    pairs = {t[:3] for t in added | dropped}
    fixes = len(added & gold) + len(dropped - gold)
    breaks = len(dropped & gold) + len(added - gold)
    return {"pairs_changed": len(pairs), "added": len(added), "dropped": len(dropped), "fixes": fixes,
            "breaks": breaks, "net_correct": len(added & gold) - len(dropped & gold)}


def run_changes(run, gold):
    passes = [triples(p) for p in pass_files(run)]
    return [changes(a, b, gold) for a, b in zip(passes, passes[1:])]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gold", required=True, help="the labelled dev documents the predictions are of")
    p.add_argument("runs", nargs="+", help="evaluation folders (one per seed)")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="a PNG: fixes and breaks per step")
    args = p.parse_args(argv)
    try:
        gold = {(d["title"], lab["h"], lab["t"], lab["r"]) for d in evaluation.load_docs(args.gold)
                for lab in d.get("labels", [])}
        per_run = [run_changes(run, gold) for run in args.runs]
    except (OSError, DataError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    steps = min(len(r) for r in per_run)
    rows, summary = [], []
    for k in range(steps):
        cell = {}
        for field in FIELDS:
            values = [r[k][field] for r in per_run]
            cell[field] = {"mean": statistics.mean(values),
                           "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
        summary.append(cell)
        rows.append(f"| {k} -> {k + 1} | " + " | ".join(
            f"{cell[f]['mean']:.1f} ± {cell[f]['std']:.1f}" if len(per_run) > 1 else f"{cell[f]['mean']:.0f}"
            for f in FIELDS) + " |")
    print(f"{len(per_run)} run(s), {len(gold)} gold triples")
    print("| step | " + " | ".join(FIELDS) + " |")
    print("|---|" + "---|" * len(FIELDS))
    print("\n".join(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"runs": args.runs, "steps": summary}, fh, indent=1)
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = list(range(steps))
        for field, colour in (("fixes", "tab:green"), ("breaks", "tab:red")):
            ax.errorbar(xs, [c[field]["mean"] for c in summary], yerr=[c[field]["std"] for c in summary],
                        marker="o", color=colour, label=field, capsize=3)
        ax.set_xticks(xs, [f"{k}->{k + 1}" for k in xs])
        ax.set(xlabel="pass", ylabel="triples (mean over runs)", title="what each pass changes")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())

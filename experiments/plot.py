"""Training curves and the paper's Figure 5 analysis, as PNG files.

    python experiments/plot.py curves runs/x [runs/y ...] --out docs/curves.png
    python experiments/plot.py curves runs/full runs/no_cl --stage1 runs/stage1 --out docs/curves.png
    python experiments/plot.py weights --with runs/simsiam/best.pt --without runs/nocl/best.pt --out docs/fig5.png
    python experiments/plot.py halves runs/a/best.pt [runs/b/best.pt ...]      (the numbers only, no plot)
    python experiments/plot.py epochs --stage 1 "16 epochs=runs/a/s66,runs/a/s67" "32 epochs=runs/b/s66,runs/b/s67"

`curves`: train loss and dev F1 per epoch over both stages (stage 2 continues the x axis; its dev F1
is the full model's, and the base module's F1 of the same epochs is drawn dashed). --stage1 RUN: the runs are
stage-2 runs started from RUN's best_stage1.pt (--load_path); RUN's stage-1 curve is drawn once and theirs
continue after it.
`weights` (Figure 5): mean absolute weight of the inference classifier W_c (Eq. 12) on the feature half
[F_NI] and on the relation half [R_NI] of its input, for a run with and one without the contrastive loss.
`halves`: those two numbers for each checkpoint given, as JSON (PyTorch's initialisation of a Linear layer
with 2D inputs gives 1 / (2 sqrt(2D)) on both: 0.0156 at D = 512).
`epochs`: the dev score after every epoch of one stage, one line per group of runs (seeds): the mean, and a
band of one standard deviation around it (summarize.py --by_epoch prints the same numbers as a table; here the
groups may have different numbers of epochs).
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from summarize import group_epoch_scores, parse_groups, read_metrics  # noqa: E402  (experiments/ is on the path)


def plot_curves(runs, out, stage1=None):
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(10, 4))
    offset = 0
    if stage1:
        lines = [ln for ln in read_metrics(stage1) if ln["stage"] == 1]
        x = list(range(1, len(lines) + 1))
        ax_loss.plot(x, [ln.get("train_loss", float("nan")) for ln in lines], marker="o", color="black",
                     label="stage 1 (shared)")
        ax_f1.plot(x, [ln["dev"]["f1"] for ln in lines], marker="o", color="black", label="stage 1 (shared)")
        offset = len(lines)
    for run in runs:
        lines = read_metrics(run)
        x = list(range(offset + 1, offset + len(lines) + 1))
        label = os.path.basename(os.path.normpath(run))
        ax_loss.plot(x, [ln.get("train_loss", float("nan")) for ln in lines], marker="o", label=label)
        (line,) = ax_f1.plot(x, [ln["dev"]["f1"] for ln in lines], marker="o", label=f"{label} (model)")
        base = [(i, ln["dev_base"]["f1"]) for i, ln in zip(x, lines) if "dev_base" in ln]
        if base:
            ax_f1.plot(*zip(*base), linestyle="--", color=line.get_color(), label=f"{label} (base module)")
        switch = [i for i, ln in zip(x, lines) if ln["stage"] == 2]
        if switch and switch[0] > 1:
            for ax in (ax_loss, ax_f1):
                ax.axvline(switch[0] - 0.5, color="grey", linewidth=0.8)
    ax_loss.set(xlabel="epoch (stage 1, then stage 2)", ylabel="train loss", title="training loss")
    ax_f1.set(xlabel="epoch (stage 1, then stage 2)", ylabel="dev F1 (%)", title="dev F1")
    ax_loss.legend(fontsize=7)
    ax_f1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def epoch_bands(groups, stage, metric="f1"):
    """[(label, runs, mean, std)] per group: the metric after each epoch of the stage over the group's runs."""
    bands = []
    for label, runs in groups:
        scores = np.array(group_epoch_scores(label, runs, stage, metric))  # (runs, epochs)
        std = scores.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(scores.shape[1])
        bands.append((label or "runs", len(runs), scores.mean(axis=0), std))
    return bands


def plot_epochs(groups, stage, out, metric="f1"):
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, n, mean, std in epoch_bands(groups, stage, metric):
        x = np.arange(1, len(mean) + 1)
        (line,) = ax.plot(x, mean, marker="o", markersize=3, label=f"{label} ({n} run{'s' if n > 1 else ''})")
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set(xlabel=f"stage-{stage} epoch", ylabel=f"dev {metric} (%)", title="mean over seeds, band: one std")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def classifier_halves(checkpoint):
    """Mean |W_c| over the F half and over the R half of the classifier input (Eq. 12): the classifier's first
    linear layer, [C, 2D] (or [D, 2D] with --classifier_layers 2)."""
    import torch
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    w = state.get("inference.classifier.weight", state.get("inference.classifier.0.weight"))
    d = w.size(1) // 2
    return float(w[:, :d].abs().mean()), float(w[:, d:].abs().mean())


def plot_weights(with_cl, without_cl, out):
    names = ["w/ contrastive", "w/o contrastive"]
    halves = [classifier_halves(with_cl), classifier_halves(without_cl)]
    fig, ax = plt.subplots(figsize=(5, 4))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [h[0] for h in halves], width=0.4, label="feature half (F)")
    ax.bar([x + 0.2 for x in xs], [h[1] for h in halves], width=0.4, label="relation half (R)")
    ax.set_xticks(list(xs), names)
    ax.set(ylabel="mean |W_c|", title="classifier weight on [F_NI, R_NI] (Fig. 5)")
    ax.legend(loc="lower center")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return dict(zip(names, halves))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curves")
    c.add_argument("runs", nargs="+")
    c.add_argument("--out", default="docs/curves.png")
    c.add_argument("--stage1", default=None, help="the stage-1 run the (stage-2) runs started from")
    w = sub.add_parser("weights")
    w.add_argument("--with", dest="with_cl", required=True, help="best.pt of a run with the contrastive loss")
    w.add_argument("--without", dest="without_cl", required=True, help="best.pt of a run without it")
    w.add_argument("--out", default="docs/fig5_classifier_weights.png")
    h = sub.add_parser("halves")
    h.add_argument("checkpoints", nargs="+", help="best.pt files")
    e = sub.add_parser("epochs")
    e.add_argument("runs", nargs="+", help="run folders, or LABEL=RUN[,RUN...] groups")
    e.add_argument("--stage", type=int, choices=[1, 2], required=True)
    e.add_argument("--metric", default="f1")
    e.add_argument("--out", default="docs/epochs.png")
    args = p.parse_args(argv)
    if args.cmd == "halves":
        print(json.dumps({path: dict(zip(("F", "R"), classifier_halves(path))) for path in args.checkpoints}, indent=1))
        return 0
    if args.cmd == "curves":
        plot_curves(args.runs, args.out, args.stage1)
    elif args.cmd == "epochs":
        try:
            plot_epochs(parse_groups(args.runs), args.stage, args.out, args.metric)
        except (OSError, ValueError, KeyError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    else:
        print(json.dumps(plot_weights(args.with_cl, args.without_cl, args.out)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

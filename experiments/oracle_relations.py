"""Can the inference module combine stated facts when it is given them right? A diagnostic for the synthetic
mechanism test (scripts/make_demo_data.py).

    python experiments/oracle_relations.py --checkpoint runs/demo/best.pt [more best.pt ...] \
        --gold dataset/demo/dev.json [--json OUT]

The first pass normally reads R_0 = decode(base logits). Here it reads the gold relations of the stated facts
instead (the never-stated, "inferred": true, facts of the gold file are left out of it, so nothing is given
away), and later passes read their own predictions as usual. The report (scripts/demo_report.py's table) puts
the model as trained beside it: when the inference module gets the never-stated facts right from correct
stated facts but not from the base module's, the base module is what holds it back. With several checkpoints
(one per training seed) the table gives the mean over them, and each kind's precision pooled over them with a
95% interval from resampling the seeds and the documents.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]  # scripts/: demo_report
import demo_report  # noqa: E402
import evaluation  # noqa: E402
import predict  # noqa: E402
import prepro  # noqa: E402
from utils import DataError, UsageError  # noqa: E402


def stated_relations(feature, doc, num_class):
    """[pairs of hts, C] scores whose decoding is the gold relations of the stated facts: +1 on them, -1
    elsewhere; pairs without a stated fact get +1 on the threshold class 0 (no relation)."""
    inferred = {(lab["h"], lab["t"]) for lab in doc.get("labels", []) if lab.get("inferred") is True}
    out = -torch.ones(len(feature["hts"]), num_class)
    for i, ((h, t), rels) in enumerate(zip(feature["hts"], feature["labels"])):
        rels = [] if (h, t) in inferred else rels
        out[i, rels or [0]] = 1.0
    return out


def submissions(predictor, features, gold, passes, own=True):
    """CodaLab entries after ``passes`` passes whose first reads the stated gold facts, and (``own``) those of the
    model as trained (first pass reading the base module's logits): [given, own] or [given]."""
    by_title = {d["title"]: d for d in gold}
    id2rel, num_labels = predictor.id2rel, predictor.args.num_labels

    def official(first_input=None):
        scores = predict.pass_scores(predictor.model, features, predictor.batch_size, predictor.device,
                                     predictor.amp, passes, first_input)
        return predict.official(scores, features, num_labels, id2rel)

    given = official(lambda f: stated_relations(f, by_title[f["title"]], len(id2rel)))
    return [given, official()] if own else [given]


def diagnose(path, gold, gold_path, test_logits=None):
    """demo_report rows of one checkpoint, its own predictions then those with the stated gold facts as R_0,
    and each row's demo_report.kind_doc_counts. ``test_logits`` ("last" or "sum") replaces the run's test-time
    score (--test_logits), which also sets what each later pass reads."""
    predictor = predict.Predictor.from_checkpoint(path, device="cpu")
    if predictor.num_iterations < 1:
        raise UsageError(f"{path}: a stage-1 checkpoint has no trained inference module")
    if test_logits:
        predictor.model.recipe.test_logits = test_logits
    # with their labels (Predictor.features drops them; predictions do not read them)
    features = prepro.docred_features(gold, predictor.tokenizer, predictor.args.max_seq_length, predictor.rel2id,
                                      gold_path)
    k = predictor.num_iterations
    given, own = submissions(predictor, features, gold, k)
    preds = [(f"K={k}, R_0 from the base module (as trained)", own), (f"K={k}, R_0 = the stated gold facts", given)]
    return (demo_report.report(gold, preds, gold_path=gold_path),
            [demo_report.kind_doc_counts(gold, submission) for _, submission in preds])


def mean_rows(runs, counts):
    """Rows over the runs (one per training seed): mean precision, recall and F1; per kind, recall and precision
    pooled over the runs (from counts: each run's kind_doc_counts per row), the precision with its interval
    over runs and documents resampled."""
    rows = []
    for i, first in enumerate(runs[0]):
        row = {"label": f"{first['label']}, {len(runs)} runs"}
        for key in ("precision", "recall", "f1"):
            row[key] = sum(run[i][key] for run in runs) / len(runs)
        for kind in demo_report.COLUMNS:
            stacked = np.stack([run[i][kind] for run in counts])  # [runs, docs, 4]
            correct, predicted, gold, _ = (int(v) for v in stacked.sum((0, 1)))
            row[kind] = {**demo_report.kind_scores(correct, gold, predicted),
                         "precision_ci95": demo_report.precision_interval(stacked)}
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, nargs="+", help="best.pt of a stage-2 run (one per seed)")
    p.add_argument("--gold", required=True, help="labelled documents whose never-stated facts are marked")
    p.add_argument("--json", help="also write the report rows as JSON to this file")
    p.add_argument("--test_logits", choices=["last", "sum"],
                   help="score the passes this way instead of as each run was trained to (train.py --test_logits): "
                        "'last' reads the inference module's own logits, without the base logits the authors' "
                        "'sum' adds")
    args = p.parse_args(argv)
    try:
        gold = evaluation.load_docs(args.gold)
        if not demo_report.gold_facts(gold)[1]:
            raise DataError(f"{args.gold}: no label says whether it is inferred (see scripts/make_demo_data.py)")
        runs, counts = zip(*(diagnose(path, gold, args.gold, args.test_logits) for path in args.checkpoint))
        rows = runs[0] if len(runs) == 1 else mean_rows(runs, counts)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump({"checkpoints": args.checkpoint, "test_logits": args.test_logits, "runs": list(runs),
                           "rows": rows}, fh, indent=1)
    except (DataError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(demo_report.format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Can the inference module combine stated facts when it is given them right? A diagnostic for the synthetic
mechanism test (scripts/make_demo_data.py).

    python scripts/oracle_relations.py --checkpoint runs/demo/best.pt [more best.pt ...] \
        --gold dataset/demo/dev.json [--json OUT]

The first pass normally reads R_0 = decode(base logits). Here it reads the gold relations of the stated facts
instead (the never-stated, "inferred": true, facts of the gold file are left out of it, so nothing is given
away), and later passes read their own predictions as usual. The report (scripts/demo_report.py's table) puts
the model as trained beside it: when the inference module gets the never-stated facts right from correct
stated facts but not from the base module's, the base module is what holds it back. With several checkpoints
(one per training seed) the table gives the mean over them.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_report  # noqa: E402
import evaluation  # noqa: E402
import predict  # noqa: E402
import prepro  # noqa: E402
from utils import DataError, Pairs, UsageError, autocast, collate_fn, move_to  # noqa: E402


def stated_relations(feature, doc, num_class):
    """[pairs of hts, C] scores whose decoding is the gold relations of the stated facts: +1 on them, -1
    elsewhere; pairs without a stated fact get +1 on the threshold class 0 (no relation)."""
    inferred = {(lab["h"], lab["t"]) for lab in doc.get("labels", []) if lab.get("inferred") is True}
    out = -torch.ones(len(feature["hts"]), num_class)
    for i, ((h, t), rels) in enumerate(zip(feature["hts"], feature["labels"])):
        rels = [] if (h, t) in inferred else rels
        out[i, rels or [0]] = 1.0
    return out


def oracle_scores(predictor, features, docs):
    """Like predict.pass_scores, with the first pass reading the stated gold relations."""
    model, device = predictor.model, predictor.device
    by_title = {d["title"]: d for d in docs}
    out = []
    for start in range(0, len(features), predictor.batch_size):
        chunk = features[start:start + predictor.batch_size]
        batch = collate_fn(chunk)
        packed = torch.full(batch["pair_mask"].shape, -1, dtype=torch.long)  # (b, s, o) -> packed pair index
        packed[batch["pair_mask"]] = torch.arange(batch["pair_index"].size(1))
        hts = batch["hts"]
        with torch.no_grad(), autocast(predictor.amp, device):
            batch = move_to(batch, device)
            pairs = Pairs.of(batch)
            feats, logits = model.base_forward(batch, pairs)
            given = torch.zeros(logits.shape)  # [P, C] in the batch's packed pair order
            for j, f in enumerate(chunk):
                h, t = hts[j].unbind(1)
                given[packed[j, h, t]] = stated_relations(f, by_title[f["title"]], logits.size(-1))
            passes = [logits] + model.inference.iterate(
                feats, logits, pairs, predictor.num_iterations, model.decode,
                accumulate=model.recipe.test_logits == "sum", first_input=given.to(device))
        passes = [p.float().cpu() for p in passes]
        for j in range(len(chunk)):
            h, t = hts[j].unbind(1)
            out.append([p[packed[j, h, t]] for p in passes])
    return out


def diagnose(path, gold, gold_path):
    """demo_report rows of one checkpoint: its own predictions, then those with the stated gold facts as R_0."""
    predictor = predict.Predictor.from_checkpoint(path, device="cpu")
    if predictor.num_iterations < 1:
        raise UsageError(f"{path}: a stage-1 checkpoint has no trained inference module")
    # with their labels (Predictor.features drops them), in the order of Predictor.scores
    features = prepro.docred_features(gold, predictor.tokenizer, predictor.args.max_seq_length, predictor.rel2id,
                                      gold_path)
    k, id2rel, num_labels = predictor.num_iterations, predictor.id2rel, predictor.args.num_labels
    _, trained = predictor.scores(gold, gold_path)
    given = oracle_scores(predictor, features, gold)
    preds = [(f"K={k}, R_0 from the base module (as trained)", predict.official(trained, features, num_labels, id2rel)),
             (f"K={k}, R_0 = the stated gold facts", predict.official(given, features, num_labels, id2rel))]
    return demo_report.report(gold, preds, gold_path=gold_path)


def mean_rows(runs):
    """Rows over the runs: mean precision, recall and F1; per kind, recall and precision pooled over the runs."""
    rows = []
    for i, first in enumerate(runs[0]):
        row = {"label": f"{first['label']}, {len(runs)} runs"}
        for key in ("precision", "recall", "f1"):
            row[key] = sum(run[i][key] for run in runs) / len(runs)
        for kind in demo_report.COLUMNS:
            correct, gold, predicted = (sum(run[i][kind][key] for run in runs)
                                        for key in ("correct", "gold", "predicted"))
            # every correct fact fills its own slot: the correct predictions within the slots are `correct`
            row[kind] = demo_report._kind_scores(correct, gold, correct, predicted)
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, nargs="+", help="best.pt of a stage-2 run (one per seed)")
    p.add_argument("--gold", required=True, help="labelled documents whose never-stated facts are marked")
    p.add_argument("--json", help="also write the report rows as JSON to this file")
    args = p.parse_args(argv)
    try:
        gold = evaluation.load_docs(args.gold)
        if not demo_report.gold_facts(gold)[1]:
            raise DataError(f"{args.gold}: no label says whether it is inferred (see scripts/make_demo_data.py)")
        runs = [diagnose(path, gold, args.gold) for path in args.checkpoint]
        rows = runs[0] if len(runs) == 1 else mean_rows(runs)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump({"checkpoints": args.checkpoint, "runs": runs, "rows": rows}, fh, indent=1)
    except (DataError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(demo_report.format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

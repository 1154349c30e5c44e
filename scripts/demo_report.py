"""Recall on stated vs never-stated facts: does a model combine two stated facts into a third?

    python scripts/demo_report.py --gold dataset/demo/dev.json \
        --pred "K=0 (base module)=runs/demo/k0/dev_result.json" \
        --pred "K=3 (full model)=runs/demo/dev_result.json" [--json report.json] [--max_docs N]
    python scripts/demo_report.py --gold dataset/demo/dev.json --runs runs/f/paper/s* [--json seeds.json]

The gold file is a DocRED-format file whose labels may carry "inferred": true (scripts/make_demo_data.py
marks so every fact that no sentence states and that only follows from two stated facts). Each --pred is
LABEL=PATH (the label is split off at the last '='; a bare PATH is labelled by itself) of a CodaLab-format
prediction file: a JSON list of {"title", "h_idx", "t_idx", "r"}.

For each prediction file the report gives precision, recall and F1 over all gold facts (exactly
evaluation.docred_scores), and recall over the stated facts (no "inferred" key, or false) and over the
inferred ones, with their counts. A gold fact is the unique (title, r, h, t); it is inferred when one of its
labels says so. Recall alone rewards guessing every candidate (with two countries in a document, a
citizenship predicted for both has recall 100), so each kind also gets a precision: over the predictions
that fill a slot (title, r, h) of a gold fact of that kind, the share that is a gold fact, with its 95% interval
from resampling the documents; predictions for slots without a gold fact count in neither. A gold file in which
no label has an "inferred" key at all (DocRED, Re-DocRED) has no such split: the table then leaves out the
stated and inferred columns (None in the JSON). The JSON also has each relation's recall and precision
("by_relation"): recall alone rewards predicting a relation for every candidate pair.

With --runs (one run folder per training seed, of scripts/run_demo.sh or of a train.py stage 2: the base
module alone is RUN/k0/dev_result.json or RUN/dev_result_k0.json, the full model RUN/dev_result.json) the
report is over the seeds: for all facts, the stated and the inferred ones, the mean F1 (for a kind: from its
recall and its precision within its slots), recall and precision at K = 0 and at the full model's K, and the
difference with a 95% interval from the bootstrap over seeds and documents of resampling.py.

Prints a Markdown table; errors (missing or unreadable file, a prediction file that is not a list of
such entries, an unlabelled gold file) print one "error: ..." line and exit with status 2.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluation  # noqa: E402
import resampling  # noqa: E402
from utils import DataError  # noqa: E402

COLUMNS = ("stated", "inferred")


def gold_facts(gold_docs):
    """{(title, r, h, t): inferred?} over the unique gold facts, and whether the file marks inferred facts."""
    facts, marked = {}, False
    for doc in gold_docs:
        for lab in doc.get("labels", []):
            marked = marked or "inferred" in lab
            key = (doc["title"], lab["r"], lab["h"], lab["t"])
            facts[key] = facts.get(key, False) or lab.get("inferred") is True
    return facts, marked


def _recall(correct, gold):
    return {"recall": 100.0 * correct / gold if gold else 0.0, "correct": correct, "gold": gold}


def kind_scores(correct, gold, predicted_in_slots):
    """Recall of one kind of fact, and its precision within its slots (a correct prediction fills the slot of
    the fact it names, so the correct predictions within the slots are the `correct` facts)."""
    return {**_recall(correct, gold), "precision": 100.0 * correct / predicted_in_slots
            if predicted_in_slots else 0.0, "predicted": predicted_in_slots}


def precision_interval(counts, samples=1000, seed=0):
    """95% interval of a kind's precision within its slots: counts [docs, 4] of kind_doc_counts (correct,
    predicted in the slots, gold, 0) of one run, documents resampled with replacement; or [runs, docs, 4], one
    per training seed, the runs and the documents resampled (the same documents for every run) and the counts
    pooled over the drawn runs, as oracle_relations.mean_rows pools them."""
    counts = np.asarray(counts)
    counts = counts[None] if counts.ndim == 2 else counts  # [runs, docs, 4]
    rng = np.random.default_rng(seed)
    docs = rng.integers(0, counts.shape[1], size=(samples, counts.shape[1]))
    runs = rng.integers(0, len(counts), size=(samples, len(counts)))
    sums = counts[runs[:, :, None], docs[:, None, :]].sum((1, 2))  # [samples, runs, docs, 4] -> [samples, 4]
    precision = 100 * sums[:, 0] / np.maximum(sums[:, 1], 1)
    return [float(np.percentile(precision, 2.5)), float(np.percentile(precision, 97.5))]


def kind_doc_counts(gold_docs, submission):
    """{kind: [len(gold_docs), 4] array} of per-document counts in resampling.COUNTS order, for the stated and
    the inferred facts apart: #gold facts of that kind predicted, #predictions that fill a slot (title, r, h)
    of a gold fact of that kind, #gold facts of that kind, 0 (no Ign counts). Summed over documents they give
    the kind's recall (correct / gold) and its precision within its slots (correct / predicted)."""
    facts, _ = gold_facts(gold_docs)
    predicted = {(x["title"], x["r"], x["h_idx"], x["t_idx"]) for x in submission}
    slots = {key[:3]: COLUMNS[inferred] for key, inferred in facts.items()}  # a fact's head and relation
    row = {doc["title"]: i for i, doc in enumerate(gold_docs)}
    out = {c: np.zeros((len(gold_docs), 4)) for c in COLUMNS}
    for key, inferred in facts.items():
        counts = out[COLUMNS[inferred]][row[key[0]]]
        counts[0] += key in predicted
        counts[2] += 1
    for key in predicted:
        kind = slots.get(key[:3])
        if kind is not None:
            out[kind][row[key[0]]][1] += 1
    return out


def score_predictions(gold_docs, submission, *, gold_path=None, pred_path=None):
    """Scores of one CodaLab submission: precision/recall/f1 (percent) and counts over all gold facts,
    "stated" and "inferred" ({recall, correct, gold, precision, predicted}, or None when the gold file marks
    no inferred facts), and "by_relation" ({r: {recall, correct, gold, predicted, precision}}; predicted counts
    the unique predictions of r for gold documents)."""
    official = evaluation.docred_scores(submission, gold_docs, gold_path=gold_path, pred_path=pred_path)
    facts, marked = gold_facts(gold_docs)
    titles = {doc["title"] for doc in gold_docs}
    predicted = {(x["title"], x["r"], x["h_idx"], x["t_idx"]) for x in submission if x["title"] in titles}
    by_relation, per_relation_pred = {}, {}
    for key in facts:
        bucket = by_relation.setdefault(key[1], [0, 0])
        bucket[0] += key in predicted
        bucket[1] += 1
    for key in predicted:
        per_relation_pred[key[1]] = per_relation_pred.get(key[1], 0) + 1
    row = {k: official[k] for k in ("precision", "recall", "f1")}
    row.update(num_pred=official["num_pred"], num_gold=official["num_gold"], num_correct=official["num_correct"])
    kinds = kind_doc_counts(gold_docs, submission)
    for c in COLUMNS:
        correct, in_slots, gold, _ = (int(v) for v in kinds[c].sum(0))
        row[c] = {**kind_scores(correct, gold, in_slots), "precision_ci95": precision_interval(kinds[c])} \
            if marked else None
    row["by_relation"] = {}
    for r in sorted(set(by_relation) | set(per_relation_pred)):
        correct, gold = by_relation.get(r, (0, 0))
        n_pred = per_relation_pred.get(r, 0)
        row["by_relation"][r] = {**_recall(correct, gold), "predicted": n_pred,
                                 "precision": 100.0 * correct / n_pred if n_pred else 0.0}
    return row


def report(gold_docs, predictions, *, gold_path=None):
    """predictions: (label, submission) or (label, submission, path) tuples -> one row per file, labelled."""
    rows = []
    for label, submission, *path in predictions:
        row = score_predictions(gold_docs, submission, gold_path=gold_path, pred_path=path[0] if path else label)
        rows.append({"label": label, **row})
    return rows


def format_table(rows):
    """Markdown table of report() (or oracle_relations.mean_rows) rows; the stated / inferred columns, with each
    precision's interval, only where the gold file marks them."""
    def cells(part):
        if part is None:
            return " - | - |"
        correct_in_slots = round(part["precision"] * part["predicted"] / 100)
        return (f" {part['recall']:.2f} ({part['correct']}/{part['gold']}) | "
                f"{part['precision']:.2f} ({correct_in_slots}/{part['predicted']}) "
                "[{:.2f}, {:.2f}] |".format(*part["precision_ci95"]))
    marked = any(row[kind] is not None for row in rows for kind in COLUMNS)
    lines = ["| predictions | precision | recall | F1 |"
             + (" stated: recall | stated: precision | inferred: recall | inferred: precision |" if marked else ""),
             "|---|---|---|---|" + ("---|" * 4 if marked else "")]
    for row in rows:
        lines.append(f"| {row['label']} | {row['precision']:.2f} | {row['recall']:.2f} | {row['f1']:.2f} |"
                     + (cells(row["stated"]) + cells(row["inferred"]) if marked else ""))
    return "\n".join(lines)


def parse_pred(arg):
    """'LABEL=PATH' -> (LABEL, PATH), split at the last '='; 'PATH' -> (PATH, PATH)."""
    label, sep, path = arg.rpartition("=")
    return (label, path) if sep and label and path else (arg, arg)


def seeds_report(gold_docs, runs, samples=1000, seed=0):
    """Rows (all, stated, inferred) over the training seeds of `runs`: [(K=0 submission, full submission)]."""
    counts = {"all": [], **{c: [] for c in COLUMNS}}
    for k0, full in runs:
        pair = [resampling.doc_counts(sub, gold_docs) for sub in (k0, full)]
        counts["all"].append(pair)
        kinds = [kind_doc_counts(gold_docs, sub) for sub in (k0, full)]
        for c in COLUMNS:
            counts[c].append([kinds[0][c], kinds[1][c]])
    rows = []
    for kind, pairs in counts.items():
        sums = np.asarray([[a.sum(0), b.sum(0)] for a, b in pairs])  # [seeds, 2, 4]
        correct, pred, gold = sums[..., 0], sums[..., 1], sums[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            recall = np.where(gold > 0, 100 * correct / gold, 0.0).mean(0)
            precision = np.where(pred > 0, 100 * correct / pred, 0.0).mean(0)
        boot = resampling.seeds_bootstrap(pairs, samples=samples, seed=seed)
        rows.append({"facts": kind, "seeds": len(pairs), "f1": [boot["a"]["f1"], boot["b"]["f1"]],
                     "recall": recall.tolist(), "precision": precision.tolist(), "f1_diff": boot["f1_diff"],
                     "per_seed_diff": boot["per_seed_diff"]["f1"]})
    return rows


def format_seeds_table(rows, k):
    lines = [f"| facts | seeds | F1 K=0 | F1 K={k} | F1 difference [95% CI] | recall K=0 | recall K={k} | "
             f"precision K=0 | precision K={k} |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["f1_diff"]
        lines.append(f"| {r['facts']} | {r['seeds']} | {r['f1'][0]:.2f} | {r['f1'][1]:.2f} | {d['point']:+.2f} "
                     f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] | {r['recall'][0]:.2f} | {r['recall'][1]:.2f} | "
                     f"{r['precision'][0]:.2f} | {r['precision'][1]:.2f} |")
    return "\n".join(lines)


def read_runs(folders):
    """[(K=0 submission, full-model submission)] of run folders, and the full model's K (from eval_scores)."""
    runs, ks = [], set()
    for folder in folders:
        # K = 0: a stage-2 run folder of train.py has dev_result_k0.json, one of run_demo.sh k0/dev_result.json
        k0 = os.path.join(folder, "dev_result_k0.json")
        if not os.path.exists(k0):
            k0 = os.path.join(folder, "k0", "dev_result.json")
        runs.append((evaluation.load_docs(k0), evaluation.load_docs(os.path.join(folder, "dev_result.json"))))
        path = os.path.join(folder, "eval_scores.json")
        try:
            with open(path, encoding="utf-8") as fh:
                ks.add(max(map(int, json.load(fh).get("dev_by_k", {"0": 0}))))
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read: {e}") from None
    if len(ks) != 1:
        raise DataError(f"--runs: the runs' full models use different numbers of passes: {sorted(ks)}")
    return runs, ks.pop()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gold", required=True, help="labelled gold documents (DocRED JSON)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--pred", action="append", metavar="LABEL=PATH",
                      help="a CodaLab-format prediction file with its label; repeat for several")
    what.add_argument("--runs", nargs="+", metavar="RUN", help="run folders of scripts/run_demo.sh, one per seed")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.add_argument("--max_docs", type=int, default=0,
                   help="score only the first N gold documents and the predictions for them, as train.py "
                        "--max_eval_docs N does (0 = all)")
    args = p.parse_args(argv)
    try:
        if args.max_docs < 0:
            raise DataError(f"--max_docs must be >= 0, got {args.max_docs}")
        gold = evaluation.load_docs(args.gold)
        if args.max_docs:
            gold = gold[:args.max_docs]
        if args.runs:
            runs, k = read_runs(args.runs)
            rows = seeds_report(gold, runs)
            table = format_seeds_table(rows, k)
        else:
            rows, table = pred_report(gold, args)
        if args.json:
            try:
                with open(args.json, "w", encoding="utf-8") as fh:
                    json.dump(rows, fh, indent=1)
            except OSError as e:
                raise DataError(f"{args.json}: cannot write: {e.strerror}") from None
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    return 0


def pred_report(gold, args):
    """Rows and table of the --pred files (the predictions for the documents of `gold`)."""
    titles = {doc.get("title") for doc in gold if isinstance(doc, dict)}
    preds = []
    for label, path in map(parse_pred, args.pred):
        sub = evaluation.load_docs(path)
        if args.max_docs:
            sub = [x for x in sub if not isinstance(x, dict) or x.get("title") in titles]
        preds.append((label, sub, path))
    rows = report(gold, preds, gold_path=args.gold)
    return rows, format_table(rows)


if __name__ == "__main__":
    sys.exit(main())

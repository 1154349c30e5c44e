"""Paired bootstrap over documents: is model B's dev F1 really above model A's, or is it dev-set luck?

    python scripts/bootstrap.py --gold dataset/redocred/dev_mini.json --train dataset/redocred/train_mini.json \
        --a runs/x/dev_result_k0.json --b runs/x/dev_result.json [--samples 1000] [--seed 0]
    python scripts/bootstrap.py --gold ... --a s1/dev_result_k0.json s2/dev_result_k0.json ... \
        --b s1/dev_result.json s2/dev_result.json ...        (several seeds: pairs by position)

Both prediction files are CodaLab submissions (result.json format) of the same gold documents. Each bootstrap
sample draws len(gold) documents with replacement and scores A and B on the same draw, so the spread of
F1(B) - F1(A) over the samples is the dev-set sampling noise of the difference. It says nothing of the
seed-to-seed spread of training, which only retraining measures; it is a lower bound on the noise of a
one-seed comparison. The paper uses 1,000 bootstrap tests for its significance mark (Table 5).

With several pairs (A_i, B_i), one per training seed, the bootstrap is over seeds and documents at once: each
sample draws the seeds with replacement and the documents with replacement (the same documents for every run),
and the statistic is the mean over the drawn seeds of F1(B_i) - F1(A_i). Its interval covers both sources of
noise, the training seed and the dev sample, so it is the one to read for "B beats A" claims.

Per document we keep the counts the official scores are sums of (evaluation.docred_scores on that document
alone): #correct, #submitted, #gold, #correct-in-train, and for Infer-F1 #correct, #submitted and #gold within
the gold inference set. F1, Ign F1 and Infer-F1 of any multiset of documents follow from their sums, and on
the whole set they equal evaluation.docred_scores exactly. (Infer-F1's gold set is built per document, from
triangles of gold triples, so it too is a sum over documents.)

CDR / GDA: train.py writes those counts itself, for every pass, in dev_counts.json / test_counts.json; give
those files as --a / --b with the passes to compare (no --gold; Ign F1 is then F1, and there is no Infer-F1):

    python scripts/bootstrap.py --a runs/cdr/s*/eval_k4/test_counts.json --ka 0 \
        --b runs/cdr/s*/eval_k4/test_counts.json --kb 3
Prints one JSON object; errors print one "error: ..." line and exit with status 2.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluation  # noqa: E402
from utils import DataError  # noqa: E402

COUNTS = ("num_correct", "num_pred", "num_gold", "num_correct_in_train")
INFER_COUNTS = ("num_correct_infer", "num_pred_infer", "num_gold_infer")  # DocRED counts only
METRICS = ("f1", "ign_f1", "infer_f1")


def doc_counts(submission, gold_docs, train_docs=None, pred_path=None):
    """[len(gold_docs), 7] array of COUNTS + INFER_COUNTS, one row per gold document. Entries whose title is no
    gold document count in no row (the official precision would count them; they are reported as an error)."""
    titles = {d.get("title") for d in gold_docs}
    unknown = sorted({e.get("title") for e in submission if e.get("title") not in titles}, key=str)
    if unknown:
        raise DataError(f"{pred_path or 'submission'}: {len(unknown)} title(s) are no gold document, e.g. "
                        f"{unknown[0]!r}: both files must cover the same documents")
    by_title = {}
    for entry in submission:
        by_title.setdefault(entry["title"], []).append(entry)
    rows = []
    for doc in gold_docs:
        entries = by_title.get(doc["title"], [])
        if doc.get("labels"):
            s = evaluation.docred_scores(entries, [doc], train_docs, pred_path=pred_path)
            rows.append([s[k] for k in COUNTS + INFER_COUNTS])
        else:  # no gold fact: nothing can be correct; docred_scores refuses an unlabelled gold set
            unique = {(e["h_idx"], e["t_idx"], e["r"]) for e in entries}
            rows.append([0, len(unique), 0, 0, 0, 0, 0])
    return np.asarray(rows, dtype=np.float64)


def read_counts(path, k):
    """[documents, 4] COUNTS of pass k from a train.py <split>_counts.json (CDR / GDA), and its titles."""
    data = evaluation.load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("counts_by_k"), dict) or "titles" not in data:
        raise DataError(f"{path}: not a <split>_counts.json of train.py (no \"counts_by_k\" / \"titles\")")
    if str(k) not in data["counts_by_k"]:
        raise DataError(f"{path}: no pass {k} (passes: {', '.join(sorted(data['counts_by_k'], key=int))})")
    counts = np.asarray(data["counts_by_k"][str(k)], dtype=np.float64)
    if counts.shape != (len(data["titles"]), 3):
        raise DataError(f"{path}: pass {k} has counts of shape {counts.shape}, expected ({len(data['titles'])}, 3)")
    return np.concatenate([counts, np.zeros((len(counts), 1))], axis=1), data["titles"]


def counts_pairs(a_paths, b_paths, ka, kb):
    """(counts A, counts B) per seed from counts files; every file must list the same documents."""
    pairs, first = [], None
    for pa, pb in zip(a_paths, b_paths):
        (ca, ta), (cb, tb) = read_counts(pa, ka), read_counts(pb, kb)
        first = first or (ta, pa)
        for titles, path in ((ta, pa), (tb, pb)):
            if titles != first[0]:
                raise DataError(f"{path} and {first[1]} list other documents: compare runs on the same split")
        pairs.append((ca, cb))
    return pairs


def _f1(correct, pred, gold):
    """F1 in percent from counts, 0 where a denominator is 0 (as evaluation.docred_scores)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(pred > 0, correct / pred, 0.0)
        r = np.where(gold > 0, correct / gold, 0.0)
        return 100 * np.where(p + r > 0, 2 * p * r / (p + r), 0.0)


def f1_from_counts(c):
    """F1 and Ign F1 in percent from summed counts, and Infer-F1 where c has INFER_COUNTS too;
    c: [..., 4] or [..., 7] -> a tuple of 2 or 3 arrays of shape [...] (METRICS order)."""
    correct, pred, gold, in_train = np.moveaxis(c[..., :4], -1, 0)
    # Ign F1: the precision leaves out correct triples seen in training; the recall is the plain recall
    with np.errstate(divide="ignore", invalid="ignore"):
        ign_p = np.where(pred - in_train > 0, (correct - in_train) / (pred - in_train), 0.0)
        r = np.where(gold > 0, correct / gold, 0.0)
        ign = 100 * np.where(ign_p + r > 0, 2 * ign_p * r / (ign_p + r), 0.0)
    scores = (_f1(correct, pred, gold), ign)
    if c.shape[-1] == len(COUNTS) + len(INFER_COUNTS):
        scores += (_f1(*np.moveaxis(c[..., 4:], -1, 0)),)
    return scores


def paired_bootstrap(counts_a, counts_b, samples=1000, seed=0):
    """Point scores of A and B, and the bootstrap distribution of B - A (same document draws for both)."""
    rng = np.random.default_rng(seed)
    n = counts_a.shape[0]
    draws = rng.integers(0, n, size=(samples, n))  # [S, n] document indices
    out = {}
    for name, counts in (("a", counts_a), ("b", counts_b)):
        out[name] = {m: float(v) for m, v in zip(METRICS, f1_from_counts(counts.sum(0)))}
        out[f"_{name}_samples"] = f1_from_counts(counts[draws].sum(1))  # two or three [S] arrays
    result = {"a": out["a"], "b": out["b"], "samples": samples, "documents": n}
    for i, metric in enumerate(out["a"]):
        diff = out["_b_samples"][i] - out["_a_samples"][i]
        lo, hi = np.percentile(diff, [2.5, 97.5])
        result[f"{metric}_diff"] = {
            "point": out["b"][metric] - out["a"][metric], "std": float(diff.std(ddof=1)),
            "ci95": [float(lo), float(hi)],
            # one-sided: the share of samples in which B is not better than A
            "p_b_not_better": float((diff <= 0).mean())}
    return result


def seeds_bootstrap(pairs, samples=1000, seed=0):
    """pairs: [(counts_a, counts_b), ...], one per seed, over the same documents. Mean and per-seed point scores
    and the bootstrap distribution (seeds and documents resampled) of the mean difference B - A."""
    rng = np.random.default_rng(seed)
    n, m = pairs[0][0].shape[0], len(pairs)
    draws = rng.integers(0, n, size=(samples, n))  # [S, n] documents, shared by every run
    picks = rng.integers(0, m, size=(samples, m))  # [S, m] seeds
    diffs, points = [], []
    for counts_a, counts_b in pairs:
        fa, fb = f1_from_counts(counts_a[draws].sum(1)), f1_from_counts(counts_b[draws].sum(1))  # M [S] arrays each
        diffs.append(np.stack([b - a for a, b in zip(fa, fb)]))  # [M, S]: F1, Ign F1 (, Infer-F1)
        points.append([f1_from_counts(counts_a.sum(0)), f1_from_counts(counts_b.sum(0))])
    diffs = np.stack(diffs)  # [m, M, S]
    sampled = diffs[picks, :, np.arange(samples)[:, None]].mean(1)  # [S, M]: mean over the drawn seeds
    points = np.asarray(points, dtype=np.float64)  # [m, 2, M]: per seed, A and B
    metrics = METRICS[:points.shape[2]]
    result = {"seeds": m, "samples": samples, "documents": n,
              "a": {k: float(points[:, 0, i].mean()) for i, k in enumerate(metrics)},
              "b": {k: float(points[:, 1, i].mean()) for i, k in enumerate(metrics)},
              "per_seed_diff": {k: (points[:, 1, i] - points[:, 0, i]).tolist() for i, k in enumerate(metrics)}}
    for i, metric in enumerate(metrics):
        lo, hi = np.percentile(sampled[:, i], [2.5, 97.5])
        result[f"{metric}_diff"] = {"point": result["b"][metric] - result["a"][metric],
                                    "std": float(sampled[:, i].std(ddof=1)), "ci95": [float(lo), float(hi)],
                                    "p_b_not_better": float((sampled[:, i] <= 0).mean())}
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gold", help="labelled DocRED-format documents (not with counts files)")
    p.add_argument("--a", required=True, nargs="+", help="result.json of model A (e.g. the base module), one per seed, "
                   "or a CDR / GDA <split>_counts.json with --ka")
    p.add_argument("--b", required=True, nargs="+", help="result.json of model B (e.g. the full model), one per seed, "
                   "or a CDR / GDA <split>_counts.json with --kb")
    p.add_argument("--ka", type=int, help="pass of the --a counts files (0: the base module)")
    p.add_argument("--kb", type=int, help="pass of the --b counts files")
    p.add_argument("--train", default=None, help="training documents, for Ign F1")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        if args.samples < 2:
            raise DataError(f"--samples must be >= 2, got {args.samples}")
        if len(args.a) != len(args.b):
            raise DataError(f"--a has {len(args.a)} files and --b {len(args.b)}: give one pair per seed")
        if (args.ka is None) != (args.kb is None):
            raise DataError("--ka and --kb go together (the passes of the --a and --b counts files)")
        if args.ka is not None:
            pairs = counts_pairs(args.a, args.b, args.ka, args.kb)
        elif not args.gold:
            raise DataError("--gold is required for result.json files (counts files take --ka and --kb instead)")
        else:
            gold = evaluation.load_docs(args.gold)
            train = evaluation.load_docs(args.train) if args.train else None
            pairs = [tuple(doc_counts(evaluation.load_docs(path), gold, train, pred_path=path) for path in pair)
                     for pair in zip(args.a, args.b)]
    except (OSError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(pairs) == 1:
        print(json.dumps(paired_bootstrap(*pairs[0], samples=args.samples, seed=args.seed), indent=1))
    else:
        print(json.dumps(seeds_bootstrap(pairs, samples=args.samples, seed=args.seed), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

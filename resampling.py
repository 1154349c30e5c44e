"""Per-document counts of the DocRED scores and the paired bootstrap over them, shared by
experiments/bootstrap.py (model A against model B) and scripts/demo_report.py (over training seeds).

Per document we keep the counts the official scores are sums of (evaluation.docred_scores on that document
alone): #correct, #submitted, #gold, #correct-in-train, and for Infer-F1 #correct, #submitted and #gold within
the gold inference set. F1, Ign F1 and Infer-F1 of any multiset of documents follow from their sums, and on
the whole set they equal evaluation.docred_scores exactly. (Infer-F1's gold set is built per document, from
triangles of gold triples, so it too is a sum over documents.)
"""
import numpy as np

import evaluation
from utils import DataError

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

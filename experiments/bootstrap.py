"""Paired bootstrap over documents: is model B's dev F1 really above model A's, or is it dev-set luck?

    python experiments/bootstrap.py --gold dataset/redocred/dev_mini.json --train dataset/redocred/train_mini.json \
        --a runs/x/dev_result_k0.json --b runs/x/dev_result.json [--samples 1000] [--seed 0]
    python experiments/bootstrap.py --gold ... --a s1/dev_result_k0.json s2/dev_result_k0.json ... \
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

What is resampled are per-document counts that the official scores are sums of (resampling.py). CDR / GDA:
train.py writes those counts itself, for every pass, in dev_counts.json / test_counts.json; give
those files as --a / --b with the passes to compare (no --gold; Ign F1 is then F1, and there is no Infer-F1):

    python experiments/bootstrap.py --a runs/cdr/s*/eval_k4/test_counts.json --ka 0 \
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
from resampling import doc_counts, paired_bootstrap, seeds_bootstrap  # noqa: E402
from utils import DataError  # noqa: E402


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

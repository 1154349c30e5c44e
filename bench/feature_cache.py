"""Time preprocessing of one file with the bundled tokenizer, cold (empty cache) and warm (from cache).

Usage: python bench/feature_cache.py [--file PATH] [--dataset docred|cdr|gda] [--repeat 3] [--max_seq_length 1024]

Default file: ../shared/data/redocred/train_mini.json next to the checkout, or,
where that is missing, 400 synthetic DocRED-format documents written to a
temporary folder. Prints a table and writes bench/results/feature_cache.json.
"""
import argparse
import gc
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on sys.path)

import prepro  # noqa: E402
import rundir  # noqa: E402
import utils  # noqa: E402

ROOT = common.ROOT

DEFAULT_FILE = os.path.join(ROOT, "..", "shared", "data", "redocred", "train_mini.json")


def timed(fn):
    # Collect first so that a full collection owed to the previous run's
    # objects is not billed to this one.
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", help="data file (default: Re-DocRED train_mini, else synthetic docs)")
    parser.add_argument("--dataset", default="docred", choices=["docred", "cdr", "gda"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max_seq_length", type=int, default=1024)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        path, source = args.file, args.file
        if path is None and os.path.exists(DEFAULT_FILE):
            path, source = DEFAULT_FILE, "redocred/train_mini.json"
        elif path is None:
            path, source = os.path.join(scratch, "synthetic.json"), "synthetic (400 docs)"
            rundir.atomic_write_json(path, common.synthetic_documents(400))
        load_s, tokenizer = timed(lambda: prepro.load_tokenizer(utils.default_model_path(), "bert"))

        def load(cache_dir):
            return prepro.load_features(path, args.dataset, tokenizer, args.max_seq_length, cache_dir=cache_dir)

        cold, warm = [], []
        for r in range(args.repeat):
            cache_dir = os.path.join(scratch, f"cache{r}")  # fresh and empty: a cold run
            seconds, features = timed(lambda: load(cache_dir))
            cold.append(seconds)
            warm.append(timed(lambda: load(cache_dir))[0])

    n_docs = len(features)
    rows = [("cold (parse + tokenize + write cache)", cold), ("warm (read cache)", warm)]
    print(f"file: {source}   docs: {n_docs}   pairs: {sum(len(f['hts']) for f in features)}   "
          f"tokenizer load: {load_s:.2f} s")
    print(f"{'run':<40}{'docs':>6}{'best s':>9}{'mean s':>9}{'docs/s':>9}")
    for name, times in rows:
        print(f"{name:<40}{n_docs:>6}{min(times):>9.3f}{sum(times) / len(times):>9.3f}{n_docs / min(times):>9.0f}")

    result = {
        "file": source, "dataset": args.dataset, "docs": n_docs, "max_seq_length": args.max_seq_length,
        "repeat": args.repeat, "tokenizer_load_s": load_s,
        "cold_s": cold, "warm_s": warm,
        "cold_docs_per_s": n_docs / min(cold), "warm_docs_per_s": n_docs / min(warm),
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "prepro_version": prepro.PREPRO_VERSION,
    }
    out = os.path.join(ROOT, "bench", "results", "feature_cache.json")
    rundir.atomic_write_json(out, result, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

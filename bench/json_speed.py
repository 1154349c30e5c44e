"""Time the standard json module against ujson on the project's JSON reads and writes.

Usage: python bench/json_speed.py [--repeat 11] [--data ../shared/data]

Reads: DocRED test.json and Re-DocRED train_mini.json (what prepro.load_features and evaluation.load_docs
parse), and a feature cache of train_mini.json's size; both sides decode the bytes first (strict UTF-8), as
evaluation.loads_json does. Writes: a CodaLab result list
(one entry per gold fact of dev_revised.json, what train.py writes as result.json) and the feature cache.
Each case runs with the cyclic garbage collector on (evaluation.load_docs) and paused (prepro). The median
of --repeat runs is reported; json and ujson alternate inside each repeat so that load changes hit both.
Writes bench/results/json_speed.json.
"""
import argparse
import gc
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ujson  # noqa: E402

from common import machine_info  # noqa: E402


def fake_features(docs):
    """Feature-shaped objects of the documents' size (ints and lists only, like the real cache)."""
    feats = []
    for d, doc in enumerate(docs):
        n = len(doc["vertexSet"])
        words = sum(len(s) for s in doc["sents"])
        feats.append({"title": doc["title"], "input_ids": list(range(1000, 1000 + words + 2 * n + 2)),
                      "entity_pos": [[[i, i + 2] for i, _ in enumerate(e)] for e in doc["vertexSet"]],
                      "hts": [[h, t] for h in range(n) for t in range(n) if h != t],
                      "labels": [[] for _ in range(n * (n - 1))], "num_entities": n, "num_class": 97})
    return feats


def timed(fn, paused):
    gc.collect()
    if paused:
        gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        gc.enable()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    args = parser.parse_args()
    raw = {name: open(os.path.join(args.data, *name.split("/")), "rb").read()
           for name in ("docred/test.json", "redocred/train_mini.json", "redocred/dev_revised.json")}
    dev = json.loads(raw["redocred/dev_revised.json"])
    result = [{"title": d["title"], "h_idx": lab["h"], "t_idx": lab["t"], "r": lab["r"]}
              for d in dev for lab in d["labels"]]
    feats = fake_features(json.loads(raw["redocred/train_mini.json"]))
    cache = json.dumps(feats, separators=(",", ":")).encode("utf-8")
    cases = {
        "load docred/test.json": (lambda: json.loads(raw["docred/test.json"].decode("utf-8")),
                                  lambda: ujson.loads(raw["docred/test.json"].decode("utf-8"))),
        "load redocred/train_mini.json": (lambda: json.loads(raw["redocred/train_mini.json"].decode("utf-8")),
                                          lambda: ujson.loads(raw["redocred/train_mini.json"].decode("utf-8"))),
        "load feature cache (train_mini)": (lambda: json.loads(cache.decode("utf-8")),
                                            lambda: ujson.loads(cache.decode("utf-8"))),
        f"write result list ({len(result)} entries)": (
            lambda: json.dumps(result, ensure_ascii=False).encode("utf-8"),
            lambda: ujson.dumps(result, ensure_ascii=False).encode("utf-8")),
        "write feature cache (train_mini)": (lambda: json.dumps(feats, separators=(",", ":")).encode("utf-8"),
                                             lambda: ujson.dumps(feats).encode("utf-8")),
    }
    rows, samples = [], {}
    for name, (std, fast) in cases.items():
        for paused in (False, True):
            times = {"json": [], "ujson": []}
            for _ in range(args.repeat):
                times["json"].append(timed(std, paused))
                times["ujson"].append(timed(fast, paused))
            med = {k: statistics.median(v) for k, v in times.items()}
            key = f"{name}, gc {'paused' if paused else 'on'}"
            samples[key] = times
            rows.append((key, med["json"] * 1e3, med["ujson"] * 1e3, med["json"] / med["ujson"]))
    print(f"{'case':58s} {'json ms':>9s} {'ujson ms':>9s} {'speed-up':>9s}")
    for key, a, b, ratio in rows:
        print(f"{key:58s} {a:9.1f} {b:9.1f} {ratio:8.2f}x")
    out = os.path.join(ROOT, "bench", "results", "json_speed.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"command": " ".join(sys.argv), "machine": machine_info("cpu"), "ujson": ujson.__version__,
                   "median_ms": {k: {"json": a, "ujson": b} for k, a, b, _ in rows}, "samples_s": samples},
                  f, indent=1)


if __name__ == "__main__":
    main()

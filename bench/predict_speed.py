"""Speed of predict.py on a CPU: documents per second of the text path (--text: markup read, sentences split,
documents built, then predicted) beside the JSON path (--input: the same documents as DocRED JSON), and the time
to the first prediction of a fresh `python predict.py` process (start-up, checkpoint and encoder loading
included), for each path.

    python bench/predict_speed.py --checkpoint runs/demo/best.pt [--docs 64] [--repeats 5] [--starts 3]
        [--threads 1] [--data dataset/docred/test.json]

The documents are the first --docs of --data (default: DocRED's test.json when dataset/docred holds it, else
bench/common.py's synthetic ones), written as markup text (to_markup) and read back by text_input.py; the JSON
path reads the documents that reading gives, so both paths predict the same documents. The two paths alternate
inside each repeat (which goes first alternates too), so that load changes hit both; the medians are reported,
and the median of the per-repeat ratios. The 1-minute load average before and
after is recorded (other work on the machine slows both paths). --amp auto: bf16 on a CPU with bf16 matrix
instructions, fp32 elsewhere (the JSON says which). Writes bench/results/predict_speed.json.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import common
from common import ROOT, machine_info, set_threads, synthetic_documents

import evaluation
import text_input
from predict import Predictor
from rundir import atomic_write_bytes, atomic_write_json
from utils import describe_amp

DEFAULT_DATA = os.path.join(ROOT, "dataset", "docred", "test.json")
SPECIAL = str.maketrans({c: "\\" + c for c in text_input.ESCAPED})


def to_markup(doc):
    """A DocRED document as markup text after a "# title" line: words joined by spaces, an entity's first mention
    [text|TYPE] and its others [text|=first text]. A mention that overlaps one written before is left as text, as
    is one whose text already names an entity of another type; entities with one name become one."""
    marks, taken, first, types = {}, set(), {}, {}
    mentions = sorted((m["sent_id"], m["pos"][0], -m["pos"][1], e) for e, entity in enumerate(doc["vertexSet"])
                      for m in entity)
    for sent, start, neg_end, e in mentions:
        words = {(sent, w) for w in range(start, -neg_end)}
        text = " ".join(doc["sents"][sent][start:-neg_end])
        kind = doc["vertexSet"][e][0].get("type") if doc["vertexSet"][e][0].get("type") in text_input.TYPES \
            else "MISC"
        key = " ".join(text.casefold().split())
        if words & taken or (e not in first and types.get(key, kind) != kind):
            continue
        taken |= words
        label = f"={first[e]}" if e in first else kind
        first.setdefault(e, text)
        types.setdefault(key, kind)
        marks[sent, start] = (-neg_end, label.translate(SPECIAL))
    sentences = []
    for s, sent in enumerate(doc["sents"]):
        out, w = [], 0
        while w < len(sent):
            if (s, w) in marks:
                end, label = marks[s, w]
                out.append(f"[{' '.join(sent[w:end]).translate(SPECIAL)}|{label}]")
                w = end
            else:
                out.append(sent[w].translate(SPECIAL))
                w += 1
        sentences.append(" ".join(out))
    return f"# {doc['title']}\n" + " ".join(sentences) + "\n"


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def first_prediction(args, flag, path, out):
    """Seconds from starting `python predict.py` to its exit, for one document."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads or os.cpu_count()))
    cmd = [sys.executable, os.path.join(ROOT, "predict.py"), "--checkpoint", args.checkpoint, flag, path,
           "--output", out, "--overwrite", "--device", "cpu"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"predict.py failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="best.pt of a run")
    p.add_argument("--docs", type=int, default=64, help="documents per timed call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--starts", type=int, default=3, help="fresh predict.py processes per path")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--data", default=DEFAULT_DATA, help="DocRED-format documents (labels unused)")
    p.add_argument("--out", default="predict_speed.json", help="file name under bench/results/")
    args = p.parse_args(argv)
    set_threads(args.threads)
    load_before = os.getloadavg()[0]
    source = args.data if os.path.exists(args.data) else None
    originals = evaluation.load_docs(source)[:args.docs] if source else synthetic_documents(args.docs)
    predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        text_path, json_path = os.path.join(folder, "docs.txt"), os.path.join(folder, "docs.json")
        atomic_write_bytes(text_path, "\n".join(map(to_markup, originals)).encode("utf-8"))
        docs = text_input.read(text_path)
        atomic_write_json(json_path, docs)
        paths = {"text": lambda: predictor.predict(text_input.read(text_path), text_path),
                 "json": lambda: predictor.predict(evaluation.load_docs(json_path), json_path)}
        for fn in paths.values():  # warm-up: first calls allocate
            fn()
        samples = {"text": [], "json": [], "read text only": []}
        for i in range(args.repeats):
            for name in ("text", "json") if i % 2 == 0 else ("json", "text"):  # neither always goes first
                samples[name].append(timed(paths[name]))
            samples["read text only"].append(timed(lambda: text_input.read(text_path)))
        one_text, one_json = os.path.join(folder, "one.txt"), os.path.join(folder, "one.json")
        atomic_write_bytes(one_text, to_markup(originals[0]).encode("utf-8"))
        atomic_write_json(one_json, text_input.read(one_text))
        out = os.path.join(folder, "preds.json")
        starts = {"text": [], "json": []}
        for _ in range(args.starts):
            starts["text"].append(first_prediction(args, "--text", one_text, out))
            starts["json"].append(first_prediction(args, "--input", one_json, out))
    median = {k: statistics.median(v) for k, v in samples.items()}
    paired = statistics.median(a / b for a, b in zip(samples["text"], samples["json"]))
    first = {k: statistics.median(v) for k, v in starts.items()}
    words = sum(len(s) for d in docs for s in d["sents"])
    rows = [(f"{name} path", f"{median[name] * 1e3:.0f}", f"{len(docs) / median[name]:.2f}",
             f"{median[name] / median['json']:.3f}", f"{first[name]:.2f}") for name in ("text", "json")]
    rows.append(("reading the text alone", f"{median['read text only'] * 1e3:.1f}",
                 f"{len(docs) / median['read text only']:.0f}", f"{median['read text only'] / median['json']:.3f}",
                 ""))
    print(f"{len(docs)} documents ({words} words, {sum(len(d['vertexSet']) for d in docs)} entities) from "
          f"{source or 'bench/common.py (synthetic)'}; {describe_amp('auto', predictor.amp, 'cpu')[0]}; "
          f"K = {predictor.num_iterations}; {args.threads or 'default'} thread(s)")
    print(common.fmt_table(["path", "ms per call", "docs/s", "time / JSON path", "first prediction s"], rows))
    print(f"text / JSON time, median of the per-repeat ratios: {paired:.3f}")
    load_after = os.getloadavg()[0]
    print(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after")
    path = common.write_json(args.out, {
        "command": " ".join(sys.argv), "machine": machine_info("cpu"), "amp": predictor.amp,
        "k": predictor.num_iterations, "data": source or "synthetic", "docs": len(docs), "words": words,
        "median_s": median, "docs_per_s": {k: len(docs) / v for k, v in median.items()},
        "text_over_json_per_repeat_median": paired,
        "first_prediction_s": first, "samples_s": samples, "first_prediction_samples_s": starts,
        "loadavg_1m": {"before": load_before, "after": load_after}})
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared helpers of the benchmarks: machine description, real or synthetic batches, model building,
timing (median over repeats), counted FLOPs and result files.

The benchmarks import the project modules from the repository root, whatever the working directory.
"""
import contextlib
import datetime
import os
import platform
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from utils import cpu_native_matmul  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results")
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "redocred", "train_mini.json")


# ---------------------------------------------------------------- machine
def cpu_model():
    """The model string of /proc/cpuinfo, then torch's vector instruction set and whether bf16 matrix products
    run natively, e.g. "AMD EPYC (AVX2, bf16 matmul: no)": the model string alone does not tell two generations
    of a CPU apart, and bf16 timings differ between them by two orders of magnitude (docs/PERFORMANCE.md 1.2)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    native = "yes" if cpu_native_matmul("bf16") else "no"
    return f"{name} ({torch.backends.cpu.get_cpu_capability()}, bf16 matmul: {native})"


def machine_info(device):
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def set_threads(n):
    if n and n > 0:
        torch.set_num_threads(n)


# ---------------------------------------------------------------- data
def synthetic_documents(n_docs, seed=0, n_entities=(10, 30), n_sents=(5, 11)):
    """DocRED-format documents of about real size (~200-400 words, 10-30 entities), written for the benchmarks."""
    import prepro
    rng = random.Random(seed)
    words = ["river", "album", "station", "league", "novel", "village", "company", "museum", "bridge", "island",
             "was", "is", "built", "formed", "near", "in", "on", "the", "a", "of", "by", "from", "and", "with"]
    rels = [r for r in prepro.load_rel2id() if r != "Na"]
    docs = []
    for d in range(n_docs):
        sents = []
        for _ in range(rng.randint(*n_sents)):
            sents.append([rng.choice(words) for _ in range(rng.randint(18, 34))] + ["."])
        vertex = []
        for _ in range(rng.randint(*n_entities)):
            mentions = []
            for _ in range(rng.choice((1, 1, 2, 3))):
                sid = rng.randrange(len(sents))
                a = rng.randrange(len(sents[sid]) - 2)
                b = min(a + rng.randint(1, 3), len(sents[sid]) - 1)
                mentions.append({"name": " ".join(sents[sid][a:b]), "pos": [a, b], "sent_id": sid, "type": "ORG"})
            vertex.append(mentions)
        labels = []
        for _ in range(rng.randint(5, 40)):
            h, t = rng.sample(range(len(vertex)), 2)
            labels.append({"h": h, "t": t, "r": rng.choice(rels), "evidence": []})
        docs.append({"title": f"bench-{d}", "sents": sents, "vertexSet": vertex, "labels": labels})
    return docs


def load_tokenizer():
    import prepro
    import utils
    return prepro.load_tokenizer(utils.default_model_path(), "bert")


def load_docs(tokenizer, n_docs, data=None, max_seq_length=1024):
    """Features of the first n_docs documents of Re-DocRED train_mini (or ``data``), else synthetic ones.
    Returns (features, source description)."""
    import prepro
    import rundir
    path = data or DEFAULT_DATA
    cache = os.path.join(RESULTS, "cache")
    if os.path.exists(path):
        feats = prepro.load_features(path, "docred", tokenizer, max_seq_length, prepro.load_rel2id(), cache_dir=cache)
        return feats[:n_docs], os.path.relpath(os.path.abspath(path), os.path.dirname(ROOT))
    path = os.path.join(cache, f"synthetic-{n_docs}.json")
    if not os.path.exists(path):
        rundir.atomic_write_json(path, synthetic_documents(n_docs))
    feats = prepro.load_features(path, "docred", tokenizer, max_seq_length, prepro.load_rel2id(), cache_dir=cache)
    return feats[:n_docs], f"synthetic ({n_docs} docs, bench/common.py)"


def make_batches(features, n_batches, batch_size):
    from utils import collate_fn
    return [collate_fn(features[i * batch_size:(i + 1) * batch_size]) for i in range(n_batches)]


def batch_stats(batches):
    docs = sum(b["input_ids"].size(0) for b in batches)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    pairs = sum(int(b["pair_mask"].sum()) for b in batches)
    ents = sum(int(b["pair_mask"].any(-1).sum()) for b in batches)
    return {"docs": docs, "tokens": tokens, "pairs": pairs, "entities": ents,
            "max_entities": max(b["pair_mask"].size(1) for b in batches),
            "max_len": max(b["input_ids"].size(1) for b in batches)}


def move(batch, device):
    from utils import move_to
    return move_to(batch, device)


# ---------------------------------------------------------------- timing
def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device, repeats, warmup=1):
    """Median (and all samples) of wall time of fn() in seconds, after warm-up calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), samples


def count_flops(fn):
    """FLOPs counted by FlopCounterMode for one call of fn() (matmul/conv/attention only: the floor)."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def autocast(device, amp):
    if amp in (None, "none"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)


def write_json(name, obj):
    import rundir
    path = os.path.join(RESULTS, name)
    rundir.atomic_write_json(path, obj, indent=2)
    return path


def fmt_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])

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


# ---------------------------------------------------------------- profile by component
COMPONENT = "component::"  # prefix of the record_function scopes that name a component of a step


@contextlib.contextmanager
def component_scopes(scopes):
    """While the block lasts, each (object, method name, component) of ``scopes`` runs inside
    record_function(COMPONENT + component): an instance attribute wraps the bound method (a module's forward too,
    which __call__ reads from the instance). Nothing of the objects' code changes; the attributes go on exit."""
    saved = []
    for obj, name, label in scopes:
        method = getattr(obj, name)

        def scoped(*args, _method=method, _label=COMPONENT + label, **kwargs):
            with torch.profiler.record_function(_label):
                return _method(*args, **kwargs)
        saved.append((obj, name, vars(obj).get(name), name in vars(obj)))
        setattr(obj, name, scoped)
    try:
        yield
    finally:
        for obj, name, old, had in reversed(saved):
            if had:
                setattr(obj, name, old)
            else:
                delattr(obj, name)


def docre_scopes(model):
    """The components of our DocREModel for component_scopes: (object, method, component). Ops of the model's own
    forward or predict (the losses, the noise and views of stage 2, decoding between passes) are "losses, noise,
    decoding"; those of an inference layer outside its ECA units are its fusion gate, FNNs and LayerNorms."""
    base, inference = model.base, model.inference
    scopes = [(model, "forward", "losses, noise, decoding"), (model, "predict", "losses, noise, decoding"),
              (base, "forward", "base module, other"), (base.encoder, "forward", "encoder"),
              (base, "pool_entities", "mention pooling"), (base, "localized_context", "localized context pooling"),
              (base, "pair_features", "pair features"), (base.classifier, "forward", "base classifier"),
              (inference.reduce, "forward", "inference: reduce, relation embedding"),
              (inference, "relation_matrix", "inference: reduce, relation embedding"),
              (inference.classifier, "forward", "inference: classifier")]
    if base.pair_form == "bilinear":
        scopes.append((base.pair_fnn, "forward", "pair features: Linear(emb*block -> emb) + ReLU"))
    for layer in inference.layers:
        scopes += [(layer, "forward", "inference: fusion, FNNs, LayerNorms"),
                   (layer, "fixed", "inference: ECA projections, dropout")]
        for unit in (layer.eca_f, layer.eca_r):
            scopes += [(unit, "forward", "inference: ECA projections, dropout"),
                       (unit.q, "forward", "inference: ECA projections, dropout"),
                       (unit, "keys_values", "inference: ECA projections, dropout"),
                       (unit, "attend", "inference: ECA attention")]
    if model.predictor is not None:
        scopes.append((model.predictor, "forward", "SimSiam predictor"))
    return scopes


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def component_profile(fn, scopes):
    """Self time of every op of one call of fn() (after an untimed one), by component, forward and backward apart.

    An op belongs to the innermost component scope (component_scopes) around it; an op of the backward pass to
    the component of the forward op that created its autograd node (the profiler's sequence number links the
    two); gradient accumulation into .grad and ops outside every scope are components of their own. The self
    time of a scope itself is Python between its ops ("python" below). CPU only (one thread: the backward pass
    runs in the calling thread). Returns {"total_ms", "components": {name: {"forward_ms", "backward_ms",
    "gemm_ms", "gemm_gflop", "ops": {op: ms}}}}: gemm_* are the matrix products' (GEMM_OPS) self time and the
    FLOPs the profiler counts for them."""
    from torch.profiler import ProfilerActivity, profile
    with component_scopes(scopes):
        fn()
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            fn()
    events = prof.events()

    def outer(e, test):
        while e is not None and not test(e):
            e = e.cpu_parent
        return e

    def in_scope(e):
        return e.name.startswith(COMPONENT)

    def is_node(e):
        return e.name.startswith("autograd::engine::evaluate_function")

    # Sequence number -> component of the forward op that created that autograd node. Every op records the number
    # the next node will get, so the ops before a node's creator share it: the creator is the last to start.
    creator = {}
    for e in events:
        if e.sequence_nr >= 0 and outer(e, is_node) is None and (
                e.sequence_nr not in creator or e.time_range.start >= creator[e.sequence_nr].time_range.start):
            creator[e.sequence_nr] = e
    forward_of = {}
    for seq, e in creator.items():
        scope = outer(e, in_scope)
        forward_of[seq] = scope.name[len(COMPONENT):] if scope else "outside every scope"
    parts, total = {}, 0.0
    for e in events:
        ms = e.self_cpu_time_total / 1e3
        total += ms
        node, scope = outer(e, is_node), outer(e, in_scope)
        if node is not None:
            name = ("gradient accumulation" if "AccumulateGrad" in node.name else
                    forward_of.get(node.sequence_nr, "outside every scope"))
            direction = "backward_ms"
        else:
            name = scope.name[len(COMPONENT):] if scope else "outside every scope"
            direction = "forward_ms"
        part = parts.setdefault(name, {"forward_ms": 0.0, "backward_ms": 0.0, "gemm_ms": 0.0, "gemm_gflop": 0.0,
                                       "ops": {}})
        part[direction] += ms
        if e.name in GEMM_OPS:
            part["gemm_ms"] += ms
            part["gemm_gflop"] += (e.flops or 0) / 1e9
        op = "python" if in_scope(e) else e.name
        part["ops"][op] = part["ops"].get(op, 0.0) + ms
    for part in parts.values():
        part["ops"] = dict(sorted(part["ops"].items(), key=lambda kv: -kv[1]))
    return {"total_ms": total, "components": dict(sorted(parts.items(), key=lambda kv: -sum(
        kv[1][d] for d in ("forward_ms", "backward_ms"))))}


def component_table(result, top=3):
    """component_profile's result as a table: ms forward and backward, share, the matrix products' share and
    GFLOP/s, the ops that take most."""
    rows = []
    for name, part in result["components"].items():
        ms = part["forward_ms"] + part["backward_ms"]
        if ms < 0.5:
            continue
        ops = ", ".join(f"{op.replace('aten::', '')} {t:.0f}" for op, t in list(part["ops"].items())[:top])
        gemm = (f"{part['gemm_ms'] / ms * 100:.0f}% at {part['gemm_gflop'] / part['gemm_ms'] * 1e3:.0f}"
                if part["gemm_ms"] > 0.1 else "")
        rows.append([name, f"{part['forward_ms']:.0f}", f"{part['backward_ms']:.0f}", f"{ms:.0f}",
                     f"{ms / result['total_ms'] * 100:.1f}%", gemm, ops])
    return fmt_table(["component", "forward ms", "backward ms", "total ms", "share", "GEMM: share at GFLOP/s",
                      "top ops (ms)"], rows)


def write_json(name, obj):
    import rundir
    path = os.path.join(RESULTS, name)
    rundir.atomic_write_json(path, obj, indent=2)
    return path


def fmt_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])

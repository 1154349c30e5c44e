"""GPU training cost of the paper's configurations: throughput and model FLOP utilisation, a profile of one
step, peak memory per stage, and the largest batch that fits.

Sections (``--sections``, comma list):
  throughput  stage-1 and stage-2 training steps of a BERT-base-sized encoder (random init from BertConfig(),
              nothing downloaded) on DocRED-shaped batches (--batch_size documents of 400-512 tokens, about
              --entities entities, one document in --big_every with 42), for every precision (bf16 autocast,
              fp32, fp32 with TF32) x encoder attention (eager in all layers, SDPA in all but the last):
              ms/step, docs/s, tokens/s, FLOPs counted by FlopCounterMode, achieved TFLOP/s and MFU
              against the bf16 dense peak (--peak_tflops) and against a measured bf16 matmul ceiling.
  profile     torch.profiler over bf16 steps of both stages and attentions: GPU busy time / step time
              and the GPU time by kernel class (matmul, attention, softmax, dropout RNG, norm, elementwise,
              copies, other), i.e. where the time that is not matmul goes.
  memory      peak allocated GPU memory of a stage-1 step, a stage-2 step and a K=3 evaluation, bf16, for
              bert-base (batch 8) and roberta-large (batch 4) at Table 7 settings, on the typical batches
              and on a worst-case batch (every document 512 tokens and 42 entities).
  maxbatch    the largest training batch of worst-case documents that fits on this GPU, per encoder and
              stage (doubling, then bisection; an out-of-memory step is caught and retried smaller).

A step = forward + backward + gradient clipping + AdamW on the stage's parameter groups, as train.py does.
Usage: python bench/gpu.py [--sections throughput,profile,memory,maxbatch] [--out gpu.json] ...
       python bench/gpu.py --tiny --device cpu     # smoke test of every code path on a CPU (tiny encoders)
Writes bench/results/<--out>.
"""
import argparse
import gc
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on sys.path)

import torch  # noqa: E402


NUM_CLASS = 97
PRECISIONS = {"bf16": ("bf16", False), "fp32": ("none", False), "tf32": ("none", True)}
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
KERNEL_CLASSES = (  # (class, substrings of a CUDA kernel name), first match wins
    ("attention", ("flash", "fmha", "attention", "mem_eff")),
    ("matmul", ("gemm", "cutlass", "xmma", "sm90_", "cublas", "matmul", "wgmma")),
    ("softmax", ("softmax",)),
    ("dropout RNG", ("bernoulli", "dropout", "philox", "fused_dropout")),
    ("norm", ("layer_norm", "layernorm", "batch_norm", "norm_kernel")),
    ("copies", ("copy", "memcpy", "memset", "cat", "index", "scatter", "gather", "fill")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "reduce")),
)


def synthetic_features(n_docs, tokens, entities, big_every, vocab, cls_id, sep_id, seed=0, worst=False, big=42):
    """DocRED-shaped prepro features: tokens in [tokens[0], tokens[1]], entities ~ U(0.7, 1.3) x ``entities``
    with 1-3 mentions, one document in ``big_every`` with ``big`` (42, DocRED's largest) entities, all
    ordered pairs scored and about 2 relations per entity. ``worst``: every document at tokens[1] tokens
    and ``big`` entities."""
    rng = random.Random(seed)
    feats = []
    for i in range(n_docs):
        L = tokens[1] if worst else rng.randint(*tokens)
        n = big if worst or (big_every and i % big_every == big_every - 1) else \
            max(2, round(entities * rng.uniform(0.7, 1.3)))
        ids = [cls_id] + [rng.randrange(1000, vocab) for _ in range(L - 2)] + [sep_id]
        ent = [[(a, a + 2) for a in sorted(rng.sample(range(1, L - 3), rng.choice((1, 1, 2, 3))))] for _ in range(n)]
        hts = [[h, t] for h in range(n) for t in range(n) if h != t]
        labels = [[] for _ in hts]
        for j in rng.sample(range(len(hts)), min(len(hts), n * 2)):
            labels[j] = [rng.randrange(1, NUM_CLASS)]
        feats.append({"input_ids": ids, "entity_pos": ent, "num_entities": n, "hts": hts, "labels": labels,
                      "num_class": NUM_CLASS, "title": f"synthetic-{i}"})
    return feats


def encoder_config(name, tiny):
    """bert-base / roberta-large shapes (or tiny ones for the CPU smoke test), randomly initialised."""
    from transformers import BertConfig, RobertaConfig
    if name == "bert-base":
        cfg = BertConfig() if not tiny else BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                      intermediate_size=128)
        return cfg, [101], [102]
    big = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    cfg = RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                        **(small if tiny else big))
    return cfg, [0], [2, 2]


def build(name, tiny, attention, device):
    import flags
    from base_module import encoder_from_config
    from model import build_model
    cfg, start, end = encoder_config(name, tiny)
    args = flags.parse_args(["--inference_dim", str(64 if tiny else 512)])
    with torch.device(device):  # initialised where it runs: seconds, not minutes, for roberta-large
        encoder = encoder_from_config(cfg) if attention == "eager" else encoder_from_config(cfg, attention)
        model = build_model(args, NUM_CLASS, encoder, start, end)
    return model.to(device), args, cfg


class Stepper:
    """One optimiser per stage, created once (so Adam's state exists after the first step, as in training)."""

    def __init__(self, model, args, device, fused=False):
        self.model, self.args, self.device, self.opt = model, args, device, {}
        for stage in (1, 2):
            groups = model.param_groups(stage, args)
            self.opt[stage] = (groups, torch.optim.AdamW(groups, eps=args.adam_epsilon, weight_decay=args.weight_decay,
                                                         fused=fused or None))

    def step(self, batch, stage, amp):
        groups, opt = self.opt[stage]
        self.model.set_trainable(groups)
        self.model.train()
        with common.autocast(self.device, amp):
            out = self.model(batch, stage)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], self.args.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate(self, batch, amp, k=3):
        self.model.eval()
        with common.autocast(self.device, amp):
            self.model.predict(batch, k)


def set_tf32(on):
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def cuda(device):
    return torch.device(device).type == "cuda"


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def matmul_ceiling(device, tiny):
    """Measured bf16 dense matmul rate (TFLOP/s) on random data: the practical ceiling of this GPU."""
    n = 256 if tiny else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    med, _ = common.timeit(lambda: a @ b, device, repeats=10 if tiny else 30, warmup=3)
    return 2 * n ** 3 / med / 1e12


# ---------------------------------------------------------------- sections
def measure_variant(a, device, attention, batches, timed, stats, flops, rows, peak, ceiling):
    torch.manual_seed(0)
    model, args, _ = build("bert-base", a.tiny, attention, device)
    stepper = Stepper(model, args, device, a.fused)
    for stage in a.stages:
        if stage not in flops:  # the FLOPs of a batch do not depend on precision or attention kernel
            flops[stage] = [common.count_flops(lambda b=b: stepper.step(b, stage, "none")) for b in timed]
        for precision in a.precisions:
            amp, tf32 = PRECISIONS[precision]
            set_tf32(tf32)
            for b in batches[:a.warmup]:
                stepper.step(b, stage, amp)
            times = []
            for b in timed:
                common.sync(device)
                t0 = time.perf_counter()
                stepper.step(b, stage, amp)
                common.sync(device)
                times.append(time.perf_counter() - t0)
            total = sum(times)
            tflops = sum(flops[stage]) / total / 1e12
            r = {"attention": attention, "stage": stage, "precision": precision, "fused_adamw": a.fused,
                 "batch_size": a.batch_size,
                 "ms_per_step_median": 1e3 * statistics.median(times), "step_s": times,
                 "docs_per_s": stats["docs"] / total, "tokens_per_s": stats["tokens"] / total,
                 "gflop_per_step": sum(flops[stage]) / len(timed) / 1e9, "tflops": tflops,
                 "mfu_peak": tflops / peak, "mfu_measured_ceiling": tflops / ceiling}
            rows.append(r)
            print(f"  {attention:5s} stage {stage} {precision}: {r['ms_per_step_median']:.1f} ms/step, "
                  f"{r['docs_per_s']:.1f} docs/s, {r['tokens_per_s']:.0f} tokens/s, {r['gflop_per_step']:.0f} "
                  f"GFLOP/step, {tflops:.1f} TFLOP/s, MFU {100 * r['mfu_peak']:.1f}%", flush=True)


def throughput(a, device, tok_ids, peak, ceiling):
    feats = synthetic_features((a.warmup + a.steps) * a.batch_size, a.tokens, a.entities, a.big_every, *tok_ids,
                               big=a.big)
    from utils import collate_fn
    batches = [common.move(collate_fn(feats[i * a.batch_size:(i + 1) * a.batch_size]), device)
               for i in range(a.warmup + a.steps)]
    timed = batches[a.warmup:]
    stats = common.batch_stats(timed)
    print(f"throughput: {a.steps} timed steps of {a.batch_size} docs (mean {stats['tokens'] / stats['docs']:.0f} "
          f"tokens, {stats['entities'] / stats['docs']:.1f} entities, {stats['pairs'] / stats['docs']:.0f} pairs "
          f"per doc; largest batch N={stats['max_entities']}, L={stats['max_len']})", flush=True)
    flops = {}
    rows, errors = [], {}
    for attention in a.attentions:
        try:
            measure_variant(a, device, attention, batches, timed, stats, flops, rows, peak, ceiling)
        except Exception as e:  # one broken variant must not cost the others their GPU time
            errors[attention] = f"{type(e).__name__}: {e}"
            print(f"  {attention}: failed: {errors[attention]}", flush=True)
        set_tf32(False)
        free_memory()
    return {"data": stats, "rows": rows, "errors": errors}


def classify(name):
    low = name.lower()
    for cls, keys in KERNEL_CLASSES:
        if any(k in low for k in keys):
            return cls
    return "other"


def profile(a, device, tok_ids):
    """GPU kernel time by class for a few bf16 steps, and the share of the step the GPU is busy."""
    from torch.profiler import ProfilerActivity

    from utils import collate_fn
    feats = synthetic_features(3 * a.batch_size, a.tokens, a.entities, a.big_every, *tok_ids, seed=1, big=a.big)
    batches = [common.move(collate_fn(feats[i * a.batch_size:(i + 1) * a.batch_size]), device) for i in range(3)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda(device) else [])
    out = []
    for attention in a.attentions:
        try:
            out += profile_variant(a, device, attention, batches, activities)
        except Exception as e:  # as in throughput: record and go on
            out.append({"attention": attention, "error": f"{type(e).__name__}: {e}"})
            print(f"  profile {attention}: failed: {out[-1]['error']}", flush=True)
        free_memory()
    return out


def profile_variant(a, device, attention, batches, activities):
    from torch.profiler import profile as torch_profile
    torch.manual_seed(0)
    model, args, _ = build("bert-base", a.tiny, attention, device)
    stepper = Stepper(model, args, device)
    out = []
    for stage in a.stages:
        stepper.step(batches[0], stage, "bf16")
        common.sync(device)
        with torch_profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for b in batches[1:]:
                stepper.step(b, stage, "bf16")
            common.sync(device)
            wall = time.perf_counter() - t0
        by_class, kernels, busy, sync_us, sync_calls = {}, {}, 0.0, 0.0, 0
        for ev in prof.key_averages():
            if ev.device_type == torch.autograd.DeviceType.CUDA and ev.self_device_time_total > 0:
                t = ev.self_device_time_total  # microseconds of GPU time (kernels, copies): no double counting
                busy += t
                by_class[classify(ev.key)] = by_class.get(classify(ev.key), 0.0) + t
                kernels[ev.key] = t
            elif ev.key in SYNC_CALLS:  # the host waiting for the device
                sync_us += ev.self_cpu_time_total
                sync_calls += ev.count
        steps = len(batches) - 1
        top = sorted(kernels.items(), key=lambda kv: -kv[1])[:12]
        r = {"attention": attention, "stage": stage, "ms_per_step": 1e3 * wall / steps,
             "gpu_busy_ms_per_step": busy / 1e3 / steps, "gpu_busy_share": busy / 1e6 / wall if wall else 0.0,
             "host_sync_calls_per_step": sync_calls / steps, "host_sync_ms_per_step": sync_us / 1e3 / steps,
             "by_class_ms_per_step": {k: v / 1e3 / steps for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
             "top_kernels_ms_per_step": [(k[:120], v / 1e3 / steps) for k, v in top]}
        out.append(r)
        shares = ", ".join(f"{k} {v:.1f}" for k, v in r["by_class_ms_per_step"].items())
        print(f"  profile {attention} stage {stage} bf16: {r['ms_per_step']:.1f} ms/step, GPU busy "
              f"{r['gpu_busy_ms_per_step']:.1f} ms ({100 * r['gpu_busy_share']:.0f}%), "
              f"{r['host_sync_calls_per_step']:.0f} host syncs ({r['host_sync_ms_per_step']:.1f} ms); ms by class: {shares}", flush=True)
    return out


def peak_of(fn, device):
    """Peak allocated bytes while fn() runs (CUDA), or None on a CPU."""
    if not cuda(device):
        fn()
        return None
    common.sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    common.sync(device)
    return torch.cuda.max_memory_allocated(device)


def try_step(stepper, batch, stage):
    """One bf16 training step; False on CUDA out-of-memory (gradients dropped, cache emptied)."""
    try:
        stepper.step(batch, stage, "bf16")
        common.sync(stepper.device)
        return True
    except torch.cuda.OutOfMemoryError:
        pass
    stepper.model.zero_grad(set_to_none=True)
    free_memory()
    return False


def memory_and_maxbatch(a, device, tok_ids, sections, res):
    """Fills res["memory"] and res["maxbatch"], writing the JSON after each encoder (a time limit loses little)."""
    for name, batch_size in (("bert-base", 8), ("roberta-large", 4)):
        encoder_memory(a, device, tok_ids, sections, res, name, batch_size)
        free_memory()  # the encoder's model and batches went with the call
        common.write_json(a.out, res)


def encoder_memory(a, device, tok_ids, sections, res, name, batch_size):
    from utils import collate_fn
    torch.manual_seed(0)
    model, args, cfg = build(name, a.tiny, a.memory_attention, device)
    vocab = (cfg.vocab_size, tok_ids[1], tok_ids[2])
    stepper = Stepper(model, args, device)
    params = sum(p.numel() for p in model.parameters())

    def docs(n, big_every=0, **kw):
        feats = synthetic_features(n, a.tokens, a.entities, big_every, *vocab, big=a.big, **kw)
        return common.move(collate_fn(feats), device)

    worst = docs(batch_size, worst=True)
    if "memory" in sections:
        rows = res.setdefault("memory", [])
        for label, batch in (("typical", docs(batch_size, big_every=2, seed=2)), ("worst", worst)):
            phases = [(f"stage {stage} step", lambda s=stage: stepper.step(batch, s, "bf16")) for stage in (1, 2)]
            for phase, fn in phases + [("eval K=3", lambda: stepper.evaluate(batch, "bf16"))]:
                fn()  # Adam state allocated (training): the steady-state peak follows
                peak = peak_of(fn, device)
                rows.append({"encoder": name, "params_m": params / 1e6, "batch": batch_size, "data": label,
                             "phase": phase, "peak_gib": peak / 2 ** 30 if peak else None})
                print(f"  memory {name} batch {batch_size} {label:7s} {phase}: "
                      f"{'n/a' if peak is None else round(peak / 2 ** 30, 2)} GiB", flush=True)
    if "maxbatch" in sections:
        for stage in (1, 2):
            stepper.step(worst, stage, "bf16")
            ok, bad, b = 0, None, batch_size
            t0 = time.time()
            while b <= a.max_batch_cap and time.time() - t0 < a.maxbatch_budget_s:
                fits = try_step(stepper, docs(b, worst=True), stage)
                free_memory()
                if fits:
                    ok = b
                else:
                    bad = b
                if bad is None:
                    b *= 2
                elif bad - ok <= max(1, ok // 8):
                    break
                else:
                    b = (ok + bad) // 2
            res.setdefault("maxbatch", []).append({"encoder": name, "stage": stage, "largest_batch": ok,
                                                   "first_oom_batch": bad, "capped": bad is None,
                                                   "search_s": time.time() - t0})
            print(f"  largest batch {name} stage {stage} (worst-case docs, bf16): {ok}"
                  f"{' (cap reached)' if bad is None else f' (out of memory at {bad})'}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="throughput,profile,memory,maxbatch")
    p.add_argument("--batch_size", type=int, default=8, help="Table 7 (DocRED, BERT-base): 8")
    p.add_argument("--tokens", default="400,512", help="document length range in tokens")
    p.add_argument("--entities", type=int, default=20, help="typical entities per document")
    p.add_argument("--big_every", type=int, default=4, help="one document in this many has --big entities (0: none)")
    p.add_argument("--big", type=int, default=42, help="entities of the largest documents (DocRED: 42)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration (each on its own batch)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--stages", default="1,2")
    p.add_argument("--precisions", default="bf16,fp32,tf32")
    p.add_argument("--attentions", default="eager,sdpa", help="encoder attention variants (train.py --attention)")
    p.add_argument("--memory_attention", default="sdpa", help="encoder attention in the memory/maxbatch sections")
    p.add_argument("--peak_tflops", type=float, default=989.0, help="bf16 dense peak (H100/H200 SXM datasheet: 989)")
    p.add_argument("--max_batch_cap", type=int, default=512)
    p.add_argument("--maxbatch_budget_s", type=float, default=15.0, help="search time per encoder and stage")
    p.add_argument("--fused", action="store_true", help="fused AdamW (one kernel per parameter group)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny encoders and batches: smoke test, runs on a CPU")
    p.add_argument("--out", default="gpu.json")
    a = p.parse_args()
    a.tokens = tuple(int(x) for x in a.tokens.split(","))
    a.stages = [int(s) for s in a.stages.split(",")]
    a.precisions = a.precisions.split(",")
    a.attentions = a.attentions.split(",")
    sections = a.sections.split(",")
    device = torch.device(a.device)
    if cuda(device) and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device is available (torch.cuda.is_available() is False). "
                 "To smoke-test the code path on a CPU: python bench/gpu.py --tiny --device cpu")
    if not cuda(device) and not a.tiny:
        sys.exit("bench/gpu.py measures a GPU: use --device cuda, or --tiny --device cpu for a smoke test")
    if a.tiny:
        a.batch_size, a.tokens, a.entities, a.big_every, a.big = 2, (40, 64), 6, 2, 10
        a.steps, a.warmup, a.max_batch_cap, a.precisions = 2, 1, 16, [x for x in a.precisions if x != "tf32"]
    torch.manual_seed(0)
    tok_ids = (30522, 101, 102)  # BertConfig() vocabulary, [CLS], [SEP]
    res = {"machine": common.machine_info(device), "command": " ".join(["python"] + sys.argv), "config": vars(a)}
    if cuda(device):
        props = torch.cuda.get_device_properties(device)
        res["machine"].update(gpu_memory_gib=props.total_memory / 2 ** 30, sm_count=props.multi_processor_count)
    res["matmul_ceiling_tflops"] = ceiling = matmul_ceiling(device, a.tiny)
    print(f"device {res['machine'].get('gpu', device)}; bf16 matmul ceiling measured {ceiling:.0f} TFLOP/s "
          f"(MFU is against {a.peak_tflops:g})", flush=True)
    if "throughput" in sections:
        res["throughput"] = throughput(a, device, tok_ids, a.peak_tflops, ceiling)
        common.write_json(a.out, res)
    if "profile" in sections:
        res["profile"] = profile(a, device, tok_ids)
        common.write_json(a.out, res)
    if "memory" in sections or "maxbatch" in sections:
        memory_and_maxbatch(a, device, tok_ids, sections, res)
    print("wrote", common.write_json(a.out, res))
    if a.tiny:
        print("(--tiny: smoke test only; the numbers mean nothing)")


if __name__ == "__main__":
    main()

"""GPU training throughput of stage 1 and stage 2 (docs/s, tokens/s) with a BERT-base-sized encoder at bf16 and
fp32, and the model FLOP utilisation: FlopCounterMode FLOPs per step / step time / the GPU's peak.

The encoder is randomly initialised from transformers.BertConfig() defaults (768 wide, 12 layers; nothing is
downloaded); the batches are DocRED-shaped synthetic documents (about --tokens tokens and --entities entities
each, every ordered pair scored, a few random relations), built directly as prepro features and padded by
utils.collate_fn. A step = forward + backward + gradient clipping + AdamW, as train.py does it.

Usage: python bench/gpu.py [--batch_size 8] [--tokens 400] [--entities 20] [--steps 10] [--warmup 3]
                           [--precisions bf16,fp32] [--peak_tflops 989] [--tf32]
       python bench/gpu.py --tiny --device cpu     # smoke test of the code path on a CPU (tiny encoder)
On a machine without CUDA (and without --tiny) it exits with a message. Writes bench/results/gpu.json.
MFU is reported against --peak_tflops (default 989: H100 SXM dense bf16) for every precision; fp32 runs are
far from that peak by construction (H100 SXM: about 67 TFLOP/s fp32, 494 TF32 dense).
"""
import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on sys.path)

import torch  # noqa: E402

NUM_CLASS = 97


def synthetic_features(n_docs, tokens, entities, vocab, cls_id, sep_id, seed=0):
    """DocRED-shaped prepro features: ~tokens ids, ~entities entities with 1-3 mentions, all ordered pairs."""
    rng = random.Random(seed)
    feats = []
    for _ in range(n_docs):
        L = max(8, int(tokens * rng.uniform(0.8, 1.2)))
        n = max(2, int(entities * rng.uniform(0.8, 1.2)))
        ids = [cls_id] + [rng.randrange(1000, vocab) for _ in range(L - 2)] + [sep_id]
        ent = [[(a, a + 2) for a in sorted(rng.sample(range(1, L - 3), rng.choice((1, 1, 2, 3))))] for _ in range(n)]
        hts = [[h, t] for h in range(n) for t in range(n) if h != t]
        labels = [[] for _ in hts]
        for i in rng.sample(range(len(hts)), min(len(hts), n * 2)):
            labels[i] = [rng.randrange(1, NUM_CLASS)]
        feats.append({"input_ids": ids, "entity_pos": ent, "num_entities": n, "hts": hts, "labels": labels,
                      "num_class": NUM_CLASS, "title": "synthetic"})
    return feats


def build(tiny, tokenizer, device):
    from transformers import BertConfig

    import train
    from base_module import BaseModule, encoder_from_config
    from inference_module import InferenceModule
    from model import DocREModel
    if tiny:
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=128)
        dim = 64
    else:
        config = BertConfig()  # bert-base defaults: 768 wide, 12 layers, 12 heads, 512 positions
        dim = 512
    config.vocab_size = max(config.vocab_size, tokenizer.vocab_size)
    args = train.parse_args(["--inference_dim", str(dim)])
    base = BaseModule(encoder_from_config(config), [tokenizer.cls_token_id], [tokenizer.sep_token_id], NUM_CLASS)
    inference = InferenceModule(base.emb_size, dim, NUM_CLASS, args.num_inference_layers, args.eca_heads_per_line,
                                args.dropout, args.eca, not args.no_fusion)
    model = DocREModel(base, inference, args.noise_max, args.contrastive, args.contrastive_weight, args.temperature)
    return model.to(device), args, config


def make_step(model, args, stage, device, precision):
    import train
    groups = train.param_groups(model, args, stage)
    train.set_trainable(model, groups)
    opt = torch.optim.AdamW(groups, eps=args.adam_epsilon, weight_decay=args.weight_decay)
    params = [p for g in groups for p in g["params"]]
    amp = "bf16" if precision == "bf16" else "none"

    def step(batch):
        model.train()
        with common.autocast(device, amp):
            out = model(batch, stage)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--tokens", type=int, default=400, help="mean tokens per document")
    p.add_argument("--entities", type=int, default=20, help="mean entities per document")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration (each on its own batch)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("--stages", default="1,2")
    p.add_argument("--peak_tflops", type=float, default=989.0, help="GPU peak for MFU (H100 SXM dense bf16: 989)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls in the fp32 runs (default off, as PyTorch)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny encoder and batches: smoke test, runs on a CPU")
    p.add_argument("--out", default="gpu.json")
    a = p.parse_args()

    device = torch.device(a.device)
    if device.type != "cuda" and not a.tiny:
        sys.exit("bench/gpu.py measures GPU throughput and needs --device cuda"
                 + ("" if torch.cuda.is_available() else " (no CUDA device here: torch.cuda.is_available() is False)")
                 + ". To smoke-test the code path on a CPU: python bench/gpu.py --tiny --device cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device is available (torch.cuda.is_available() is False). "
                 "To smoke-test the code path on a CPU: python bench/gpu.py --tiny --device cpu")
    if a.tiny:
        a.batch_size, a.tokens, a.entities = min(a.batch_size, 2), min(a.tokens, 64), min(a.entities, 6)
        a.steps, a.warmup = min(a.steps, 2), min(a.warmup, 1)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.manual_seed(0)

    from utils import collate_fn
    tokenizer = common.load_tokenizer()
    model, args, config = build(a.tiny, tokenizer, device)
    n_batches = a.steps + a.warmup
    feats = synthetic_features(n_batches * a.batch_size, a.tokens, a.entities, config.vocab_size,
                               tokenizer.cls_token_id, tokenizer.sep_token_id)
    batches = [common.move(collate_fn(feats[i * a.batch_size:(i + 1) * a.batch_size]), device) for i in range(n_batches)]
    timed = batches[a.warmup:]
    stats = common.batch_stats(timed)
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f"; encoder BertConfig{' (tiny)' if a.tiny else '()'} hidden {config.hidden_size} x {config.num_hidden_layers} layers;"
          f" {a.steps} timed steps of {a.batch_size} docs (mean {stats['tokens'] / stats['docs']:.0f} tokens, "
          f"{stats['entities'] / stats['docs']:.1f} entities, {stats['pairs'] / stats['docs']:.0f} pairs per doc)")

    rows, results = [], []
    for precision in a.precisions.split(","):
        for stage in (int(s) for s in a.stages.split(",")):
            step = make_step(model, args, stage, device, precision)
            for b in batches[:a.warmup]:
                step(b)
            # counted FLOPs of every timed batch (one untimed step each; these also warm up)
            per_step = [common.count_flops(lambda: step(b)) for b in timed]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times = []
            for b in timed:
                common.sync(device)
                t0 = time.perf_counter()
                step(b)
                common.sync(device)
                times.append(time.perf_counter() - t0)
            total = sum(times)
            all_flops = sum(per_step)
            flops = all_flops / len(per_step)
            tflops = all_flops / total / 1e12
            r = {"precision": precision, "stage": stage, "step_s_median": statistics.median(times), "step_s": times,
                 "docs_per_s": stats["docs"] / total, "tokens_per_s": stats["tokens"] / total,
                 "flops_per_step_mean": flops, "achieved_tflops": tflops, "mfu": tflops / a.peak_tflops}
            if device.type == "cuda":
                r["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            results.append(r)
            rows.append([precision, stage, f"{r['step_s_median'] * 1e3:.1f}", f"{r['docs_per_s']:.1f}",
                         f"{r['tokens_per_s']:.0f}", f"{flops / 1e9:.1f}", f"{tflops:.3f}", f"{r['mfu'] * 100:.1f}%",
                         f"{r.get('max_memory_allocated_gb', float('nan')):.1f}"])
            print(common.fmt_table(["precision", "stage", "ms/step", "docs/s", "tokens/s", "GFLOP/step", "TFLOP/s",
                                    "MFU", "peak GB"], rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(common.fmt_table(["precision", "stage", "ms/step (median)", "docs/s", "tokens/s", "GFLOP/step (counted)",
                            "TFLOP/s", f"MFU (/{a.peak_tflops:g})", "peak GB"], rows))
    if a.tiny:
        print("(--tiny: smoke test only; the numbers mean nothing)")
    res = {"machine": common.machine_info(device), "command": " ".join(["python"] + sys.argv), "config": vars(a),
           "data": stats, "results": results}
    print("wrote", common.write_json(a.out if not a.tiny else "gpu_tiny.json", res))


if __name__ == "__main__":
    main()

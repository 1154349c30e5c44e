"""Time of a training step (stage 1, stage 2) and of an evaluation pass (K = 0, K = 3) on the same real batches,
against the FLOPs counted by torch.utils.flop_counter.FlopCounterMode.

For each ratio (stage 2 / stage 1, eval K=3 / K=0) the FLOP ratio is the floor that the time ratio would
reach if every phase ran at the same FLOP rate; overhead = time ratio / FLOP ratio (1.00 = no overhead).

Usage: python bench/step.py [--batches 5] [--batch_size 4] [--repeats 5] [--device cpu|cuda] [--amp none,bf16]
                            [--threads N] [--profile] [--data PATH]
Data: the first batches*batch_size documents of ../shared/data/redocred/train_mini.json next to the
checkout, else synthetic DocRED-format documents (bench/common.py). Model: the bundled encoder with the
default paper flags (inference_dim 512, N_I 2, K 3). Writes bench/results/step.json.

Phases (and, with --amp none,bf16, precisions) are interleaved within each repeat (stage 1, stage 2, eval
K=0, eval K=3, each over all batches) so that a change of load on a shared machine hits all phases alike;
the per-repeat ratios and the ratio of the per-phase medians are both reported, and with several precisions
the speed-up of each one over the first, per phase.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on sys.path)

import torch  # noqa: E402

import prepro  # noqa: E402
import flags  # noqa: E402
from model import load_model  # noqa: E402

PHASES = ("stage1", "stage2", "eval_k0", "eval_k3")


def build(device):
    tokenizer = common.load_tokenizer()
    rel2id = prepro.load_rel2id()
    args = flags.parse_args(["--inference_dim", "512", "--num_inference_layers", "2", "--num_iterations", "3"])
    model = load_model(args, len(rel2id), tokenizer).to(device)
    return model, args, tokenizer


class Runner:
    """One callable per phase; each call runs the phase over one batch (a full optimiser step in training)."""

    def __init__(self, model, args, device, amp, k, fused=None):
        """``fused``: None for train.py's AdamW (the multi-tensor implementation on a CPU, the fused one on a GPU),
        True for the fused one on a CPU too (bench/peers.py --ours_adamw fused)."""
        device = torch.device(device)
        self.model, self.args, self.device, self.amp, self.k = model, args, device, amp, k
        self.opt = {}
        fused = fused or device.type == "cuda"
        for stage in (1, 2):
            groups = model.param_groups(stage, args)
            opt = torch.optim.AdamW(groups, eps=args.adam_epsilon, weight_decay=args.weight_decay,
                                    fused=fused or None, foreach=not fused or None)
            self.opt[stage] = (groups, opt)

    def train_step(self, batch, stage):
        groups, opt = self.opt[stage]
        self.model.set_trainable(groups)  # as train.py does at the start of a stage (cheap flag flips)
        self.model.train()
        with common.autocast(self.device, self.amp):
            out = self.model(batch, stage)
        out["loss"].backward()
        params = [p for g in groups for p in g["params"]]
        with torch.profiler.record_function(common.COMPONENT + "gradient clipping"):
            torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
        with torch.profiler.record_function(common.COMPONENT + "optimiser"):
            opt.step()
            opt.zero_grad(set_to_none=True)

    def evaluate(self, batch, k):
        self.model.eval()
        with common.autocast(self.device, self.amp):
            passes = self.model.predict(batch, k)
        return passes[-1]

    def fn(self, phase, batch):
        return {"stage1": lambda: self.train_step(batch, 1), "stage2": lambda: self.train_step(batch, 2),
                "eval_k0": lambda: self.evaluate(batch, 0), "eval_k3": lambda: self.evaluate(batch, self.k)}[phase]


def flops_by_module(fn):
    """Total counted FLOPs and the share of the top-level modules (base / inference / predictor)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    per = fc.get_flop_counts()
    parts = {}
    for name in ("DocREModel.base", "DocREModel.inference", "DocREModel.predictor"):
        if name in per:
            parts[name.split(".", 1)[1]] = sum(per[name].values())
    # FLOPs of modules not entered through __call__ (view B runs inference.encode(), predict() is not forward())
    parts["not_under_a_module_call"] = fc.get_total_flops() - sum(parts.values())
    return fc.get_total_flops(), parts


def profile_phase(fn, device, top=15):
    """Top ops of one call of fn() by self time on the GPU (on a CPU: common.component_profile)."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    fn()
    with profile(activities=acts) as prof:
        fn()
        common.sync(device)
    key = "self_cuda_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
    total = sum(getattr(e, key) for e in events)
    rows = []
    for e in events[:top]:
        t = getattr(e, key)
        rows.append({"op": e.key, "self_ms": t / 1e3, "share": t / total if total else 0.0, "calls": e.count})
    return rows, total / 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="untimed passes over all batches per phase")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", help="comma list of precisions timed side by side: none (fp32), bf16, fp16")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave the default)")
    p.add_argument("--k", type=int, default=3, help="K of the evaluation pass")
    p.add_argument("--data", default=None, help="DocRED-format file (default: Re-DocRED train_mini)")
    p.add_argument("--profile", action="store_true",
                   help="also profile each phase on batch 0: self time by component on a CPU, top ops on a GPU")
    p.add_argument("--out", default="step.json")
    a = p.parse_args()
    common.set_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)

    model, args, tokenizer = build(device)
    feats, source = common.load_docs(tokenizer, a.batches * a.batch_size, a.data)
    batches = [common.move(b, device) for b in common.make_batches(feats, a.batches, a.batch_size)]
    stats = common.batch_stats(batches)
    amps = a.amp.split(",")
    runners = {amp: Runner(model, args, device, amp, a.k) for amp in amps}
    print(f"data: {source}; {stats['docs']} docs in {a.batches} batches of {a.batch_size}: {stats['tokens']} tokens, "
          f"{stats['entities']} entities, {stats['pairs']} pairs (max N {stats['max_entities']}, max L {stats['max_len']})")
    print(f"device {device}, amp {a.amp}, torch threads {torch.get_num_threads()}, cpu {common.cpu_model()}")

    # counted FLOPs of each phase, summed over the batches (one run each, outside the timing; the same in every
    # precision)
    flops, parts = {}, {}
    for ph in PHASES:
        tot, share = 0, {}
        for b in batches:
            f, s = flops_by_module(runners[amps[0]].fn(ph, b))
            tot += f
            for k, v in s.items():
                share[k] = share.get(k, 0) + v
        flops[ph], parts[ph] = tot, share

    keys = [(amp, ph) for amp in amps for ph in PHASES]
    for _ in range(a.warmup):
        for amp, ph in keys:
            for b in batches:
                runners[amp].fn(ph, b)()
    common.sync(device)

    # samples[(amp, phase)][r] = seconds for all batches in repeat r (every precision and phase interleaved
    # within a repeat, so that a change of load hits all alike)
    samples = {key: [] for key in keys}
    per_batch = {key: [[] for _ in batches] for key in keys}
    for _ in range(a.repeats):
        for amp, ph in keys:
            tot = 0.0
            for i, b in enumerate(batches):
                fn = runners[amp].fn(ph, b)
                common.sync(device)
                t0 = time.perf_counter()
                fn()
                common.sync(device)
                dt = time.perf_counter() - t0
                per_batch[(amp, ph)][i].append(dt)
                tot += dt
            samples[(amp, ph)].append(tot)

    med = {key: statistics.median(samples[key]) for key in keys}
    rows, result_phases = [], {}
    for amp, ph in keys:
        m = med[(amp, ph)]
        gfs = flops[ph] / m / 1e9
        result_phases[f"{amp}/{ph}"] = {
            "amp": amp, "phase": ph, "median_s_all_batches": m, "median_s_per_batch": m / a.batches,
            "samples_s": samples[(amp, ph)], "per_batch_median_s": [statistics.median(x) for x in per_batch[(amp, ph)]],
            "flops": flops[ph], "flops_by_module": parts[ph], "gflops_per_s": gfs, "docs_per_s": stats["docs"] / m}
        spread = (max(samples[(amp, ph)]) - min(samples[(amp, ph)])) / m
        rows.append([amp, ph, f"{m / a.batches * 1e3:.1f}", f"{spread * 100:.0f}%",
                     f"{flops[ph] / a.batches / 1e9:.2f}", f"{gfs:.1f}", f"{stats['docs'] / m:.2f}"])
    print()
    print(common.fmt_table(["amp", "phase", "ms/batch (median)", "spread", "GFLOP/batch", "GFLOP/s", "docs/s"], rows))

    def ratio(num, den, flop_ratio):
        t = med[num] / med[den]
        per_rep = [x / y for x, y in zip(samples[num], samples[den])]
        return {"time_ratio": t, "time_ratio_per_repeat": per_rep, "time_ratio_median_of_repeats":
                statistics.median(per_rep), "flop_ratio": flop_ratio, "overhead": t / flop_ratio,
                "overhead_median_of_repeats": statistics.median(per_rep) / flop_ratio}

    ratios, rrows = {}, []
    for amp in amps:
        for name, num, den in (("stage2/stage1", "stage2", "stage1"), ("eval_k3/eval_k0", "eval_k3", "eval_k0")):
            r = ratios[f"{amp}: {name}"] = ratio((amp, num), (amp, den), flops[num] / flops[den])
            rrows.append([f"{amp}: {name}", f"{r['time_ratio']:.3f}", f"{r['time_ratio_median_of_repeats']:.3f} "
                          f"[{min(r['time_ratio_per_repeat']):.3f}-{max(r['time_ratio_per_repeat']):.3f}]",
                          f"{r['flop_ratio']:.3f}", f"{r['overhead']:.3f}"])
    for amp in amps[1:]:  # speed-up of each precision over the first one (time ratio first / this), per phase
        for ph in PHASES:
            r = ratios[f"{amps[0]}/{amp}: {ph}"] = ratio((amps[0], ph), (amp, ph), 1.0)
            rrows.append([f"{amps[0]}/{amp}: {ph}", f"{r['time_ratio']:.3f}", f"{r['time_ratio_median_of_repeats']:.3f} "
                          f"[{min(r['time_ratio_per_repeat']):.3f}-{max(r['time_ratio_per_repeat']):.3f}]", "", ""])
    print()
    print(common.fmt_table(["ratio", "time", "time per repeat: median [min-max]", "FLOP (floor)", "overhead"], rrows))

    prof = {}
    if a.profile:
        for amp in amps:
            for ph in ("stage1", "stage2", "eval_k3"):
                fn = runners[amp].fn(ph, batches[0])
                if device.type == "cpu":  # self time by component of the model (common.component_profile)
                    result = common.component_profile(fn, common.docre_scopes(model))
                    prof[f"{amp}/{ph}"] = result
                    print(f"\nprofile {amp} {ph} (batch 0): {result['total_ms']:.0f} ms of self time")
                    print(common.component_table(result))
                    continue
                top, total_ms = profile_phase(fn, device)
                prof[f"{amp}/{ph}"] = {"total_self_ms": total_ms, "top": top}
                print(f"\nprofile {amp} {ph} (batch 0, total self time {total_ms:.0f} ms): top ops by self time")
                print(common.fmt_table(["op", "self ms", "share", "calls"],
                                       [[r["op"], f"{r['self_ms']:.1f}", f"{r['share'] * 100:.1f}%", r["calls"]]
                                        for r in top]))

    res = {"machine": common.machine_info(device), "command": " ".join(["python"] + sys.argv),
           "config": {**vars(a), "inference_dim": args.inference_dim, "num_inference_layers": args.num_inference_layers,
                      "eca_heads_per_line": args.eca_heads_per_line, "encoder": "bundled all-MiniLM-L6-v2"},
           "data": {"source": source, **stats}, "phases": result_phases, "ratios": ratios, "profile": prof}
    print("\nwrote", common.write_json(a.out, res))


if __name__ == "__main__":
    main()

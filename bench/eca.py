"""Forward+backward time and peak memory of the inference module alone (N_I = 2, 4 lines x 1 head, dropout 0),
against a straightforward gather-based ECA written here, for one document with N entities (all N(N-1) pairs valid).

The reference follows the authors' approach: for each pair (s, o) it gathers row s, column s, row o and
column o of M = [F, R] into an explicit tensor [P, 4, N, 2D], THEN applies the key/value projection to the
gathered tensor and attends (memory and projection FLOPs proportional to N^3 * D). It shares every weight with
the project's module and is checked to give the same logits and gradients (float32).

Peak memory (CPU and CUDA alike, so the two columns compare): ``LiveTensorMemory``, a TorchDispatchMode that
sees every tensor that any op (forward or backward) creates, keys it by its storage, and holds a C++ weak
reference to that storage (StorageWeakRef); before each op it drops the storages that have been freed. The
peak of the sum of live storage bytes, over the tensors created inside the measured call (parameters and
inputs excluded), is the "allocated" peak, at op granularity, as torch.cuda.max_memory_allocated reports it
for CUDA (which is also reported on CUDA). The same mode records the largest tensor created (other than
weight-shaped ones: parameter gradients and transposed weights, which do not grow with N), which is checked
against N^3 * D for the project's module.

Usage: python bench/eca.py [--sizes 10,20,42,64,100] [--dims 512,768] [--repeats 3] [--ref_max_gb 8]
                           [--device cpu|cuda] [--threads N]
Writes bench/results/eca.json.
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on sys.path)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.multiprocessing.reductions import StorageWeakRef  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

from inference_module import InferenceModule  # noqa: E402

NUM_CLASS = 97


# ---------------------------------------------------------------- memory accounting
class LiveTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storages created under the mode (see the module docstring)."""

    def __init__(self, exclude=(), param_shapes=()):
        super().__init__()
        self.skip = {StorageWeakRef(t.untyped_storage()).cdata for t in exclude}
        self.param_shapes = {tuple(s) for s in param_shapes}  # weight-sized tensors (grads, transposes) do not scale with N
        self.live = {}  # storage cdata -> (weak ref, bytes)
        self.current = self.peak = 0
        self.max_numel, self.max_op = 0, None

    def _sweep(self):
        dead = [k for k, (ref, _) in self.live.items() if ref.expired()]
        for k in dead:
            self.current -= self.live.pop(k)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            if t.numel() > self.max_numel and tuple(t.shape) not in self.param_shapes and tuple(t.shape[::-1]) not in self.param_shapes:
                self.max_numel, self.max_op = t.numel(), str(func)
            st = t.untyped_storage()
            ref = StorageWeakRef(st)
            if ref.cdata in self.skip or ref.cdata in self.live:
                continue
            self.live[ref.cdata] = (ref, st.nbytes())
            self.current += st.nbytes()
        self.peak = max(self.peak, self.current)
        return out


# ---------------------------------------------------------------- gather-based reference
def gather_attend(unit, q, kv_weight, kv_bias, m, pair_mask):
    """Authors'-style ECA attention for one document: q [P, D] queries, m [N, N, 2D] = [F, R] matrix.

    Gathers the 4 lines of every pair into G [P, 4, N, 2D], projects G with the key/value weights, then attends
    (line g with its own head(s) g, masked where the key pair is invalid). Returns the concatenated heads [P, D].
    """
    N = m.size(0)
    D, h, k = unit.dim, unit.h, unit.k
    s, o = pair_mask[0].nonzero(as_tuple=True)
    P = s.numel()
    G = torch.stack([m[s], m[:, s].transpose(0, 1), m[o], m[:, o].transpose(0, 1)], dim=1)  # [P, 4, N, 2D]
    kv = F.linear(G, kv_weight, kv_bias)  # [P, 4, N, 2D]: the N^3 * D projection
    keys, vals = kv[..., :D].reshape(P, 4, N, 4, h, k), kv[..., D:].reshape(P, 4, N, 4, h, k)
    keys = torch.diagonal(keys, dim1=1, dim2=3).permute(0, 4, 1, 2, 3)  # line g, head group g: [P, 4, N, h, k]
    vals = torch.diagonal(vals, dim1=1, dim2=3).permute(0, 4, 1, 2, 3)
    valid = pair_mask[0]
    mask = torch.stack([valid[s], valid[:, s].t(), valid[o], valid[:, o].t()], dim=1)  # [P, 4, N]
    qh = (q / math.sqrt(k)).view(P, 4, h, k)
    scores = torch.einsum("pghk,pgjhk->pghj", qh, keys)
    scores = scores.masked_fill(~mask[:, :, None, :], torch.finfo(scores.dtype).min)
    w = torch.softmax(scores, dim=-1) * mask[:, :, None, :]
    return torch.einsum("pghj,pgjhk->pghk", w, vals).reshape(P, D)


def reference_forward(module, f0, r0, pair_mask):
    """InferenceModule.forward with every ECA unit's attention replaced by gather_attend (same weights)."""
    N = pair_mask.size(1)
    f, r = f0, r0
    for layer in module.layers:
        m = f.new_zeros(N, N, 2 * f.size(-1))
        m[pair_mask[0]] = torch.cat([f, r], dim=-1)  # M = [F, R] as a matrix, zeros at s = o
        outs = []
        for unit, x in ((layer.eca_f, f), (layer.eca_r, r)):
            heads = gather_attend(unit, unit.q(x), unit.kv.weight, unit.kv.bias, m, pair_mask)
            outs.append(unit.drop(unit.out(heads)))
        f_t, r_t = outs
        s = torch.sigmoid(layer.gate(torch.cat([f_t, r_t], dim=-1)))
        fused = s * f_t + (1 - s) * r_t
        f = layer.norm_f(f + layer.fnn_f(fused))
        r = layer.norm_r(r + layer.fnn_r(fused))
    return module.classifier(torch.cat([f, r], dim=-1))


def reference_bytes(N, D, layers=2):
    """Estimate of the reference's peak: per ECA unit G and kv are saved for backward ([P, 4, N, 2D] each,
    float32), 2 units per layer. (Measured on CPU at N=20, D=512: 952 MB peak for a 996 MB estimate.)"""
    P = N * (N - 1)
    big = P * 4 * N * 2 * D * 4
    return 2 * 2 * layers * big


# ---------------------------------------------------------------- runs
def make_inputs(N, D, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    pair_mask = ~torch.eye(N, dtype=torch.bool)[None]
    P = N * (N - 1)
    f0 = torch.randn(P, D, generator=g).to(device).requires_grad_()
    rel = torch.randint(0, NUM_CLASS, (P,), generator=g).to(device)
    weight = torch.randn(P, NUM_CLASS, generator=g).to(device)  # loss = <logits, weight>: non-trivial grads
    return pair_mask.to(device), f0, rel, weight


def fwd_bwd(module, fn, pair_mask, f0, rel, weight):
    module.zero_grad(set_to_none=True)
    f0.grad = None
    r0 = module.rel_emb(rel)
    logits = fn(f0, r0, pair_mask)
    (logits * weight).sum().backward()
    return logits


def project_fn(module):
    return lambda f0, r0, pm: module(f0, r0, pm)[2]


def reference_fn(module):
    return lambda f0, r0, pm: reference_forward(module, f0, r0, pm)


def measure_memory(module, fn, inputs, device):
    exclude = list(module.parameters()) + [x for x in inputs if torch.is_tensor(x)]
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with LiveTensorMemory(exclude, [p.shape for p in module.parameters()]) as mem:
        fwd_bwd(module, fn, *inputs)
    res = {"peak_bytes": mem.peak, "max_numel": mem.max_numel, "max_numel_op": mem.max_op}
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        res["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated() - base
    return res


def measure_time(module, fn, inputs, device, repeats, warmup):
    def run():
        fwd_bwd(module, fn, *inputs)
    med, samples = common.timeit(run, device, repeats, warmup)
    return med, samples


def check_equal(module, inputs, atol):
    """Same function? Logits in float32 (max abs diff <= atol) and logits + every gradient (input f0, relation
    embedding, all weights) in float64 (max diff relative to the tensor's max <= 1e-9). Float32 gradients are
    not compared with atol: at random init they are themselves ~1e-2 (relative) away from the float64 ones in
    both implementations (ReLU gates of the FNNs sit near 0 and flip with rounding), so they only show noise."""
    import copy

    def run(mod, inp):
        logits = fwd_bwd(mod, project_fn(mod), *inp).detach().clone()
        a = [logits, inp[1].grad.clone()] + [p.grad.clone() for p in mod.parameters() if p.grad is not None]
        logits = fwd_bwd(mod, reference_fn(mod), *inp).detach().clone()
        b = [logits, inp[1].grad.clone()] + [p.grad.clone() for p in mod.parameters() if p.grad is not None]
        return a, b

    a32, b32 = run(module, inputs)
    m64 = copy.deepcopy(module).double()
    pm, f0, rel, w = inputs
    a64, b64 = run(m64, (pm, f0.detach().double().requires_grad_(), rel, w.double()))
    rel_diff = lambda x, y: ((x - y).abs().max() / y.abs().max().clamp(min=1e-30)).item()  # noqa: E731
    out = {"max_abs_diff_logits_fp32": (a32[0] - b32[0]).abs().max().item(),
           "max_rel_diff_grads_fp32": max(rel_diff(x, y) for x, y in zip(a32[1:], b32[1:])),
           "max_rel_diff_all_fp64": max(rel_diff(x, y) for x, y in zip(a64, b64)),
           "n_tensors_compared": len(a64)}
    out["equal"] = (len(a64) == len(b64) and out["max_abs_diff_logits_fp32"] <= atol
                    and out["max_rel_diff_all_fp64"] <= 1e-9)
    return out


def gb(x):
    return x / 2 ** 30


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10,20,42,64,100")
    p.add_argument("--dims", default="512,768")
    p.add_argument("--layers", type=int, default=2, help="N_I")
    p.add_argument("--heads_per_line", type=int, default=1, help="4 lines x this = heads (paper: 4 heads)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ref_repeats", type=int, default=3, help="repeats of the reference (1 where it is large)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs before the timing, for N < 64 (above, the memory and FLOP-count runs warm up)")
    p.add_argument("--ref_max_gb", type=float, default=8.0,
                   help="skip the reference where its estimated peak exceeds this (also capped at 80%% of free RAM)")
    p.add_argument("--ref_big_gb", type=float, default=2.0, help="above this estimate, time the reference once, no warm-up")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--check_max_n", type=int, default=10, help="numerical check (fp32 + fp64 runs) up to this N")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="eca.json")
    a = p.parse_args()
    common.set_threads(a.threads)
    device = torch.device(a.device)
    sizes = [int(x) for x in a.sizes.split(",")]
    dims = [int(x) for x in a.dims.split(",")]
    print(f"device {device}, torch threads {torch.get_num_threads()}, cpu {common.cpu_model()}; "
          f"InferenceModule N_I={a.layers}, 4 lines x {a.heads_per_line} head(s), dropout 0, float32; fwd+bwd of one document")

    results, rows = [], []
    for D in dims:
        for N in sizes:
            torch.manual_seed(0)
            module = InferenceModule(D, D, NUM_CLASS, a.layers, a.heads_per_line, dropout=0.0).to(device).train()
            inputs = make_inputs(N, D, device)
            r = {"N": N, "D": D, "pairs": N * (N - 1), "n3d": N ** 3 * D}
            mem = measure_memory(module, project_fn(module), inputs, device)
            r["project_peak_bytes"] = mem["peak_bytes"]
            r["project_max_numel"] = mem["max_numel"]
            r["project_max_numel_op"] = mem["max_numel_op"]
            r["no_n3d_tensor"] = mem["max_numel"] < N ** 3 * D
            if "cuda_max_allocated_bytes" in mem:
                r["project_cuda_max_allocated_bytes"] = mem["cuda_max_allocated_bytes"]
            with common.autocast(device, "none"):
                r["project_flops"] = common.count_flops(lambda: fwd_bwd(module, project_fn(module), *inputs))
            t, smp = measure_time(module, project_fn(module), inputs, device, a.repeats, a.warmup if N < 64 else 0)
            r["project_s"], r["project_samples_s"] = t, smp

            est = reference_bytes(N, D, a.layers)
            avail = _mem_available()
            cap = min(a.ref_max_gb * 2 ** 30, 0.8 * avail) if avail else a.ref_max_gb * 2 ** 30
            r["reference_est_bytes"] = est
            if est > cap:
                r["reference"] = f"n/a (> {gb(cap):.1f} GB: estimated {gb(est):.1f} GB)"
            else:
                ref = reference_fn(module)
                if N <= a.check_max_n:
                    r["check"] = check_equal(module, inputs, a.atol)
                rm = measure_memory(module, ref, inputs, device)
                r["reference_peak_bytes"] = rm["peak_bytes"]
                r["reference_max_numel"] = rm["max_numel"]
                if "cuda_max_allocated_bytes" in rm:
                    r["reference_cuda_max_allocated_bytes"] = rm["cuda_max_allocated_bytes"]
                big = est > a.ref_big_gb * 2 ** 30
                r["reference_flops"] = None if big else common.count_flops(lambda: fwd_bwd(module, ref, *inputs))
                rt, rsmp = measure_time(module, ref, inputs, device, 1 if big else a.ref_repeats, 0 if big else a.warmup)
                r["reference_s"], r["reference_samples_s"] = rt, rsmp
                r["speedup"] = rt / t
                r["memory_ratio"] = rm["peak_bytes"] / max(mem["peak_bytes"], 1)
            results.append(r)
            chk = r.get("check")
            rows.append([D, N, r["pairs"], f"{t * 1e3:.1f}", f"{gb(mem['peak_bytes']) * 1024:.1f}",
                         f"{r['project_flops'] / t / 1e9:.1f}", "yes" if r["no_n3d_tensor"] else "NO",
                         f"{r['reference_s'] * 1e3:.0f}" if "reference_s" in r else r["reference"],
                         f"{gb(r['reference_peak_bytes']) * 1024:.0f}" if "reference_peak_bytes" in r else "-",
                         f"{r['speedup']:.1f}x" if "speedup" in r else "-",
                         f"{r['memory_ratio']:.1f}x" if "memory_ratio" in r else "-",
                         ("%s %.0e/%.0e" % ("ok" if chk["equal"] else "DIFF", chk["max_abs_diff_logits_fp32"],
                                               chk["max_rel_diff_all_fp64"])) if chk else "-"])
            print(common.fmt_table(["D", "N", "pairs", "ms", "peak MB", "GFLOP/s", "<N3D", "ref ms", "ref MB",
                                    "speed", "mem", "check"], rows[-1:]).splitlines()[-1], flush=True)
            del module, inputs
    print()
    print(common.fmt_table(["D", "N", "pairs", "project ms", "project peak MB", "GFLOP/s", "max tensor < N^3 D",
                            "gather ref ms", "ref peak MB", "speed-up", "memory ratio", "same (fp32 logits/fp64 all)"], rows))
    for r in results:
        if r["N"] == 42 and "speedup" in r:
            print(f"N=42 D={r['D']}: speed-up {r['speedup']:.1f}x (target >= 8x: {'met' if r['speedup'] >= 8 else 'MISSED'}), "
                  f"memory {r['memory_ratio']:.1f}x (target >= 8x: {'met' if r['memory_ratio'] >= 8 else 'MISSED'})")
    bad = [r for r in results if not r["no_n3d_tensor"] or (r.get("check") and not r["check"]["equal"])]
    res = {"machine": common.machine_info(device), "command": " ".join(["python"] + sys.argv), "config": vars(a),
           "results": results}
    print("wrote", common.write_json(a.out, res))
    if bad:
        sys.exit("FAILED: an N^3*D tensor was created or the reference differs: " + str([(r["N"], r["D"]) for r in bad]))


def _mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None


if __name__ == "__main__":
    main()

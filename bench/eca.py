"""Forward+backward time and peak memory of the inference module alone (N_I = 2, 4 lines x h heads, dropout 0),
against two references written here, for one document with N entities (all N(N-1) pairs valid).

Both references share every weight with the project's module (q, kv, out, gate, FNNs, norms, classifier: only the
ECA attention is computed differently) and are checked to compute the same function (logits and all gradients):

- "naive", the gather-then-project reference: for each pair (s, o) it gathers row s, column s, row o and column o of
  M = [F, R] into an explicit tensor [P, 4, N, 2D], THEN applies the key/value projection to the gathered tensor and
  attends (memory proportional to N^3 * D, projection FLOPs to N^3 * D^2). A straightforward ECA, not the way the
  authors build it, and much slower than their algorithm.
- "authors", the authors'-algorithm reference: the algorithm of the authors' ECA (DeepLearnXMU/DocRE-II, CCNet.py,
  class CCAttention with logit111..logit444), re-implemented here. Keys, values and queries are projected once per
  valid pair ([P, D] each). Then, per head, the head's keys are scattered into a zero [B, N, N, k] matrix, that
  matrix is expanded (a view) to [B, N, N, N, k] so that entry (s, o, j) is the j-th key of the head's line of
  (s, o), and indexed with the pair mask ([P, N, k]: the line of every pair); the same for the values. The heads are
  stacked ([P, 4h, N, k]), multiplied with the queries ([P, 4h, 1, k]), an additive mask is added, then softmax,
  matmul with the values and concatenation of the heads. Memory proportional to N^3 * D (K and V are P * N * D
  each), projection FLOPs to N^2 * D^2. Where the authors' code differs from the project (it prepends the pair's own
  key to every line with +1 added to its score, masks some more keys, orders the lines row s, column o, column s,
  row o and takes keys and values from its own combination of F and R), the reference follows the project, so that
  it computes the project's function: line g (row s, column s, row o, column o) is attended by head group g
  (heads g*h..g*h+h-1, as ECAUnit), keys and values are kv(M) of the project's unit, keys at invalid pairs (s = o
  included) are masked, and the pair itself is attended in row s and in column o.

Checks, which fail the script (non-zero exit) when a reference disagrees: first, on the benchmark's device, both
references against the project's module at heads_per_line 1 and 2 on a small document with one padding entity
(N = 8, D = 32); then at every benchmarked N <= --check_max_n. Each check compares logits in float32 (max abs diff
<= --atol) and logits + every gradient in float64, on a deep copy of the module (max diff relative to the tensor's
max <= 1e-10).

Peak memory. On CPU: ``LiveTensorMemory``, a TorchDispatchMode that sees every tensor that any op (forward or
backward) creates, keys it by its storage, and holds a C++ weak reference to that storage (StorageWeakRef); before
each op it drops the storages that have been freed. The peak of the sum of live storage bytes, over the tensors
created inside the measured call (parameters and inputs excluded, parameter gradients included), is the
"allocated" peak at op granularity. On CUDA the reported peak (and the memory ratios) is
torch.cuda.max_memory_allocated over the call (peak statistics reset before it, minus what was allocated before
it), which also counts the allocator's rounding and the temporaries that ops allocate internally; the
LiveTensorMemory peak of the same call is kept in the JSON ("peak_bytes"). The same mode records the largest tensor
created (other than weight-shaped ones: parameter gradients and transposed weights, which do not grow with N),
which is checked against N^3 * D for the project's module.

Each (D, N) is measured in every precision of --amp (bf16: torch.autocast around the forward). A measurement that
runs out of CUDA memory is recorded as "oom" and the run goes on. A reference is skipped where its estimated peak
(float32 sizes, an upper bound under bf16) exceeds --ref_max_gb or 80% of the free memory (CUDA:
torch.cuda.mem_get_info after emptying the allocator's cache; CPU: MemAvailable). With --time_budget_s, no new
(D, N) is started once that much wall time has passed since the start; the skipped ones are listed.

Usage: python bench/eca.py [--sizes 10,20,42,64,100] [--dims 512,768] [--repeats 3] [--ref_max_gb 8]
                           [--device cpu|cuda] [--amp none,bf16] [--threads N] [--out eca.json] [--time_budget_s 0]
Writes bench/results/<--out> (after every measured row, so that a run cut short keeps what it measured).
"""
import argparse
import copy
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on sys.path)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.multiprocessing.reductions import StorageWeakRef  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

from inference_module import InferenceModule  # noqa: E402
from utils import Pairs  # noqa: E402

NUM_CLASS = 97
FP64_RTOL = 1e-10


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


# ---------------------------------------------------------------- references
def naive_attend(unit, q, f, r, pairs):
    """Gather-then-project ECA attention for one document: q [P, D] queries, f, r [P, D] -> concatenated heads [P, D].

    Builds M = [F, R] as an [N, N, 2D] matrix (zeros at invalid pairs), gathers the 4 lines of every pair into
    G [P, 4, N, 2D], projects G with the unit's key/value weights, then attends (line g with its own head group g,
    masked where the key pair is invalid).
    """
    N = pairs.mask.size(1)
    D, h, k = unit.dim, unit.h, unit.k
    valid, s, o = pairs.mask[0], pairs.s, pairs.o
    m = f.new_zeros(N, N, 2 * D)
    m[s, o] = torch.cat([f, r], dim=-1)
    P = s.numel()
    G = torch.stack([m[s], m[:, s].transpose(0, 1), m[o], m[:, o].transpose(0, 1)], dim=1)  # [P, 4, N, 2D]
    kv = F.linear(G, unit.kv.weight, unit.kv.bias)  # [P, 4, N, 2D]: the projection, N^3 * D^2 FLOPs
    keys, vals = kv[..., :D].reshape(P, 4, N, 4, h, k), kv[..., D:].reshape(P, 4, N, 4, h, k)
    keys = torch.diagonal(keys, dim1=1, dim2=3).permute(0, 4, 1, 2, 3)  # line g, head group g: [P, 4, N, h, k]
    vals = torch.diagonal(vals, dim1=1, dim2=3).permute(0, 4, 1, 2, 3)
    mask = torch.stack([valid[s], valid[:, s].t(), valid[o], valid[:, o].t()], dim=1)  # [P, 4, N]
    qh = (q / math.sqrt(k)).view(P, 4, h, k)
    scores = torch.einsum("pghk,pgjhk->pghj", qh, keys)
    scores = scores.masked_fill(~mask[:, :, None, :], torch.finfo(scores.dtype).min)
    w = torch.softmax(scores, dim=-1) * mask[:, :, None, :]
    return torch.einsum("pghj,pgjhk->pghk", w, vals).reshape(P, D)


LINES = (  # line g of every pair (s, o), as a view [B, N(s), N(o) or 1, N(j), c] of a matrix x [B, N, N, c]
    lambda x: x.unsqueeze(2),  # row s: x[s, j]
    lambda x: x.transpose(1, 2).unsqueeze(2),  # column s: x[j, s]
    lambda x: x.unsqueeze(1),  # row o: x[o, j]
    lambda x: x.transpose(1, 2).unsqueeze(1),  # column o: x[j, o]
)


def scatter_by_mask(x, pair_mask):
    """[P, c] packed pairs -> zero [B, N, N, c] matrix filled at the valid pairs (boolean-mask assignment)."""
    out = x.new_zeros(*pair_mask.shape, x.size(-1))
    out[pair_mask] = x
    return out


def gather_line(x, g, pair_mask):
    """Line g of every valid pair of a matrix x [B, N, N, c]: expand to [B, N, N, N, c], index by pair -> [P, N, c]."""
    B, N, _ = pair_mask.shape
    return LINES[g](x).expand(B, N, N, N, x.size(-1))[pair_mask]


def authors_attend(unit, q, f, r, pairs):
    """The authors' algorithm with the project's semantics (see the module docstring): q [P, D] queries, f, r [P, D]
    -> concatenated heads [P, D]. Any batch of documents; pairs are addressed with the boolean mask, as the authors
    do (pairs.mask [B, N, N])."""
    pair_mask = pairs.mask
    D, h, k = unit.dim, unit.h, unit.k
    P = q.size(0)
    m = torch.cat([f, r], dim=-1)  # M = [F, R] of the valid pairs
    keys = F.linear(m, unit.kv.weight[:D], unit.kv.bias[:D]).view(P, 4 * h, k)  # once per pair
    vals = F.linear(m, unit.kv.weight[D:], unit.kv.bias[D:]).view(P, 4 * h, k)
    valid = [gather_line(pair_mask[..., None], g, pair_mask)[..., 0] for g in range(4)]  # [P, N] per line
    ks, vs, masks = [], [], []
    for i in range(4 * h):
        g = i // h  # head i belongs to head group g, which attends line g
        ks.append(gather_line(scatter_by_mask(keys[:, i], pair_mask), g, pair_mask))  # [P, N, k]
        vs.append(gather_line(scatter_by_mask(vals[:, i], pair_mask), g, pair_mask))
        masks.append(valid[g])
    K, V = torch.stack(ks, dim=1), torch.stack(vs, dim=1)  # [P, 4h, N, k]
    additive = (~torch.stack(masks, dim=1))[:, :, None, :] * -10000.0  # [P, 4h, 1, N]: exp underflows to exactly 0
    scores = torch.matmul(q.view(P, 4 * h, 1, k), K.transpose(-1, -2)) / math.sqrt(k) + additive
    w = torch.softmax(scores, dim=-1)
    return torch.matmul(w, V).reshape(P, D)


def naive_bytes(N, D, layers):
    """Estimate of the gather-then-project reference's peak: per ECA unit G and kv are saved for backward
    ([P, 4, N, 2D] each, float32), 2 units per layer. (Measured on CPU at N=20, D=512: 952 MB peak for a 996 MB
    estimate.)"""
    P = N * (N - 1)
    return 2 * 2 * layers * P * 4 * N * 2 * D * 4


def authors_bytes(N, D, layers):
    """Estimate of the authors'-algorithm reference's peak: per ECA unit K and V, gathered per head and stacked, are
    saved for backward ([P, 4h, N, k] = P * N * D elements each, float32), 2 units per layer; about 4 more such
    tensors are live at the peak (the per-head pieces while they are stacked, the gradients of K and V, the
    [B, N, N, N, k] zeros that the backward of each head's indexing fills). (Measured on CPU, N_I = 2: 11.2 to 12.1
    x P * N * D * 4 bytes at N = 20..60, D = 32..256, h = 1, 2, for 12 estimated.)"""
    P = N * (N - 1)
    return (2 * 2 * layers + 4) * P * N * D * 4


REFERENCES = {  # key: (attention, peak estimate, name in the output)
    "naive": (naive_attend, naive_bytes, "gather-then-project reference"),
    "authors": (authors_attend, authors_bytes, "authors'-algorithm reference"),
}


def reference_forward(module, attend, f0, r0, pairs):
    """InferenceModule.forward with every ECA unit's attention replaced by ``attend`` (same weights)."""
    f, r = f0, r0
    for layer in module.layers:
        f_t, r_t = (unit.drop(unit.out(attend(unit, unit.q(x), f, r, pairs)))
                    for unit, x in ((layer.eca_f, f), (layer.eca_r, r)))
        s = torch.sigmoid(layer.gate(torch.cat([f_t, r_t], dim=-1)))
        fused = s * f_t + (1 - s) * r_t
        f = layer.norm_f(f + layer.fnn_f(fused))
        r = layer.norm_r(r + layer.fnn_r(fused))
    return module.classifier(torch.cat([f, r], dim=-1))


# ---------------------------------------------------------------- runs
def make_inputs(N, D, device, seed=0, n_real=None):
    """One document of N entities, the first n_real (default all) real: every ordered pair of them is valid.
    Returns (utils.Pairs on the device, f0 [P, D], relations [P], loss weights [P, C])."""
    n_real = N if n_real is None else n_real
    g = torch.Generator().manual_seed(seed)
    pair_mask = torch.zeros(1, N, N, dtype=torch.bool)
    pair_mask[0, :n_real, :n_real] = ~torch.eye(n_real, dtype=torch.bool)
    P = n_real * (n_real - 1)
    f0 = torch.randn(P, D, generator=g).to(device).requires_grad_()
    rel = torch.randint(0, NUM_CLASS, (P,), generator=g).to(device)
    weight = torch.randn(P, NUM_CLASS, generator=g).to(device)  # loss = <logits, weight>: non-trivial grads
    return Pairs.from_mask(pair_mask.to(device)), f0, rel, weight


def fwd_bwd(module, fn, pairs, f0, rel, weight, amp="none"):
    """One forward (under autocast for amp bf16) and backward of loss = <logits, weight>; returns the logits."""
    module.zero_grad(set_to_none=True)
    f0.grad = None
    with common.autocast(f0.device, amp):
        r0 = module.rel_emb(rel)
        logits = fn(f0, r0, pairs)
    (logits * weight).sum().backward()
    return logits


def project_fn(module):
    """The project's N_I layers and classifier on (F_0, R_0): InferenceModule.forward after its projection of
    the base features, which is the same per-pair linear layer for every implementation."""
    def run(f0, r0, pairs):
        f, r = module.encode(f0, r0, pairs)
        return module.classifier(torch.cat([f, r], dim=-1))
    return run


def reference_fn(module, name):
    attend = REFERENCES[name][0]
    return lambda f0, r0, pairs: reference_forward(module, attend, f0, r0, pairs)


def measure_memory(module, fn, inputs, device, amp):
    """LiveTensorMemory peak and largest tensor of one call; on CUDA also max_memory_allocated over the call, after
    an untimed call (cuBLAS workspaces are allocated, and kept, at the first calls of a kind)."""
    cuda = device.type == "cuda"
    if cuda:
        fwd_bwd(module, fn, *inputs, amp)
    module.zero_grad(set_to_none=True)  # gradients of an earlier call are freed by this one: not part of its peak
    inputs[1].grad = None
    exclude = list(module.parameters()) + tree_leaves(inputs)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with LiveTensorMemory(exclude, [p.shape for p in module.parameters()]) as mem:
        fwd_bwd(module, fn, *inputs, amp)
    res = {"peak_bytes": mem.peak, "max_numel": mem.max_numel, "max_numel_op": mem.max_op}
    if cuda:
        torch.cuda.synchronize(device)
        res["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device) - base
    return res


def guarded(module, inputs, fn):
    """fn(), or "oom" where CUDA ran out of memory (gradients dropped and the allocator's cache emptied)."""
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        pass  # leaving the except block frees the exception, its traceback and the frames' tensors
    module.zero_grad(set_to_none=True)
    inputs[1].grad = None
    torch.cuda.empty_cache()
    return "oom"


def measure(module, fn, inputs, device, amp, repeats, warmup, flops=True):
    """Memory (measure_memory), counted FLOPs (where flops) and median time of fwd_bwd; each cell "oom" on its own."""
    call = lambda: fwd_bwd(module, fn, *inputs, amp)  # noqa: E731
    mem = guarded(module, inputs, lambda: measure_memory(module, fn, inputs, device, amp))
    keys = ("peak_bytes", "max_numel", "max_numel_op", "cuda_max_allocated_bytes")[:4 if device.type == "cuda" else 3]
    res = mem if mem != "oom" else dict.fromkeys(keys, "oom")
    res["flops"] = guarded(module, inputs, lambda: common.count_flops(call)) if flops else None
    timed = guarded(module, inputs, lambda: common.timeit(call, device, repeats, warmup))
    res["s"], res["samples_s"] = ("oom", "oom") if timed == "oom" else timed
    return res


def peak(m, device):
    """The peak that the memory ratios use: max_memory_allocated on CUDA, LiveTensorMemory on CPU."""
    return m["cuda_max_allocated_bytes" if device.type == "cuda" else "peak_bytes"]


def check_equal(module, inputs, atol):
    """Same function as the project's module, for each reference? Logits in float32 (max abs diff <= atol) and
    logits + every gradient (input f0, relation embedding, all weights) in float64 (max diff relative to the tensor's
    max <= FP64_RTOL). Float32 gradients are reported, not compared with atol: at random init they are themselves
    ~1e-2 (relative) away from the float64 ones in all implementations (ReLU gates of the FNNs sit near 0 and flip
    with rounding), so they only show noise."""
    def run(mod, fn, inp):
        out = {"logits": fwd_bwd(mod, fn, *inp).detach().clone(), "f0": inp[1].grad.clone()}
        out.update((n, p.grad.clone()) for n, p in mod.named_parameters() if p.grad is not None)
        return out

    def rel_diff(x, y, names):
        return max(((x[n] - y[n]).abs().max() / y[n].abs().max().clamp(min=1e-30)).item() for n in names)

    m64 = copy.deepcopy(module).double()
    pairs, f0, rel, w = inputs
    in64 = (pairs, f0.detach().double().requires_grad_(), rel, w.double())
    a32, a64 = run(module, project_fn(module), inputs), run(m64, project_fn(m64), in64)
    out = {}
    for name in REFERENCES:
        b32, b64 = run(module, reference_fn(module, name), inputs), run(m64, reference_fn(m64, name), in64)
        c = {"max_abs_diff_logits_fp32": (a32["logits"] - b32["logits"]).abs().max().item(),
             "max_rel_diff_grads_fp32": rel_diff(a32, b32, set(a32) - {"logits"}) if a32.keys() == b32.keys() else None,
             "max_rel_diff_all_fp64": rel_diff(a64, b64, a64) if a64.keys() == b64.keys() else None,
             "n_tensors_compared": len(a64)}
        c["equal"] = (a64.keys() == b64.keys() and c["max_abs_diff_logits_fp32"] <= atol
                      and c["max_rel_diff_all_fp64"] <= FP64_RTOL)
        out[name] = c
    return out


def equivalence_checks(device, layers, atol, N=8, D=32):
    """check_equal at heads_per_line 1 and 2 on one small document whose last entity is padding (so that keys at
    invalid pairs other than s = o are masked too)."""
    out = []
    for h in (1, 2):
        torch.manual_seed(0)
        module = InferenceModule(D, D, NUM_CLASS, layers, h, dropout=0.0).to(device).train()
        out.append({"heads_per_line": h, "N": N, "real_entities": N - 1, "D": D,
                    **check_equal(module, make_inputs(N, D, device, n_real=N - 1), atol)})
    return out


def fmt_check(c):
    return "%s %.0e/%.0e" % ("ok" if c["equal"] else "DIFF", c["max_abs_diff_logits_fp32"],
                             c["max_rel_diff_all_fp64"] if c["max_rel_diff_all_fp64"] is not None else float("nan"))


def ratio(ref, project):
    """Reference / project (time or peak memory), or "oom" where either ran out of memory."""
    return "oom" if "oom" in (ref, project) else ref / max(project, 1e-30)


def fmt_target(x):
    """A ratio against the target of 8x at N=42."""
    if x is None or x == "oom":
        return "n/a" if x is None else "oom"
    return f"{x:.1f}x (target >= 8x: {'met' if x >= 8 else 'MISSED'})"


def gb(x):
    return x / 2 ** 30


def mb(x):
    return x if x == "oom" else f"{x / 2 ** 20:.1f}"


def ms(x):
    return x if x == "oom" else f"{x * 1e3:.1f}"


def free_bytes(device):
    """Free memory for a reference: CUDA free memory after emptying the allocator's cache, else MemAvailable."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None


def main():
    t_start = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10,20,42,64,100")
    p.add_argument("--dims", default="512,768")
    p.add_argument("--layers", type=int, default=2, help="N_I")
    p.add_argument("--heads_per_line", type=int, default=1, help="4 lines x this = heads (paper: 4 heads)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ref_repeats", type=int, default=3, help="repeats of the references (1 where they are large)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs before the timing, for N < 64 (above, the memory and FLOP-count runs warm up)")
    p.add_argument("--ref_max_gb", type=float, default=8.0,
                   help="skip a reference where its estimated peak exceeds this (also capped at 80%% of free memory)")
    p.add_argument("--ref_big_gb", type=float, default=None,
                   help="above this estimate, time a reference once, no warm-up, no FLOP count (default: 2 on CPU, "
                        "never on CUDA)")
    p.add_argument("--amp", default="none", help="comma list of precisions to measure: none (float32), bf16 (autocast)")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--check_max_n", type=int, default=10, help="numerical check (fp32 + fp64 runs) up to this N")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="eca.json", help="result file name under bench/results/")
    p.add_argument("--time_budget_s", type=float, default=0,
                   help="start no new (D, N) once this much wall time has been used (0: no budget)")
    a = p.parse_args()
    common.set_threads(a.threads)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    sizes = [int(x) for x in a.sizes.split(",")]
    dims = [int(x) for x in a.dims.split(",")]
    amps = a.amp.split(",")
    if any(x not in ("none", "bf16") for x in amps):
        p.error(f"--amp takes none and/or bf16, not {a.amp}")
    big_bytes = (math.inf if cuda else 2.0) if a.ref_big_gb is None else a.ref_big_gb
    big_bytes *= 2 ** 30
    memory_measure = ("torch.cuda.max_memory_allocated (LiveTensorMemory peak also in the JSON)" if cuda
                      else "LiveTensorMemory (live tensor storages created in the call)")
    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if cuda else ''}, torch threads "
          f"{torch.get_num_threads()}, cpu {common.cpu_model()}; InferenceModule N_I={a.layers}, 4 lines x "
          f"{a.heads_per_line} head(s), dropout 0, precisions {','.join(amps)}"
          f"{', TF32 matmul ' + ('on' if torch.backends.cuda.matmul.allow_tf32 else 'off') if cuda else ''}; "
          f"fwd+bwd of one document; peak memory = {memory_measure}")
    print("references: " + "; ".join(f"{k} = {v[2]}" for k, v in REFERENCES.items()))
    res = {"machine": common.machine_info(device), "command": " ".join(["python"] + sys.argv), "config": vars(a),
           "memory_measure": memory_measure, "references": {k: v[2] for k, v in REFERENCES.items()}}

    checks = equivalence_checks(device, a.layers, a.atol)
    res["equivalence_checks"] = checks
    for c in checks:
        print(f"check heads_per_line={c['heads_per_line']} N={c['N']} ({c['real_entities']} real) D={c['D']}: "
              + ", ".join(f"{name} {fmt_check(c[name])}" for name in REFERENCES) + " (fp32 logits abs / fp64 all rel)")
    if not all(c[name]["equal"] for c in checks for name in REFERENCES):
        print("wrote", common.write_json(a.out, res))
        sys.exit("FAILED: a reference does not compute the project's function (equivalence checks above)")

    header = ["D", "N", "pairs", "amp", "project ms", "project peak MB", "GFLOP/s", "max tensor < N^3 D"]
    for name in REFERENCES:
        header += [f"{name} ms", f"{name} peak MB", f"speed-up vs {name}", f"memory vs {name}"]
    header += [f"same as {name}" for name in REFERENCES]
    results, rows, skipped = [], [], []
    res.update(results=results, skipped_for_time_budget=skipped)
    for D in dims:
        for N in sizes:
            if a.time_budget_s and time.perf_counter() - t_start > a.time_budget_s:
                skipped.append({"N": N, "D": D})
                print(f"D={D} N={N}: skipped (time budget of {a.time_budget_s:.0f} s used)", flush=True)
                continue
            torch.manual_seed(0)
            module = InferenceModule(D, D, NUM_CLASS, a.layers, a.heads_per_line, dropout=0.0).to(device).train()
            inputs = make_inputs(N, D, device)
            chk = guarded(module, inputs, lambda: check_equal(module, inputs, a.atol)) if N <= a.check_max_n else None
            for amp in amps:
                r = {"N": N, "D": D, "pairs": N * (N - 1), "n3d": N ** 3 * D, "amp": amp, "check": chk}
                m = measure(module, project_fn(module), inputs, device, amp, a.repeats, a.warmup if N < 64 else 0)
                r["project"] = m
                r["no_n3d_tensor"] = None if m["max_numel"] == "oom" else m["max_numel"] < N ** 3 * D
                row = [D, N, r["pairs"], amp, ms(m["s"]), mb(peak(m, device)),
                       "-" if "oom" in (m["s"], m["flops"]) else f"{m['flops'] / m['s'] / 1e9:.1f}",
                       {True: "yes", False: "NO", None: "oom"}[r["no_n3d_tensor"]]]
                for name, (_, estimate, _) in REFERENCES.items():
                    est, cap = estimate(N, D, a.layers), a.ref_max_gb * 2 ** 30
                    free = free_bytes(device)
                    cap = min(cap, 0.8 * free) if free else cap
                    if est > cap:
                        rm = {"est_bytes": est, "skipped": f"n/a (> {gb(cap):.1f} GB: estimated {gb(est):.1f} GB)"}
                        row += [rm["skipped"], "-", "-", "-"]
                    else:
                        big = est > big_bytes
                        rm = measure(module, reference_fn(module, name), inputs, device, amp,
                                     1 if big else a.ref_repeats, 0 if big or N >= 64 else a.warmup, flops=not big)
                        rm["est_bytes"] = est
                        r[f"speedup_vs_{name}"] = ratio(rm["s"], m["s"])
                        r[f"memory_ratio_vs_{name}"] = ratio(peak(rm, device), peak(m, device))
                        row += [ms(rm["s"]), mb(peak(rm, device)),
                                *(x if x == "oom" else f"{x:.1f}x"
                                  for x in (r[f"speedup_vs_{name}"], r[f"memory_ratio_vs_{name}"]))]
                    r[name] = rm
                row += ["oom" if chk == "oom" else fmt_check(chk[name]) if chk else "-" for name in REFERENCES]
                results.append(r)
                rows.append(row)
                print(common.fmt_table(header, rows[-1:]).splitlines()[-1], flush=True)
                common.write_json(a.out, res)
            del module, inputs
    print()
    print(common.fmt_table(header, rows))
    print("speed-up, memory: reference / project's module (time, peak memory); same as: fp32 logits max abs diff / "
          "fp64 logits and gradients max rel diff")
    for r in results:
        if r["N"] == 42:
            print(f"N={r['N']} D={r['D']} amp {r['amp']}: " + "; ".join(
                f"vs {name}: speed-up {fmt_target(r.get(f'speedup_vs_{name}'))}, "
                f"memory {fmt_target(r.get(f'memory_ratio_vs_{name}'))}" for name in REFERENCES))
    if skipped:
        print("skipped for the time budget:", ", ".join(f"D={s['D']} N={s['N']}" for s in skipped))
    bad = [r for r in results if r["no_n3d_tensor"] is False
           or (isinstance(r["check"], dict) and not all(r["check"][name]["equal"] for name in REFERENCES))]
    print("wrote", common.write_json(a.out, res))
    if bad:
        sys.exit("FAILED: an N^3*D tensor was created or a reference differs: " + str([(r["N"], r["D"]) for r in bad]))


if __name__ == "__main__":
    main()

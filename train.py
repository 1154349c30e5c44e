"""Train and evaluate DocRE-II: stage 1 (base module), stage 2 (whole model), then dev/test predictions.

Reads top to bottom: flags -> data -> model -> optimiser per stage -> epoch loop (train, evaluate,
checkpoint) -> final predictions. One process, or one per GPU under torchrun (DistributedDataParallel).

Continue an interrupted run (SIGINT/SIGTERM save last.pt): python train.py --resume SAVE_PATH
Predict new DocRED-format documents (no labels needed) with a trained checkpoint; writes OUT/result.json and a
readable OUT/predictions.json (title, head/tail entity names, relation id and name, score):
  python train.py --evaluate_only --load_path CKPT --dev_file '' --test_file NEW.json --save_path OUT
"""
import argparse
import contextlib
import datetime
import io
import json
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import evaluation
import prepro
from base_module import load_encoder
from losses import get_label
from model import build_model, parse_loss_weights
from utils import DataError, UsageError, atomic_write_bytes, atomic_write_json, collate_fn, default_model_path, \
    move_to, set_seed

# Flags that define the base module / the inference module. A checkpoint records them; --load_path and
# --evaluate_only take them from it (stage 2 from a stage-1 checkpoint takes only the base ones, so the
# ablations of Table 4 can share one stage 1).
BASE_KEYS = ("dataset", "transformer_type", "model_name_or_path", "max_seq_length", "emb_size", "rel2id")
INFERENCE_KEYS = ("inference_dim", "num_inference_layers", "eca_heads_per_line", "dropout", "eca", "no_fusion",
                  "contrastive", "classifier_layers", "rel_emb_init", "relation_input", "test_logits")
# --recipe authors: the training recipe of the authors' code (DeepLearnXMU/DocRE-II, see README "Faithfulness");
# --recipe paper keeps every default. Flags given explicitly override the preset.
RECIPES = {"paper": {}, "authors": {
    "train_relations": "gold", "relation_input": "multihot", "noise_on": "sampled", "negative_ratio": 5,
    "loss_weights": "5,5,5,1", "contrastive_target": "stopgrad", "test_logits": "sum", "rel_emb_init": "xavier",
    "classifier_layers": 2, "weight_decay": 1e-4, "stage2_base_params": "encoder"}}
# Test hook (tests/test_reliability.py): seconds to sleep after every optimiser step, so that a test can
# send SIGTERM/SIGINT while an epoch is under way. Unset (0) in normal use.
TEST_SLEEP_PER_STEP = float(os.environ.get("DOCRE_TEST_SLEEP_PER_STEP") or 0)
OUTPUTS = ("metrics.jsonl", "best.pt", "last.pt", "result.json", "dev_result.json", "predictions.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    # data
    a("--dataset", choices=["docred", "cdr", "gda"], default="docred")
    a("--data_dir", default="dataset/docred")
    a("--train_file", default="train_annotated.json")
    a("--dev_file", default="dev.json")
    a("--test_file", default="test.json", help="predicted (and scored when it has labels); '' to skip")
    a("--rel2id", default=None, help="relation map for DocRED-format data (default meta/rel2id.json)")
    a("--cache_dir", default=".cache/features", help="preprocessed-feature cache")
    a("--max_train_docs", type=int, default=0, help="use only the first N training documents (0 = all)")
    a("--max_eval_docs", type=int, default=0, help="use only the first N dev/test documents (0 = all)")
    # encoder and base module (Section 2.1)
    a("--transformer_type", choices=["bert", "roberta"], default="bert")
    a("--model_name_or_path", default=None, help="HF name or local folder (default: bundled all-MiniLM-L6-v2)")
    a("--max_seq_length", type=int, default=1024)
    a("--emb_size", type=int, default=0, help="pair-feature width e (0 = encoder hidden size)")
    a("--attention", choices=["eager", "sdpa"], default="eager",
      help="encoder attention: eager in every layer, or SDPA in every layer but the last (same results; "
           "the last layer's map is the only one read)")
    # inference module (Section 2.2)
    a("--num_inference_layers", type=int, default=2, help="N_I")
    a("--num_iterations", type=int, default=3, help="K at evaluation; 0 evaluates the base module alone")
    a("--inference_dim", type=int, default=512, help="inference-module width (authors' code: 512)")
    a("--eca_heads_per_line", type=int, default=1, help="heads per attended line (4 lines: paper = 1)")
    a("--dropout", type=float, default=0.1)
    a("--eca", choices=["eca", "full"], default="eca", help="'full': ablation w/o ECA (attention over all pairs)")
    a("--no_fusion", action="store_true", help="ablation w/o fusion sub-layer")
    # training (Section 2.3, Table 7: DocRED / BERT-base)
    a("--train_batch_size", type=int, default=8)
    a("--test_batch_size", type=int, default=16)
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--num_labels", type=int, default=4, help="at most this many relations per pair (CDR/GDA: 1)")
    a("--stage1_epochs", type=int, default=30)
    a("--encoder_lr", type=float, default=5e-5)
    a("--classifier_lr", type=float, default=1e-4)
    a("--stage2_epochs", type=int, default=15)
    a("--stage2_base_lr", type=float, default=1e-5)
    a("--inference_lr", type=float, default=1e-4)
    a("--noise_max", type=float, default=0.4, help="noise rate r ~ U(0, noise_max) (--noise_on all)")
    a("--contrastive", choices=["simsiam", "simclr", "none"], default="simsiam")
    a("--temperature", type=float, default=0.1, help="SimCLR temperature (--contrastive simclr)")
    # the two readings of stage 2 (README "Faithfulness"); each default is the paper's
    a("--recipe", choices=sorted(RECIPES), default="paper", help="preset of the flags below; explicit flags win")
    a("--train_relations", choices=["pred", "gold"], default="pred",
      help="R_0 in stage-2 training: the base module's predictions (paper) or the gold labels (authors)")
    a("--relation_input", choices=["argmax", "multihot"], default="argmax",
      help="R_0 = emb(argmax P) (paper) or the sum of the embeddings of the predicted relations (authors)")
    a("--noise_on", choices=["all", "sampled"], default="all",
      help="noise on r ~ U(0, noise_max) of all valid pairs (paper), or on r ~ U(0.2, 0.5) of the positives and "
           "r ~ U(0.05, 0.15) of the sampled negatives (authors)")
    a("--negative_ratio", type=int, default=0,
      help="stage-2 AT losses on all scored pairs (0, paper) or on the positives and this many times as many "
           "sampled negatives (authors: 5)")
    a("--loss_weights", default="1,1,0,1",
      help="weights of the stage-2 losses: base AT, view-A AT, view-B AT, contrastive (authors: 5,5,5,1)")
    a("--contrastive_target", choices=["symmetric", "stopgrad"], default="symmetric",
      help="SimSiam of Eq. (14) over the two views, or the authors' no-grad swapped passes as targets")
    a("--test_logits", choices=["last", "sum"], default="last",
      help="score of pass K: its logits (paper) or the base logits plus every pass's logits (authors)")
    a("--rel_emb_init", choices=["normal", "xavier"], default="normal", help="relation embedding init")
    a("--classifier_layers", type=int, choices=[1, 2], default=1,
      help="Eq. (12)'s classifier: linear (1), or Linear-Dropout-LayerNorm-Linear (2, authors)")
    a("--stage2_base_params", choices=["all", "encoder"], default="all",
      help="base-module parameters trained in stage 2: all, or the encoder only (authors: the head is frozen)")
    a("--skip_stage1", action="store_true", help="ablation w/o pre-training: stage 2 from the raw encoder")
    a("--freeze_base", action="store_true", help="ablation: the base module is frozen in stage 2")
    a("--warmup_ratio", type=float, default=0.06)
    a("--adam_epsilon", type=float, default=1e-6)
    a("--weight_decay", type=float, default=0.0, help="AdamW weight decay (not on biases and norms)")
    a("--max_grad_norm", type=float, default=1.0)
    a("--max_bad_steps", type=int, default=20, help="stop after this many non-finite steps in a row")
    a("--seed", type=int, default=66)
    # run control
    a("--save_path", default="runs/docre-ii")
    a("--load_path", default="", help="checkpoint to evaluate (--evaluate_only) or to start stage 2 from")
    a("--resume", default="", help="SAVE_PATH of an interrupted run: continue from its last.pt")
    a("--overwrite", action="store_true", help="allow replacing outputs already in --save_path")
    a("--evaluate_only", action="store_true")
    a("--device", choices=["auto", "cpu", "cuda"], default="auto")
    a("--amp", choices=["auto", "none", "bf16", "fp16"], default="auto",
      help="autocast: auto = bf16 on GPUs and CPUs with bf16 matrix units, else none (fp32)")
    a("--num_workers", type=int, default=0)
    a("--threads", type=int, default=0, help="CPU intra-op threads (0 = torch's default); 1 on a shared machine")
    a("--log_every", type=int, default=50, help="steps between progress-bar loss updates")
    a("--wandb", action="store_true", help="log to Weights & Biases (respects WANDB_MODE)")
    a("--wandb_project", default="docre-ii")
    args = p.parse_args(argv)
    given = explicit_flags(p, argv)
    for key, value in RECIPES[args.recipe].items():
        if key not in given:
            setattr(args, key, value)
    return args


def explicit_flags(parser, argv):
    """The flags given on the command line (parsed again with every default suppressed)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


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


def validate_args(args):
    """Out-of-range flags end the run before anything is written."""
    checks = [("encoder_lr", 0), ("classifier_lr", 0), ("stage2_base_lr", 0), ("inference_lr", 0),
              ("num_iterations", 0), ("stage1_epochs", 0), ("stage2_epochs", 0), ("warmup_ratio", 0),
              ("adam_epsilon", 0), ("max_grad_norm", 0), ("max_train_docs", 0),
              ("max_eval_docs", 0), ("emb_size", 0), ("weight_decay", 0), ("threads", 0)]
    for name, low in checks:
        if getattr(args, name) < low:
            raise UsageError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    for name in ("train_batch_size", "test_batch_size", "gradient_accumulation_steps", "num_inference_layers",
                 "inference_dim", "eca_heads_per_line", "max_seq_length", "log_every", "max_bad_steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.noise_max <= 1:
        raise UsageError(f"--noise_max must be in [0, 1], got {args.noise_max}")
    if not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.warmup_ratio > 1:
        raise UsageError(f"--warmup_ratio must be <= 1, got {args.warmup_ratio}")
    if args.temperature <= 0:
        raise UsageError(f"--temperature must be > 0, got {args.temperature}")
    try:
        parse_loss_weights(args.loss_weights)
    except ValueError as e:
        raise UsageError(f"--loss_weights: {e}") from e
    if args.negative_ratio < 0:
        raise UsageError(f"--negative_ratio must be >= 0, got {args.negative_ratio}")
    if args.inference_dim % (4 * args.eca_heads_per_line):
        raise UsageError(f"--inference_dim {args.inference_dim} must be divisible by 4 x --eca_heads_per_line")
    if args.evaluate_only and not args.load_path:
        raise UsageError("--evaluate_only needs --load_path CHECKPOINT")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")


# ---------------------------------------------------------------- distributed set-up
def init_distributed(args):
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK (and MASTER_ADDR/PORT); NCCL on CUDA, gloo on CPU.

    Rank 0 evaluates, checkpoints and writes the final predictions while the other ranks wait in a
    collective, so the collective timeout must outlast the longest of these: DOCRE_DIST_TIMEOUT_MIN
    minutes (default 120; torch's defaults, 10 min NCCL / 30 min gloo, are too short for a CPU evaluation).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    # Under torchrun (it sets LOCAL_RANK) the process group is set up even for one process, so that
    # `torchrun --nproc_per_node 1` runs exactly the DDP code path (and NCCL) that N processes run.
    if "LOCAL_RANK" in os.environ:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        minutes = float(os.environ.get("DOCRE_DIST_TIMEOUT_MIN") or 120)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=minutes))
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        return device, dist.get_rank(), world
    return torch.device("cuda" if use_cuda else "cpu"), 0, 1


def distributed():
    return dist.is_available() and dist.is_initialized()


def barrier():
    if distributed():
        if dist.get_backend() == "nccl":  # name the device: NCCL would otherwise guess it from the rank
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


# ---------------------------------------------------------------- data
def data_path(args, name):
    return name if os.path.isabs(name) or os.path.exists(name) else os.path.join(args.data_dir, name)


def load_split(args, name, tokenizer, rel2id, limit):
    path = data_path(args, name)
    if not os.path.isfile(path):
        raise UsageError(f"data file not found: {path} (see dataset/README.md)")
    if args.dataset != "docred" and _looks_like_json(path):
        raise DataError(f"{path}: looks like DocRED-format JSON, not a {args.dataset.upper()} .data file "
                        f"(use --dataset docred for DocRED-format files)")
    feats = prepro.load_features(path, args.dataset, tokenizer, args.max_seq_length,
                                 rel2id=rel2id if args.dataset == "docred" else None, cache_dir=args.cache_dir)
    feats = feats[:limit] if limit else feats
    # Documents with fewer than 2 entities have no pair to classify: they get no predictions (and are left
    # out of training); a file with no pair at all is an error.
    empty = [f["title"] for f in feats if not f["hts"]]
    if empty and len(empty) == len(feats):
        raise DataError(f"{path}: no document has an entity pair (every document has fewer than 2 entities)")
    if empty:
        shown = ", ".join(repr(t) for t in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        print(f"warning: {path}: {len(empty)} document(s) with fewer than 2 entities get no pairs and no "
              f"predictions: {shown}", file=sys.stderr)
    return path, feats


def _looks_like_json(path):
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    return head[:1] in (b"[", b"{")


def train_loader(features, args, rank, world, epoch_key):
    """DistributedSampler (also with one process) gives a per-epoch permutation seeded by seed + epoch_key."""
    sampler = DistributedSampler(features, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    sampler.set_epoch(epoch_key)
    # Its own generator: creating an iterator then draws no number from the global torch RNG, so a resumed
    # epoch (a new iterator, then the restored RNG state) sees the same random numbers as an uninterrupted one.
    generator = torch.Generator().manual_seed(args.seed + epoch_key)
    return DataLoader(features, batch_size=args.train_batch_size, sampler=sampler, collate_fn=collate_fn,
                      num_workers=args.num_workers, pin_memory=torch.cuda.is_available(), generator=generator)


# ---------------------------------------------------------------- model
def load_model(args, num_class, tokenizer):
    """The model of these flags (model.build_model) on the encoder they name."""
    start = [tokenizer.cls_token_id]
    end = [tokenizer.sep_token_id] * (2 if args.transformer_type == "roberta" else 1)
    try:
        encoder = load_encoder(args.model_name_or_path or default_model_path(), args.attention)
    except OSError as e:
        raise UsageError(f"cannot load encoder {args.model_name_or_path!r}: {e}") from e
    return build_model(args, num_class, encoder, start, end)


def linear_schedule(optimizer, total_steps, warmup_ratio):
    """Linear warm-up over the first warmup_ratio of the steps, then linear decay to 0 (Section 3.2)."""
    warmup = int(total_steps * warmup_ratio)

    def factor(step):
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------- checkpoints
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


def restore_rng(saved, rank, world, reseed):
    """``saved``: last.pt's "rng", one state per rank (a list) from a DDP run, a dict from one process.
    With the world size that saved it every rank continues its own stream; with another one the streams
    cannot be matched to ranks, so every rank starts a new one from ``reseed + rank``."""
    states = saved if isinstance(saved, list) else [saved]
    if len(states) == world:
        set_rng_state(states[rank])
    else:
        set_seed(reseed + rank)


def save_checkpoint(path, obj):
    """torch.save into memory, then an atomic rename: an interrupted write never leaves a torn file."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UsageError(f"{path} is not a DocRE-II checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "args" not in ckpt:
        raise UsageError(f"{path} is not a DocRE-II checkpoint (no 'model'/'args' entries)")
    return ckpt


def adopt_checkpoint_args(args, ckpt, keys, path):
    """Take the network flags from the checkpoint; a flag the user set to another value is an error."""
    defaults = vars(parse_args([]))
    for key in keys:
        if key not in ckpt["args"]:
            continue
        mine, theirs = getattr(args, key), ckpt["args"][key]
        if mine != defaults[key] and mine != theirs:
            raise UsageError(f"{path}: trained with --{key} {theirs!r}, but this run asks for {mine!r}")
        setattr(args, key, theirs)


def load_weights(model, state, path, prefix=""):
    """Load (a prefix of) a state dict; a shape mismatch means another encoder or number of classes."""
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        target = getattr(model, prefix.rstrip("."))
    else:
        target = model
    try:
        target.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0:3]
        raise UsageError(f"{path} does not fit this model (other encoder or number of classes?): "
                         f"{' '.join(first)[:400]}") from e


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(model, features, args, device, num_iterations):
    """Logits of every pass for every document, in document order. Batches are bucketed by length."""
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out = [None] * len(features)
    for s in range(0, len(order), args.test_batch_size):
        idx = order[s:s + args.test_batch_size]
        batch = collate_fn([features[i] for i in idx])
        with autocast(args, device):
            passes = model.predict(move_to(batch, device), num_iterations)
        packed = torch.full(batch["pair_mask"].shape, -1, dtype=torch.long)  # (b, s, o) -> packed pair index
        packed[batch["pair_mask"]] = torch.arange(int(batch["pair_mask"].sum()))
        passes = [p.float().cpu() for p in passes]
        for j, i in enumerate(idx):
            h, t = batch["hts"][j].unbind(1)
            out[i] = [p[packed[j, h, t]] for p in passes]  # [pairs of hts, C] per pass
    return out


def score(args, features, logits, gold_docs, train_docs, id2rel):
    preds = [get_label(lg, args.num_labels).numpy() for lg in logits]
    if args.dataset == "docred":
        sub = evaluation.to_official(preds, features, id2rel)
        return evaluation.docred_scores(sub, gold_docs, train_docs), sub
    return evaluation.bio_scores(preds, features), None


def evaluate(model, features, args, device, gold_docs, train_docs, id2rel, num_iterations):
    """Scores of the final pass, and of each pass k = 0..K ('by_k'), on a labelled split."""
    logits = predict(model, features, args, device, num_iterations)
    by_k, subs = {}, {}
    for k in range(num_iterations + 1):
        by_k[k], subs[k] = score(args, features, [lg[k] for lg in logits], gold_docs, train_docs, id2rel)
    return by_k[num_iterations], by_k, subs[num_iterations], logits


def readable_predictions(features, logits, args, id2rel, rel_names, docs):
    """predictions.json: one entry per predicted triple with entity names, relation name and its margin
    over the threshold class (logit_r - logit_TH > 0 for every prediction)."""
    rows = []
    for f, lg in zip(features, logits):
        final = lg[-1]
        pred = get_label(final, args.num_labels)
        doc = docs.get(f["title"]) if docs else None
        for i, r in zip(*np.nonzero(pred[:, 1:].numpy())):
            h, t = f["hts"][i]
            rid = id2rel[int(r) + 1]
            row = {"title": f["title"], "h_idx": h, "t_idx": t, "r": rid, "relation": rel_names.get(rid, rid),
                   "score": round(float(final[i, r + 1] - final[i, 0]), 4)}
            if doc is not None:
                row["head"], row["tail"] = doc["vertexSet"][h][0]["name"], doc["vertexSet"][t][0]["name"]
            rows.append(row)
    return rows


def autocast(args, device):
    if args.amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16)


# ---------------------------------------------------------------- training
class StopRequested(Exception):
    """SIGINT/SIGTERM arrived: last.pt was saved at a step boundary."""


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row: the run stops with exit status 1."""


class Trainer:
    def __init__(self, args, model, device, rank, world, features, evaluator, save_path):
        self.args, self.model, self.device, self.rank, self.world = args, model, device, rank, world
        self.features, self.evaluator, self.save_path = features, evaluator, save_path
        self.stop_signal = None
        self.stopping = False  # a stop all ranks agreed on (see agree_stop)
        self.skipped = 0  # non-finite steps skipped in the current epoch (kept in last.pt mid-epoch)
        self.wandb = None

    def on_signal(self, signum, _frame):
        self.stop_signal = signum

    def agree_stop(self):
        """Whether to stop now, the same answer on every rank: a collective, so every rank calls it at the same
        point. A signal can reach the ranks at different steps (or only one rank): the MAX over the ranks'
        signal numbers decides. train_step agrees the same way, folded into its all-reduce of the bad flag."""
        signum = float(self.stop_signal or 0)
        if distributed():
            t = torch.tensor([signum], dtype=torch.float64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            signum = float(t.item())
        self._set_stop(int(signum))
        return self.stopping

    def _set_stop(self, signum):
        self.stopping = signum > 0
        if self.stopping:
            self.stop_signal = signum

    def save_last(self, state):
        if self.rank == 0:
            save_checkpoint(os.path.join(self.save_path, "last.pt"), state)

    def run_stage(self, stage, epochs, resume=None):
        """Train one stage; returns the best dev score of the stage. ``resume`` is a loaded last.pt."""
        args, model = self.args, self.model
        groups = model.param_groups(stage, args)
        model.set_trainable(groups)
        # Fused AdamW on a GPU: one kernel per parameter group (12-15 % faster steps on an H200, docs/PERFORMANCE.md).
        optimizer = torch.optim.AdamW(groups, eps=args.adam_epsilon, weight_decay=args.weight_decay,
                                      fused=self.device.type == "cuda" or None)
        batches = math.ceil(math.ceil(len(self.features) / self.world) / args.train_batch_size)
        steps_per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
        scheduler = linear_schedule(optimizer, max(1, steps_per_epoch * epochs), args.warmup_ratio)
        scaler = torch.amp.GradScaler(self.device.type, enabled=args.amp == "fp16")
        if distributed() and self.device.type == "cuda":
            # The predictor's BatchNorm (stage 2) normalises over the pairs of all ranks, as one big batch would.
            # SyncBatchNorm needs CUDA: with gloo on CPU each rank normalises its own pairs.
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # A new DDP per stage: it registers exactly the parameters set_trainable left trainable, and its
        # constructor broadcasts rank 0's parameters and buffers (e.g. best_stage1.pt, loaded on rank 0 only).
        net = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None) \
            if distributed() else model
        start_epoch, skip, best = 0, 0, -1.0
        loss_sum = {}
        global_step = 0
        if resume is not None:
            saved_world = resume.get("world_size", 1)
            if saved_world != self.world and resume["step_in_epoch"]:
                raise UsageError(f"last.pt was saved mid-epoch by a run with world size {saved_world}: resume it "
                                 f"with {saved_world} processes (this run has {self.world})")
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            scaler.load_state_dict(resume["scaler"])
            start_epoch, skip, best = resume["epoch"], resume["step_in_epoch"], resume["best"]
            self.skipped = resume.get("skipped_steps", 0) if skip else 0
            loss_sum = {k: torch.tensor(v, device=self.device) for k, v in resume["loss_sum"].items()}
            global_step = resume["global_step"]
            restore_rng(resume["rng"], self.rank, self.world, args.seed + 1000 * stage + start_epoch)
            if saved_world != self.world:
                # At an epoch boundary with another world size: the per-rank batches and steps per epoch change
                # (the global batch is train_batch_size x world x accumulation); map the LR schedule onto them.
                scheduler.last_epoch = global_step = start_epoch * steps_per_epoch
                for g, base_lr, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                    g["lr"] = base_lr * factor(global_step)
                scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
                if self.rank == 0:
                    print(f"resuming a world-size-{saved_world} run with {self.world} processes: global batch "
                          f"{args.train_batch_size * self.world * args.gradient_accumulation_steps}, "
                          f"{steps_per_epoch} steps per epoch, new RNG streams", file=sys.stderr)
        for epoch in range(start_epoch, epochs):
            loader = train_loader(self.features, args, self.rank, self.world, 1000 * stage + epoch)
            model.train()
            bad_in_row = 0
            if skip == 0:  # a new epoch (not a mid-epoch resume): fresh loss sums and skipped-step count
                self.skipped = 0
                loss_sum = {}
            it = iter(loader)
            batches_done = 0
            for _ in range(skip):  # mid-epoch resume: the same permutation, minus the batches already used
                next(it)
                batches_done += 1
            bar = tqdm(total=batches, initial=batches_done, desc=f"stage {stage} epoch {epoch}",
                       disable=self.rank != 0, leave=False)
            t0 = time.time()
            while batches_done < batches:
                group = []
                for _ in range(min(args.gradient_accumulation_steps, batches - batches_done)):
                    group.append(next(it))
                    batches_done += 1
                step_losses, bad = self.train_step(net, group, stage, optimizer, scaler)
                if TEST_SLEEP_PER_STEP:
                    time.sleep(TEST_SLEEP_PER_STEP)
                if bad:
                    bad_in_row += 1
                    self.skipped += 1
                    if bad_in_row >= args.max_bad_steps:
                        bar.close()
                        raise NonFiniteError(f"stage {stage} epoch {epoch}: {bad_in_row} non-finite steps in a row; "
                                           f"stopping (last.pt holds the state before them)")
                else:
                    bad_in_row = 0
                    scheduler.step()
                    for k, v in step_losses.items():
                        loss_sum[k] = loss_sum.get(k, 0.0) + v
                    loss_sum["steps"] = loss_sum.get("steps", 0.0) + 1
                global_step += 1
                bar.update(len(group))
                if global_step % args.log_every == 0 and self.rank == 0:
                    running = {k: float(v) / float(loss_sum.get("steps", 1)) for k, v in loss_sum.items() if k != "steps"}
                    bar.set_postfix(loss=f"{running.get('loss', float('nan')):.4f}")
                    if self.wandb:
                        self.wandb.log({f"train/{k}": v for k, v in running.items()}, step=global_step)
                if self.stopping and batches_done < batches:  # agreed in train_step
                    self.save_last(self.state(model, optimizer, scheduler, scaler, stage, epoch, batches_done, best,
                                              loss_sum, global_step))
                    bar.close()  # so that the stop message gets a line of its own
                    raise StopRequested()
            bar.close()
            train_time = time.time() - t0
            steps = float(loss_sum.get("steps", 0.0)) or 1.0
            line = {"stage": stage, "epoch": epoch, "step": global_step,
                    "lr": [g["lr"] for g in optimizer.param_groups], "skipped_steps": self.skipped}
            line.update({f"train_{k}": round(float(v) / steps, 6) for k, v in loss_sum.items() if k != "steps"})
            if self.rank == 0:
                best = self.evaluator.after_epoch(model, stage, line, best, train_time)
            barrier()
            if distributed():
                best_t = torch.tensor([best], dtype=torch.float64, device=self.device)
                dist.broadcast(best_t, 0)
                best = float(best_t.item())
            skip = 0
            self.save_last(self.state(model, optimizer, scheduler, scaler, stage, epoch + 1, 0, best, {}, global_step))
            if self.agree_stop() and epoch + 1 < epochs:
                raise StopRequested()
        return best

    def train_step(self, net, group, stage, optimizer, scaler):
        """One optimiser step over a group of micro-batches (gradient accumulation and DDP).

        Each micro-batch's mean loss is weighted by its share of the scored pairs of the whole global
        batch, so that N processes x A micro-batches of b documents give the gradient of one batch of
        N*A*b documents. The all-reduce runs only on the last micro-batch (no_sync on the others).
        """
        args, device = self.args, self.device
        counts = torch.tensor([float(b["label_mask"].sum()) for b in group], device=device)
        total = counts.sum()
        if distributed():
            dist.all_reduce(total)
        sums = {}
        for i, batch in enumerate(group):
            batch = move_to(batch, device)
            weight = counts[i] * self.world / total.clamp(min=1)
            sync = i == len(group) - 1 or not distributed()
            ctx = contextlib.nullcontext() if sync else net.no_sync()
            with ctx:
                with autocast(args, device):
                    out = net(batch, stage)
                scaler.scale(out["loss"] * weight).backward()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v.detach() * weight / self.world
        scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        bad = (~torch.isfinite(norm) | ~torch.isfinite(sums["loss"])).float()
        # One MAX all-reduce makes the ranks agree on (skip this step, stop after it: the signal number).
        flags = torch.stack([bad, torch.tensor(float(self.stop_signal or 0), device=bad.device)])
        if distributed():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        is_bad, signum = flags.tolist()  # the one host sync per optimiser step: needed to skip a bad step
        is_bad = bool(is_bad)
        self._set_stop(int(signum))
        if is_bad:
            optimizer.zero_grad(set_to_none=True)
            scaler.update()
            return sums, True
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if distributed():
            for k in sums:
                dist.all_reduce(sums[k])
        return sums, False

    def state(self, model, optimizer, scheduler, scaler, stage, epoch, step_in_epoch, best, loss_sum, global_step):
        rng = rng_state()
        if distributed():
            gathered = [None] * self.world
            dist.all_gather_object(gathered, rng)
            rng = gathered
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
                "stage": stage, "epoch": epoch, "step_in_epoch": step_in_epoch, "best": best,
                "skipped_steps": self.skipped,
                "loss_sum": {k: float(v) for k, v in loss_sum.items()}, "global_step": global_step,
                "args": vars(self.args), "world_size": self.world}


class Evaluator:
    """Rank 0's per-epoch work: dev scores, metrics.jsonl, best checkpoints, the one-line summary."""

    def __init__(self, args, device, dev_features, gold_docs, train_docs, id2rel, save_path, wandb_run):
        self.args, self.device, self.dev, self.gold, self.train = args, device, dev_features, gold_docs, train_docs
        self.id2rel, self.save_path, self.wandb = id2rel, save_path, wandb_run

    def after_epoch(self, model, stage, line, best, train_time):
        args = self.args
        k = 0 if stage == 1 else args.num_iterations
        t0 = time.time()
        scores, by_k, _, _ = evaluate(model, self.dev, args, self.device, self.gold, self.train, self.id2rel, k)
        line["dev"] = {m: round(v, 4) for m, v in scores.items()}
        if stage == 2:
            line["dev_by_k"] = {str(i): round(s["f1"], 4) for i, s in by_k.items()}
            line["dev_base"] = {m: round(v, 4) for m, v in by_k[0].items()}
        line["best"] = scores["f1"] > best
        with open(os.path.join(self.save_path, "metrics.jsonl"), "a") as fh:
            fh.write(json.dumps(line) + "\n")
        if line["best"]:
            best = scores["f1"]
            ckpt = {"model": model.state_dict(), "args": vars(args), "stage": stage, "epoch": line["epoch"],
                    "dev": line["dev"]}
            save_checkpoint(os.path.join(self.save_path, "best.pt"), ckpt)
            if stage == 1:
                save_checkpoint(os.path.join(self.save_path, "best_stage1.pt"), ckpt)
        timing = {"stage": stage, "epoch": line["epoch"], "train_s": round(train_time, 2),
                  "eval_s": round(time.time() - t0, 2)}
        with open(os.path.join(self.save_path, "timing.jsonl"), "a") as fh:
            fh.write(json.dumps(timing) + "\n")
        extra = "" if stage == 1 else f" base_f1 {by_k[0]['f1']:.2f}"
        ign = f" ign_f1 {scores['ign_f1']:.2f}" if "ign_f1" in scores else ""
        print(f"stage {stage} epoch {line['epoch']}: loss {line.get('train_loss', float('nan')):.4f} "
              f"dev f1 {scores['f1']:.2f}{ign}{extra} best {max(best, scores['f1']):.2f} "
              f"({train_time:.0f}s train, {timing['eval_s']:.0f}s eval)", flush=True)
        if self.wandb:
            self.wandb.log({"epoch": line["epoch"], "stage": stage, **{f"dev/{m}": v for m, v in scores.items()}})
        return best


def check_save_path(args, files):
    existing = [f for f in files if os.path.exists(os.path.join(args.save_path, f))]
    if existing and not args.overwrite:
        raise UsageError(f"{args.save_path} already holds {', '.join(existing)}: pass --overwrite to replace, "
                         f"--resume {args.save_path} to continue, or another --save_path")


def write_predictions(args, model, device, features, docs, name_prefix, id2rel, train_docs):
    """Predict a split (``docs``: its DocRED-format documents, aligned with ``features``); score it when it
    has labels. Writes <prefix>result.json, and predictions.json for the test split.

    Returns (scores of the final pass, scores after each pass k = 0..K): both empty without labels. The
    per-pass scores come from the same forward passes (K iterations compute passes 0..K-1 on the way),
    so one run at K = 4 gives Table 2's whole column for its N_I."""
    logits = predict(model, features, args, device, args.num_iterations)
    if args.dataset == "docred":
        preds = [get_label(lg[-1], args.num_labels).numpy() for lg in logits]
        sub = evaluation.to_official(preds, features, id2rel)
        atomic_write_json(os.path.join(args.save_path, f"{name_prefix}result.json"), sub)
        for k in range(args.num_iterations if name_prefix == "dev_" else 0):  # the passes before the last: for
            # paired comparisons of passes (scripts/bootstrap.py) and the per-pass changes (scripts/pass_changes.py)
            preds_k = [get_label(lg[k], args.num_labels).numpy() for lg in logits]
            atomic_write_json(os.path.join(args.save_path, f"dev_result_k{k}.json"),
                              evaluation.to_official(preds_k, features, id2rel))
        labelled = any(d.get("labels") for d in docs)
        if name_prefix == "":
            with open(os.path.join(os.path.dirname(prepro.DEFAULT_REL2ID), "rel_info.json")) as fh:
                rel_names = json.load(fh)
            rows = readable_predictions(features, logits, args, id2rel, rel_names, {d["title"]: d for d in docs})
            atomic_write_json(os.path.join(args.save_path, "predictions.json"), rows, indent=1)
    else:
        labelled = any(any(lab) for f in features for lab in f["labels"])
    by_k = {str(k): score(args, features, [lg[k] for lg in logits], docs, train_docs, id2rel)[0]
            for k in range(args.num_iterations + 1)} if labelled else {}
    return by_k.get(str(args.num_iterations), {}), by_k


def main(argv=None):
    args = parse_args(argv)
    validate_args(args)
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(os.path.join(args.resume, "last.pt"))
        saved = dict(ckpt["args"])
        for k in ("resume", "num_workers", "threads", "device", "log_every", "wandb"):
            saved[k] = getattr(args, k)
        saved["save_path"] = args.resume
        args = argparse.Namespace(**saved)
    elif args.load_path:
        ckpt = load_checkpoint(args.load_path)
        keys = BASE_KEYS + (INFERENCE_KEYS if args.evaluate_only else ())
        adopt_checkpoint_args(args, ckpt, keys, args.load_path)
        if args.evaluate_only and args.num_iterations == parse_args([]).num_iterations:
            # K of the run that wrote the checkpoint (its stored dev scores), unless asked for another K
            args.num_iterations = ckpt["args"].get("num_iterations", args.num_iterations)
        if args.evaluate_only and args.save_path == parse_args([]).save_path:
            args.save_path = os.path.join(os.path.dirname(os.path.abspath(args.load_path)), "eval")
        if args.evaluate_only and ckpt.get("stage") == 1 and args.num_iterations:
            print(f"{args.load_path} is a stage-1 checkpoint: evaluating the base module (--num_iterations 0)")
            args.num_iterations = 0
    if not args.evaluate_only and not args.dev_file:
        raise UsageError("training needs --dev_file (model selection is on dev F1)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device, rank, world = init_distributed(args)
    requested, args.amp = args.amp, resolve_amp(args.amp, device.type)
    if rank == 0:
        print(f"device {device}, precision: {'fp32' if args.amp == 'none' else args.amp + ' autocast'}"
              + (" (--amp auto)" if requested == "auto" else ""), flush=True)
    set_seed(args.seed + rank)
    if rank == 0:
        if args.evaluate_only:
            check_save_path(args, ("result.json", "dev_result.json", "predictions.json", "eval_scores.json"))
        elif not args.resume:
            check_save_path(args, OUTPUTS)
        os.makedirs(args.save_path, exist_ok=True)
        if not args.evaluate_only and not args.resume:
            for name in ("metrics.jsonl", "timing.jsonl"):  # a fresh run (--overwrite) starts its logs anew
                if os.path.exists(os.path.join(args.save_path, name)):
                    os.remove(os.path.join(args.save_path, name))
    # None = the bundled encoder; checkpoints record None so that they load on any machine.
    name = args.model_name_or_path
    if name and not os.path.isdir(name) and (os.path.isabs(name) or name.startswith((".", "~"))):
        raise UsageError(f"--model_name_or_path {name}: no such model folder")
    tokenizer = prepro.load_tokenizer(args.model_name_or_path or default_model_path(), args.transformer_type)
    rel2id = prepro.load_rel2id(args.rel2id) if args.dataset == "docred" else {"Na": 0, "1": 1}
    id2rel = {v: k for k, v in rel2id.items()}
    args.num_class = len(rel2id)

    model = load_model(args, args.num_class, tokenizer)
    if ckpt is not None:
        train_from_stage1 = args.load_path and not args.evaluate_only and not args.resume
        load_weights(model, ckpt["model"], args.load_path or args.resume, "base." if train_from_stage1 else "")
    model.to(device)

    dev_path, dev = (load_split(args, args.dev_file, tokenizer, rel2id, args.max_eval_docs)
                     if args.dev_file else (None, []))
    # The test file is read (and checked) now, not after hours of training.
    test_path, test = (load_split(args, args.test_file, tokenizer, rel2id, args.max_eval_docs)
                       if args.test_file else (None, []))
    gold = evaluation.load_docs(dev_path)[:len(dev)] if (dev_path and args.dataset == "docred") else None
    test_docs = evaluation.load_docs(test_path)[:len(test)] if (test_path and args.dataset == "docred") else None
    train_path = data_path(args, args.train_file) if args.train_file else None
    train_docs = evaluation.load_docs(train_path) if (args.dataset == "docred" and train_path
                                                     and os.path.isfile(train_path)) else None

    if not args.evaluate_only:
        _, train = load_split(args, args.train_file, tokenizer, rel2id, args.max_train_docs)
        train = [f for f in train if f["hts"]]  # documents without pairs add nothing to the loss
        if train_docs is not None and args.max_train_docs:
            train_docs = train_docs[:args.max_train_docs]
        if rank == 0:
            atomic_write_json(os.path.join(args.save_path, "args.json"), vars(args), indent=1)
        wandb_run = None
        if args.wandb and rank == 0:
            import wandb
            wandb_run = wandb.init(project=args.wandb_project, config=vars(args))
        evaluator = Evaluator(args, device, dev, gold, train_docs, id2rel, args.save_path, wandb_run)
        trainer = Trainer(args, model, device, rank, world, train, evaluator, args.save_path)
        trainer.wandb = wandb_run
        previous_handlers = {sig: signal.signal(sig, trainer.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        stages = ([] if args.skip_stage1 or (args.load_path and not args.resume) else [1]) + [2]
        if ckpt is not None and args.resume:
            stages = [s for s in stages if s >= ckpt["stage"]]
        stages = [s for s in stages if (args.stage1_epochs if s == 1 else args.stage2_epochs) > 0]
        try:
            if not stages:
                raise UsageError("nothing to train: --stage1_epochs and --stage2_epochs are both 0")
            for stage in stages:
                epochs = args.stage1_epochs if stage == 1 else args.stage2_epochs
                resume = ckpt if (args.resume and ckpt["stage"] == stage) else None
                if resume is None or resume["epoch"] < epochs:
                    trainer.run_stage(stage, epochs, resume)
                else:  # stopped after the stage's last epoch: continue with the RNG state of that moment
                    restore_rng(resume["rng"], rank, world, args.seed + 1000 * stage + epochs)
                barrier()
                if trainer.agree_stop():  # a collective: all ranks stop here, or none
                    raise StopRequested()
                if stage == 1 and args.stage2_epochs > 0 and rank == 0:
                    # Stage 2 starts from the best stage-1 weights, as the authors do. Rank 0 alone reads them
                    # (other nodes need not see save_path): stage 2's DDP broadcasts them to the other ranks.
                    model.load_state_dict(load_checkpoint(os.path.join(args.save_path, "best_stage1.pt"))["model"])
                    model.to(device)
        except StopRequested:
            name = signal.Signals(trainer.stop_signal).name
            if rank == 0:
                print(f"{name}: stopped; state saved to {os.path.join(args.save_path, 'last.pt')} "
                      f"(continue with: python train.py --resume {args.save_path})", file=sys.stderr)
            return 128 + trainer.stop_signal
        finally:  # in-process callers (tests) get their own handlers back
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        if rank == 0:  # only rank 0 predicts
            best = load_checkpoint(os.path.join(args.save_path, "best.pt"))
            model.load_state_dict(best["model"])
            if best["stage"] == 1:
                args.num_iterations = 0  # no stage 2 was run: the inference module is untrained
    if rank == 0:
        outputs, passes = {}, {}
        if dev:
            outputs["dev"], passes["dev"] = write_predictions(args, model, device, dev, gold, "dev_", id2rel,
                                                              train_docs)
        if args.test_file:
            outputs["test"], passes["test"] = write_predictions(args, model, device, test, test_docs, "", id2rel,
                                                                train_docs)
        # eval_scores.json: {"dev": final-pass scores, "dev_by_k": {"0": scores after pass 0 (the base
        # module), ..., "K": the final pass}, and the same for "test" when it has labels}
        extra = {f"{split}_by_k": by_k for split, by_k in passes.items() if by_k}
        atomic_write_json(os.path.join(args.save_path, "eval_scores.json"), {**outputs, **extra}, indent=1)
        print(json.dumps({split: {k: round(v, 4) for k, v in s.items() if k in
                                  ("precision", "recall", "f1", "ign_f1", "intra_f1", "inter_f1", "infer_f1")}
                          for split, s in outputs.items()}))
    barrier()
    if distributed():
        dist.destroy_process_group()
    return 0


def cli(argv=None):
    """Entry point: expected failures end with one line on stderr and exit status 2, never a traceback."""
    try:
        return main(argv)
    except (UsageError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # SIGINT outside the training loop (which saves last.pt instead)
        print("error: interrupted by SIGINT", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(cli())

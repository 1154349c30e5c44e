"""Train and evaluate DocRE-II: stage 1 (base module), stage 2 (whole model), then dev/test predictions.

Reads top to bottom: flags -> the save path (one run at a time) -> data -> model -> the training loop
(one function per stage, one per step) -> final predictions. One process, or one per GPU under torchrun
(DistributedDataParallel).

Continue an interrupted or crashed run (SIGINT/SIGTERM save last.pt, as does every epoch):
  python train.py --resume SAVE_PATH
Predict new DocRED-format documents (no labels needed) with a trained checkpoint; writes OUT/result.json and a
readable OUT/predictions.json (title, head/tail entity names, relation id and name, score):
  python train.py --evaluate_only --load_path CKPT --dev_file '' --test_file NEW.json --save_path OUT
(the same code path as predict.py --checkpoint CKPT --input NEW.json --output PREDS.json, and predict.Predictor)
"""
import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm
from transformers import AutoConfig, get_linear_schedule_with_warmup

import evaluation
import predict
import prepro
from model import encoder_record, hf_encoder, load_weights, parse_loss_weights, tokenizer_and_model
from utils import (all_max, atomic_link, atomic_write_json, autocast, barrier, claimed, collate_fn, DataError,
                   default_model_path, describe_amp, distributed, init_distributed, load_checkpoint, move_to,
                   OutputError, previous_name, read_lines, resolve_amp, rng_state, save_checkpoint, set_rng_state,
                   set_seed, UsageError, write_lines)

# Flags that define the base module / the inference module. A checkpoint records them; --load_path and
# --evaluate_only take them from it (stage 2 from a stage-1 checkpoint takes only the base ones, so the
# ablations of Table 4 can share one stage 1).
BASE_KEYS = ("dataset", "transformer_type", "model_name_or_path", "max_seq_length", "emb_size", "pair_features",
             "block_size", "encoder_window", "rel2id")
INFERENCE_KEYS = ("inference_dim", "num_inference_layers", "eca_heads_per_line", "dropout", "eca", "no_fusion",
                  "contrastive", "classifier_layers", "rel_emb_init", "relation_input", "test_logits")
# Flags a resumed run may change: how it runs, not what it computes.
RUNTIME_KEYS = ("num_workers", "threads", "device", "log_every", "wandb", "wandb_project", "keep")
# --recipe authors: the training recipe of the authors' code (DeepLearnXMU/DocRE-II, see README "Faithfulness");
# --recipe paper keeps every default. Flags given explicitly override the preset.
RECIPES = {"paper": {}, "authors": {
    "train_relations": "gold", "relation_input": "multihot", "noise_on": "sampled", "negative_ratio": 5,
    "loss_weights": "5,5,5,1", "contrastive_target": "stopgrad", "test_logits": "sum", "rel_emb_init": "xavier",
    "classifier_layers": 2, "weight_decay": 1e-4, "stage2_base_params": "encoder"}}
# Outputs of an earlier run that a new one replaces only with --overwrite (--evaluate_only: EVAL_OUTPUTS).
OUTPUTS = ("metrics.jsonl", "best.pt", "last.pt", "result.json", "dev_result.json", "predictions.json")
EVAL_OUTPUTS = ("result.json", "dev_result.json", "predictions.json", "eval_scores.json", "dev_counts.json",
                "test_counts.json")
LOGS = ("metrics.jsonl", "timing.jsonl")  # one line per epoch each
# --transformer_type of the encoder families whose config.json model_type says which one they are.
TOKENIZER_FAMILY = {"bert": "bert", "distilbert": "bert", "electra": "bert", "roberta": "roberta",
                    "xlm-roberta": "roberta", "camembert": "roberta", "longformer": "roberta"}


# ---------------------------------------------------------------- flags
def build_parser():
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
    a("--pair_features", choices=["fnn", "bilinear"], default="fnn",
      help="Eq. (2)-(3)'s FNN: over the concatenation [z_s, z_o] (the paper's wording), or ATLOP's grouped "
           "bilinear of z_s and z_o then Linear + ReLU (the authors' code)")
    a("--block_size", type=int, default=64, help="block size of --pair_features bilinear (ATLOP's 64)")
    a("--encoder_window", type=int, default=0,
      help="encoder window in tokens (0 = ATLOP's 512, or the encoder's limit if lower): a longer document is "
           "encoded in overlapping windows (ATLOP's method). A small window keeps distant sentences out of each "
           "other's attention, as 512 does in a long document (the synthetic long-range test)")
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
    a("--withhold_max", type=float, default=0.0,
      help="not in the paper nor the authors' code: r ~ U(0, this) of the positives get R_0 = NA in stage-2 "
           "training and stay targets (0 = off)")
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
    a("--keep", choices=["last", "best"], default="last",
      help="checkpoints left when the run ends successfully: last = best.pt, best_stage1.pt and last.pt (to "
           "continue training); best = best.pt only")
    a("--evaluate_only", action="store_true")
    a("--device", choices=["auto", "cpu", "cuda"], default="auto")
    a("--amp", choices=["auto", "none", "bf16", "fp16"], default="auto",
      help="autocast: auto = bf16 on GPUs and CPUs with bf16 matrix units, else none (fp32)")
    a("--num_workers", type=int, default=0)
    a("--threads", type=int, default=0, help="CPU intra-op threads (0 = torch's default); 1 on a shared machine")
    a("--log_every", type=int, default=50, help="steps between progress-bar loss updates")
    a("--wandb", action="store_true", help="log to Weights & Biases (respects WANDB_MODE)")
    a("--wandb_project", default="docre-ii")
    return p


def parse_args(argv=None):
    """The flags of the command line, with --recipe's preset under the flags given explicitly."""
    args, _ = parse_with_given(argv)
    return args


def parse_with_given(argv):
    args = build_parser().parse_args(argv)
    given = explicit_flags(argv)
    for key, value in RECIPES[args.recipe].items():
        if key not in given:
            setattr(args, key, value)
    return args, given


def explicit_flags(argv):
    """The flags given on the command line (parsed again with every default suppressed)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resolve_args(argv):
    """Every flag of this run, in one place. Precedence: the command line, then the checkpoint the run continues
    (--resume: all of the interrupted run's flags) or reads (--load_path: the network flags), then the defaults.
    Returns (args, the loaded checkpoint or None)."""
    args, given = parse_with_given(argv)
    validate_args(args)
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(os.path.join(args.resume, "last.pt"))
        saved = dict(ckpt["args"])
        changed = sorted(k for k in given - set(RUNTIME_KEYS) - {"resume"} if getattr(args, k) != saved.get(k))
        if changed:
            raise UsageError(f"--resume {args.resume} continues the run as it was started; these flags would "
                             f"change it: {', '.join('--' + k for k in changed)} (only "
                             f"{', '.join('--' + k for k in RUNTIME_KEYS)} can be changed)")
        args = argparse.Namespace(**{**saved, **{k: getattr(args, k) for k in given & set(RUNTIME_KEYS)},
                                     "resume": args.resume, "save_path": args.resume})
    elif args.load_path:
        ckpt = load_checkpoint(args.load_path)
        for key in BASE_KEYS + (INFERENCE_KEYS if args.evaluate_only else ()):
            if key not in ckpt["args"]:
                continue
            if key in given and getattr(args, key) != ckpt["args"][key]:
                raise UsageError(f"{args.load_path}: trained with --{key} {ckpt['args'][key]!r}, but this run "
                                 f"asks for {getattr(args, key)!r}")
            setattr(args, key, ckpt["args"][key])
        if args.evaluate_only:
            if "num_iterations" not in given:  # K of the run that wrote the checkpoint
                args.num_iterations = ckpt["args"].get("num_iterations", args.num_iterations)
            if "save_path" not in given:
                args.save_path = os.path.join(os.path.dirname(os.path.abspath(args.load_path)), "eval")
            if ckpt.get("stage") == 1 and args.num_iterations:
                print(f"{args.load_path} is a stage-1 checkpoint: evaluating the base module (--num_iterations 0)")
                args.num_iterations = 0
    if not args.evaluate_only and not args.dev_file:
        raise UsageError("training needs --dev_file (model selection is on dev F1)")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device_type = "cuda" if use_cuda else "cpu"
    requested, args.amp = args.amp, resolve_amp(args.amp, device_type)
    if int(os.environ.get("RANK", "0")) == 0:
        precision, warning = describe_amp(requested, args.amp, device_type)
        print(f"device {device_type}, precision: {precision}", flush=True)
        if warning:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    return args, ckpt


def validate_args(args):
    """Out-of-range flags end the run before anything is written."""
    checks = [("encoder_lr", 0), ("classifier_lr", 0), ("stage2_base_lr", 0), ("inference_lr", 0),
              ("num_iterations", 0), ("stage1_epochs", 0), ("stage2_epochs", 0), ("warmup_ratio", 0),
              ("adam_epsilon", 0), ("max_grad_norm", 0), ("max_train_docs", 0),
              ("max_eval_docs", 0), ("emb_size", 0), ("encoder_window", 0), ("weight_decay", 0), ("threads", 0),
              ("num_workers", 0)]
    for name, low in checks:
        if getattr(args, name) < low:
            raise UsageError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    for name in ("train_batch_size", "test_batch_size", "gradient_accumulation_steps", "num_inference_layers",
                 "inference_dim", "eca_heads_per_line", "max_seq_length", "log_every", "max_bad_steps",
                 "block_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("noise_max", "withhold_max"):
        if not 0 <= getattr(args, name) <= 1:
            raise UsageError(f"--{name} must be in [0, 1], got {getattr(args, name)}")
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
    if not 0 <= args.seed < 2 ** 31:  # numpy takes seeds below 2**32; the run adds up to a few thousand to it
        raise UsageError(f"--seed must be in [0, 2**31), got {args.seed}")
    if args.evaluate_only and not args.load_path:
        raise UsageError("--evaluate_only needs --load_path CHECKPOINT")
    if not args.evaluate_only and not args.resume:
        # The base module is trained by stage 1, or comes trained from --load_path.
        no_stage1 = bool(args.skip_stage1 or args.load_path or args.stage1_epochs == 0)
        if no_stage1 and args.stage2_epochs == 0:
            why = "--stage1_epochs and --stage2_epochs are both 0" if args.stage1_epochs == 0 else \
                f"--stage2_epochs is 0 and {'--skip_stage1' if args.skip_stage1 else '--load_path'} skips stage 1"
            raise UsageError(f"nothing to train: {why}")
        if args.freeze_base and no_stage1 and not args.load_path:
            raise UsageError("--freeze_base would keep the base module as initialised: nothing trains it before "
                             "stage 2 (--skip_stage1 or --stage1_epochs 0, and no --load_path)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")


# ---------------------------------------------------------------- the save path
def check_save_path(args):
    """Outputs of an earlier run are replaced only with --overwrite; --resume continues them."""
    if args.resume:
        return
    files = EVAL_OUTPUTS if args.evaluate_only else OUTPUTS
    existing = [f for f in files if os.path.exists(os.path.join(args.save_path, f))]
    if existing and not args.overwrite:
        resumable = not args.evaluate_only and os.path.exists(os.path.join(args.save_path, "last.pt"))
        raise UsageError(f"{args.save_path} already holds {', '.join(existing)}: pass --overwrite to replace"
                         + (f", --resume {args.save_path} to continue" if resumable else "")
                         + ", or another --save_path")


def start_outputs(run, ckpt):
    """Rank 0, once every input has been read and checked: the first change to --save_path. --resume brings the
    logs (and best.pt) back to what last.pt saw; a new training run starts its logs anew (check_save_path let
    it replace old ones only with --overwrite) and records its flags."""
    args = run.args
    if args.evaluate_only:
        return
    if args.resume:
        restore_logs(run, ckpt)
    else:
        for name in LOGS:
            try:
                os.remove(run.out(name))
            except FileNotFoundError:
                pass
            except OSError as e:
                raise OutputError(f"cannot remove {run.out(name)}: {e.strerror or e}") from e
    atomic_write_json(run.out("args.json"), vars(args), indent=1)


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
    docs = evaluation.load_docs(path)[:len(feats)] if args.dataset == "docred" else None
    return feats, docs


@dataclass
class Inputs:
    """The tokenized splits ([] when not used) and the documents the scorer reads (DocRED format; else None)."""
    dev: list
    dev_docs: list
    test: list
    test_docs: list
    train: list
    train_docs: list


def load_inputs(args, tokenizer, rel2id):
    """Every data file, read and checked before anything in --save_path changes: dev and test first (an error in
    them shows before the long training set is read), the gold the scorer will read, then the training set."""
    dev, dev_docs = load_split(args, args.dev_file, tokenizer, rel2id, args.max_eval_docs) if args.dev_file \
        else ([], None)
    test, test_docs = load_split(args, args.test_file, tokenizer, rel2id, args.max_eval_docs) if args.test_file \
        else ([], None)
    train_path = data_path(args, args.train_file) if args.train_file else None
    train_docs = evaluation.load_docs(train_path) if (args.dataset == "docred" and train_path
                                                      and os.path.isfile(train_path)) else None
    if train_docs is not None and args.max_train_docs and not args.evaluate_only:
        train_docs = train_docs[:args.max_train_docs]  # Ign F1 against the documents trained on
    if args.dev_file:
        check_gold(args, args.dev_file, dev, dev_docs, train_docs, required=not args.evaluate_only)
    if args.test_file:
        check_gold(args, args.test_file, test, test_docs, train_docs, required=False)
    train = []
    if not args.evaluate_only:
        train, _ = load_split(args, args.train_file, tokenizer, rel2id, args.max_train_docs)
        train = [f for f in train if f["hts"]]  # documents without pairs add nothing to the loss
    return Inputs(dev, dev_docs, test, test_docs, train, train_docs)


def check_gold(args, name, features, docs, train_docs, required):
    """A split that will be scored is checked now as the scorer reads it (every mention's name and sentence id,
    the labels; the train documents' mention names for Ign F1), so that a bad file fails at start, named, and
    not after an epoch of training. ``required``: the split must have labels (dev, when training selects its
    checkpoints by dev F1)."""
    path = data_path(args, name)
    if not predict.labelled(args.dataset, features, docs):
        if required:
            raise DataError(f"{path}: no document has relation labels: training needs a labelled --dev_file "
                            f"(checkpoints are selected by dev F1)")
        return
    if args.dataset == "docred":
        train_path = data_path(args, args.train_file) if args.train_file else None
        evaluation.docred_scores([], docs, train_docs, gold_path=path, train_path=train_path)


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
def check_encoder(args):
    """--model_name_or_path must name a model (a config.json that loads) of --transformer_type's family. Checked
    before the save path is touched and any data is read."""
    name = args.model_name_or_path  # None = the bundled encoder; checkpoints record None to load on any machine
    if name and not os.path.isdir(name) and (os.path.isabs(name) or name.startswith((".", "~"))):
        raise UsageError(f"--model_name_or_path {name}: no such model folder")
    path = name or default_model_path()
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # a missing or broken file, an unknown model type, a field of the wrong type, ...
        raise UsageError(f"--model_name_or_path {path}: not a model: cannot load its config.json "
                         f"({type(e).__name__}: {first_line(e)})") from e
    family = TOKENIZER_FAMILY.get(config.model_type)
    if family and family != args.transformer_type:
        # The family decides the special tokens around a document and how words are tokenized: the wrong one
        # runs, but on inputs the encoder never saw in pre-training.
        raise UsageError(f"--transformer_type {args.transformer_type} does not fit {path}, a {config.model_type} "
                         f"model: use --transformer_type {family}")


def first_line(e):
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


def prepare_model(args, ckpt, num_class, device):
    """(tokenizer, model) of the flags: the encoder a portable checkpoint carries (best.pt, model.py), else
    --model_name_or_path; with the weights of the checkpoint the run continues (--resume), evaluates, or starts
    stage 2 from (--load_path of a stage-1 checkpoint: its base module)."""
    try:
        tokenizer, model = tokenizer_and_model(args, num_class, ckpt)
    except ValueError as e:  # e.g. no tokenizer file that the fast tokenizer can be built from
        raise UsageError(f"--model_name_or_path {args.model_name_or_path or default_model_path()}: cannot load "
                         f"its tokenizer ({first_line(e)})") from e
    if ckpt is not None:
        # Stage 2 starts from the base module of --load_path; evaluating a stage-1 checkpoint (K = 0) needs only
        # its base module too (its inference module is untrained; bench/gpu_carry.py's copy stores none).
        base_only = not args.resume and (not args.evaluate_only or ckpt.get("stage") == 1)
        load_weights(model, ckpt["model"], args.load_path or args.resume, "base." if base_only else "")
    return tokenizer, model.to(device)


# ---------------------------------------------------------------- the training loop
class StopRequested(Exception):
    """SIGINT/SIGTERM arrived: last.pt was saved at a step boundary."""


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row: the run stops with exit status 1."""


@dataclass
class Run:
    """What the loop needs besides the model and the data: flags, where it runs, the dev set, the outputs."""
    args: argparse.Namespace
    device: torch.device
    rank: int
    world: int
    dev: list
    dev_docs: list
    train_docs: list
    id2rel: dict
    wandb: object = None
    signum: int = 0  # the signal that asked to stop (set by the handler; agreed on by all ranks)
    encoder: dict = None  # the encoder's config and tokenizer files, stored in best.pt (model.py, portable checkpoints)
    best_id: str = ""  # weights_id of best.pt while the model holds exactly its weights (last.pt then refers to it)
    step_offset: int = 0  # W&B step of the stage's step 0: stage 2 continues after stage 1's steps
    # Lines in each log (LOGS) that belong to the run so far: last.pt records them, so that --resume can cut off
    # the lines of an epoch that a crash made it repeat.
    logged: dict = field(default_factory=lambda: dict.fromkeys(LOGS, 0))

    def on_signal(self, signum, _frame):
        self.signum = signum

    def out(self, name):
        return os.path.join(self.args.save_path, name)


@dataclass
class Position:
    """Where a stage is, and what last.pt stores to continue it: epoch, batches done in it, best dev F1, steps."""
    epoch: int = 0
    batch: int = 0
    best: float = -1.0
    step: int = 0  # optimiser steps taken (metrics.jsonl "step")
    lr_step: int = 0  # LR-schedule steps taken (a skipped non-finite step takes none)
    skipped: int = 0  # non-finite steps skipped in the current epoch
    sums: dict = field(default_factory=dict)  # loss sums of the current epoch


def train_stage(run, model, stage, features, resume=None):
    """Train one stage for its epochs: an optimiser step per group of micro-batches, dev evaluation and
    checkpoints after every epoch. ``resume``: a loaded last.pt of this stage."""
    args, device = run.args, run.device
    epochs = args.stage1_epochs if stage == 1 else args.stage2_epochs
    groups = model.param_groups(stage, args)
    model.set_trainable(groups)
    # Fused AdamW on a GPU: one kernel per parameter group (12-15 % faster steps on an H200, docs/PERFORMANCE.md).
    optimizer = torch.optim.AdamW(groups, eps=args.adam_epsilon, weight_decay=args.weight_decay,
                                  fused=device.type == "cuda" or None)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    batches = math.ceil(math.ceil(len(features) / run.world) / args.train_batch_size)
    steps_per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    total = max(1, steps_per_epoch * epochs)
    pos = Position()
    if resume is not None:
        pos = restore_position(run, resume, optimizer, scaler, stage, steps_per_epoch)
    else:  # a fresh stage: last.pt now, so that a crash before its first epoch ends can be resumed as well
        save_last(run, model, optimizer, scaler, stage, pos)
    run.step_offset = wandb_step_offset(args, stage, steps_per_epoch)
    # The LR schedule is a function of the steps taken: built at that step, nothing of it needs saving.
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total * args.warmup_ratio), total,
                                                last_epoch=pos.lr_step - 1)
    net = model
    if distributed():
        if device.type == "cuda":  # the predictor's BatchNorm normalises over the pairs of all ranks
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # A new DDP per stage: it registers exactly the parameters set_trainable left trainable, and its
        # constructor broadcasts rank 0's parameters (e.g. best_stage1.pt, loaded on rank 0 only).
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    for epoch in range(pos.epoch, epochs):
        pos.epoch = epoch
        if pos.batch == 0:  # a new epoch, not a mid-epoch resume
            pos.skipped, pos.sums = 0, {}
        loader = iter(train_loader(features, args, run.rank, run.world, 1000 * stage + epoch))
        for _ in range(pos.batch):  # mid-epoch resume: the same permutation, minus the batches already used
            next(loader)
        model.train()
        bar = tqdm(total=batches, initial=pos.batch, desc=f"stage {stage} epoch {epoch}", disable=run.rank != 0,
                   leave=False)
        t0, bad_in_row = time.time(), 0
        while pos.batch < batches:
            group = [next(loader) for _ in range(min(args.gradient_accumulation_steps, batches - pos.batch))]
            pos.batch += len(group)
            losses, bad = train_step(run, net, group, stage, optimizer, scaler)
            pos.step += 1
            bar.update(len(group))
            if bad:
                pos.skipped, bad_in_row = pos.skipped + 1, bad_in_row + 1
                if bad_in_row >= args.max_bad_steps:
                    bar.close()
                    raise NonFiniteError(f"stage {stage} epoch {epoch}: {bad_in_row} non-finite steps in a row; "
                                         f"stopping (last.pt holds the state before them)")
            else:
                bad_in_row, pos.lr_step = 0, pos.lr_step + 1
                scheduler.step()
                for k, v in losses.items():  # float32 tensors on the device: no host sync per step
                    pos.sums[k] = pos.sums.get(k, 0.0) + v
                pos.sums["steps"] = pos.sums.get("steps", 0.0) + 1
            if pos.step % args.log_every == 0 and run.rank == 0:
                log_progress(run, bar, pos)
            if run.signum and pos.batch < batches:  # agreed in train_step
                save_last(run, model, optimizer, scaler, stage, pos)
                bar.close()  # so that the stop message gets a line of its own
                raise StopRequested()
        bar.close()
        record = end_of_epoch(run, model, stage, pos, optimizer, time.time() - t0)
        pos.epoch, pos.batch = epoch + 1, 0
        # best.pt first (the one it replaces kept aside while last.pt may refer to it), then last.pt holding the
        # epoch's record, then the epoch's lines. After a crash in between, --resume writes the record's lines
        # again (restore_logs): an epoch is never trained twice once it is logged, nor logged twice.
        if run.rank == 0:
            run.best_id = ""  # the model's weights are best.pt's only right after save_best
            if record["best"] is not None:
                save_best(run, model, record["best"])
        save_last(run, model, optimizer, scaler, stage, pos, record)
        if run.rank == 0:
            write_logs(run, record)
        if agree_stop(run) and epoch + 1 < epochs:
            raise StopRequested()


def train_step(run, net, group, stage, optimizer, scaler):
    """One optimiser step over a group of micro-batches (gradient accumulation and DDP).

    Each micro-batch's mean loss is weighted by its share of the scored pairs of the whole global batch, so
    that N processes x A micro-batches of b documents give the gradient of one batch of N*A*b documents. The
    all-reduce runs only on the last micro-batch (no_sync on the others). Returns (mean losses, skipped?).
    """
    args, device, world = run.args, run.device, run.world
    counts = torch.tensor([float(len(b["scored"])) for b in group], device=device)
    total = counts.sum()
    if distributed():
        dist.all_reduce(total)
    sums = {}
    for i, batch in enumerate(group):
        weight = counts[i] * world / total.clamp(min=1)
        sync = i == len(group) - 1 or not distributed()
        with contextlib.nullcontext() if sync else net.no_sync():
            with autocast(args.amp, device):
                out = net(move_to(batch, device), stage)
            scaler.scale(out["loss"] * weight).backward()
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v.detach() * weight / world
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                          args.max_grad_norm)
    bad = float(not (torch.isfinite(norm) and torch.isfinite(sums["loss"])))
    # One MAX over the ranks: skip this step (any rank non-finite), stop after it (the largest signal number).
    # This is the step's one host-device synchronisation.
    bad, signum = all_max([bad, float(run.signum)], device)
    run.signum = int(signum)
    if bad:
        optimizer.zero_grad(set_to_none=True)
        scaler.update()
        return {}, True
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if distributed():
        for k in sums:
            dist.all_reduce(sums[k])
    return sums, False


def log_progress(run, bar, pos):
    steps = float(pos.sums.get("steps", 1.0))
    running = {k: float(v) / steps for k, v in pos.sums.items() if k != "steps"}
    bar.set_postfix(loss=f"{running.get('loss', float('nan')):.4f}")
    if run.wandb:
        run.wandb.log({f"train/{k}": v for k, v in running.items()}, step=run.step_offset + pos.step)


def agree_stop(run):
    """Whether to stop now, the same answer on every rank (a collective: every rank calls it at the same point)."""
    run.signum = int(all_max([float(run.signum)], run.device)[0])
    return run.signum > 0


def end_of_epoch(run, model, stage, pos, optimizer, train_time):
    """Rank 0: dev scores (K passes in stage 2) and the epoch's record: its metrics and timing lines and, if it is
    the best epoch so far, best.pt's fields besides the weights (write_epoch writes them once last.pt holds the
    record). Every rank then learns the best F1. Returns the record (None on the other ranks)."""
    args = run.args
    line = {"stage": stage, "epoch": pos.epoch, "step": pos.step, "lr": [g["lr"] for g in optimizer.param_groups],
            "skipped_steps": pos.skipped}
    steps = float(pos.sums.get("steps", 0.0)) or 1.0
    line.update({f"train_{k}": round(float(v) / steps, 6) for k, v in pos.sums.items() if k != "steps"})
    record = None
    if run.rank == 0:
        t0 = time.time()
        k = 0 if stage == 1 else args.num_iterations
        by_k, _ = predict.evaluate(model, run.dev, args, run.device, run.dev_docs, run.train_docs, run.id2rel, k)
        scores = by_k[k]
        line["dev"] = {m: round(v, 4) for m, v in scores.items()}
        if stage == 2:
            line["dev_by_k"] = {str(i): round(s["f1"], 4) for i, s in by_k.items()}
            line["dev_base"] = {m: round(v, 4) for m, v in by_k[0].items()}
        line["best"] = scores["f1"] > pos.best
        if line["best"]:
            pos.best = scores["f1"]
        eval_time = time.time() - t0
        record = {"metrics.jsonl": line,
                  "timing.jsonl": {"stage": stage, "epoch": pos.epoch, "train_s": round(train_time, 2),
                                   "eval_s": round(eval_time, 2)},
                  "best": {"args": dict(vars(args)), "stage": stage, "epoch": pos.epoch, "dev": line["dev"]}
                  if line["best"] else None}
        extra = "" if stage == 1 else f" base_f1 {by_k[0]['f1']:.2f}"
        ign = f" ign_f1 {scores['ign_f1']:.2f}" if "ign_f1" in scores else ""
        print(f"stage {stage} epoch {pos.epoch}: loss {line.get('train_loss', float('nan')):.4f} dev f1 "
              f"{scores['f1']:.2f}{ign}{extra} best {pos.best:.2f} ({train_time:.0f}s train, {eval_time:.0f}s eval)",
              flush=True)
        if run.wandb:
            dev_base = {f"dev_base/{m}": v for m, v in by_k[0].items()} if stage == 2 else {}
            run.wandb.log({"epoch": pos.epoch, "stage": stage, **{f"dev/{m}": v for m, v in scores.items()},
                           **dev_base}, step=run.step_offset + pos.step)
    barrier()
    if distributed():
        best = torch.tensor([pos.best], dtype=torch.float64, device=run.device)
        dist.broadcast(best, 0)
        pos.best = float(best.item())
    return record


def save_best(run, model, fields):
    """best.pt: the weights (a state dict), flags, dev scores, and what makes it portable (its encoder's config
    and tokenizer, the relation names: model.py), loadable with torch.load(weights_only=True). In stage 1,
    best_stage1.pt is a second name of the same file (no second copy on disk). While last.pt may still refer to
    the weights of the best.pt being replaced, that file is kept under a hidden name until last.pt is rewritten."""
    run.best_id = uuid.uuid4().hex
    best = {"model": model.state_dict(), **fields, "encoder": run.encoder, "id2rel": dict(run.id2rel),
            "weights_id": run.best_id}
    path = run.out("best.pt")
    if os.path.exists(path):
        atomic_link(path, run.out(previous_name("best.pt")))
    save_checkpoint(path, best)
    if fields["stage"] == 1:
        atomic_link(path, run.out("best_stage1.pt"))


def write_logs(run, record):
    """Rank 0: an epoch's line in each log, written as the lines of the epochs before it plus this one, so that
    writing a record again (--resume after a crash) changes nothing that was already written."""
    for name in LOGS:
        write_lines(run.out(name), read_lines(run.out(name))[:run.logged[name]], record[name])
        run.logged[name] += 1


# ---------------------------------------------------------------- checkpoints for --resume
def save_last(run, model, optimizer, scaler, stage, pos, record=None):
    """last.pt: everything --resume needs (every rank's RNG state; rank 0 writes it), the number of log lines of
    the run so far and, at the end of an epoch, the epoch's record (end_of_epoch)."""
    rng = rng_state()
    if distributed():
        gathered = [None] * run.world
        dist.all_gather_object(gathered, rng)
        rng = gathered
    if run.rank == 0:
        # At the end of an epoch that was the best, the weights are best.pt's: last.pt refers to them instead of
        # holding a second copy (utils.load_checkpoint reads them back).
        same = run.best_id and pos.batch == 0
        weights = {"model": None, "model_file": "best.pt", "weights_id": run.best_id} if same else \
            {"model": model.state_dict()}
        save_checkpoint(run.out("last.pt"), {
            **weights, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng, "stage": stage, "epoch": pos.epoch, "step_in_epoch": pos.batch, "best": pos.best,
            "skipped_steps": pos.skipped, "loss_sum": {k: float(v) for k, v in pos.sums.items()},
            "global_step": pos.step, "lr_step": pos.lr_step,
            "args": vars(run.args), "world_size": run.world, "logged": dict(run.logged), "record": record})
        if os.path.exists(run.out(previous_name("best.pt"))):
            os.remove(run.out(previous_name("best.pt")))


def check_resume_world(ckpt, world):
    """A last.pt saved mid-epoch continues only with the world size that saved it: the batches already used in
    that epoch cannot be mapped onto another number of ranks (at an epoch boundary any world size will do)."""
    saved_world = ckpt.get("world_size", 1)
    if saved_world != world and ckpt["step_in_epoch"]:
        raise UsageError(f"last.pt was saved mid-epoch by a run with world size {saved_world}: resume it with "
                         f"{saved_world} processes (this run has {world})")


def restore_logs(run, ckpt):
    """--resume: the logs and best.pt as last.pt left them. Lines after the ones it counted (epochs a crash made
    this run repeat) are cut, and the record of the epoch it closed, which a crash may have cut short, is written
    again."""
    counts = ckpt.get("logged")
    if counts is None:  # a last.pt of an earlier version, saved after the logs: they are taken as they are
        run.logged = {name: len(read_lines(run.out(name))) for name in LOGS}
        return
    lines = {name: read_lines(run.out(name)) for name in LOGS}
    for name in LOGS:
        if len(lines[name]) < counts[name]:
            raise UsageError(f"{run.out(name)} has {len(lines[name])} lines, but last.pt was saved after "
                             f"{counts[name]}: it was changed since")
    run.logged = dict(counts)
    if ckpt.get("record"):  # best.pt was written before last.pt: only the record's lines can be missing
        write_logs(run, ckpt["record"])
    else:
        for name in LOGS:
            if len(lines[name]) > counts[name]:
                write_lines(run.out(name), lines[name][:counts[name]])


def restore_position(run, ckpt, optimizer, scaler, stage, steps_per_epoch):
    """Optimiser, scaler and RNG states and the position of a stage from last.pt."""
    saved_world = ckpt.get("world_size", 1)
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    pos = Position(epoch=ckpt["epoch"], batch=ckpt["step_in_epoch"], best=ckpt["best"], step=ckpt["global_step"],
                   lr_step=ckpt["lr_step"], skipped=ckpt["skipped_steps"] if ckpt["step_in_epoch"] else 0,
                   sums={k: torch.tensor(v, device=run.device) for k, v in ckpt["loss_sum"].items()})
    restore_rng(ckpt["rng"], run.rank, run.world, run.args.seed + 1000 * stage + pos.epoch)
    if saved_world != run.world:
        # At an epoch boundary with another world size: the per-rank batches and steps per epoch change (the
        # global batch is train_batch_size x world x accumulation); the LR schedule continues from the new step.
        pos.step = pos.lr_step = pos.epoch * steps_per_epoch
        if run.rank == 0:
            print(f"resuming a world-size-{saved_world} run with {run.world} processes: global batch "
                  f"{run.args.train_batch_size * run.world * run.args.gradient_accumulation_steps}, "
                  f"{steps_per_epoch} steps per epoch, new RNG streams", file=sys.stderr)
    return pos


def restore_rng(saved, rank, world, reseed):
    """``saved``: last.pt's "rng", one state per rank (a list) from a DDP run, a dict from one process. With the
    world size that saved it every rank continues its own stream; with another one the streams cannot be
    matched to ranks, so every rank starts a new one from ``reseed + rank``."""
    states = saved if isinstance(saved, list) else [saved]
    if len(states) == world:
        set_rng_state(states[rank])
    else:
        set_seed(reseed + rank)


# ---------------------------------------------------------------- final predictions
def write_predictions(run, model, features, docs, split):
    """Predict a split; score it when it has labels. Writes result.json (test) or dev_result.json plus
    dev_result_k<k>.json for the passes before the last (dev), and predictions.json (test); for CDR / GDA
    <split>_counts.json, each document's (#correct, #predicted, #gold) after every pass.
    Returns the scores after each pass k = 0..K (empty without labels): one run at K = 4 gives a whole Table 2
    column, since the K passes compute passes 0..K-1 on the way."""
    args = run.args
    by_k, scores = predict.evaluate(model, features, args, run.device, docs, run.train_docs, run.id2rel,
                                    args.num_iterations)
    if args.dataset == "docred":
        prefix = "dev_" if split == "dev" else ""
        atomic_write_json(run.out(f"{prefix}result.json"), predict.official(scores, features, args.num_labels,
                                                                             run.id2rel))
        for k in range(args.num_iterations if split == "dev" else 0):
            atomic_write_json(run.out(f"dev_result_k{k}.json"),
                              predict.official(scores, features, args.num_labels, run.id2rel, k))
        if split == "test":
            rows = predict.readable(scores, features, args.num_labels, run.id2rel, predict.relation_names(),
                                    {d["title"]: d for d in docs})
            atomic_write_json(run.out("predictions.json"), rows, indent=1)
    elif by_k:
        # CDR / GDA: per-document counts of every pass, what scripts/bootstrap.py resamples
        atomic_write_json(run.out(f"{split}_counts.json"), {
            "titles": [f["title"] for f in features],
            "counts_by_k": {str(k): evaluation.bio_doc_counts(predict.decode(scores, args.num_labels, k),
                                                              features).tolist() for k in by_k}})
    return {str(k): s for k, s in by_k.items()}


def final_predictions(run, model, inputs):
    """Rank 0: dev and test predictions of the best checkpoint (with --evaluate_only: of the one loaded), and
    eval_scores.json: {"dev": final-pass scores, "dev_by_k": {"0": scores after pass 0 (the base module), ...,
    "K": the final pass}, and the same for "test" when it has labels}."""
    args = run.args
    if not args.evaluate_only:
        best = load_checkpoint(run.out("best.pt"))
        model.load_state_dict(best["model"])
        if best["stage"] == 1:
            args.num_iterations = 0  # no stage 2 was run: the inference module is untrained
    scores, by_k = {}, {}
    for split, feats, docs in (("dev", inputs.dev, inputs.dev_docs), ("test", inputs.test, inputs.test_docs)):
        if feats:
            by_k[split] = write_predictions(run, model, feats, docs, split)
            scores[split] = by_k[split].get(str(args.num_iterations), {})
    atomic_write_json(run.out("eval_scores.json"), {**scores, **{f"{s}_by_k": b for s, b in by_k.items() if b}},
                      indent=1)
    print(json.dumps({split: {k: round(v, 4) for k, v in s.items() if k in
                              ("precision", "recall", "f1", "ign_f1", "intra_f1", "inter_f1", "infer_f1")}
                      for split, s in scores.items()}))
    if run.wandb:  # the final scores: in the run's summary, and logged once more at the last step
        final = {f"final/{split}/{m}": v for split, s in scores.items() for m, v in s.items()}
        run.wandb.summary.update(final)
        run.wandb.log(final)
        run.wandb.finish()
    if not args.evaluate_only and args.keep == "best":
        for name in ("last.pt", "best_stage1.pt"):
            if os.path.exists(run.out(name)):
                os.remove(run.out(name))


# ---------------------------------------------------------------- main
def main(argv=None):
    args, ckpt = resolve_args(argv)
    if not (ckpt or {}).get("encoder"):  # a portable checkpoint carries its encoder: no folder to check
        check_encoder(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, rank, world = init_distributed(args)
    if args.resume:
        check_resume_world(ckpt, world)
    set_seed(args.seed + rank)
    # Rank 0 alone holds the save path and writes to it (other nodes need not see it). Until start_outputs, after
    # every input has been read and checked, nothing in it changes.
    with claimed(args.save_path) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            check_save_path(args)
        rel2id = predict.relation_map(args)
        tokenizer, model = prepare_model(args, ckpt, len(rel2id), device)
        inputs = load_inputs(args, tokenizer, rel2id)  # dev and test are checked now, not after hours of training
        run = Run(args, device, rank, world, inputs.dev, inputs.dev_docs, inputs.train_docs,
                  {v: k for k, v in rel2id.items()},
                  encoder=encoder_record(tokenizer, hf_encoder(model).config)
                  if rank == 0 and not args.evaluate_only else None)
        if rank == 0:
            if args.wandb and not args.evaluate_only:
                run.wandb = start_wandb(args)  # before args.json: it records the W&B run id for --resume
            start_outputs(run, ckpt)
        if not args.evaluate_only:
            code = train_all(run, model, inputs.train, ckpt)
            if code:
                if run.wandb:
                    run.wandb.finish(exit_code=code)
                return code
        if rank == 0:  # only rank 0 predicts, with the best checkpoint
            final_predictions(run, model, inputs)
    barrier()
    if distributed():
        dist.destroy_process_group()
    return 0


def start_wandb(args):
    """A W&B run named after --save_path. Its id is kept in the flags (args.json, last.pt), so that --resume
    continues the same W&B run; WANDB_MODE=offline/disabled work as usual."""
    import wandb
    if not getattr(args, "wandb_run_id", None):  # 8 of [a-z0-9], as W&B's own ids (not from the seeded RNGs)
        args.wandb_run_id = uuid.uuid4().hex[:8]  # stored in args.json and last.pt: --resume continues this run
    run = wandb.init(project=args.wandb_project, name=os.path.normpath(args.save_path), id=args.wandb_run_id,
                     resume="allow")
    run.config.update(vars(args), allow_val_change=True)
    return run


def wandb_step_offset(args, stage, steps_per_epoch):
    """Stage 2's W&B steps continue after stage 1's (W&B drops points logged at a step lower than its last)."""
    ran_stage1 = not args.skip_stage1 and not args.load_path
    return steps_per_epoch * args.stage1_epochs if stage == 2 and ran_stage1 else 0


def train_all(run, model, features, ckpt):
    """Stage 1 then stage 2 (from the best stage-1 weights), or what --resume / --load_path leaves of them.
    Returns 0, or 128 + the signal number when a signal stopped the run (last.pt saved)."""
    args = run.args
    stages = ([] if args.skip_stage1 or (args.load_path and not args.resume) else [1]) + [2]
    if args.resume:
        stages = [s for s in stages if s >= ckpt["stage"]]
    stages = [s for s in stages if (args.stage1_epochs if s == 1 else args.stage2_epochs) > 0]
    handlers = {sig: signal.signal(sig, run.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for stage in stages:
            epochs = args.stage1_epochs if stage == 1 else args.stage2_epochs
            resume = ckpt if (args.resume and ckpt["stage"] == stage) else None
            if resume is None or resume["epoch"] < epochs:
                train_stage(run, model, stage, features, resume)
            else:  # stopped after the stage's last epoch: continue with the RNG state of that moment
                restore_rng(resume["rng"], run.rank, run.world, args.seed + 1000 * stage + epochs)
            barrier()
            if agree_stop(run):  # a collective: all ranks stop here, or none
                raise StopRequested()
            if stage == 1 and args.stage2_epochs > 0 and run.rank == 0:
                # Stage 2 starts from the best stage-1 weights, as the authors do. Rank 0 alone reads them (other
                # nodes need not see save_path): stage 2's DDP broadcasts them to the other ranks.
                best = load_checkpoint(run.out("best_stage1.pt"))
                model.load_state_dict(best["model"])
                model.to(run.device)
                run.best_id = best["weights_id"]  # stage 2's first last.pt refers to these weights (no copy)
    except StopRequested:
        if run.rank == 0:
            print(f"{signal.Signals(run.signum).name}: stopped; state saved to {run.out('last.pt')} "
                  f"(continue with: python train.py --resume {args.save_path})", file=sys.stderr)
        return 128 + run.signum
    finally:  # in-process callers (tests) get their own handlers back
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0


class Terminated(BaseException):
    """SIGTERM outside the training loop (which stops at the next step boundary instead, last.pt saved)."""


def raise_terminated(signum, frame):
    raise Terminated()


def cli(argv=None):
    """Entry point: expected failures end with one line on stderr and exit status 2, never a traceback. SIGTERM
    outside the training loop ends the run as SIGINT does (KeyboardInterrupt), so that the lock is released."""
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return main(argv)
    except (UsageError, DataError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted by SIGINT", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        print("error: interrupted by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:  # in-process callers (tests) get their own handler back
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(cli())

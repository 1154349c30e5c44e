"""train.py's flags: every setting of a run, with the paper's values as defaults (Table 7: DocRED, BERT-base;
K = 3, N_I = 2), the --recipe presets, and how a run's settings are resolved against a checkpoint.

  python train.py --help                 every flag and its default
  python train.py --recipe authors       the authors' reading of stage 2 (docs/FAITHFULNESS.md); explicit flags win
"""
import argparse
import math
import numbers
import os
import sys

import torch

from model import lr_flags, parse_loss_weights
from rundir import load_checkpoint
from utils import AMP_MODES, ArgumentParser, UsageError, describe_amp, resolve_amp

# Flags that define the base module / the inference module. A checkpoint records them; --load_path and
# --evaluate_only take them from it (stage 2 from a stage-1 checkpoint takes only the base ones, so the
# ablations of Table 4 can share one stage 1).
BASE_KEYS = ("dataset", "transformer_type", "model_name_or_path", "max_seq_length", "emb_size", "pair_features",
             "block_size", "encoder_window", "rel2id")
INFERENCE_KEYS = ("inference_dim", "num_inference_layers", "eca_heads_per_line", "dropout", "eca", "no_fusion",
                  "contrastive", "classifier_layers", "rel_emb_init", "relation_input", "test_logits")
# Flags a resumed run may change: how it runs, not what it computes.
RUNTIME_KEYS = ("num_workers", "threads", "device", "log_every", "wandb", "wandb_project", "keep")
# --recipe authors: the training recipe of the authors' code (DeepLearnXMU/DocRE-II, docs/FAITHFULNESS.md);
# --recipe paper keeps every default. Flags given explicitly override the preset.
RECIPES = {"paper": {}, "authors": {
    "train_relations": "gold", "relation_input": "multihot", "noise_on": "sampled", "negative_ratio": 5,
    "loss_weights": "5,5,5,1", "contrastive_target": "stopgrad", "test_logits": "sum", "rel_emb_init": "xavier",
    "classifier_layers": 2, "weight_decay": 1e-4, "stage2_base_params": "encoder"}}
# The range of every numeric flag but those with choices: (lowest, highest, which ends are in it: "[]" both, "[)"
# the lowest, "(]" the highest). validate_args refuses a value outside it, NaN and infinities as well.
AT_LEAST_0, AT_LEAST_1, ABOVE_0, SHARE = (0, math.inf, "[]"), (1, math.inf, "[]"), (0, math.inf, "(]"), (0, 1, "[]")
RANGES = {
    "max_train_docs": AT_LEAST_0, "max_eval_docs": AT_LEAST_0, "max_seq_length": AT_LEAST_1, "emb_size": AT_LEAST_0,
    "block_size": AT_LEAST_1, "encoder_window": AT_LEAST_0, "num_inference_layers": AT_LEAST_1,
    "num_iterations": AT_LEAST_0, "inference_dim": AT_LEAST_1, "eca_heads_per_line": AT_LEAST_1,
    "dropout": (0, 1, "[)"), "train_batch_size": AT_LEAST_1, "test_batch_size": AT_LEAST_1,
    "gradient_accumulation_steps": AT_LEAST_1, "num_labels": AT_LEAST_0, "stage1_epochs": AT_LEAST_0,
    "encoder_lr": AT_LEAST_0, "classifier_lr": AT_LEAST_0, "stage2_epochs": AT_LEAST_0, "stage2_base_lr": AT_LEAST_0,
    "inference_lr": AT_LEAST_0, "noise_max": SHARE, "temperature": ABOVE_0, "negative_ratio": AT_LEAST_0,
    "withhold_max": SHARE, "warmup_ratio": SHARE, "adam_epsilon": AT_LEAST_0, "weight_decay": AT_LEAST_0,
    "max_grad_norm": AT_LEAST_0, "max_bad_steps": AT_LEAST_1,
    "seed": (0, 2 ** 31, "[)"),  # numpy takes seeds below 2**32; the run adds up to a few thousand to it
    "num_workers": AT_LEAST_0, "threads": AT_LEAST_0, "log_every": AT_LEAST_1}


# ---------------------------------------------------------------- flags
def build_parser():
    p = ArgumentParser(prog="train.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train DocRE-II (stage 1: base module; stage 2: whole model), then predict and "
                                   "score dev/test. Defaults are the paper's (Table 7, DocRED / BERT-base; K = 3, "
                                   "N_I = 2).")
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
    a("--pair_features", choices=["fnn", "bilinear", "atlop"], default="fnn",
      help="Eq. (2)-(3)'s FNN: over the concatenation [z_s, z_o] (the paper's wording), or ATLOP's grouped "
           "bilinear of z_s and z_o then Linear + ReLU (the authors' code); atlop: ATLOP's own head, the "
           "classifier on the grouped bilinear itself (stage 1 is ATLOP's model; F is emb_size * block_size wide)")
    a("--block_size", type=int, default=64, help="block size of the grouped bilinear (ATLOP's 64)")
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
    a("--num_labels", type=int, default=4, help="at most this many relations per pair (0 = no limit; CDR/GDA: 1)")
    a("--stage1_epochs", type=int, default=30)
    a("--encoder_lr", type=float, default=5e-5)
    a("--classifier_lr", type=float, default=1e-4)
    a("--stage2_epochs", type=int, default=15)
    a("--stage2_base_lr", type=float, default=1e-5)
    a("--inference_lr", type=float, default=1e-4)
    a("--noise_max", type=float, default=0.4, help="noise rate r ~ U(0, noise_max) (--noise_on all)")
    a("--contrastive", choices=["simsiam", "simclr", "none"], default="simsiam")
    a("--temperature", type=float, default=0.1, help="SimCLR temperature (--contrastive simclr)")
    # the two readings of stage 2 (docs/FAITHFULNESS.md); each default is the paper's
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
    a("--amp", choices=AMP_MODES, default="auto",
      help="autocast: auto = bf16 on GPUs and CPUs with bf16 matrix units, else none (fp32)")
    a("--num_workers", type=int, default=0, help="data-loading processes (0 = none: the main process loads)")
    a("--threads", type=int, default=0,
      help="CPU threads (0 = torch's default less the cores busy with other work at start, at least 1)")
    a("--log_every", type=int, default=50, help="steps between progress-bar loss updates")
    a("--wandb", action="store_true", help="log to Weights & Biases (respects WANDB_MODE)")
    a("--wandb_project", default="docre-ii")
    return p


def with_defaults(saved):
    """The flags a run or a checkpoint recorded, with today's default for each one it lacks (it was written before
    that flag existed; each new flag's default keeps what runs did before it)."""
    return argparse.Namespace(**{**vars(build_parser().parse_args([])), **saved})


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
        saved = vars(with_defaults(ckpt["args"]))
        changed = sorted(k for k in given - set(RUNTIME_KEYS) - {"resume"} if getattr(args, k) != saved[k])
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


def check_range(name, value, low, high=math.inf, ends="[]", integer=False):
    """A UsageError naming ``name`` (a flag, or an argument of the Python API) unless ``value`` is a finite number
    (an integer where ``integer``; a bool is neither) from low to high, each end in the range or not as ``ends``
    says (RANGES)."""
    if not isinstance(value, numbers.Integral if integer else numbers.Real) or isinstance(value, bool) or \
            not (isinstance(value, numbers.Integral) or math.isfinite(value)):
        raise UsageError(f"{name} must be {'an integer' if integer else 'a finite number'}, got {value!r}")
    if value < low or value > high or (value == low and ends[0] == "(") or (value == high and ends[1] == ")"):
        where = (">= " if ends[0] == "[" else "> ") + str(low) if high == math.inf else \
            f"in {ends[0]}{low}, {high}{ends[1]}"
        raise UsageError(f"{name} must be {where}, got {value}")


def validate_args(args):
    """Out-of-range flags, and settings under which a stage would train nothing, end the run before anything is
    written."""
    for name, (low, high, ends) in RANGES.items():
        check_range(f"--{name}", getattr(args, name), low, high, ends)
    try:
        parse_loss_weights(args.loss_weights)
    except ValueError as e:
        raise UsageError(f"--loss_weights: {e}") from e
    if args.inference_dim % (4 * args.eca_heads_per_line):
        raise UsageError(f"--inference_dim {args.inference_dim} must be divisible by 4 x --eca_heads_per_line")
    if args.evaluate_only and not args.load_path:
        raise UsageError("--evaluate_only needs --load_path CHECKPOINT")
    if not args.evaluate_only and not args.resume:
        check_training(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")


def check_training(args):
    """Every stage that runs must be able to change the model: some epochs, a learning rate above 0, a loss of
    weight above 0, gradients not clipped to 0."""
    # The base module is trained by stage 1, or comes trained from --load_path.
    no_stage1 = bool(args.skip_stage1 or args.load_path or args.stage1_epochs == 0)
    if no_stage1 and args.stage2_epochs == 0:
        why = "--stage1_epochs and --stage2_epochs are both 0" if args.stage1_epochs == 0 else \
            f"--stage2_epochs is 0 and {'--skip_stage1' if args.skip_stage1 else '--load_path'} skips stage 1"
        raise UsageError(f"nothing to train: {why}")
    if args.freeze_base and no_stage1 and not args.load_path:
        raise UsageError("--freeze_base would keep the base module as initialised: nothing trains it before "
                         "stage 2 (--skip_stage1 or --stage1_epochs 0, and no --load_path)")
    if args.max_grad_norm == 0:
        raise UsageError("--max_grad_norm 0 would clip every gradient to 0: nothing would train")
    for stage in ([] if no_stage1 else [1]) + ([2] if args.stage2_epochs else []):
        rates = lr_flags(stage, args)
        if not any(getattr(args, flag) for flag in rates):
            frozen = "; --freeze_base keeps the base module as it is" if stage == 2 and args.freeze_base else ""
            raise UsageError(f"stage {stage} would train nothing: every learning rate it uses is 0 "
                             f"({', '.join('--' + flag for flag in rates)}{frozen})")
    base, view_a, view_b, contrastive = parse_loss_weights(args.loss_weights)
    if args.stage2_epochs and not (base and not args.freeze_base or view_a or view_b
                                   or contrastive and args.contrastive != "none"):
        raise UsageError(f"stage 2 would train nothing: --loss_weights {args.loss_weights} gives weight 0 to every "
                         f"loss it has (base AT unless --freeze_base, view-A AT, view-B AT, contrastive unless "
                         f"--contrastive none)")

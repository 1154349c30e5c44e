"""Train and evaluate DocRE-II: stage 1 (the base module), stage 2 (the whole model), then dev/test predictions.

Reads top to bottom: data -> model -> the training loop (one function per stage, one per step) -> evaluation
-> main. The flags and their defaults (the paper's) are in flags.py; the run folder (its lock, checkpoints,
logs, --resume and signals) in rundir.py, which the loop calls at a few named points. One process, or one per
GPU under torchrun (DistributedDataParallel).

  python train.py --data_dir dataset/docred ...           stage 1, stage 2, then dev/test predictions
  python train.py --resume SAVE_PATH                      continue an interrupted or crashed run
  python train.py --evaluate_only --load_path CKPT ...    score a checkpoint again (any K: --num_iterations)
"""
import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler
from transformers import get_linear_schedule_with_warmup

import evaluation
import predict
import prepro
from flags import resolve_args
from model import check_checkpoint, check_encoder, encoder_record, hf_encoder, load_weights, tokenizer_and_model
from rundir import RunDir, StopRequested, atomic_write_json, check_resume_world, claim
from utils import (all_max, autocast, barrier, collate_fn, DataError, distributed, init_distributed, move_to,
                   progress_bar, run_cli, set_cpu_threads, set_seed, some_titles, UsageError)


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
        print(f"warning: {path}: {len(empty)} document(s) with fewer than 2 entities get no pairs and no "
              f"predictions: {some_titles(empty)}", file=sys.stderr)
    docs = evaluation.load_docs(path)[:len(feats)] if args.dataset == "docred" else None
    return feats, docs


def _looks_like_json(path):
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    return head[:1] in (b"[", b"{")


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
def prepare_model(args, ckpt, ckpt_path, num_class, device):
    """(tokenizer, model) of the flags: the encoder a portable checkpoint carries (best.pt, model.py), else
    --model_name_or_path; with the weights of the checkpoint (read from ckpt_path) the run continues (--resume),
    evaluates, or starts stage 2 from (--load_path of a stage-1 checkpoint: its base module)."""
    tokenizer, model = tokenizer_and_model(args, num_class, ckpt)
    if ckpt is not None:
        # Stage 2 starts from the base module of --load_path; evaluating a stage-1 checkpoint (K = 0) needs only
        # its base module too (its inference module is untrained; experiments/gpu_carry.py's copy stores none).
        base_only = not args.resume and (not args.evaluate_only or ckpt.get("stage") == 1)
        load_weights(model, ckpt["model"], ckpt_path, "base." if base_only else "")
    return tokenizer, model.to(device)


def wrap_distributed(model, device):
    """Under torchrun, DDP around the model: a new one per stage, so that it registers exactly the parameters
    set_trainable left trainable, and its constructor broadcasts rank 0's weights (best_stage1.pt is loaded on
    rank 0 only)."""
    if not distributed():
        return model
    if device.type == "cuda":  # the predictor's BatchNorm normalises over the pairs of all ranks
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


# ---------------------------------------------------------------- the training loop
class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row: the run stops with exit status 1."""


def train_stage(run, model, stage, inputs, resume=None):
    """Train one stage for its epochs: an optimiser step per group of micro-batches, dev evaluation and
    checkpoints after every epoch. ``resume``: a loaded last.pt of this stage."""
    args, device, features = run.args, run.device, inputs.train
    epochs = args.stage1_epochs if stage == 1 else args.stage2_epochs
    groups = model.param_groups(stage, args)
    model.set_trainable(groups)
    # Fused AdamW on a GPU: one kernel per parameter group (12-15 % faster steps on an H200, docs/PERFORMANCE.md).
    # On a CPU the multi-tensor one: the same numbers bit for bit as torch's default there (a loop over the
    # parameters), a little faster; the fused CPU kernel is faster still but rounds differently (docs/PERFORMANCE.md
    # section 6).
    optimizer = torch.optim.AdamW(groups, eps=args.adam_epsilon, weight_decay=args.weight_decay,
                                  fused=device.type == "cuda" or None, foreach=device.type == "cpu" or None)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    batches = math.ceil(math.ceil(len(features) / run.world) / args.train_batch_size)  # per rank and epoch
    steps_per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    pos = run.begin_stage(model, optimizer, scaler, stage, resume, steps_per_epoch)
    # The LR schedule is a function of the steps taken: built at that step, nothing of it needs saving.
    total = max(1, steps_per_epoch * epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total * args.warmup_ratio), total,
                                                last_epoch=pos.lr_step - 1)
    net = wrap_distributed(model, device)
    for epoch in range(pos.epoch, epochs):
        pos.epoch = epoch
        if pos.batch == 0:  # a new epoch, not a mid-epoch resume
            pos.skipped, pos.sums = 0, {}
        loader = iter(train_loader(features, args, run.rank, run.world, 1000 * stage + epoch))
        for _ in range(pos.batch):  # mid-epoch resume: the same permutation, minus the batches already used
            next(loader)
        model.train()
        t0, bad_in_row = time.time(), 0
        # The bar closes however the epoch ends (its end, a signal, an error): what follows gets a line of its own.
        with progress_bar(total=batches, initial=pos.batch, desc=f"stage {stage} epoch {epoch}",
                          disable=run.rank != 0) as bar:
            while pos.batch < batches:
                group = [next(loader) for _ in range(min(args.gradient_accumulation_steps, batches - pos.batch))]
                pos.batch += len(group)
                losses, bad = train_step(run, net, group, stage, optimizer, scaler)
                pos.step += 1
                bar.update(len(group))
                if bad:
                    pos.skipped, bad_in_row = pos.skipped + 1, bad_in_row + 1
                    if bad_in_row >= args.max_bad_steps:
                        raise NonFiniteError(f"stage {stage} epoch {epoch}: {bad_in_row} non-finite steps in a "
                                             f"row; stopping (last.pt holds the state before them)")
                else:
                    bad_in_row, pos.lr_step = 0, pos.lr_step + 1
                    scheduler.step()
                    pos.add(losses)
                if pos.step % args.log_every == 0 and run.rank == 0:
                    log_progress(run, bar, pos)
                if run.signum and pos.batch < batches:  # agreed on by all ranks in train_step
                    run.stop(model, optimizer, scaler, stage, pos)
        record = evaluate_epoch(run, model, stage, pos, optimizer, inputs, time.time() - t0)
        pos.epoch, pos.batch = epoch + 1, 0
        run.end_epoch(model, optimizer, scaler, stage, pos, record)
        if run.agree_stop() and epoch + 1 < epochs:
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
    run.log({f"train/{k}": v for k, v in running.items()}, pos.step)


# ---------------------------------------------------------------- evaluation
def evaluate_epoch(run, model, stage, pos, optimizer, inputs, train_time):
    """Rank 0: dev scores (K passes in stage 2) and the epoch's record: its metrics and timing lines and, if it is
    the best epoch so far, best.pt's fields besides the weights (run.end_epoch writes them once last.pt holds the
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
        by_k, _ = predict.evaluate(model, inputs.dev, args, run.device, inputs.dev_docs, inputs.train_docs,
                                   run.id2rel, k)
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
        dev_base = {f"dev_base/{m}": v for m, v in by_k[0].items()} if stage == 2 else {}
        run.log({"epoch": pos.epoch, "stage": stage, **{f"dev/{m}": v for m, v in scores.items()}, **dev_base},
                pos.step)
    barrier()
    if distributed():
        best = torch.tensor([pos.best], dtype=torch.float64, device=run.device)
        dist.broadcast(best, 0)
        pos.best = float(best.item())
    return record


def write_predictions(run, model, features, docs, train_docs, split):
    """Predict a split; score it when it has labels. Writes result.json (test) or dev_result.json plus
    dev_result_k<k>.json for the passes before the last (dev), and predictions.json (test); for CDR / GDA
    <split>_counts.json, each document's (#correct, #predicted, #gold) after every pass.
    Returns the scores after each pass k = 0..K (empty without labels): one run at K = 4 gives a whole Table 2
    column, since the K passes compute passes 0..K-1 on the way."""
    args = run.args
    by_k, scores = predict.evaluate(model, features, args, run.device, docs, train_docs, run.id2rel,
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
        # CDR / GDA: per-document counts of every pass, what experiments/bootstrap.py resamples
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
    if not args.evaluate_only and run.load_best(model, "best.pt")["stage"] == 1:
        args.num_iterations = 0  # no stage 2 was run: the inference module is untrained
    scores, by_k = {}, {}
    for split, feats, docs in (("dev", inputs.dev, inputs.dev_docs), ("test", inputs.test, inputs.test_docs)):
        if feats:
            by_k[split] = write_predictions(run, model, feats, docs, inputs.train_docs, split)
            scores[split] = by_k[split].get(str(args.num_iterations), {})
    atomic_write_json(run.out("eval_scores.json"), {**scores, **{f"{s}_by_k": b for s, b in by_k.items() if b}},
                      indent=1)
    print(json.dumps({split: {k: round(v, 4) for k, v in s.items() if k in
                              ("precision", "recall", "f1", "ign_f1", "intra_f1", "inter_f1", "infer_f1")}
                      for split, s in scores.items()}))
    run.finish(scores, trained=not args.evaluate_only)


# ---------------------------------------------------------------- main
def train_all(run, model, inputs, ckpt):
    """Stage 1 then stage 2 (from the best stage-1 weights), or what --resume / --load_path leaves of them.
    Returns 0, or 128 + the signal number when a signal stopped the run (last.pt saved)."""
    args = run.args
    epochs = {1: args.stage1_epochs, 2: args.stage2_epochs}
    stages = ([] if args.skip_stage1 or (args.load_path and not args.resume) else [1]) + [2]
    stages = [s for s in stages if epochs[s] > 0 and (not args.resume or s >= ckpt["stage"])]
    try:
        with run.signals():
            for stage in stages:
                resume = ckpt if (args.resume and ckpt["stage"] == stage) else None
                if resume is None or resume["epoch"] < epochs[stage]:
                    train_stage(run, model, stage, inputs, resume)
                else:  # stopped after the stage's last epoch: continue with the RNG state of that moment
                    run.restore_rng(resume["rng"], args.seed + 1000 * stage + epochs[stage])
                barrier()
                if run.agree_stop():  # a collective: all ranks stop here, or none
                    raise StopRequested()
                if stage == 1 and args.stage2_epochs > 0 and run.rank == 0:
                    # Stage 2 starts from the best stage-1 weights, as the authors do. Rank 0 alone reads them
                    # (other nodes need not see save_path): stage 2's DDP broadcasts them to the other ranks.
                    run.load_best(model, "best_stage1.pt")
    except StopRequested:
        if run.rank == 0:
            print(f"{signal.Signals(run.signum).name}: stopped; state saved to {run.out('last.pt')} "
                  f"(continue with: python train.py --resume {args.save_path})", file=sys.stderr)
        return 128 + run.signum
    return 0


def main(argv=None):
    args, ckpt = resolve_args(argv)
    ckpt_path = os.path.join(args.resume, "last.pt") if args.resume else args.load_path
    if ckpt is None:
        check_encoder(args)
    else:
        check_checkpoint(args, ckpt, ckpt_path)
    # 0: the cores not busy with other work now. The count is recorded (args.json, checkpoints, --resume): it
    # decides how matrix products split their sums, so a rerun needs it to repeat a run's numbers.
    args.threads = set_cpu_threads(args.threads)
    device, rank, world = init_distributed(args)
    if args.resume:
        check_resume_world(ckpt, world)
    set_seed(args.seed + rank)
    # Rank 0 alone holds the save path and writes to it (other nodes need not see it). Until run.start, after
    # every input has been read and checked, nothing in it changes.
    with claim(args, rank):
        rel2id = predict.relation_map(args)
        tokenizer, model = prepare_model(args, ckpt, ckpt_path, len(rel2id), device)
        inputs = load_inputs(args, tokenizer, rel2id)  # dev and test are checked now, not after hours of training
        encoder = encoder_record(tokenizer, hf_encoder(model).config) if rank == 0 and not args.evaluate_only \
            else None
        run = RunDir(args, device, rank, world, {v: k for k, v in rel2id.items()}, encoder)
        if rank == 0:
            run.start(ckpt)
        if not args.evaluate_only:
            code = train_all(run, model, inputs, ckpt)
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


def cli(argv=None):
    """Entry point: expected failures end with one `error:` line and their status (utils.run_cli); too many
    non-finite steps in a row with status 1."""
    return run_cli(main, argv, {NonFiniteError: 1})


if __name__ == "__main__":
    sys.exit(cli())

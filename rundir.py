"""The run folder (--save_path): one run at a time, outputs written atomically, best.pt and last.pt, the
per-epoch logs, --resume, stopping on SIGINT/SIGTERM, and W&B. train.py's loop calls it at a few named points:

  with claim(args, rank):                 the folder's lock; outputs of an earlier run refused without --overwrite
  run.start(ckpt)                         the first change to the folder, once every input has been checked
  pos = run.begin_stage(...)              last.pt at the start of a stage, or the position --resume restores
  run.signum / run.stop(...)              a signal arrived: last.pt at this step boundary, then StopRequested
  run.end_epoch(...)                      best.pt, last.pt holding the epoch's record, then the epoch's log lines
  run.finish(scores)                      W&B summary; --keep best

Crash safety: every file is written to a temporary name and renamed, so a crash leaves the old file or the new
one, never a torn one; last.pt records how many log lines belong to the run, so that --resume cuts off the lines
of an epoch a crash made it repeat and writes again the record of the epoch it closed (docs/RUNS.md).
"""
import contextlib
import datetime
import io
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from utils import OutputError, UsageError, all_max, distributed, rng_state, set_rng_state, set_seed

# Outputs of an earlier run that a new one replaces only with --overwrite (--evaluate_only: EVAL_OUTPUTS).
OUTPUTS = ("metrics.jsonl", "best.pt", "last.pt", "result.json", "dev_result.json", "predictions.json")
EVAL_OUTPUTS = ("result.json", "dev_result.json", "predictions.json", "eval_scores.json", "dev_counts.json",
                "test_counts.json")
LOGS = ("metrics.jsonl", "timing.jsonl")  # one line per epoch each
LOCK_FILE = "run.lock"  # in --save_path while a run uses it


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived during training: last.pt was saved at a step boundary."""


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

    def add(self, losses):
        """A step's losses into the epoch's sums (float32 tensors on the device: no host sync per step)."""
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.sums["steps"] = self.sums.get("steps", 0.0) + 1


@dataclass
class RunDir:
    """The run's folder and the state of what it wrote. Rank 0 writes; every rank calls the collective methods
    (begin_stage, save_last, end_epoch, agree_stop) at the same points."""
    args: object
    device: torch.device
    rank: int = 0
    world: int = 1
    id2rel: dict = None
    encoder: dict = None  # the encoder's config and tokenizer files, stored in best.pt (model.py, portable checkpoints)
    wandb: object = None
    signum: int = 0  # the signal that asked to stop (set by the handler; agreed on by all ranks)
    best_id: str = ""  # weights_id of best.pt while the model holds exactly its weights (last.pt then refers to it)
    step_offset: int = 0  # W&B step of the stage's step 0: stage 2 continues after stage 1's steps
    # Lines in each log (LOGS) that belong to the run so far: last.pt records them, so that --resume can cut off
    # the lines of an epoch that a crash made it repeat.
    logged: dict = field(default_factory=lambda: dict.fromkeys(LOGS, 0))

    def out(self, name):
        return os.path.join(self.args.save_path, name)

    # ------------------------------------------------------------ start and end
    def start(self, ckpt):
        """Rank 0, once every input has been read and checked: the first change to --save_path. --resume brings
        the logs (and best.pt) back to what last.pt saw; a new training run starts its logs anew (claim let it
        replace old ones only with --overwrite) and records its flags (with the W&B run id, for --resume)."""
        args = self.args
        if args.evaluate_only:
            return
        if args.wandb:
            self.wandb = start_wandb(args)
        if args.resume:
            self.restore_logs(ckpt)
        else:
            for name in LOGS:
                try:
                    os.remove(self.out(name))
                except FileNotFoundError:
                    pass
                except OSError as e:
                    raise OutputError(f"cannot remove {self.out(name)}: {e.strerror or e}") from e
        atomic_write_json(self.out("args.json"), vars(args), indent=1)

    def finish(self, scores, trained):
        """Rank 0, after the final predictions: the final scores into W&B's summary; with --keep best, only best.pt
        stays of the checkpoints."""
        if self.wandb:
            final = {f"final/{split}/{m}": v for split, s in scores.items() for m, v in s.items()}
            self.wandb.summary.update(final)
            self.wandb.log(final)
            self.wandb.finish()
        if trained and self.args.keep == "best":
            for name in ("last.pt", "best_stage1.pt"):
                if os.path.exists(self.out(name)):
                    os.remove(self.out(name))

    @contextlib.contextmanager
    def signals(self):
        """SIGINT/SIGTERM during training set ``signum``: the loop saves last.pt at the next step boundary and stops.
        In-process callers (tests) get their own handlers back."""
        handlers = {sig: signal.signal(sig, self.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def on_signal(self, signum, _frame):
        self.signum = signum

    def agree_stop(self):
        """Whether to stop now, the same answer on every rank (a collective: every rank calls it at the same point)."""
        self.signum = int(all_max([float(self.signum)], self.device)[0])
        return self.signum > 0

    # ------------------------------------------------------------ a stage
    def begin_stage(self, model, optimizer, scaler, stage, resume, steps_per_epoch):
        """The stage's position: restored from ``resume`` (a loaded last.pt of this stage) with the optimiser,
        scaler and RNG states, or a fresh one, saved to last.pt at once so that a crash before the stage's first
        epoch ends can be resumed as well."""
        args = self.args
        ran_stage1 = not args.skip_stage1 and not args.load_path
        # W&B drops points logged at a step lower than its last: stage 2's steps continue after stage 1's
        self.step_offset = steps_per_epoch * args.stage1_epochs if stage == 2 and ran_stage1 else 0
        if resume is None:
            pos = Position()
            self.save_last(model, optimizer, scaler, stage, pos)
            return pos
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        pos = Position(epoch=resume["epoch"], batch=resume["step_in_epoch"], best=resume["best"],
                       step=resume["global_step"], lr_step=resume["lr_step"],
                       skipped=resume["skipped_steps"] if resume["step_in_epoch"] else 0,
                       sums={k: torch.tensor(v, device=self.device) for k, v in resume["loss_sum"].items()})
        self.restore_rng(resume["rng"], args.seed + 1000 * stage + pos.epoch)
        saved_world = resume.get("world_size", 1)
        if saved_world != self.world:
            # At an epoch boundary with another world size: the per-rank batches and steps per epoch change (the
            # global batch is train_batch_size x world x accumulation); the LR schedule continues from the new step.
            pos.step = pos.lr_step = pos.epoch * steps_per_epoch
            if self.rank == 0:
                print(f"resuming a world-size-{saved_world} run with {self.world} processes: global batch "
                      f"{args.train_batch_size * self.world * args.gradient_accumulation_steps}, "
                      f"{steps_per_epoch} steps per epoch, new RNG streams", file=sys.stderr)
        return pos

    def stop(self, model, optimizer, scaler, stage, pos):
        """A signal asked to stop mid-epoch: last.pt at this step boundary, then StopRequested."""
        self.save_last(model, optimizer, scaler, stage, pos)
        raise StopRequested()

    def end_epoch(self, model, optimizer, scaler, stage, pos, record):
        """best.pt first (the one it replaces kept aside while last.pt may refer to it), then last.pt holding the
        epoch's record, then the epoch's lines. After a crash in between, --resume writes the record's lines again
        (restore_logs): an epoch is never trained twice once it is logged, nor logged twice."""
        if self.rank == 0:
            self.best_id = ""  # the model's weights are best.pt's only right after save_best
            if record["best"] is not None:
                self.save_best(model, record["best"])
        self.save_last(model, optimizer, scaler, stage, pos, record)
        if self.rank == 0:
            self.write_logs(record)

    def load_best(self, model, name):
        """The weights of a checkpoint of this run into ``model`` (stage 2 starts from best_stage1.pt's; the final
        predictions use best.pt's). Returns the checkpoint."""
        best = load_checkpoint(self.out(name))
        model.load_state_dict(best["model"])
        self.best_id = best["weights_id"]  # until the next epoch, last.pt refers to these weights (no copy)
        return best

    # ------------------------------------------------------------ checkpoints and logs
    def save_best(self, model, fields):
        """best.pt: the weights (a state dict), flags, dev scores, and what makes it portable (its encoder's config
        and tokenizer, the relation names: model.py), loadable with torch.load(weights_only=True). In stage 1,
        best_stage1.pt is a second name of the same file (no second copy on disk). While last.pt may still refer to
        the weights of the best.pt being replaced, that file is kept under a hidden name until last.pt is rewritten.
        """
        self.best_id = uuid.uuid4().hex
        best = {"model": model.state_dict(), **fields, "encoder": self.encoder, "id2rel": dict(self.id2rel),
                "weights_id": self.best_id}
        path = self.out("best.pt")
        if os.path.exists(path):
            atomic_link(path, self.out(previous_name("best.pt")))
        save_checkpoint(path, best)
        if fields["stage"] == 1:
            atomic_link(path, self.out("best_stage1.pt"))

    def save_last(self, model, optimizer, scaler, stage, pos, record=None):
        """last.pt: everything --resume needs (every rank's RNG state; rank 0 writes it), the number of log lines
        of the run so far and, at the end of an epoch, the epoch's record (train.py, evaluate_epoch)."""
        rng = rng_state()
        if distributed():
            gathered = [None] * self.world
            dist.all_gather_object(gathered, rng)
            rng = gathered
        if self.rank != 0:
            return
        # At the end of an epoch that was the best, the weights are best.pt's: last.pt refers to them instead of
        # holding a second copy (load_checkpoint reads them back).
        same = self.best_id and pos.batch == 0
        weights = {"model": None, "model_file": "best.pt", "weights_id": self.best_id} if same else \
            {"model": model.state_dict()}
        save_checkpoint(self.out("last.pt"), {
            **weights, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng, "stage": stage, "epoch": pos.epoch, "step_in_epoch": pos.batch, "best": pos.best,
            "skipped_steps": pos.skipped, "loss_sum": {k: float(v) for k, v in pos.sums.items()},
            "global_step": pos.step, "lr_step": pos.lr_step,
            "args": vars(self.args), "world_size": self.world, "logged": dict(self.logged), "record": record})
        if os.path.exists(self.out(previous_name("best.pt"))):
            os.remove(self.out(previous_name("best.pt")))

    def write_logs(self, record):
        """Rank 0: an epoch's line in each log, written as the lines of the epochs before it plus this one, so that
        writing a record again (--resume after a crash) changes nothing that was already written."""
        for name in LOGS:
            write_lines(self.out(name), read_lines(self.out(name))[:self.logged[name]], record[name])
            self.logged[name] += 1

    def restore_logs(self, ckpt):
        """--resume: the logs and best.pt as last.pt left them. Lines after the ones it counted (epochs a crash
        made this run repeat) are cut, and the record of the epoch it closed, which a crash may have cut short, is
        written again."""
        counts = ckpt.get("logged")
        if counts is None:  # a last.pt of an earlier version, saved after the logs: they are taken as they are
            self.logged = {name: len(read_lines(self.out(name))) for name in LOGS}
            return
        lines = {name: read_lines(self.out(name)) for name in LOGS}
        for name in LOGS:
            if len(lines[name]) < counts[name]:
                raise UsageError(f"{self.out(name)} has {len(lines[name])} lines, but last.pt was saved after "
                                 f"{counts[name]}: it was changed since")
        self.logged = dict(counts)
        if ckpt.get("record"):  # best.pt was written before last.pt: only the record's lines can be missing
            self.write_logs(ckpt["record"])
        else:
            for name in LOGS:
                if len(lines[name]) > counts[name]:
                    write_lines(self.out(name), lines[name][:counts[name]])

    def restore_rng(self, saved, reseed):
        """``saved``: last.pt's "rng", one state per rank (a list) from a DDP run, a dict from one process. With
        the world size that saved it every rank continues its own stream; with another one the streams cannot be
        matched to ranks, so every rank starts a new one from ``reseed + rank``."""
        states = saved if isinstance(saved, list) else [saved]
        if len(states) == self.world:
            set_rng_state(states[self.rank])
        else:
            set_seed(reseed + self.rank)

    def log(self, values, step):
        """W&B, when the run logs there (--wandb), at the run's step: stage 2's steps follow stage 1's."""
        if self.wandb:
            self.wandb.log(values, step=self.step_offset + step)


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


def check_resume_world(ckpt, world):
    """A last.pt saved mid-epoch continues only with the world size that saved it: the batches already used in
    that epoch cannot be mapped onto another number of ranks (at an epoch boundary any world size will do)."""
    saved_world = ckpt.get("world_size", 1)
    if saved_world != world and ckpt["step_in_epoch"]:
        raise UsageError(f"last.pt was saved mid-epoch by a run with world size {saved_world}: resume it with "
                         f"{saved_world} processes (this run has {world})")


# ---------------------------------------------------------------- the folder: one run at a time
@contextlib.contextmanager
def claim(args, rank):
    """Rank 0 holds --save_path for the run (the lock below) and refuses to replace an earlier run's outputs
    without --overwrite; --resume continues them. Other ranks neither read nor write it."""
    if rank != 0:
        yield
        return
    with claimed(args.save_path):
        if not args.resume:
            files = EVAL_OUTPUTS if args.evaluate_only else OUTPUTS
            existing = [f for f in files if os.path.exists(os.path.join(args.save_path, f))]
            if existing and not args.overwrite:
                resumable = not args.evaluate_only and os.path.exists(os.path.join(args.save_path, "last.pt"))
                raise UsageError(f"{args.save_path} already holds {', '.join(existing)}: pass --overwrite to "
                                 f"replace" + (f", --resume {args.save_path} to continue" if resumable else "")
                                 + ", or another --save_path")
        yield


@contextlib.contextmanager
def claimed(save_path):
    """Hold --save_path for this run: LOCK_FILE, created atomically, names the process, host and start time, and
    a second run is refused with them. Creating it is also the check, before anything is loaded, that the folder
    can be written. Released on the way out (errors and signals included); a folder this run created is removed
    again when the run wrote nothing into it (bad input leaves no trace)."""
    created = not os.path.isdir(save_path)
    try:
        os.makedirs(save_path, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write to {save_path}: {e.strerror or e}") from e
    path = os.path.join(save_path, LOCK_FILE)
    mine = take_lock(path, save_path)
    try:
        yield
    finally:
        if read_lock(path) == mine:
            with contextlib.suppress(OSError):  # never hide the error that ends the run
                os.remove(path)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(save_path)  # only when empty


def take_lock(path, save_path):
    """Create the lock file (O_CREAT | O_EXCL: of two runs, one succeeds). A lock whose process is gone (same
    host, no such pid) is taken over with a warning; another host's cannot be checked and is respected."""
    mine = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds")}
    for _ in range(5):  # another run may take or give up the lock between two tries
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock(path)
            if holder == {}:
                raise UsageError(f"{save_path} is in use by another run (lock file {path}, unreadable: being "
                                 f"written, or left by a crash: delete it if no run uses this folder)") from None
            if holder is not None and not lock_is_stale(holder):
                raise UsageError(f"{save_path} is in use by another run: process {holder.get('pid')} on "
                                 f"{holder.get('host')}, started {holder.get('started')} (lock file {path}: delete "
                                 f"it if that run is no longer running)") from None
            if holder is not None:
                print(f"warning: {path}: process {holder['pid']} on {holder['host']} (started "
                      f"{holder.get('started')}) is no longer running: taking over its lock", file=sys.stderr)
                remove_stale_lock(path, holder)
            continue
        except OSError as e:
            raise OutputError(f"cannot write to {save_path}: {e.strerror or e}") from e
        try:
            os.write(fd, json.dumps(mine).encode("utf-8"))
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            os.remove(path)
            raise OutputError(f"cannot write to {save_path}: {e.strerror or e}") from e
        os.close(fd)
        return mine
    raise UsageError(f"{save_path} is in use by another run (lock file {path} keeps changing)")


def read_lock(path):
    """The holder recorded in a lock file, None when there is none; {} when it is unreadable (being written)."""
    try:
        with open(path) as f:
            holder = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def lock_is_stale(holder):
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists (another user's)
        return False
    return False


def remove_stale_lock(path, holder):
    """Rename the stale lock aside, then delete it. Should another run have replaced it meanwhile (it took over
    first), the renamed file is that run's live lock: it is put back (os.link: unless yet another run has created
    one since)."""
    aside = f"{path}.{os.getpid()}.stale"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if read_lock(aside) != holder:
        with contextlib.suppress(OSError):
            os.link(aside, path)
    os.remove(aside)


# ---------------------------------------------------------------- atomic files and checkpoints
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


def previous_name(name):
    """Where the previous best.pt is kept while a last.pt may still refer to its weights."""
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
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)

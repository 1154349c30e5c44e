"""The runs of experiments/runner.py side by side: JOBS at a time, started in list order, each run waiting for the
run it needs (a stage-2 run for its seed's stage 1); with lanes, one run of a seed at a time. Every command runs
in a process session of its own, so that a deadline or a signal to the runner stops it and all it started."""
import os
import queue
import signal
import subprocess
import sys
import threading
import time

GRACE_S = 30  # from SIGTERM (train.py saves last.pt) to SIGKILL
POLL_S = 0.1
PROGRESS_S = 60


class Sessions:
    """The commands running now, each the leader of a process session of its own."""

    def __init__(self):
        self.lock = threading.Lock()
        self.live = set()
        self.stopped = False

    def call(self, argv, log, env=None):
        """argv with its output to the open file ``log``: its exit status, or None once stop() has been called."""
        with self.lock:
            if self.stopped:
                return None
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.live.add(proc)
        code = proc.wait()
        with self.lock:
            self.live.discard(proc)
        return code

    def stop(self):
        """No new command; SIGTERM to every session (a run saves last.pt), SIGKILL to what is left GRACE_S later."""
        with self.lock:
            self.stopped = True
            groups = [proc.pid for proc in self.live]
        _signal(groups, signal.SIGTERM)
        end = time.monotonic() + GRACE_S
        while time.monotonic() < end and any(_signal([g], 0) for g in groups):
            time.sleep(POLL_S)
        _signal(groups, signal.SIGKILL)


def _signal(groups, sig):
    """Send sig to these process groups; whether any of them still existed."""
    alive = False
    for group in groups:
        try:
            os.killpg(group, sig)
            alive = True
        except ProcessLookupError:
            pass
    return alive


def lanes(runs):
    """The runs grouped by seed, seeds in order of first appearance, each seed's runs in list order."""
    seeds = list(dict.fromkeys(run.seed for run in runs))
    return [run for seed in seeds for run in runs if run.seed == seed]


def run_all(runs, sessions, say, jobs, one_per_seed=False, deadline=None, progress=None):
    """Execute every run (run.execute(sessions)), at most ``jobs`` at once, in list order as far as what each
    needs (run.needs, a run that must have finished first) allows; with one_per_seed, at most one run of a seed
    at a time. At the deadline (time.monotonic()), or on SIGINT / SIGTERM, the running commands are stopped
    (sessions.stop) and no run starts any more; progress() is logged every minute. Returns the signal's exit
    status (128 + its number), or None."""
    last_progress = time.monotonic()
    pending, running, ended, over = list(runs), {}, queue.Queue(), set()  # over: ended or dropped
    caught = []
    previous = {s: signal.signal(s, lambda number, _: caught.append(number)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while running or (pending and not sessions.stopped):
            if not sessions.stopped:
                pending = _start_ready(pending, running, ended, over, sessions, say, jobs, one_per_seed)
            try:
                run = ended.get(timeout=POLL_S)
                del running[run.name]
                over.add(run.name)
            except queue.Empty:
                pass
            now = time.monotonic()
            if caught and not sessions.stopped:
                say(f"signal {caught[0]}: stopping the runs (they keep last.pt)")
                sessions.stop()
            if deadline is not None and now >= deadline and not sessions.stopped:
                say("budget reached: stopping the runs still going (they keep last.pt)")
                sessions.stop()
            if progress and now - last_progress >= PROGRESS_S:
                last_progress = now
                say(progress())
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 + caught[0] if caught else None


def _start_ready(pending, running, ended, over, sessions, say, jobs, one_per_seed):
    """Start the pending runs that may start now, in list order; returns the runs still pending."""
    left = []
    for run in pending:
        need = run.needs
        if len(running) >= jobs or (need and need.name not in over) or \
                (one_per_seed and any(r.seed == run.seed for r in running.values())):
            left.append(run)
        elif need and not need.done():
            say(f"{need.name} unfinished (see {need.folder}.log): {run.name} not started")
            over.add(run.name)
        else:
            running[run.name] = run
            threading.Thread(target=_execute, args=(run, sessions, ended), daemon=True).start()
    return left


def _execute(run, sessions, ended):
    try:
        run.execute(sessions)
    except OSError as e:
        print(f"error: {run.name}: {e}", file=sys.stderr)
    finally:
        ended.put(run)

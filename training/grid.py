"""A grid of train.py runs: modes x BatchNorm x seeds, several at once, resumable.

Each run is a train.py child process with one BLAS thread, writing its own run folder
<runs>/<mode>[-bn]-seed<seed> and appending its output to train.log there. How far a run got
is read from its checkpoint, written before metrics.csv (from metrics.csv where there is no
checkpoint, as committed in results/). A run that has the requested epochs, and a metrics.csv
that shows them all, is skipped; one with a checkpoint is resumed (train.py rewrites a
metrics.csv that a kill left one epoch behind). A run with epochs but no checkpoint would start
again from epoch 1 and lose its metrics: the grid refuses that unless `retrain` is given. The
epoch lines of every child are echoed with the run's name in front, so a log shows every run's
progress; Ctrl-C (or SIGTERM) stops the children (each keeps its last completed epoch) and the
same command continues later.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .cli import TrainingError
from .exercise import default_name, parse_args
from .run_folder import checkpoint_epochs, has_checkpoint, metrics_rows

TRAIN = Path(__file__).resolve().parent.parent / "train.py"
THREADS = {k: "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


class Run:
    """One cell of the grid: its train.py flags, its folder and how far it got."""

    def __init__(self, flags, runs):
        try:
            args = parse_args(flags, prog="train.py")
        except SystemExit:  # argparse has printed why
            raise TrainingError(f"the grid asks for a bad train.py run: {' '.join(flags)}") \
                from None
        self.epochs, self.name = args.epochs, default_name(args)
        self.out = Path(runs) / self.name
        self.flags = [*flags, "--out", str(self.out)]

    def done_epochs(self):
        """Epochs completed: its checkpoint's, else its metrics.csv's rows (0 if neither)."""
        return checkpoint_epochs(self.out)

    def finished(self):
        """Whether it has its epochs and its metrics.csv shows every one of them."""
        done = self.done_epochs()
        return done >= self.epochs and metrics_rows(self.out) == done

    def would_lose_epochs(self):
        """Whether running it would start again from epoch 1 over epochs it already has."""
        return not self.finished() and not has_checkpoint(self.out) and self.done_epochs() > 0

    def command(self):
        resume = ["--resume"] if has_checkpoint(self.out) else []
        return [sys.executable, str(TRAIN), *self.flags, *resume]


def plan(modes, bn, seeds, epochs, extra, runs, reference=()):
    """The runs, seed by seed (all variants of the first seed come first), then `reference`:
    (mode, bn, seed, epochs) tuples run after the first seed. extra: train.py flags for all."""
    if not seeds:
        raise TrainingError("the grid has no seeds")
    cells = [(m, b, s, epochs) for s in seeds for m in modes for b in bn]
    first = len(modes) * len(bn)
    cells = cells[:first] + list(reference) + cells[first:]
    grid = [Run(["--mode", m, *(["--bn"] if b else []), "--seed", str(s), "--epochs", str(e),
                 *extra], runs) for m, b, s, e in cells]
    names = [r.name for r in grid]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TrainingError(f"the grid names the same run twice: {', '.join(twice)} (a "
                            "reference run with the same mode, BatchNorm and seed as a grid run "
                            "would share its folder; give it another seed)")
    return grid


def refuse_to_lose_epochs(grid):
    """TrainingError if a run of `grid` would start again over epochs it has (no checkpoint)."""
    lost = [r for r in grid if r.would_lose_epochs()]
    if lost:
        raise TrainingError(
            f"{', '.join(f'{r.out} has {r.done_epochs()} epochs' for r in lost)} but no "
            f"checkpoint to continue from: asking for {lost[0].epochs} would train "
            f"{'them' if len(lost) > 1 else 'it'} again from epoch 1 and replace those metrics; "
            "add --retrain to do so")


def execute(grid, jobs, log=print, poll=2.0):
    """Run the unfinished runs of `grid`, `jobs` at a time; returns the names that did not finish
    (failed, or stopped by a signal)."""
    todo = [r for r in grid if not r.finished()]
    for r in grid:
        if r not in todo:
            log(f"[{r.name}] already has {r.done_epochs()} epochs: skipped")
    running, failed, started = {}, [], 0
    try:
        while todo or running:
            while todo and len(running) < jobs:
                r = todo.pop(0)
                started += 1
                r.out.mkdir(parents=True, exist_ok=True)
                done = r.done_epochs()
                how = (f"resuming after epoch {done}" if has_checkpoint(r.out) else
                       f"starting again (its {done} epochs have no checkpoint)" if done else
                       "starting")
                log(f"[{r.name}] run {started} of {started + len(todo)}: {how}, {r.epochs} epochs")
                logfile = open(r.out / "train.log", "a")
                proc = subprocess.Popen(r.command(), stdout=logfile, stderr=subprocess.STDOUT,
                                        env={**os.environ, **THREADS, "PYTHONUNBUFFERED": "1"})
                running[r.name] = (r, proc, logfile, logfile.tell())
            time.sleep(poll)
            for name, (r, proc, logfile, pos) in list(running.items()):
                pos = _echo_epochs(r, pos, log)
                running[name] = (r, proc, logfile, pos)
                if proc.poll() is not None:
                    logfile.close()
                    del running[name]
                    _echo_epochs(r, pos, log)
                    if proc.returncode == 0:
                        log(f"[{name}] finished: {r.done_epochs()} epochs")
                        continue
                    failed.append(name)
                    if proc.returncode < 0:  # killed by a signal: its checkpoint is intact
                        log(f"[{name}] stopped by {signal.Signals(-proc.returncode).name} after "
                            f"epoch {r.done_epochs()}: the same command resumes it")
                    else:
                        log(f"[{name}] failed (exit {proc.returncode}): see {r.out / 'train.log'}")
    except KeyboardInterrupt:
        for r, proc, logfile, _ in running.values():
            proc.terminate()
            proc.wait()
            logfile.close()
        raise
    return failed


def _echo_epochs(run, pos, log):
    """Log the epoch lines that train.py appended to run's train.log since byte `pos`."""
    with open(run.out / "train.log", "rb") as f:
        f.seek(pos)
        data = f.read()
    end = data.rfind(b"\n") + 1  # a half-written line waits for the next poll
    for line in data[:end].decode(errors="replace").splitlines():
        if line.startswith("epoch") or "error" in line:
            log(f"[{run.name}] {line.strip()}")
    return pos + end

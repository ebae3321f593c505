"""A grid of train.py runs: modes x BatchNorm x seeds, scheduled on Dask, resumable.

Each run is a Dask task (training/grid_task.py) on a single-threaded worker: a train.py child
process with one BLAS thread, writing its own run folder <runs>/<mode>[-bn]-seed<seed> and
appending its output to train.log there. The workers are a LocalCluster on this machine, or
those of a cluster whose scheduler the driver is given; a task whose worker dies is run again
by Dask on another worker, and resumes from the run's checkpoint. How far a run got
is read from its checkpoint, written before metrics.csv (from metrics.csv where there is no
checkpoint, as committed in results/). A run that has the requested epochs, and a metrics.csv
that shows them all, is skipped; one with a checkpoint is resumed (train.py rewrites a
metrics.csv that a kill left one epoch behind). A run with epochs but no checkpoint would start
again from epoch 1 and lose its metrics: the grid refuses that unless `retrain` is given. The
epoch lines of every child reach the driver once each (Dask's event channel), with the run's
name in front; Ctrl-C (or SIGTERM) stops the children (each keeps its last completed epoch) and
the same command continues later.
"""
import logging
import signal
import uuid
from pathlib import Path

from .classifier import default_name, parse_args
from .cli import TrainingError
from .grid_task import TOPIC, train_run
from .run_folder import checkpoint_epochs, has_checkpoint, metrics_rows


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


def plan(modes, bn, seeds, epochs, extra, runs, reference=()):
    """The runs, seed by seed (all variants of the first seed come first), then `reference`:
    (mode, bn, seed, epochs) tuples run after the first seed. extra: train.py flags for all."""
    if not seeds:
        raise TrainingError("the grid has no seeds")
    # interval bounds through BatchNorm's batch statistics are not bounds: IBP runs without it
    cells = [(m, b, s, epochs) for s in seeds for m in modes for b in bn if not (m == "ibp" and b)]
    first = len(cells) // len(seeds)
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


def execute(grid, jobs, log=print, scheduler=None):
    """Run the unfinished runs of `grid` on Dask: a LocalCluster of `jobs` single-threaded worker
    processes on 127.0.0.1, or the cluster whose scheduler is at address `scheduler`. Returns
    the names of the runs that did not finish (failed, or stopped by a signal). Ctrl-C (or
    SIGTERM turned into it) sets the grid's stop Event, waits for every running task to stop
    its train.py, and raises KeyboardInterrupt."""
    try:
        from distributed import Client, Event, LocalCluster, as_completed, wait
    except ImportError:
        raise TrainingError("grid.py run needs Dask: pip install -e '.[grid]'") from None
    todo = [r for r in grid if not r.finished()]
    for r in grid:
        if r not in todo:
            log(f"[{r.name}] already has {r.done_epochs()} epochs: skipped")
    if not todo:
        return []
    for r in todo:
        if not has_checkpoint(r.out) and r.done_epochs():
            log(f"[{r.name}] starting again (its {r.done_epochs()} epochs have no checkpoint)")
    cluster = None if scheduler else LocalCluster(
        n_workers=jobs, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(scheduler or cluster)
    stop_name = f"grid-stop-{uuid.uuid4().hex}"
    stop = Event(stop_name, client=client)
    client.subscribe_topic(TOPIC, lambda event: log(event[1]))
    # one task per run, in the grid's order (the first seed's variants first)
    futures = {client.submit(train_run, r.name, r.flags, str(r.out), stop_name,
                             key=f"{r.name}-{stop_name}", pure=False, priority=-i): r
               for i, r in enumerate(todo)}
    failed = []
    try:
        for future in as_completed(futures):
            r = futures[future]
            try:
                status, code = future.result()
            except Exception as exc:  # the task itself failed, e.g. its workers kept dying
                status, code = "failed", f"{type(exc).__name__}: {exc}"
            if status == "finished":
                log(f"[{r.name}] finished: {r.done_epochs()} epochs")
            elif status == "stopped" or (isinstance(code, int) and code < 0):
                failed.append(r.name)
                how = signal.Signals(-code).name if isinstance(code, int) and code < 0 else \
                    "the grid's stop"
                log(f"[{r.name}] stopped by {how} after epoch {r.done_epochs()}: the same "
                    "command resumes it")
            else:
                failed.append(r.name)
                log(f"[{r.name}] failed (exit {code}): see {r.out / 'train.log'}")
    except KeyboardInterrupt:
        stop.set()  # running tasks stop their train.py; queued ones return at once
        wait(list(futures), timeout=120)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return failed

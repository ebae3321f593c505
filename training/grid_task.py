"""What a Dask worker does for one run of the grid: train.py in a child process, watched.

`train_run` is the task `grid.py run` submits, one per run. On the worker, when the task starts
(so that the rerun of a task whose worker was lost resumes what that worker had done), it
decides between starting and resuming, starts `python train.py` with one BLAS thread, appends
its output to train.log in the run folder and sends every epoch line to the driver through
Dask's event channel (topic "grid"). It stops its child, and returns "stopped", as soon as the
grid's stop Event is set (Dask's cancel cannot stop a running child process); a task that
starts after the stop does nothing. The child dies with the worker (PR_SET_PDEATHSIG), and the
run folder's lock keeps a dying child and the task's rerun from ever writing it together.
"""
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

TRAIN = Path(__file__).resolve().parent.parent / "train.py"
THREADS = {k: "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
TOPIC = "grid"


def _die_with_parent():
    """In the child, before exec: SIGTERM when the worker that started it dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _send(worker, name, line):
    worker.log_event(TOPIC, f"[{name}] {line}")  # safe from any thread


def _wait_for_lock(out, seconds=5.0):
    """Wait until no process holds the run folder's lock (a dying child of a lost worker)."""
    import fcntl
    lock = Path(out) / ".lock"
    if not lock.exists():
        return
    deadline = time.monotonic() + seconds
    with open(lock, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return  # train.py will say who holds it
                time.sleep(0.2)


def train_run(name, flags, out, stop_event):
    """Run one grid run to its end; returns ("finished" | "failed" | "stopped", exit code)."""
    from distributed import Event, get_worker

    from training.run_folder import checkpoint_epochs, has_checkpoint

    worker, stop = get_worker(), Event(stop_event)
    if stop.is_set():
        return "stopped", None
    Path(out).mkdir(parents=True, exist_ok=True)
    _wait_for_lock(out)
    resume = has_checkpoint(out)
    done = checkpoint_epochs(out)
    _send(worker, name, f"{'resuming after epoch ' + str(done) if resume else 'starting'} on "
                        f"{os.uname().nodename}")
    command = [sys.executable, str(TRAIN), *flags, *(["--resume"] if resume else [])]
    with open(Path(out) / "train.log", "a") as log:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env={**os.environ, **THREADS,
                                                 "PYTHONUNBUFFERED": "1"},
                                 preexec_fn=_die_with_parent)
        reader = threading.Thread(target=_relay, args=(worker, name, child, log), daemon=True)
        reader.start()
        while child.poll() is None:
            if stop.is_set():
                child.terminate()
                child.wait()
                reader.join()
                return "stopped", child.returncode
            time.sleep(0.25)
        reader.join()
    return ("finished" if child.returncode == 0 else "failed"), child.returncode


def _relay(worker, name, child, log):
    """Copy the child's output to train.log, and its epoch and error lines to the driver."""
    for line in child.stdout:
        log.write(line)
        log.flush()
        if line.startswith("epoch") or "error" in line:
            _send(worker, name, line.strip())

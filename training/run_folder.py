"""A run folder on disk: settings.json, an atomic checkpoint with the resume check, CSV files.

Every run (train.py, train_gan.py) writes the same kinds of files: settings.json (its flags),
checkpoint.npz (arrays of its models and optimizers under a prefix each, plus a JSON meta dict
with the epoch, the settings that define the run, the RNG state and the history) and
metrics.csv (one row per completed epoch), each replaced atomically. While a process writes a
folder it holds the lock of the folder (`locked`), so no two processes ever write one folder.
"""
import csv
import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from nn.checkpoint import CheckpointError, atomic_file, load_checkpoint, save_checkpoint

from .cli import TrainingError


def make_folder(path, what="run folder"):
    """Create folder `path` (and its parents); TrainingError with the reason if it cannot be."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"cannot create the {what} {path}: {exc.strerror}") from None
    return Path(path)


@contextmanager
def locked(folder):
    """Hold the exclusive lock of run folder `folder` (its file .lock) for the block; a
    TrainingError at once if another process holds it. The operating system lets the lock go
    when its process ends, however it ends (kill -9 too), so a stale lock never blocks a rerun."""
    fd = os.open(Path(folder) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise TrainingError(f"{folder} is being written by process {holder}: wait until it "
                                "ends, or choose another folder with --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def has_checkpoint(folder):
    """Whether run folder `folder` holds a checkpoint to resume from."""
    return (Path(folder) / "checkpoint.npz").exists()


def refuse_to_overwrite(args):
    """TrainingError if args.out already holds a checkpoint and --resume was not given."""
    if not args.resume and has_checkpoint(args.out):
        raise TrainingError(f"{args.out} already holds a run: add --resume to continue it, "
                            "or choose another folder with --out")


def write_settings(args, **extra):
    """args.out/settings.json: every flag of the run (paths as text), then `extra`."""
    data = {**vars(args), "out": str(args.out), "data_dir": args.data_dir and str(args.data_dir),
            **extra}
    with atomic_file(args.out / "settings.json") as f:
        f.write(json.dumps(data, indent=2) + "\n")


def save_state(path, parts, rng, epoch, settings, history):
    """Checkpoint `path`: each part's state_dict under its prefix ({"model": model, "optim":
    optimizer}), and the epoch, settings, RNG state (numpy.random.Generator) and history."""
    arrays = {f"{prefix}.{k}": v for prefix, obj in parts.items()
              for k, v in obj.state_dict().items()}
    meta = {"epoch": epoch, "settings": settings, "rng": rng.bit_generator.state,
            "history": history}
    save_checkpoint(path, arrays, meta)


def load_for_resume(path, settings, names, older=None):
    """(arrays, meta) of checkpoint `path`; a TrainingError if it is unreadable or was made
    with other values of the flags `names` than `settings` holds. older: {flag: value} that a
    checkpoint made before the flag existed is taken to hold."""
    try:
        arrays, meta = load_checkpoint(path)
    except CheckpointError as exc:
        raise TrainingError(f"--resume: {exc}") from None
    made = {**(older or {}), **meta["settings"]}
    changed = [f"--{k.replace('_', '-')} {made.get(k)} (now {settings[k]})"
               for k in names if made.get(k) != settings[k]]
    if changed:
        raise TrainingError(f"--resume: the checkpoint {path} was made with other settings: "
                            + ", ".join(changed))
    return arrays, meta


def checkpoint_epochs(folder):
    """The epochs completed in run folder `folder`, by its checkpoint (the source of truth: it
    is written before metrics.csv), else by the rows of its metrics.csv; 0 if neither."""
    if has_checkpoint(folder):
        try:
            return load_checkpoint(Path(folder) / "checkpoint.npz")[1]["epoch"]
        except CheckpointError:
            return 0
    return metrics_rows(folder)


def metrics_rows(folder):
    """Rows of run folder `folder`'s metrics.csv (0 if it has none)."""
    try:
        with open(Path(folder) / "metrics.csv", newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    except OSError:
        return 0


def resume(path, settings, names, rng, older=None):
    """Check checkpoint `path` against `settings` (flags `names`; `older` as load_for_resume's),
    restore rng from it, and return (arrays, epoch, history); the caller loads its models from
    the arrays."""
    arrays, meta = load_for_resume(path, settings, names, older)
    rng.bit_generator.state = meta["rng"]
    return arrays, meta["epoch"], meta["history"]


def write_csv(path, rows, exact=False):
    """Write a list of dicts with the same keys as CSV atomically (temporary file, then rename).

    exact: write each value as repr(), so floats read back to the same bits (metrics.csv)."""
    with atomic_file(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(({k: repr(v) for k, v in row.items()} for row in rows) if exact
                         else rows)


def write_metrics(path, history):
    """Rewrite metrics.csv from the full history (one row per completed epoch)."""
    write_csv(path, history, exact=True)

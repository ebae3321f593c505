"""A run folder on disk: settings.json, an atomic checkpoint with the resume check, CSV files.

Every run (train.py, train_gan.py) writes the same kinds of files: settings.json (its flags),
checkpoint.npz (arrays of its models and optimizers under a prefix each, plus a JSON meta dict
with the epoch, the settings that define the run, the RNG state and the history) and
metrics.csv (one row per completed epoch), each replaced atomically.
"""
import csv
import json
from pathlib import Path

from nn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from .cli import TrainingError


def make_folder(path, what="run folder"):
    """Create folder `path` (and its parents); TrainingError with the reason if it cannot be."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"cannot create the {what} {path}: {exc.strerror}") from None
    return Path(path)


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
    (args.out / "settings.json").write_text(json.dumps(data, indent=2) + "\n")


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
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(({k: repr(v) for k, v in row.items()} for row in rows) if exact
                         else rows)
    tmp.replace(path)


def write_metrics(path, history):
    """Rewrite metrics.csv from the full history (one row per completed epoch)."""
    write_csv(path, history, exact=True)

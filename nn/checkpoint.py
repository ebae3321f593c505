"""Checkpoints as plain `.npz` files: named host arrays plus a JSON dict, no pickle.

Writes are atomic (a temporary file in the same folder, then a rename), so an interrupted write
leaves the previous checkpoint intact.
"""
import json
import os
import secrets
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

META = "__meta__"


class CheckpointError(Exception):
    """A checkpoint is missing or unreadable (one sentence naming the file)."""


@contextmanager
def atomic_file(path, mode="w", **kwargs):
    """Open a new temporary file beside `path` (a unique name, so that two writers never share
    one), yield it, and rename it to `path` once the block ends without an exception: readers
    see the old file or the new one, never half of one. On an exception the temporary goes."""
    path = Path(path)
    tmp = path.parent / f"{path.name}.{secrets.token_hex(8)}.tmp"
    # O_EXCL: a new file, never another writer's; mode 0o666 less the umask, as open() gives
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path, arrays, meta):
    """Write arrays (name -> NumPy array) and meta (JSON-serialisable dict) to `path` atomically."""
    with atomic_file(path, "wb") as f:
        np.savez(f, **{META: np.array(json.dumps(meta))}, **arrays)


def load_checkpoint(path):
    """(arrays, meta) from a file written by save_checkpoint; CheckpointError, one sentence, if it
    is not one (never NumPy's advice to load pickles)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    not_one = CheckpointError(f"{path} is not a checkpoint: train.py writes one as "
                              "checkpoint.npz in its --out folder")
    damaged = CheckpointError(f"{path} is not a readable checkpoint: the file is cut short or "
                              "damaged")
    try:
        with open(path, "rb") as f:
            start = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if start != b"PK\x03\x04":  # not even the start of a zip file, as .npz files are
        raise not_one
    try:
        with np.load(path, allow_pickle=False) as z:
            if META not in z.files:
                raise not_one
            meta = json.loads(str(z[META]))
            arrays = {k: z[k] for k in z.files if k != META}
    except ValueError:  # pickled objects (never loaded), or the settings are not JSON
        raise CheckpointError(f"{path} is not a checkpoint of train.py: it holds Python objects "
                              "or settings that are not JSON") from None
    except (zipfile.BadZipFile, KeyError, OSError, EOFError):
        raise damaged from None
    return arrays, meta


def section(arrays, prefix):
    """The arrays saved under `prefix` ("model.W0" with prefix "model" -> "W0")."""
    return {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}

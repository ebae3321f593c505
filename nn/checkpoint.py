"""Checkpoints as plain `.npz` files: named host arrays plus a JSON dict, no pickle.

Writes are atomic (a temporary file in the same folder, then a rename), so an interrupted write
leaves the previous checkpoint intact.
"""
import json
import os
import zipfile
from pathlib import Path

import numpy as np

META = "__meta__"


class CheckpointError(Exception):
    """A checkpoint is missing or unreadable (one sentence naming the file)."""


def save_checkpoint(path, arrays, meta):
    """Write arrays (name -> NumPy array) and meta (JSON-serialisable dict) to `path` atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **{META: np.array(json.dumps(meta))}, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path):
    """(arrays, meta) from a file written by save_checkpoint; CheckpointError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z[META]))
            arrays = {k: z[k] for k in z.files if k != META}
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({exc})") from None
    return arrays, meta


def section(arrays, prefix):
    """The arrays saved under `prefix` ("model.W0" with prefix "model" -> "W0")."""
    return {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}

"""The shipped models: the CNNs that attack.py, serve.py and the experiments attack.

Each is a .safetensors file of PyTorch's names (nn/export.py) beside manifest.json, which gives
per model its SHA-256, the exact command that trained it and its measured accuracy (clean, FGS,
PGD-20, the worst case of `attack.py robust`, and the share certified by interval bounds).
`load` checks the SHA-256 before it trusts a file. `python -m models.build` makes all of it from
scratch (models/build.py).
"""
import hashlib
import json
from pathlib import Path

from nn.checkpoint import CheckpointError
from nn.export import load_exported

FOLDER = Path(__file__).resolve().parent
MANIFEST = FOLDER / "manifest.json"
# name -> (what it is, train.py flags of its run: the grid's settings, seed 0 unless they say)
MODELS = {"standard": ("standard training", ["--mode", "standard", "--epochs", "50"]),
          "adversarial": ("FGS adversarial training (the exercise)",
                          ["--mode", "adversarial", "--epochs", "50"]),
          "pgd": ("PGD training", ["--mode", "pgd", "--epochs", "20"]),
          # Gowal et al.'s schedule, trained at eps 0.4 for 0.3; seed 1, the run kept (seed 0's
          # checkpoint was not: results/ibp has both seeds' metrics)
          "ibp": ("IBP training (certified robustness)",
                  ["--mode", "ibp", "--eps", "0.3", "--ibp-eps", "0.4", "--epochs", "20",
                   "--pgd-images", "1000", "--seed", "1"])}


class ModelError(Exception):
    """A shipped model is missing, unknown or damaged (one sentence for the user)."""


def manifest():
    """name -> its manifest entry ({} before `python -m models.build` has written any)."""
    try:
        return json.loads(MANIFEST.read_text())["models"]
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError) as exc:
        raise ModelError(f"{MANIFEST} is not a readable manifest ({exc}): run python -m "
                         "models.build to write it again") from None


def sha256(path):
    """The SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path_of(name):
    """The .safetensors file of shipped model `name`."""
    return FOLDER / f"{name}.safetensors"


def load(name, xp=None):
    """(model in eval mode on namespace xp (default NumPy), its train.py settings, its manifest
    entry) of shipped model `name`; ModelError in one sentence if it is unknown, missing, or
    its SHA-256 differs from the manifest's."""
    entries = manifest()
    if name not in entries:
        known = ", ".join(entries) or "none yet: run python -m models.build"
        raise ModelError(f"no shipped model {name!r} (shipped: {known})")
    path, entry = path_of(name), entries[name]
    if not path.is_file():
        raise ModelError(f"{path} is missing: run python -m models.build to make it")
    if sha256(path) != entry["sha256"]:
        raise ModelError(f"{path} does not match its SHA-256 in {MANIFEST} (the file was "
                         "changed or damaged): restore it with git, or run python -m "
                         "models.build to make it again")
    try:
        model, settings = load_exported(path)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    return (model if xp is None else model.to(xp)), settings, entry

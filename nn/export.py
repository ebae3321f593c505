"""Export a train.py checkpoint of the reference CNN as PyTorch weights in a .safetensors file.

    python -m nn.export runs/standard-seed0/checkpoint.npz standard.safetensors

The file holds the state dict of a `torch.nn.Sequential` of the same layers in the same order,
under PyTorch's names and in its layouts, and loads with `load_state_dict(strict=True)`:

    import torch, safetensors.torch
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 5), torch.nn.BatchNorm2d(32),   # no BatchNorm2d without --bn
        torch.nn.MaxPool2d(2), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 5), torch.nn.BatchNorm2d(64),  # idem
        torch.nn.MaxPool2d(2), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(1024, 10))
    net.load_state_dict(safetensors.torch.load_file("standard.safetensors"))
    net.eval()   # BatchNorm on its running statistics, as our evaluation

Names are "<index of the layer>.<name>": Conv2d "weight" (out, in, kh, kw) and "bias" as ours;
Dense's W (in, out) becomes Linear's "weight" (out, in), transposed; BatchNorm's gamma and beta
become "weight" and "bias", its running_mean and running_var keep their names, and
"num_batches_tracked" is an int64 scalar: 0, since our BatchNorm does not count batches
(PyTorch reads it only when momentum is None). The file's metadata holds the checkpoint's
train.py settings (JSON). Written with safetensors.numpy: no torch needed.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from .checkpoint import CheckpointError, load_checkpoint, section
from .layers import BatchNorm1d, BatchNorm2d, Conv2d, Dense
from .model import reference_cnn

# our parameter and buffer names -> PyTorch's, for the layers that have any
TORCH_NAMES = {Conv2d: {"W": "weight", "b": "bias"},
               Dense: {"W": "weight", "b": "bias"},
               BatchNorm1d: {"gamma": "weight", "beta": "bias", "running_mean": "running_mean",
                             "running_var": "running_var"},
               BatchNorm2d: {"gamma": "weight", "beta": "bias", "running_mean": "running_mean",
                             "running_var": "running_var"}}


def torch_state_dict(model):
    """name -> host array of PyTorch's torch.nn.Sequential of the same layers as `model`.

    Conv2d W (F, C, KH, KW) and b (F,) as they are; Dense W (D, M) -> weight (M, D); BatchNorm
    gamma, beta -> weight, bias, plus running_mean, running_var and num_batches_tracked ()
    int64. Raises ValueError for a layer with parameters that has no PyTorch counterpart here.
    """
    state = {}
    for i, layer in enumerate(model.layers):
        arrays = {**layer.params, **layer.buffers}
        if not arrays:
            continue
        names = TORCH_NAMES.get(type(layer))
        if names is None:
            raise ValueError(f"no PyTorch counterpart for layer {i}, {layer!r}")
        for ours, theirs in names.items():
            value = np.asarray(arrays[ours])
            state[f"{i}.{theirs}"] = np.ascontiguousarray(
                value.T if isinstance(layer, Dense) and ours == "W" else value)
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            state[f"{i}.num_batches_tracked"] = np.asarray(
                arrays.get("num_batches_tracked", 0), dtype=np.int64)
    return state


def load_torch_state_dict(model, state):
    """Copy PyTorch's state dict `state` (name -> host array, as torch_state_dict writes it)
    into `model`, the inverse of torch_state_dict: Linear's weight (M, D) back to Dense's W
    (D, M). ValueError if a tensor is missing or unexpected, or a shape does not match."""
    ours, expected = {}, set()
    for i, layer in enumerate(model.layers):
        for mine, theirs in TORCH_NAMES.get(type(layer), {}).items():
            key = f"{i}.{theirs}"
            if key not in state:
                raise ValueError(f"no tensor {key} for layer {i}, {layer!r}")
            value = state[key]
            ours[f"{i}.{mine}"] = value.T if isinstance(layer, Dense) and mine == "W" else value
            expected.add(key)
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            expected.add(f"{i}.num_batches_tracked")
    if set(state) - expected:
        raise ValueError(f"unexpected tensors {sorted(set(state) - expected)}")
    model.load_state_dict(ours)
    return model


def load_exported(path):
    """(reference CNN in eval mode, its train.py settings) from a .safetensors file written by
    export_checkpoint. CheckpointError with the reason if it is not one."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            settings = json.loads((f.metadata() or {}).get("settings", "{}"))
        model = reference_cnn(batch_norm=bool(settings.get("bn", False)))
        load_torch_state_dict(model, load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable export of the reference CNN "
                              f"({exc})") from None
    return model.eval(), settings


def export_checkpoint(checkpoint, out):
    """Write the reference CNN of train.py checkpoint `checkpoint` to `out` (.safetensors).

    Returns the state dict written. CheckpointError if the file is not a readable checkpoint
    of that CNN.
    """
    arrays, meta = load_checkpoint(checkpoint)
    settings = meta.get("settings", {})
    model = reference_cnn(batch_norm=bool(settings.get("bn", False)))
    try:
        model.load_state_dict(section(arrays, "model"))
    except ValueError as exc:
        raise CheckpointError(f"{checkpoint} does not hold a reference CNN of train.py: "
                              f"{exc}") from None
    state = torch_state_dict(model)
    # one metadata key: safetensors writes several in a random order, and the SHA-256 of a
    # shipped file must not change when the same weights are exported again
    save_file(state, str(out), metadata={"settings": json.dumps(settings, sort_keys=True)})
    return state


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nn.export",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a train.py checkpoint.npz")
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    try:
        state = export_checkpoint(args.checkpoint, args.out)
    except (CheckpointError, SafetensorError, OSError) as exc:
        print(f"python -m nn.export: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {len(state)} tensors ({', '.join(state)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tests for nn/export.py: train.py checkpoints as PyTorch .safetensors files.

- without torch: the file read back with safetensors.numpy has PyTorch's names, shapes, dtypes
  and our values (Dense transposed), for the CNN with and without BatchNorm; the command line;
- with torch (skipped otherwise): torch.nn.Sequential of the same layers loads the file with
  strict=True and gives our logits on real MNIST test images, in eval mode.
"""
import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from data.mnist import load_mnist
from nn import Sequential, reference_cnn
from nn.checkpoint import load_checkpoint, section
from nn.export import export_checkpoint, load_exported, main, torch_state_dict
from nn.layers import LeakyReLU
from test_train import assert_one_sentence

NAMES = {False: {"0.weight": (32, 1, 5, 5), "0.bias": (32,), "3.weight": (64, 32, 5, 5),
                 "3.bias": (64,), "7.weight": (10, 1024), "7.bias": (10,)},
         True: {"0.weight": (32, 1, 5, 5), "0.bias": (32,), "1.weight": (32,), "1.bias": (32,),
                "1.running_mean": (32,), "1.running_var": (32,), "1.num_batches_tracked": (),
                "4.weight": (64, 32, 5, 5), "4.bias": (64,), "5.weight": (64,), "5.bias": (64,),
                "5.running_mean": (64,), "5.running_var": (64,), "5.num_batches_tracked": (),
                "9.weight": (10, 1024), "9.bias": (10,)}}


def ours(checkpoint):
    """Our model of the checkpoint, in eval mode, and its settings."""
    arrays, meta = load_checkpoint(checkpoint)
    model = reference_cnn(batch_norm=meta["settings"]["bn"])
    model.load_state_dict(section(arrays, "model"))
    return model.eval(), meta["settings"]


@pytest.mark.parametrize("bn", [False, True], ids=["plain", "bn"])
def test_export_has_pytorch_names_shapes_dtypes_and_our_values(checkpoints, tmp_path, bn):
    checkpoint = checkpoints["bn" if bn else "plain"]
    path = tmp_path / "model.safetensors"
    export_checkpoint(checkpoint, path)
    state = load_file(path)
    assert {k: v.shape for k, v in state.items()} == NAMES[bn]
    for key, value in state.items():
        assert value.dtype == (np.int64 if key.endswith("num_batches_tracked") else np.float32)
    model, settings = ours(checkpoint)
    dense = len(model.layers) - 1
    for key, value in model.state_dict().items():
        i, name = key.split(".")
        theirs = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}.get(name, name)
        expected = value.T if int(i) == dense and name == "W" else value
        np.testing.assert_array_equal(state[f"{i}.{theirs}"], expected, err_msg=key)
    with safe_open(path, framework="numpy") as f:
        assert json.loads(f.metadata()["settings"]) == settings
    # read back into our CNN: the same model; exported again: the same bytes (the SHA-256 of a
    # shipped model must not change when it is made again)
    back, back_settings = load_exported(path)
    assert back_settings == settings and not back.training
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value, err_msg=key)
    for _ in range(3):
        export_checkpoint(checkpoint, tmp_path / "again.safetensors")
        assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


class LearnedSlope(LeakyReLU):
    """A layer with a parameter that export does not know."""

    def __init__(self):
        super().__init__()
        self.params = {"slope": np.ones(1, dtype=np.float32)}


def test_layers_without_a_pytorch_counterpart_are_refused():
    with pytest.raises(ValueError, match="no PyTorch counterpart for layer 1"):
        torch_state_dict(Sequential(LeakyReLU(), LearnedSlope()))


def test_export_command(checkpoints, tmp_path, capsys):
    path = tmp_path / "out.safetensors"
    assert main([str(checkpoints["plain"]), str(path)]) == 0
    assert f"wrote {path}: 6 tensors" in capsys.readouterr().out
    assert set(load_file(path)) == set(NAMES[False])
    assert main([str(tmp_path / "missing.npz"), str(path)]) == 1
    err = capsys.readouterr().err
    assert_one_sentence(err.replace("python -m nn.export: error", "train.py: error"),
                        "no checkpoint file at")


def torch_cnn(torch, bn):
    """torch.nn.Sequential of reference_cnn's layers, as the module docstring writes it."""
    tnn = torch.nn

    def block(c_in, c_out):
        return [tnn.Conv2d(c_in, c_out, 5), *([tnn.BatchNorm2d(c_out)] if bn else []),
                tnn.MaxPool2d(2), tnn.ReLU()]
    return tnn.Sequential(*block(1, 32), *block(32, 64), tnn.Flatten(), tnn.Linear(1024, 10))


@pytest.mark.oracle
@pytest.mark.parametrize("bn", [False, True], ids=["plain", "bn"])
def test_pytorch_loads_the_export_and_gives_our_logits(checkpoints, tmp_path, bn):
    torch = pytest.importorskip("torch")
    checkpoint = checkpoints["bn" if bn else "plain"]
    path = tmp_path / "model.safetensors"
    export_checkpoint(checkpoint, path)
    net = torch_cnn(torch, bn)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(path).items()},
                        strict=True)
    net.eval()
    images, _ = load_mnist("test", limit=200)
    with torch.no_grad():
        theirs = net(torch.from_numpy(images)).numpy()
    model, _ = ours(checkpoint)
    logits = model.forward(images)
    scale = np.abs(logits).max()
    np.testing.assert_allclose(theirs, logits, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_array_equal(theirs.argmax(axis=1), logits.argmax(axis=1))

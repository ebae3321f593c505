"""Assertions shared by the tests."""
import numpy as np
from array_api_compat import array_namespace, device

from nn.backend import to_numpy


def assert_like(out, ref, like, atol=1e-6):
    """`out` has the namespace, device and dtype of `like`, and equals NumPy's `ref`."""
    assert array_namespace(out) is array_namespace(like)
    assert device(out) == device(like)
    assert out.dtype == like.dtype
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-5, atol=atol)


def counting(model, monkeypatch):
    """A list that grows by the batch size of each of `model`'s forward passes from now on."""
    calls, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda x: calls.append(len(x)) or forward(x))
    return calls

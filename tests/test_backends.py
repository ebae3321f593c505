"""One code path on every array backend: NumPy, the strict Array API backend and CuPy (gpu).

Each test builds its inputs in float32 on the host, runs once on host NumPy as the reference and
once on the backend of the `xp` fixture, and asserts that every output and gradient has the
namespace, device and dtype of the backend input and the values of the NumPy run. A last test
trains on array_api_strict's `no_float64` device, where any silent float64 promotion raises.
"""
from unittest.mock import patch

import numpy as np
import pytest
from array_api_compat import array_namespace, device

from helpers import assert_like
from nn import losses
from nn.backend import to_numpy
from nn.layers import (
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dense,
    Dropout,
    Flatten,
    LeakyReLU,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Tanh,
)
from nn.model import Sequential, reference_cnn
from nn.optim import SGD, Adam


def assert_like_loose(out, ref, like, rtol=1e-4, atol=1e-5):
    """assert_like with a looser tolerance, for results of many float32 operations in a row."""
    assert array_namespace(out) is array_namespace(like)
    assert device(out) == device(like)
    assert out.dtype == like.dtype
    np.testing.assert_allclose(to_numpy(out), ref, rtol=rtol, atol=atol)


def seeded(cls, *args, **kwargs):
    """A factory of identical layers: the parameters come from the same seed every time."""
    return lambda: cls(*args, rng=np.random.default_rng(0), **kwargs)


def batch_norm(cls, C, train):
    """A factory of BatchNorm layers with non-trivial float32 gamma, beta and running statistics."""
    def make():
        rng = np.random.default_rng(1)
        layer = cls(C)
        layer.params["gamma"] = rng.uniform(0.5, 2.0, C).astype(np.float32)
        layer.params["beta"] = rng.standard_normal(C).astype(np.float32)
        layer.buffers["running_mean"] = rng.standard_normal(C).astype(np.float32)
        layer.buffers["running_var"] = rng.uniform(0.5, 2.0, C).astype(np.float32)
        layer.training = train
        return layer
    return make


LAYERS = {  # name: (factory, input shape)
    "conv-s1-p0": (seeded(Conv2d, 2, 3, 3), (2, 2, 6, 5)),
    "conv-s2-p1": (seeded(Conv2d, 2, 3, 3, stride=2, padding=1), (2, 2, 6, 5)),
    "maxpool-k2-s2": (lambda: MaxPool2d(2), (2, 3, 4, 6)),
    "maxpool-k3-s2": (lambda: MaxPool2d(3, 2), (2, 3, 5, 7)),
    "batchnorm2d-train": (batch_norm(BatchNorm2d, 3, True), (4, 3, 3, 2)),
    "batchnorm2d-eval": (batch_norm(BatchNorm2d, 3, False), (4, 3, 3, 2)),
    "batchnorm1d-train": (batch_norm(BatchNorm1d, 5, True), (6, 5)),
    "batchnorm1d-eval": (batch_norm(BatchNorm1d, 5, False), (6, 5)),
    "dense": (seeded(Dense, 6, 4), (3, 6)),
    "relu": (ReLU, (2, 3, 4)),
    "leaky_relu": (lambda: LeakyReLU(0.1), (2, 3, 4)),
    "sigmoid": (Sigmoid, (2, 3, 4)),
    "tanh": (Tanh, (2, 3, 4)),
    "flatten": (Flatten, (2, 3, 2, 2)),
    "dropout": (lambda: Dropout(0.4, rng=np.random.default_rng(0)), (2, 3, 4)),  # same masks
}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_forward_backward(xp, name):
    make_layer, shape = LAYERS[name]
    rng = np.random.default_rng(2)
    x = (2 * rng.standard_normal(shape)).astype(np.float32)

    host = make_layer()
    out_ref = host.forward(x)
    dout = rng.standard_normal(out_ref.shape).astype(np.float32)
    dx_ref, grads_ref = host.backward(dout)
    assert out_ref.dtype == dx_ref.dtype == np.float32

    layer = make_layer()
    Sequential(layer).to(xp)  # moves the layer's parameters and buffers
    xb = xp.asarray(x)
    assert_like(layer.forward(xb), out_ref, xb)
    dx, grads = layer.backward(xp.asarray(dout))
    assert_like(dx, dx_ref, xb)
    assert set(grads) == set(grads_ref) == set(layer.params)
    for key, g in grads.items():
        assert_like(g, grads_ref[key], xb)
    for key, b in layer.buffers.items():  # running statistics (updated in train mode only)
        assert_like(b, host.buffers[key], xb)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_reference_cnn_forward_backward(xp, train):
    rng = np.random.default_rng(3)
    x = rng.random((4, 1, 28, 28)).astype(np.float32)
    targets = np.array([0, 3, 9, 3])

    host = reference_cnn(batch_norm=True, rng=np.random.default_rng(4))
    host.train().forward(rng.random((4, 1, 28, 28)).astype(np.float32))  # non-trivial buffers
    state = host.state_dict()
    host.train() if train else host.eval()
    logits_ref = host.forward(x)
    loss_ref, dlogits_ref = losses.softmax_cross_entropy(logits_ref, targets)
    dx_ref, grads_ref = host.backward(dlogits_ref)

    model = reference_cnn(batch_norm=True, rng=np.random.default_rng(5)).to(xp)
    model.load_state_dict(state)  # the same weights and running statistics, on the backend
    model.train() if train else model.eval()
    xb = xp.asarray(x)
    logits = model.forward(xb)
    loss, dlogits = losses.softmax_cross_entropy(logits, xp.asarray(targets))
    dx, grads = model.backward(dlogits)

    assert_like_loose(logits, logits_ref, xb)
    assert loss.shape == ()
    assert_like_loose(loss, loss_ref, xb)
    assert_like_loose(dlogits, dlogits_ref, xb)
    assert_like_loose(dx, dx_ref, xb)
    assert set(grads) == set(grads_ref) == set(model.params)
    for key, g in grads.items():
        assert_like_loose(g, grads_ref[key], xb)
    for key, b in model.buffers.items():
        assert_like_loose(b, host.buffers[key], xb)
    if not train:
        for key, b in model.buffers.items():
            np.testing.assert_array_equal(to_numpy(b), state[key])


@pytest.mark.parametrize("target_dtype", [np.int64, np.int32, np.uint8])
def test_softmax_cross_entropy(xp, target_dtype):
    rng = np.random.default_rng(6)
    logits = (3 * rng.standard_normal((5, 7))).astype(np.float32)
    logits[0, 0] = 1e4  # huge logits stay finite
    targets = np.array([0, 6, 2, 2, 1], dtype=target_dtype)
    loss_ref, dlogits_ref = losses.softmax_cross_entropy(logits, targets)
    probs_ref = losses.softmax(logits)

    lb = xp.asarray(logits)
    loss, dlogits = losses.softmax_cross_entropy(lb, xp.asarray(targets))
    assert loss.shape == ()
    assert_like(loss, loss_ref, lb)
    assert_like(dlogits, dlogits_ref, lb)
    assert_like(losses.softmax(lb), probs_ref, lb)


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_dlr_loss(xp, targeted, reduction):
    rng = np.random.default_rng(8)
    logits = (3 * rng.standard_normal((5, 7))).astype(np.float32)
    labels = np.array([0, 6, 2, 2, 1])
    target = np.array([3, 0, 5, 4, 6]) if targeted else None
    loss_ref, dlogits_ref = losses.dlr_loss(logits, labels, target, reduction=reduction)

    lb = xp.asarray(logits)
    loss, dlogits = losses.dlr_loss(lb, xp.asarray(labels),
                                    None if target is None else xp.asarray(target),
                                    reduction=reduction)
    assert loss.shape == (() if reduction == "mean" else (5,))
    assert_like(loss, loss_ref, lb)
    assert_like(dlogits, dlogits_ref, lb)


def optimizer_inputs():
    """float32 host parameters and two steps' gradients, keyed like Sequential.params."""
    rng = np.random.default_rng(7)
    params = {"0.W": rng.standard_normal((3, 2, 2, 2)), "0.b": rng.standard_normal(3),
              "3.W": rng.standard_normal((4, 5))}
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(2)]
    as32 = lambda d: {k: v.astype(np.float32) for k, v in d.items()}  # noqa: E731
    return as32(params), [as32(g) for g in grads]


@pytest.mark.parametrize("make_optimizer", [
    lambda: SGD(lr=0.1, momentum=0.9),
    lambda: Adam(lr=1e-2),
], ids=["sgd", "adam"])
def test_optimizer_steps_in_place(xp, make_optimizer):
    params_ref, grads = optimizer_inputs()
    host = make_optimizer()
    for g in grads:  # two steps, so that momentum / moment estimates matter
        host.step(params_ref, g)

    params = {k: xp.asarray(v) for k, v in optimizer_inputs()[0].items()}
    arrays = dict(params)  # the very arrays the optimizer must update in place
    opt = make_optimizer()
    for g in grads:
        opt.step(params, {k: xp.asarray(v) for k, v in g.items()})
    like = arrays["0.W"]
    for key, p in arrays.items():
        assert params[key] is p
        assert_like(p, params_ref[key], like)
        assert not np.allclose(to_numpy(p), optimizer_inputs()[0][key])  # they did move
    state = opt.velocity if isinstance(opt, SGD) else {**opt.m, **opt.v}
    for value in state.values():  # optimizer state lives on the backend too
        assert array_namespace(value) is array_namespace(like)
        assert device(value) == device(like) and value.dtype == like.dtype


# --- no silent float64 -----------------------------------------------------------------------

def strict_device(name):
    xps = pytest.importorskip("array_api_strict")
    devices = {str(d): d for d in xps.__array_namespace_info__().devices()}
    matches = [d for s, d in devices.items() if name in s]
    if not matches:
        pytest.skip(f"array_api_strict has no {name!r} device")
    return xps, matches[0]


def test_train_step_on_no_float64_device():
    """A full train step (forward, loss, backward, SGD and Adam) where float64 cannot exist."""
    xps, dev = strict_device("no_float64")
    def check(a, ref, rtol=1e-4, atol=1e-5):
        assert array_namespace(a) is xps and a.device == dev and a.dtype == xps.float32
        np.testing.assert_allclose(to_numpy(a), ref, rtol=rtol, atol=atol)

    rng = np.random.default_rng(8)
    x = rng.random((4, 1, 28, 28)).astype(np.float32)
    targets = np.array([1, 7, 7, 0])

    ref = reference_cnn(batch_norm=True, rng=np.random.default_rng(9))
    model = reference_cnn(batch_norm=True, rng=np.random.default_rng(9)).to(xps, device=dev)
    results = []
    # NumPy's reference by im2col, as strict arrays run (Winograd's tiles are NumPy's alone):
    # conv1's bias before BatchNorm gets a gradient of pure rounding, which Adam makes +-lr
    with patch("nn.conv.winograd.fits", lambda *args: False):
        for m, xb, tb in [(ref, x, targets),
                          (model, xps.asarray(x, device=dev), xps.asarray(targets, device=dev))]:
            logits = m.forward(xb)
            loss, dlogits = losses.softmax_cross_entropy(logits, tb)
            dx, grads = m.backward(dlogits)
            SGD(lr=0.05).step(m.params, grads)
            Adam(lr=1e-3).step(m.params, grads)
            m.eval()
            results.append((logits, loss, dlogits, dx, grads, m.params, m.buffers, m.forward(xb)))
            m.train()

    (logits_r, loss_r, dlogits_r, dx_r, grads_r, params_r, buffers_r, eval_r) = results[0]
    (logits, loss, dlogits, dx, grads, params, buffers, eval_logits) = results[1]
    check(logits, logits_r)
    check(loss, loss_r)
    check(dlogits, dlogits_r)
    check(dx, dx_r)
    for key in params_r:
        check(grads[key], grads_r[key])
        check(params[key], params_r[key])
    for key in buffers_r:
        check(buffers[key], buffers_r[key])
    check(eval_logits, eval_r, rtol=1e-3, atol=1e-4)  # after two optimizer steps


def test_state_dict_on_no_float64_device():
    xps, dev = strict_device("no_float64")
    model = reference_cnn(batch_norm=True, rng=np.random.default_rng(0)).to(xps, device=dev)
    state = model.state_dict()
    assert state["0.W"].dtype == np.float32


def test_reuse_host_memory_takes_effect_on_glibc():
    import platform

    from nn.backend import reuse_host_memory
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning applies to glibc only")
    assert reuse_host_memory() is True


@pytest.mark.parametrize("architecture, flags, coretype, says", [
    ("Haswell", {"avx2", "avx512f"}, "Haswell",
     "OPENBLAS_CORETYPE=Haswell in the environment holds it there; unset it"),
    ("Zen", {"avx2", "avx512f"}, None, "set OPENBLAS_CORETYPE=SkylakeX"),
    ("SkylakeX", {"avx2", "avx512f"}, "SkylakeX", None),
    ("Haswell", {"avx2"}, "Haswell", None),  # the CPU has no AVX-512
    (None, {"avx512f"}, None, None),  # no OpenBLAS in this process
])
def test_kernel_note_names_avx2_kernels_on_an_avx512_cpu(architecture, flags, coretype, says):
    from nn.backend import blas_kernel_note, kernel_note
    note = kernel_note(architecture, flags, coretype)
    if says is None:
        assert note is None
    else:
        assert says in note and f"its {architecture} kernels (AVX2)" in note
    assert blas_kernel_note() in (None, *[kernel_note(a, {"avx512f"}, c)  # this machine's
                                          for a in ("Haswell", "Zen", "Sandybridge")
                                          for c in (a, None)])

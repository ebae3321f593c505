"""Tests for ConvTranspose2d and channel concatenation (the U-Net's layers): every element of
the backward against central differences in float64, the forward against a loop that scatters
each input value onto its window, against conv2d's input gradient (what it is), against
PyTorch when it is installed, and on every backend."""
import numpy as np
import pytest

from helpers import assert_like
from nn import ConvTranspose2d, conv, conv_transpose
from nn import functional as F
from nn.gradcheck import as_float64, check_layer

CASES = [(2, 3, 4, 3, 1, 0), (1, 2, 5, 4, 2, 1), (2, 4, 3, 4, 2, 1), (1, 1, 7, 2, 2, 0)]


def loops(x, w, b, stride, padding):
    """out[n, f, i s + a - p, j s + c - p] += x[n, ch, i, j] w[ch, f, a, c], then + b."""
    N, C, H, W = x.shape
    _, Fo, K, _ = w.shape
    OH, OW = (H - 1) * stride + K, (W - 1) * stride + K
    full = np.zeros((N, Fo, OH, OW))
    for n in range(N):
        for ch in range(C):
            for i in range(H):
                for j in range(W):
                    full[n, :, i * stride:i * stride + K, j * stride:j * stride + K] += \
                        x[n, ch, i, j] * w[ch]
    return full[:, :, padding:OH - padding, padding:OW - padding] + b[None, :, None, None]


@pytest.mark.parametrize("N, C, H, K, stride, padding", CASES)
def test_forward_is_the_scatter_loop_and_conv2ds_input_gradient(N, C, H, K, stride, padding):
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(N, C, H, H)), rng.normal(size=(C, 3, K, K)), rng.normal(size=3)
    out, _ = conv_transpose.conv_transpose2d_forward(x, w, b, stride, padding)
    np.testing.assert_allclose(out, loops(x, w, b, stride, padding), atol=1e-12)
    # a conv2d with weight w (F = C outputs) on an input of out's shape has dx = out - b
    _, cache = conv.conv2d_forward(np.zeros(out.shape), w, np.zeros(C), stride, padding)
    dx, _, _ = conv.conv2d_backward(x, cache)
    np.testing.assert_allclose(dx + b[None, :, None, None], out, atol=1e-12)


@pytest.mark.parametrize("N, C, H, K, stride, padding", CASES)
def test_backward_exhaustively(N, C, H, K, stride, padding):
    layer = as_float64(ConvTranspose2d(C, 3, K, stride, padding, rng=np.random.default_rng(1)))
    layer.params["b"] = np.random.default_rng(2).normal(size=3)
    x = np.random.default_rng(3).normal(size=(N, C, H, H))
    assert max(check_layer(layer, x).values()) < 1e-6


def test_concat_and_its_backward():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 2, 4, 4))
    out, cache = F.concat_forward(a, b)
    np.testing.assert_array_equal(out, np.concatenate([a, b], axis=1))
    da, db = F.concat_backward(out * 2, cache)
    np.testing.assert_array_equal(da, 2 * a)
    np.testing.assert_array_equal(db, 2 * b)


@pytest.mark.oracle
def test_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x, w, b = rng.normal(size=(2, 4, 7, 7)), rng.normal(size=(4, 3, 4, 4)), rng.normal(size=3)
    out, cache = conv_transpose.conv_transpose2d_forward(x, w, b, 2, 1)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ot = torch.nn.functional.conv_transpose2d(xt, wt, bt, stride=2, padding=1)
    np.testing.assert_allclose(out, ot.detach().numpy(), atol=1e-10)
    dout = rng.normal(size=out.shape)
    ot.backward(torch.tensor(dout))
    for ours, theirs in zip(conv_transpose.conv_transpose2d_backward(dout, cache), (xt, wt, bt)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), atol=1e-10)


def test_on_every_backend(xp):
    layer = ConvTranspose2d(3, 2, 4, 2, 1, rng=np.random.default_rng(6))
    x_np = np.random.default_rng(7).normal(size=(2, 3, 7, 7)).astype(np.float32)
    ref = layer.forward(x_np)
    ref_dx, _ = layer.backward(np.ones_like(ref))
    from nn import Sequential
    model = Sequential(ConvTranspose2d(3, 2, 4, 2, 1, rng=np.random.default_rng(6))).to(xp)
    x = xp.asarray(x_np)
    out = model.forward(x)
    assert_like(out, ref, x)
    dx, _ = model.backward(xp.ones_like(out))
    assert_like(dx, ref_dx, x)

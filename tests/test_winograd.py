"""Winograd's F(2x2, r x r) convolution (nn/winograd.py) against the loops (nn/naive.py) in
float64 and against im2col's product (nn/conv.py, keep_cols=True) in float32."""
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nn import naive, winograd
from nn.backend import to_numpy
from nn.conv import conv2d_backward, conv2d_forward


@pytest.mark.parametrize("r", [2, 3, 4, 5])
def test_a_2x2_tile_comes_from_r_plus_1_squared_products(r):
    """Y[u, v] = sum_kl g[k, l] d[u + k, v + l] = (A^T [(G g G^T) * (B^T d B)] A)[u, v] for
    any g (r, r) and d (r + 1, r + 1): the Toom-Cook matrices and the Kronecker products' order."""
    AA, BT, GG = winograd.matrices(r)
    rng = np.random.default_rng(r)
    for _ in range(5):
        g, d = rng.standard_normal((r, r)), rng.standard_normal((r + 1, r + 1))
        direct = [[np.sum(g * d[u:u + r, v:v + r]) for v in range(2)] for u in range(2)]
        U = (GG @ g.reshape(-1)).reshape(r + 1, r + 1)        # G g G^T
        M = U * (BT @ d @ BT.T)                               # (p, q)
        np.testing.assert_allclose((AA @ M.reshape(-1)).reshape(2, 2), direct, rtol=1e-12,
                                   atol=1e-12)


@st.composite
def cases(draw):
    """(N, C, H, W, F, r, padding), at least one output; odd output sizes (a half tile) too."""
    r, padding = draw(st.integers(3, 5)), draw(st.integers(0, 2))
    low = max(1, r - 2 * padding)
    H, W = draw(st.integers(low, low + 5)), draw(st.integers(low, low + 5))
    return draw(st.integers(1, 3)), draw(st.integers(8, 10)), H, W, draw(st.integers(8, 9)), r, padding


@given(case=cases(), seed=st.integers(0, 2**16), gated=st.booleans(), one_row=st.booleans())
def test_winograd_matches_the_loops(case, seed, gated, one_row):
    """Forward, dx, dw and db in float64, some input channels zero in every image (left out of
    the products); gated: those channels' dx is 0 (a ReLU before would drop it anyway);
    one_row: a block of tiles per tile row."""
    N, C, H, W, F, r, padding = case
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal((N, C, H, W)), rng.standard_normal((F, C, r, r)),
               rng.standard_normal(F))
    dead = rng.random(C) < 0.3
    x[:, dead] = 0.0
    with patch("nn.winograd.BLOCK_COLUMNS", 1 if one_row else winograd.BLOCK_COLUMNS):
        out, cache = conv2d_forward(x, w, b, 1, padding)
        dx, dw, db = conv2d_backward(dout := rng.standard_normal(out.shape), cache, gated=gated)
    assert isinstance(cache, winograd.Cache) and (len(cache.V) > 1) == (one_row and out.shape[2] > 2)
    np.testing.assert_allclose(out, naive.conv2d_forward(x, w, b, 1, padding), rtol=1e-9,
                               atol=1e-10)
    ref_dx, ref_dw, ref_db = naive.conv2d_backward(dout, x, w, 1, padding)
    if gated:
        ref_dx[:, dead] = 0.0
    for fast, slow in ((dx, ref_dx), (dw, ref_dw), (db, ref_db)):
        assert fast.shape == slow.shape
        np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-10)
    assert conv2d_backward(dout, cache, input_grad=False)[0] is None
    assert conv2d_backward(dout, cache, param_grads=False)[1:] == (None, None)


def batch_last(a):
    """a (N, ...) laid out batch-last in memory, as the layers leave their outputs."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 0, -1)), -1, 0)


@pytest.mark.parametrize("N", [1, 32, 100])
def test_conv2_in_float32_is_im2col_up_to_rounding(N):
    """The exercise's conv2 (32 -> 64, 5x5, 12x12 ReLU outputs): every result within 1e-5 of
    its largest element of the float64 truth, as im2col's product is (about 5 times closer)."""
    rng = np.random.default_rng(N)
    x = batch_last(np.maximum(rng.standard_normal((N, 32, 12, 12), dtype=np.float32), 0))
    w = rng.standard_normal((64, 32, 5, 5), dtype=np.float32) * 0.05
    b = rng.standard_normal(64, dtype=np.float32)
    dout = batch_last(rng.standard_normal((N, 64, 8, 8), dtype=np.float32))
    truth = [naive.conv2d_forward(*(a.astype(np.float64) for a in (x, w, b)))]
    truth += naive.conv2d_backward(dout.astype(np.float64), x.astype(np.float64),
                                   w.astype(np.float64))
    out, cache = conv2d_forward(x, w, b)
    kept, im2col = conv2d_forward(x, w, b, keep_cols=True)
    for fast, reference, exact in zip((out, *conv2d_backward(dout, cache)),
                                      (kept, *conv2d_backward(dout, im2col)), truth):
        assert fast.dtype == np.float32 and fast.shape == exact.shape
        scale = np.abs(exact).max()
        assert np.abs(fast - exact).max() < 1e-5 * scale
        assert np.abs(reference - exact).max() < 1e-5 * scale


def test_dead_channels_leave_the_products():
    """Channels zero in every image: the products see only the live ones (the cache holds 27 of
    32); their dw is 0, and their dx the whole filters' unless gated; a channel zero but in one
    place, or all negative, is live."""
    rng = np.random.default_rng(5)
    x = rng.random((4, 32, 12, 12))
    x[:, [0, 5, 6, 20, 31]] = 0.0
    x[:, 7] = -x[:, 7]
    x[:, 9] = 0.0
    x[3, 9, 3, 4] = 0.5
    w, b = rng.standard_normal((64, 32, 5, 5)), rng.standard_normal(64)
    out, cache = conv2d_forward(x, w, b)
    assert cache.V[0].shape[1] == cache.U.shape[2] == 27
    live = np.any(x, axis=(0, 2, 3))
    np.testing.assert_allclose(out, conv2d_forward(x[:, live], w[:, live], b)[0], rtol=1e-12)
    dout = rng.standard_normal(out.shape)
    dx, dw, _ = conv2d_backward(dout, cache)
    gated, _, _ = conv2d_backward(dout, cache, gated=True)
    ref_dx, ref_dw, _ = naive.conv2d_backward(dout, x, w)
    assert not dw[:, ~live].any() and not gated[:, ~live].any()
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(gated[:, live], ref_dx[:, live], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("device", [None, "no_float64"])
def test_the_same_code_runs_on_the_strict_array_api(device):
    """conv2d_forward and conv2d_backward of this module called directly (conv2d_forward takes it on
    NumPy only): strict arrays in, strict float32 arrays out, NumPy's values
    up to rounding (NumPy's leave out the dead channel)."""
    xs = pytest.importorskip("array_api_strict")
    dev = xs.Device(device) if device else None
    rng = np.random.default_rng(9)
    x = np.maximum(rng.standard_normal((3, 8, 7, 9), dtype=np.float32), 0)
    x[:, 2] = 0.0
    w, b = rng.standard_normal((8, 8, 3, 3), dtype=np.float32), np.ones(8, np.float32)
    dout = rng.standard_normal((3, 8, 7, 9), dtype=np.float32)
    ref = winograd.conv2d_forward(x, w, b, padding=1)
    ref = (ref[0], *winograd.conv2d_backward(dout, ref[1]))
    args = [xs.asarray(a, device=dev) for a in (x, w, b, dout)]
    with patch("nn.winograd.BLOCK_COLUMNS", 1):   # four blocks of tiles, written through views
        out, cache = winograd.conv2d_forward(*args[:3], padding=1)
        grads = winograd.conv2d_backward(args[3], cache)
    assert len(cache.blocks) == 4
    for got, want in zip((out, *grads), ref):
        assert type(got) is type(args[0]) and got.dtype == xs.float32 and got.device == args[0].device
        np.testing.assert_allclose(to_numpy(got), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_an_input_zero_everywhere_leaves_the_bias():
    """Every channel dead (an interval's radius of 0, say): the bias out, dw 0, and dx the
    filters' unless gated."""
    rng = np.random.default_rng(6)
    x, w, b = np.zeros((2, 8, 6, 6)), rng.standard_normal((8, 8, 3, 3)), rng.standard_normal(8)
    out, cache = conv2d_forward(x, w, b)
    np.testing.assert_array_equal(out, np.broadcast_to(b[:, None, None], out.shape))
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv2d_backward(dout, cache)
    assert not dw.any() and not conv2d_backward(dout, cache, gated=True)[0].any()
    np.testing.assert_allclose(dx, naive.conv2d_backward(dout, x, w)[0], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(db, dout.sum(axis=(0, 2, 3)), rtol=1e-12)


def test_only_wide_stride_1_convolutions_with_3_to_5_square_kernels_take_it():
    x = np.zeros((2, 32, 12, 12), np.float32)
    assert winograd.fits(x, np.zeros((64, 32, 5, 5)), 1)
    assert winograd.fits(x, np.zeros((8, 8, 3, 3)), 1)
    assert not winograd.fits(x, np.zeros((32, 1, 5, 5)), 1)       # conv1: one input channel
    assert not winograd.fits(x, np.zeros((1, 64, 3, 3)), 1)       # one output channel
    assert not winograd.fits(x, np.zeros((64, 32, 5, 5)), 2)
    assert not winograd.fits(x, np.zeros((64, 32, 7, 7)), 1)
    assert not winograd.fits(x, np.zeros((64, 32, 2, 2)), 1)
    assert not winograd.fits(x, np.zeros((64, 32, 3, 5)), 1)
    xs = pytest.importorskip("array_api_strict")
    assert not winograd.fits(xs.asarray(x), np.zeros((64, 32, 5, 5)), 1)   # CuPy, strict: im2col
    with pytest.raises(ValueError, match="needs 7 points"):
        winograd.matrices(6)

"""Gradient checks of every layer, the loss and the model, in float64 on host NumPy.

- exhaustive central differences on tiny fixed cases (every element of the input and of every
  parameter; rel_error < 1e-6);
- directional checks on Hypothesis-drawn shapes, strides, paddings and seeds;
- the fast convolution, transposed convolution and max pooling against the readable loops of
  nn/naive.py, max pooling also on inputs with ties;
- the layer protocol (one backward per forward), BatchNorm's running statistics, state dicts;
- an optional PyTorch oracle (skipped when torch is not installed).

Kinks are kept out of the finite differences: in the layer checks ReLU inputs stay at least 0.1
away from 0 and max-pool windows hold distinct values 0.1 apart, while the step is 1e-6; the
whole-model checks record which side of every kink each forward pass saw and assert that no step
crossed one (`WithLoss.assert_no_kink_crossed`).
"""
import threading
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from helpers import (
    assert_floats_as_blas_allows,
    blas_column_blocks_exact,
    blas_row_subset_exact,
)
from nn import losses, naive
from nn.conv import (
    _block_rows,
    _live_columns,
    _row_length,
    _rows,
    col2im,
    conv2d_backward,
    conv2d_forward,
    im2col,
)
from nn.conv_transpose import conv_transpose2d_backward, conv_transpose2d_forward
from nn.functional import (
    SMALL_K,
    batch_norm_backward,
    batch_norm_forward,
    product,
    product_nt,
)
from nn.gradcheck import as_float64, check_layer, directional_check, numerical_gradient, rel_error
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
    no_grad,
)
from nn.model import Sequential, reference_cnn
from nn.optim import SGD
from nn.pool import max_pool2d_backward, max_pool2d_forward

EXHAUSTIVE_TOL = 1e-6
seeds = st.integers(0, 2**32 - 1)


# --- building blocks -------------------------------------------------------------------------

def away_from_zero(rng, shape):
    """Random values with |x| >= 0.1: no ReLU kink within any finite-difference step."""
    return rng.choice([-1.0, 1.0], size=shape) * (0.1 + np.abs(rng.standard_normal(shape)))


def distinct(rng, shape):
    """The values 0.1 * (k - size/2), k = 0..size-1, shuffled: any two differ by at least 0.1."""
    size = int(np.prod(shape))
    return (rng.permutation(size).reshape(shape) - size / 2) * 0.1


def conv(rng, c_in, c_out, k, stride=1, padding=0):
    """A float64 Conv2d with a random (non-zero) bias."""
    layer = as_float64(Conv2d(c_in, c_out, k, stride=stride, padding=padding, rng=rng))
    layer.params["b"] = rng.standard_normal(c_out)
    return layer


def dense(rng, d_in, d_out):
    layer = as_float64(Dense(d_in, d_out, rng=rng))
    layer.params["b"] = rng.standard_normal(d_out)
    return layer


def batch_norm(cls, rng, C, train):
    """A float64 BatchNorm with random gamma, beta and running statistics, in the given mode."""
    layer = as_float64(cls(C))
    randomize_batch_norm(layer, rng)
    layer.training = train
    return layer


def randomize_batch_norm(layer, rng):
    C = layer.params["gamma"].shape[0]
    layer.params["gamma"] = rng.uniform(0.5, 2.0, C)
    layer.params["beta"] = rng.standard_normal(C)
    layer.buffers["running_mean"] = rng.standard_normal(C)
    layer.buffers["running_var"] = rng.uniform(0.5, 2.0, C)


def bn_input(rng, shape):
    """Channels with non-zero mean and non-unit spread, so normalisation does something."""
    C = shape[1]
    scale = np.reshape(rng.uniform(0.5, 3.0, C), (1, C) + (1,) * (len(shape) - 2))
    shift = np.reshape(rng.standard_normal(C), (1, C) + (1,) * (len(shape) - 2))
    return rng.standard_normal(shape) * scale + shift


def kink_pattern(x, layer):
    """Which side of its kinks a ReLU or MaxPool2d input lies on (None for smooth layers).

    ReLU: the sign mask; MaxPool2d: for every window offset, where the window's maximum is.
    Finite differences are only valid while the pattern stays the same.
    """
    if isinstance(layer, ReLU):
        return x > 0
    if isinstance(layer, MaxPool2d):
        out, _ = max_pool2d_forward(x, layer.kernel_size, layer.stride)
        K, s, (OH, OW) = layer.kernel_size, layer.stride, out.shape[2:]
        return np.stack([x[:, :, i:i + s * (OH - 1) + 1:s, j:j + s * (OW - 1) + 1:s] == out
                         for i in range(K) for j in range(K)])
    return None


class WithLoss:
    """A Sequential followed by softmax_cross_entropy, as a layer whose output is the 0-d loss.

    Every forward appends the model's kink patterns to `patterns`, so a test can assert that no
    finite-difference step crossed a ReLU or max-pool kink (which would invalidate the check).
    """

    def __init__(self, model, targets):
        self.model, self.targets, self._dlogits, self.patterns = model, targets, None, []

    @property
    def params(self):
        return self.model.params

    def forward(self, x):
        pattern = []
        for layer in self.model.layers:  # model.forward, one layer at a time
            pattern.append(kink_pattern(x, layer))
            x = layer.forward(x)
        self.patterns.append(pattern)
        loss, self._dlogits = losses.softmax_cross_entropy(x, self.targets)
        return loss

    def backward(self, dout):
        return self.model.backward(dout * self._dlogits)

    def assert_no_kink_crossed(self):
        """Every forward so far saw the same kink pattern as the first one."""
        first = self.patterns[0]
        for k, pattern in enumerate(self.patterns[1:], 1):
            for i, (a, b) in enumerate(zip(first, pattern)):
                assert a is None or np.array_equal(a, b), (
                    f"forward {k} crossed a kink of layer {i} ({self.model.layers[i]!r}): "
                    "the finite differences are invalid here; choose another seed")


class LossLayer:
    """A loss of the input logits (softmax_cross_entropy unless `loss` is given) as a
    parameter-free layer (0-d output)."""

    def __init__(self, targets, loss=losses.softmax_cross_entropy):
        self.targets, self.loss, self.params, self._dlogits = targets, loss, {}, None

    def forward(self, logits):
        loss, self._dlogits = self.loss(logits, self.targets)
        return loss

    def backward(self, dout):
        return dout * self._dlogits, {}


def assert_directional(layer, x, seed, tol=1e-6, eps=1e-6):
    """Numeric and analytic directional derivatives agree for the input and every parameter."""
    result = directional_check(layer, x, seed=seed, eps=eps)
    assert set(result) == {"x", *layer.params}
    for name, (numeric, analytic) in result.items():
        assert abs(numeric - analytic) <= tol * max(1.0, abs(numeric)), (name, numeric, analytic)


# --- exhaustive checks on tiny fixed cases ---------------------------------------------------

def normal(rng, shape):
    return rng.standard_normal(shape)


class SameDraws:
    """Stands in for a Generator: every random() call returns the same draws, so a Dropout
    layer keeps one mask over the many forward passes of a finite-difference check."""

    def __init__(self, seed):
        self.seed = seed

    def random(self, shape, dtype=np.float64):
        return np.random.default_rng(self.seed).random(shape, dtype=dtype)


def dropout(p, seed, train=True):
    layer = Dropout(p, rng=SameDraws(seed))
    layer.training = train
    return layer


def _case(seed, make_layer, make_x):
    """A builder of (layer, x) from one seed: the same fixed case every time."""
    def build():
        rng = np.random.default_rng(seed)
        layer = make_layer(rng)
        return layer, make_x(rng)
    return build


EXHAUSTIVE_CASES = {
    # Conv2d(in, out, k, stride, padding) on non-square inputs; "s2-p0" leaves the last row and
    # column out of every window (their gradient is exactly zero).
    "conv-k3-s1-p0": _case(1, lambda r: conv(r, 2, 3, 3), lambda r: normal(r, (2, 2, 5, 6))),
    "conv-k3-s1-p1": _case(2, lambda r: conv(r, 2, 2, 3, 1, 1), lambda r: normal(r, (1, 2, 4, 5))),
    "conv-k3-s2-p1": _case(3, lambda r: conv(r, 2, 3, 3, 2, 1), lambda r: normal(r, (2, 2, 5, 6))),
    "conv-k2-s2-p0": _case(4, lambda r: conv(r, 1, 2, 2, 2, 0), lambda r: normal(r, (2, 1, 5, 7))),
    "conv-k1-s1-p0": _case(5, lambda r: conv(r, 3, 2, 1), lambda r: normal(r, (2, 3, 3, 4))),
    "maxpool-k2-s2": _case(6, lambda r: MaxPool2d(2), lambda r: distinct(r, (2, 2, 4, 6))),
    "maxpool-k3-s2": _case(7, lambda r: MaxPool2d(3, 2), lambda r: distinct(r, (2, 2, 5, 7))),
    "maxpool-k2-s1": _case(8, lambda r: MaxPool2d(2, 1), lambda r: distinct(r, (2, 2, 4, 5))),
    "batchnorm2d-train": _case(9, lambda r: batch_norm(BatchNorm2d, r, 3, True),
                               lambda r: bn_input(r, (2, 3, 3, 4))),
    "batchnorm2d-eval": _case(10, lambda r: batch_norm(BatchNorm2d, r, 3, False),
                              lambda r: bn_input(r, (2, 3, 3, 4))),
    "batchnorm1d-train": _case(11, lambda r: batch_norm(BatchNorm1d, r, 4, True),
                               lambda r: bn_input(r, (5, 4))),
    "batchnorm1d-eval": _case(12, lambda r: batch_norm(BatchNorm1d, r, 4, False),
                              lambda r: bn_input(r, (5, 4))),
    "dense": _case(13, lambda r: dense(r, 5, 3), lambda r: normal(r, (4, 5))),
    "relu": _case(14, lambda r: ReLU(), lambda r: away_from_zero(r, (2, 3, 4))),
    "leaky_relu-0.01": _case(15, lambda r: LeakyReLU(), lambda r: away_from_zero(r, (2, 3, 4))),
    "leaky_relu-0.2": _case(16, lambda r: LeakyReLU(0.2), lambda r: away_from_zero(r, (3, 5))),
    "sigmoid": _case(17, lambda r: Sigmoid(), lambda r: 2 * r.standard_normal((3, 5))),
    "tanh": _case(18, lambda r: Tanh(), lambda r: r.standard_normal((3, 5))),
    "flatten": _case(19, lambda r: Flatten(), lambda r: normal(r, (2, 3, 2, 2))),
    "dropout-train": _case(20, lambda r: dropout(0.4, 20), lambda r: normal(r, (3, 2, 4))),
    "dropout-eval": _case(21, lambda r: dropout(0.4, 21, train=False),
                          lambda r: normal(r, (3, 5))),
}


@pytest.mark.parametrize("name", EXHAUSTIVE_CASES)
def test_exhaustive_layer_gradients(name):
    layer, x = EXHAUSTIVE_CASES[name]()
    errors = check_layer(layer, x)
    assert set(errors) == {"x", *layer.params}
    assert max(errors.values()) < EXHAUSTIVE_TOL, errors


def test_exhaustive_checks_cover_every_parameter():
    """Conv, Dense and BatchNorm cases check W, b / gamma, beta as well as x."""
    expected = {"conv-k3-s1-p0": {"x", "W", "b"}, "dense": {"x", "W", "b"},
                "batchnorm2d-train": {"x", "gamma", "beta"},
                "batchnorm1d-eval": {"x", "gamma", "beta"}, "relu": {"x"}}
    for name, names in expected.items():
        layer, _ = EXHAUSTIVE_CASES[name]()
        assert {"x", *layer.params} == names


def test_softmax_cross_entropy_gradient_exhaustive():
    rng = np.random.default_rng(20)
    logits = rng.standard_normal((4, 5))
    targets = np.array([0, 4, 2, 2])
    loss, dlogits = losses.softmax_cross_entropy(logits, targets)
    assert loss.shape == ()
    numeric = numerical_gradient(lambda: losses.softmax_cross_entropy(logits, targets)[0], logits, 1.0)
    assert rel_error(numeric, dlogits) < EXHAUSTIVE_TOL


def direct_cross_entropy(logits, targets):
    """-mean log(exp(z_t) / sum_k exp(z_k)), written out (fine for moderate logits only)."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z) / np.sum(np.exp(z), axis=1, keepdims=True)
    return -np.mean(np.log(p[np.arange(len(targets)), targets]))


@given(n=st.integers(1, 6), k=st.integers(2, 10), scale=st.sampled_from([0.1, 1.0, 5.0, 20.0]),
       seed=seeds)
def test_softmax_cross_entropy_value_matches_direct_formula(n, k, scale, seed):
    rng = np.random.default_rng(seed)
    logits = scale * rng.standard_normal((n, k))
    targets = rng.integers(0, k, n)
    loss, dlogits = losses.softmax_cross_entropy(logits, targets)
    np.testing.assert_allclose(float(loss), direct_cross_entropy(logits, targets),
                               rtol=1e-10, atol=1e-12)
    # the gradient rows of softmax - onehot sum to zero
    np.testing.assert_allclose(np.sum(dlogits, axis=1), 0.0, atol=1e-12)


def test_softmax_cross_entropy_huge_logits_stay_finite():
    logits = np.array([[1e4, 0.0, -1e4],    # confident and right: loss 0
                       [0.0, 1e4, 1e4],     # confident and wrong: loss 1e4 + log 2
                       [-1e4, -1e4, -1e4]])  # uniform: loss log 3
    targets = np.array([0, 0, 2])
    loss, dlogits = losses.softmax_cross_entropy(logits, targets)
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    np.testing.assert_allclose(float(loss), (0.0 + 1e4 + np.log(2) + np.log(3)) / 3, rtol=1e-12)
    expected = np.array([[0.0, 0.0, 0.0], [-1.0, 0.5, 0.5], [1 / 3, 1 / 3, -2 / 3]]) / 3
    np.testing.assert_allclose(dlogits, expected, atol=1e-12)
    # float32 stays finite too
    loss32, d32 = losses.softmax_cross_entropy(logits.astype(np.float32), targets)
    assert loss32.dtype == np.float32 and np.isfinite(loss32) and np.all(np.isfinite(d32))


def test_softmax_cross_entropy_keeps_the_true_class_gradient_of_a_sure_float32_model():
    # a margin of 27 (as a trained CNN gives): p_t rounds to 1 in float32, p_t - 1 would be 0
    logits = np.array([[27.2, -10.9, 3.1, -0.2, 4.1, 7.3], [1.0, 30.0, 0.0, 2.0, -5.0, 3.0]])
    targets = np.array([0, 1])
    _, d64 = losses.softmax_cross_entropy(logits, targets)
    _, d32 = losses.softmax_cross_entropy(logits.astype(np.float32), targets)
    assert d32.dtype == np.float32
    assert np.all(d32[[0, 1], targets] < 0)
    np.testing.assert_allclose(d32, d64, rtol=1e-5, atol=0)


# --- the DLR loss (APGD) ---------------------------------------------------------------------
# Rows away from ties (the sort would switch) and from the label in third place (untargeted,
# the loss is then 1 whatever the logits: see test_dlr_loss_is_one_where_the_label_is_third).

DLR_LOGITS = np.array([[2.0, 0.5, -1.0, 0.3, 1.2],    # label 0 on top: the rival is second
                       [0.1, 1.5, -0.4, 2.2, 0.8],    # label 1 second: the rival is first
                       [0.5, -0.7, 0.9, 1.9, 1.4]])   # label 0 fourth
DLR_LABELS, DLR_TARGETS = np.array([0, 1, 0]), np.array([4, 3, 2])


def direct_dlr(logits, labels, target=None):
    """Per-row DLR written out with np.sort (Croce and Hein 2020, and its targeted form)."""
    rows = []
    for i, z in enumerate(np.asarray(logits, dtype=np.float64)):
        s, y = np.sort(z)[::-1], labels[i]
        if target is None:
            rows.append(-(z[y] - np.max(np.delete(z, y))) / (s[0] - s[2] + 1e-12))
        else:
            rows.append(-(z[y] - z[target[i]]) / (s[0] - (s[2] + s[3]) / 2 + 1e-12))
    return np.array(rows)


def distinct_logits(rng, n, k, scale):
    """(n, k) logits whose values in a row lie at least 0.09 * scale apart."""
    return scale * (0.1 * np.argsort(rng.random((n, k)), axis=1) + 0.01 * rng.random((n, k)))


def labels_and_targets(rng, n, k):
    """Labels, and target classes that differ from them."""
    labels = rng.integers(0, k, n)
    return labels, (labels + rng.integers(1, k, n)) % k


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_dlr_loss_gradient_exhaustive(targeted):
    logits = DLR_LOGITS.copy()
    target = DLR_TARGETS if targeted else None
    loss, dlogits = losses.dlr_loss(logits, DLR_LABELS, target)
    assert loss.shape == ()
    np.testing.assert_allclose(float(loss), direct_dlr(logits, DLR_LABELS, target).mean(),
                               rtol=1e-12)
    numeric = numerical_gradient(lambda: losses.dlr_loss(logits, DLR_LABELS, target)[0],
                                 logits, 1.0)
    assert rel_error(numeric, dlogits) < EXHAUSTIVE_TOL
    assert np.all(np.abs(dlogits).sum(axis=1) > 0.1)  # no row checks a zero gradient


def test_dlr_loss_is_one_where_the_label_is_third():
    """Untargeted with the label third: the rival is pi1 and -(z_y - z_pi1) / (z_pi1 - z_y) = 1."""
    logits = np.array([[0.3, 2.0, 1.1, -0.5], [4.0, 3.0, 1.0, 5.0]])
    loss, dlogits = losses.dlr_loss(logits, np.array([0, 1]), reduction="none")
    np.testing.assert_allclose(loss, [1.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(dlogits, 0.0, atol=1e-12)


@given(n=st.integers(1, 6), k=st.integers(4, 10), scale=st.sampled_from([0.1, 1.0, 10.0, 100.0]),
       shift=st.floats(-50, 50), seed=seeds, targeted=st.booleans())
def test_dlr_loss_matches_direct_formula_and_ignores_shift_and_scale(n, k, scale, shift, seed,
                                                                      targeted):
    rng = np.random.default_rng(seed)
    logits = distinct_logits(rng, n, k, scale)
    labels, target = labels_and_targets(rng, n, k)
    target = target if targeted else None
    loss, dlogits = losses.dlr_loss(logits, labels, target, reduction="none")
    assert loss.shape == (n,) and dlogits.shape == (n, k)
    np.testing.assert_allclose(loss, direct_dlr(logits, labels, target), rtol=1e-10)
    mean, dmean = losses.dlr_loss(logits, labels, target)
    np.testing.assert_allclose(float(mean), loss.mean(), rtol=1e-12)
    np.testing.assert_allclose(dmean, dlogits / n, rtol=1e-12)
    np.testing.assert_allclose(losses.dlr_loss(3 * logits + shift, labels, target,
                                               reduction="none")[0], loss, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.sum(dlogits, axis=1), 0.0, atol=1e-9 / scale)


def test_losses_reject_an_unknown_reduction():
    for loss in (losses.dlr_loss, losses.softmax_cross_entropy):
        with pytest.raises(ValueError, match="reduction"):
            loss(DLR_LOGITS, DLR_LABELS, reduction="sum")


def test_softmax_cross_entropy_without_reduction_gives_each_row():
    rng = np.random.default_rng(21)
    logits, labels = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    loss, dlogits = losses.softmax_cross_entropy(logits, labels, reduction="none")
    for i in range(5):
        row, drow = losses.softmax_cross_entropy(logits[i:i + 1], labels[i:i + 1])
        np.testing.assert_allclose(loss[i], float(row), rtol=1e-12)
        np.testing.assert_allclose(dlogits[i], drow[0], rtol=1e-12)


# --- directional checks on drawn shapes ------------------------------------------------------

@st.composite
def conv_cases(draw):
    """(N, C, H, W, F, K, stride, padding): H and W let at least one window fit."""
    K, stride, padding = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
    low = max(1, K - 2 * padding)
    H, W = draw(st.integers(low, low + 5)), draw(st.integers(low, low + 5))
    N, C, Fo = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return N, C, H, W, Fo, K, stride, padding


@st.composite
def pool_cases(draw):
    """(N, C, H, W, K, stride) with H, W >= K; stride may be below, equal or above K."""
    K, stride = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(K, K + 5)), draw(st.integers(K, K + 5))
    return draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W, K, stride


@given(case=conv_cases(), seed=seeds)
def test_conv2d_directional(case, seed):
    N, C, H, W, Fo, K, stride, padding = case
    rng = np.random.default_rng(seed)
    layer = conv(rng, C, Fo, K, stride, padding)
    assert_directional(layer, rng.standard_normal((N, C, H, W)), seed)


@given(case=pool_cases(), seed=seeds)
def test_max_pool2d_directional(case, seed):
    N, C, H, W, K, stride = case
    rng = np.random.default_rng(seed)
    assert_directional(MaxPool2d(K, stride), distinct(rng, (N, C, H, W)), seed)


@given(two_d=st.booleans(), train=st.booleans(), N=st.integers(2, 4), C=st.integers(1, 3),
       H=st.integers(1, 3), W=st.integers(1, 3), seed=seeds)
def test_batch_norm_directional(two_d, train, N, C, H, W, seed):
    rng = np.random.default_rng(seed)
    shape = (N, C, H, W) if two_d else (N, C)
    x = bn_input(rng, shape)
    axes = (0, 2, 3) if two_d else (0,)
    # a near-constant channel makes 1/sqrt(var + eps) huge and the differences ill-conditioned
    assume(not train or np.min(np.var(x, axis=axes)) > 1e-2)
    layer = batch_norm(BatchNorm2d if two_d else BatchNorm1d, rng, C, train)
    assert_directional(layer, x, seed)


@given(N=st.integers(1, 4), D=st.integers(1, 6), M=st.integers(1, 6), seed=seeds)
def test_dense_directional(N, D, M, seed):
    rng = np.random.default_rng(seed)
    assert_directional(dense(rng, D, M), rng.standard_normal((N, D)), seed)


ELEMENTWISE = {
    "relu": (ReLU, away_from_zero),
    "leaky_relu": (lambda: LeakyReLU(0.1), away_from_zero),
    "sigmoid": (Sigmoid, lambda rng, shape: 4 * rng.standard_normal(shape)),
    "tanh": (Tanh, lambda rng, shape: 2 * rng.standard_normal(shape)),
    "flatten": (Flatten, lambda rng, shape: rng.standard_normal(shape)),
    "dropout": (lambda: dropout(0.3, 7), lambda rng, shape: rng.standard_normal(shape)),
}


@pytest.mark.parametrize("name", ELEMENTWISE)
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=4), seed=seeds)
def test_elementwise_directional(name, shape, seed):
    make_layer, make_x = ELEMENTWISE[name]
    assert_directional(make_layer(), make_x(np.random.default_rng(seed), tuple(shape)), seed)


@given(N=st.integers(1, 6), K=st.integers(2, 10),
       scale=st.sampled_from([0.1, 1.0, 10.0, 100.0]), seed=seeds)
def test_softmax_cross_entropy_directional(N, K, scale, seed):
    rng = np.random.default_rng(seed)
    layer = LossLayer(rng.integers(0, K, N))
    assert_directional(layer, scale * rng.standard_normal((N, K)), seed)


@given(N=st.integers(1, 6), K=st.integers(4, 10), scale=st.sampled_from([1.0, 10.0, 100.0]),
       seed=seeds, targeted=st.booleans())
def test_dlr_loss_directional(N, K, scale, seed, targeted):
    rng = np.random.default_rng(seed)
    logits = distinct_logits(rng, N, K, scale)  # gaps of 0.09 or more: no sort changes order
    labels, target = labels_and_targets(rng, N, K)
    layer = LossLayer(labels, lambda z, t: losses.dlr_loss(z, t, target if targeted else None))
    assert_directional(layer, logits, seed)


# --- whole models ----------------------------------------------------------------------------

@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_reference_cnn_directional_through_loss(train):
    """d loss / d input and d loss / d every parameter of the exercise's CNN, in float64.

    With about 50,000 ReLU and max-pool units, a step of 1e-6 along a direction that moves all
    of them crosses some kink for roughly one seed in ten, so the step here is 1e-7 and the test
    asserts that no kink was crossed (seeds are fixed: the test is deterministic).
    """
    rng = np.random.default_rng(21)
    model = as_float64(reference_cnn(batch_norm=True, rng=rng))
    for layer in model.layers:
        if isinstance(layer, BatchNorm2d):
            randomize_batch_norm(layer, rng)
    model.train() if train else model.eval()
    x = rng.random((2, 1, 28, 28))
    wrapped = WithLoss(model, np.array([3, 7]))
    assert set(wrapped.params) == {"0.W", "0.b", "1.gamma", "1.beta", "4.W", "4.b",
                                   "5.gamma", "5.beta", "9.W", "9.b"}
    assert_directional(wrapped, x, seed=22, eps=1e-7)
    assert len(wrapped.patterns) == 1 + 2 * 11
    wrapped.assert_no_kink_crossed()


def small_model(rng):
    """Conv2d(pad 1) -> BatchNorm2d -> MaxPool2d -> ReLU -> Flatten -> Dense on 1x6x8 images."""
    return Sequential(conv(rng, 1, 2, 3, 1, 1), batch_norm(BatchNorm2d, rng, 2, True),
                      MaxPool2d(2), ReLU(), Flatten(), dense(rng, 2 * 3 * 4, 3))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_small_model_exhaustive_through_loss(train):
    rng = np.random.default_rng(23)
    model = small_model(rng)
    model.train() if train else model.eval()
    x = rng.standard_normal((2, 1, 6, 8))
    wrapped = WithLoss(model, np.array([0, 2]))
    errors = check_layer(wrapped, x)
    wrapped.assert_no_kink_crossed()
    assert set(errors) == {"x", "0.W", "0.b", "1.gamma", "1.beta", "5.W", "5.b"}
    if train:
        # BatchNorm subtracts the batch mean, so the conv bias before it has no effect at all:
        # its gradient is 0 and a relative error means nothing. Check it is 0 on both sides.
        del errors["0.b"]
        wrapped.forward(x)
        _, grads = wrapped.backward(1.0)
        numeric = numerical_gradient(lambda: wrapped.forward(x), model.params["0.b"], 1.0)
        assert np.max(np.abs(grads["0.b"])) < 1e-12 and np.max(np.abs(numeric)) < 1e-8
    assert max(errors.values()) < EXHAUSTIVE_TOL, errors


# --- loop references -------------------------------------------------------------------------

@given(case=conv_cases(), seed=seeds, keep_cols=st.booleans())
def test_conv2d_matches_loop_reference(case, seed, keep_cols):
    """One output row per block (STREAM_BYTES 0) in the input gradient and, without keep_cols
    (training and evaluation), in the forward, whose weight gradient then unfolds x again block
    by block; some channels zero in every image (dead units, which that forward leaves out), now
    and then all of them."""
    N, C, H, W, Fo, K, stride, padding = case
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal((N, C, H, W)), rng.standard_normal((Fo, C, K, K)),
               rng.standard_normal(Fo))
    x[:, rng.random(C) < 0.3] = 0.0
    dout = rng.standard_normal((N, Fo, (H + 2 * padding - K) // stride + 1,
                                (W + 2 * padding - K) // stride + 1))
    with patch("nn.conv.STREAM_BYTES", 0):
        out, cache = conv2d_forward(x, w, b, stride, padding, keep_cols=keep_cols)
        grads = conv2d_backward(dout, cache)
    assert (cache[1] is None) == (not keep_cols)
    np.testing.assert_allclose(out, naive.conv2d_forward(x, w, b, stride, padding),
                               rtol=1e-10, atol=1e-12)
    for fast, slow in zip(grads, naive.conv2d_backward(dout, x, w, stride, padding)):
        assert fast.shape == slow.shape
        np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


@given(n=st.integers(1, 100_000), itemsize=st.sampled_from([2, 4, 8]))
def test_im2col_row_length_is_an_odd_number_of_cache_lines(n, itemsize):
    width = _row_length(n, itemsize)
    lines, rest = divmod(width * itemsize, 64)
    assert rest == 0 and lines % 2 == 1 and n <= width < n + 128 // itemsize


def test_im2col_gives_a_view_of_padded_rows():
    """conv2's columns for 64 images: 4,096 wide in rows of 4,112 floats (257 cache lines)."""
    cols = im2col(np.ones((64, 32, 12, 12), np.float32), 5, 5, 1, 0, ones=True)
    assert cols.shape == (801, 4096) and cols.strides == (4112 * 4, 4)


# conv2's shape takes Winograd's path (tests/test_winograd.py): these hold im2col's to its floats
IM2COL = patch("nn.conv.winograd.fits", lambda *args: False)


@pytest.mark.parametrize("N", [1, 32, 87])
@IM2COL
def test_conv2_in_row_blocks_gives_the_same_floats(N):
    """conv2 of the exercise's CNN in float32, its input and output gradient batch-last as the
    layers around it leave them: the forward and dx in blocks of output rows (1 to 8 rows of 8,
    by N) are the whole product's and col2im's, bit for bit (each output is the same dot
    product, each sum in the same order); conv1's products in pieces (N > 1) keep the whole."""
    rng = np.random.default_rng(N)
    for C, Fo, size in ((32, 64, 12), (1, 32, 28)):
        x = np.ascontiguousarray(rng.random((C, size, size, N), dtype=np.float32))
        x = np.transpose(x, (3, 0, 1, 2))
        w = rng.standard_normal((Fo, C, 5, 5), dtype=np.float32)
        b = rng.standard_normal(Fo, dtype=np.float32)
        kept, cache = conv2d_forward(x, w, b, keep_cols=True)
        streamed, lean = conv2d_forward(x, w, b)
        wb = np.concatenate([_rows(w), b[:, None]], axis=1)
        width = (size - 4) * N * _block_rows(wb.shape[1], size - 4, N, 4, size - 4)
        exact = blas_column_blocks_exact(wb, im2col(x, 5, 5, 1, 0, ones=True), width)
        assert_floats_as_blas_allows(streamed, kept, exact)
        assert cache[1] is not None and (lean[1] is None) == (C == 32 or N == 1)
        d2 = np.ascontiguousarray(rng.standard_normal((Fo, size - 4, size - 4, N), np.float32))
        whole = col2im(product(_rows(w).T, d2.reshape(Fo, -1)), x.shape, 5, 5, 1, 0)
        dx, _, _ = conv2d_backward(np.transpose(d2, (3, 0, 1, 2)), lean, param_grads=False)
        width = (size - 4) * N * _block_rows(25 * C, size - 4, N, 4, size - 4)
        exact = blas_column_blocks_exact(_rows(w).T, d2.reshape(Fo, -1), width)
        assert_floats_as_blas_allows(dx, whole, exact)
        # the weight gradient summed over the blocks: the whole product's up to rounding
        for blocks, one in zip(conv2d_backward(np.transpose(d2, (3, 0, 1, 2)), lean)[1:],
                               conv2d_backward(np.transpose(d2, (3, 0, 1, 2)), cache)[1:]):
            assert_floats_as_blas_allows(blocks, one, exact=False)


@pytest.mark.parametrize("N", [32, 87])
@IM2COL
def test_conv2_leaves_out_the_channels_zero_in_every_image(N):
    """conv2's evaluation forward without the input channels that are zero in every image (a
    ReLU's dead units: 12-17 of 32 in the PGD model at 100 images): the live channels' product,
    bit for bit, and the whole one's up to rounding. A channel all negative stays, and one zero
    but in one place; the input gradient is still every channel's, as with the columns kept."""
    rng = np.random.default_rng(N)
    xt = rng.random((32, 12, 12, N), dtype=np.float32)
    dead = [0, 5, 6, 20, 31]
    xt[dead] = 0.0
    xt[7] = -xt[7]
    xt[9] = 0.0
    xt[9, 3, 4, N - 1] = 0.5
    x = np.transpose(xt, (3, 0, 1, 2))
    w = rng.standard_normal((64, 32, 5, 5), dtype=np.float32)
    b = rng.standard_normal(64, dtype=np.float32)
    out, lean = conv2d_forward(x, w, b, keep_cols=False)
    live = [c for c in range(32) if c not in dead]
    np.testing.assert_array_equal(out, conv2d_forward(x[:, live], w[:, live], b,
                                                      keep_cols=False)[0])
    kept, cache = conv2d_forward(x, w, b, keep_cols=True)
    np.testing.assert_allclose(out, kept, rtol=1e-5, atol=1e-4)
    d2 = rng.standard_normal(out.shape, dtype=np.float32)
    dx, _, _ = conv2d_backward(d2, lean, param_grads=False)
    np.testing.assert_array_equal(dx, conv2d_backward(d2, cache, param_grads=False)[0])


@pytest.mark.parametrize("N", [1, 32, 87])
@IM2COL
def test_conv2_after_a_relu_leaves_its_dead_channels_out_of_dx(N):
    """gated (a ReLU before): the channels of x zero in every image get dx exactly 0 without a
    product, the others the ungated floats bit for bit; a channel zero but in one place, or all
    negative, stays (none dead, every channel: the ungated dx itself)."""
    rng = np.random.default_rng(N)
    xt = rng.random((32, 12, 12, N), dtype=np.float32)
    xt[[0, 5, 6, 20, 31]] = 0.0
    xt[7] = -xt[7]
    xt[9] = 0.0
    xt[9, 3, 4, N - 1] = 0.5
    x = np.transpose(xt, (3, 0, 1, 2))
    w = rng.standard_normal((64, 32, 5, 5), dtype=np.float32)
    d2 = rng.standard_normal((N, 64, 8, 8), dtype=np.float32)
    _, cache = conv2d_forward(x, w, np.zeros(64, np.float32), keep_cols=False)
    whole = conv2d_backward(d2, cache, param_grads=False)[0]
    gated = conv2d_backward(d2, cache, param_grads=False, gated=True)[0]
    live = np.any(x, axis=(0, 2, 3))
    assert live.sum() == 27 and not gated[:, ~live].any()
    W2, D = _rows(w), np.transpose(d2, (1, 2, 3, 0)).reshape(64, -1)
    rows = _live_columns(np.arange(800)[None], 25, np.flatnonzero(live))[0]
    exact = blas_row_subset_exact(W2.T, D, 8 * N * _block_rows(800, 8, N, 4, 8), rows)
    assert_floats_as_blas_allows(gated[:, live], whole[:, live], exact)
    _, cache = conv2d_forward(x + 1.0, w, np.zeros(64, np.float32), keep_cols=False)
    ungated = conv2d_backward(d2, cache, param_grads=False)[0]
    _, cache = conv2d_forward(x + 1.0, w, np.zeros(64, np.float32), keep_cols=False)
    np.testing.assert_array_equal(conv2d_backward(d2, cache, param_grads=False, gated=True)[0],
                                  ungated)


def test_only_a_relu_before_a_convolution_gates_its_input_gradient():
    """A model's backward leaves out the dead channels of a ReLU before a convolution (the same
    gradients), and of nothing else: after max pooling, a channel that is 0 everywhere still
    carries the gradient of the weights that made it."""
    rng = np.random.default_rng(3)
    x = rng.random((4, 1, 12, 12))
    for gate in (ReLU(), MaxPool2d(1)):
        model = Sequential(Conv2d(1, 6, 3, rng=rng), gate, Conv2d(6, 4, 3, rng=rng))
        model.layers[0].params["W"][:3] = 0.0
        model.layers[0].params["b"][:3] = 0.0 if isinstance(gate, MaxPool2d) else -1.0
        model.eval()
        out = model.forward(x)
        dout = rng.standard_normal(out.shape)
        dx, grads = model.backward(dout)
        h = x
        for layer in model.layers:
            h = layer.forward(h)
        d, expected = dout, {}
        for i in reversed(range(3)):  # every layer ungated
            d, g = model.layers[i].backward(d)
            expected.update({f"{i}.{k}": v for k, v in g.items()})
        np.testing.assert_allclose(dx, d, rtol=1e-12, atol=1e-14)
        for name, g in expected.items():
            np.testing.assert_allclose(grads[name], g, rtol=1e-12, atol=1e-14)
        if isinstance(gate, MaxPool2d):
            assert np.abs(grads["0.W"][:3]).min() > 0


@pytest.mark.parametrize("P", [4 * SMALL_K, 4 * SMALL_K + 37, 3 * SMALL_K])
def test_long_products_in_pieces_give_the_one_product(P):
    """conv1's products (32 x 26 by 26 x P, and its dW, 32 x 26 over P columns) in pieces of
    SMALL_K columns, the last one partial: the same numbers as one product (P = 3 * SMALL_K
    stays one product)."""
    rng = np.random.default_rng(P)
    a, b = rng.standard_normal((32, P)), rng.standard_normal((26, P + 5))[:, :P]
    np.testing.assert_allclose(product_nt(a, b), a @ b.T, rtol=1e-12, atol=1e-10)
    w = rng.standard_normal((32, 26))
    np.testing.assert_allclose(product(w, b), w @ b, rtol=1e-12, atol=1e-10)


@given(case=conv_cases(), seed=seeds)
def test_conv_transpose2d_matches_loop_reference(case, seed):
    N, C, H, W, Fo, K, stride, padding = case
    if (H - 1) * stride - 2 * padding + K < 1 or (W - 1) * stride - 2 * padding + K < 1:
        return  # no output
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal((N, C, H, W)), rng.standard_normal((C, Fo, K, K)),
               rng.standard_normal(Fo))
    out, cache = conv_transpose2d_forward(x, w, b, stride, padding)
    np.testing.assert_allclose(out, naive.conv_transpose2d_forward(x, w, b, stride, padding),
                               rtol=1e-10, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    for fast, slow in zip(conv_transpose2d_backward(dout, cache),
                          naive.conv_transpose2d_backward(dout, x, w, stride, padding)):
        assert fast.shape == slow.shape
        np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


def tied_input(rng, shape, levels):
    """Integer-valued floats with only `levels` distinct values, plus one all-zero region."""
    x = rng.integers(0, levels, shape).astype(np.float64)
    x[0, 0, :3, :3] = 0.0  # all-zero windows wherever a window falls inside this corner
    return x


@given(case=pool_cases(), levels=st.integers(1, 3), seed=seeds)
def test_max_pool2d_matches_loop_reference_with_ties(case, levels, seed):
    N, C, H, W, K, stride = case
    rng = np.random.default_rng(seed)
    x = tied_input(rng, (N, C, H, W), levels)
    out, cache = max_pool2d_forward(x, K, stride)
    np.testing.assert_array_equal(out, naive.max_pool2d_forward(x, K, stride))
    dout = rng.standard_normal(out.shape)
    dx = max_pool2d_backward(dout, cache)
    np.testing.assert_allclose(dx, naive.max_pool2d_backward(dout, x, K, stride),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.sum(dx), np.sum(dout), rtol=1e-10, atol=1e-10)


@given(case=pool_cases(), levels=st.integers(1, 3), seed=seeds)
def test_max_pool2d_each_window_sends_its_gradient_to_one_first_maximum(case, levels, seed):
    """dout one-hot on a window: dx is one-hot at that window's first maximum, same mass."""
    N, C, H, W, K, stride = case
    rng = np.random.default_rng(seed)
    x = tied_input(rng, (N, C, H, W), levels)
    out, cache = max_pool2d_forward(x, K, stride)
    for index in np.ndindex(*out.shape):
        n, c, oh, ow = index
        dout = np.zeros(out.shape)
        dout[index] = 2.5
        dx = max_pool2d_backward(dout, cache)
        (hits,) = np.nonzero(dx.ravel())
        assert len(hits) == 1 and dx.ravel()[hits[0]] == 2.5
        _, _, r, s = np.unravel_index(hits[0], dx.shape)
        window = x[n, c, oh * stride:oh * stride + K, ow * stride:ow * stride + K]
        first = np.argmax(window)  # NumPy's argmax is the first maximum in row-major order
        assert (r - oh * stride, s - ow * stride) == np.unravel_index(first, window.shape)


@given(case=pool_cases(), levels=st.integers(1, 3), seed=seeds)
def test_max_pool2d_on_a_batch_innermost_input_gives_the_same_numbers_in_its_order(case, levels,
                                                                                   seed):
    """A convolution's output keeps the batch innermost in memory (nn/conv.py): pooling it gives
    the same out and dx as on a C-ordered copy, and dx keeps that memory order."""
    N, C, H, W, K, stride = case
    rng = np.random.default_rng(seed)
    x = tied_input(rng, (N, C, H, W), levels)
    batch_last = np.ascontiguousarray(np.transpose(x, (1, 2, 3, 0))).transpose(3, 0, 1, 2)
    (out, cache), (out_b, cache_b) = (max_pool2d_forward(v, K, stride) for v in (x, batch_last))
    np.testing.assert_array_equal(out_b, out)
    dout = rng.standard_normal(out.shape)
    dx_b = max_pool2d_backward(dout, cache_b)
    np.testing.assert_array_equal(dx_b, max_pool2d_backward(dout, cache))
    axes = [a for a in range(4) if x.shape[a] > 1]  # a length-1 axis has any stride
    assert (sorted(axes, key=lambda a: dx_b.strides[a])
            == sorted(axes, key=lambda a: batch_last.strides[a]))


def test_max_pool2d_all_zero_input_takes_top_left_of_each_window():
    x = np.zeros((1, 1, 4, 4))
    out, cache = max_pool2d_forward(x, 2, 2)
    dx = max_pool2d_backward(np.ones(out.shape), cache)
    expected = np.zeros((4, 4))
    expected[::2, ::2] = 1.0
    np.testing.assert_array_equal(dx[0, 0], expected)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_no_grad_keeps_nothing_and_changes_no_number(train):
    """Forward passes under nn.no_grad give the same floats (the CNN with BatchNorm, 3 images,
    where max pooling then skips its record of each maximum), keep no cache, so a backward
    raises; after the block, and in another thread while it is open, passes keep theirs."""
    rng = np.random.default_rng(5)
    model = reference_cnn(batch_norm=True, rng=rng)
    model.train() if train else model.eval()
    x = rng.random((3, 1, 28, 28), dtype=np.float32)
    out = model.forward(x)  # train mode: the batch's statistics, whatever the running ones
    with no_grad():
        np.testing.assert_array_equal(model.forward(x), out)
        assert all(layer._cache is None for layer in model.layers)
        with pytest.raises(RuntimeError, match="no_grad"):
            model.backward(np.ones_like(out))
        kept = []
        thread = threading.Thread(target=lambda: kept.append(
            (model.forward(x), [layer._cache is not None for layer in model.layers])))
        thread.start()
        thread.join()
        assert all(kept[0][1])
    model.forward(x)
    dx, grads = model.backward(np.ones_like(out))
    assert dx.shape == x.shape and len(grads) == len(model.params)
    assert max_pool2d_forward(x, 2, 2, record=False)[1] is None


# --- the layer protocol ----------------------------------------------------------------------

PROTOCOL_LAYERS = {
    "conv": (lambda: Conv2d(2, 3, 3, rng=np.random.default_rng(0)), (2, 2, 5, 5)),
    "maxpool": (lambda: MaxPool2d(2), (2, 2, 4, 4)),
    "batchnorm2d": (lambda: BatchNorm2d(2), (2, 2, 3, 3)),
    "batchnorm1d": (lambda: BatchNorm1d(3), (4, 3)),
    "dense": (lambda: Dense(4, 3, rng=np.random.default_rng(0)), (2, 4)),
    "relu": (ReLU, (2, 3)),
    "leaky_relu": (LeakyReLU, (2, 3)),
    "sigmoid": (Sigmoid, (2, 3)),
    "tanh": (Tanh, (2, 3)),
    "flatten": (Flatten, (2, 3, 2)),
    "dropout": (lambda: dropout(0.5, 0), (2, 3)),
    "dropout-eval": (lambda: dropout(0.5, 0, train=False), (2, 3)),
    "sequential": (lambda: small_model(np.random.default_rng(0)), (2, 1, 6, 8)),
}


@pytest.mark.parametrize("name", PROTOCOL_LAYERS)
def test_backward_needs_its_own_forward(name):
    make_layer, shape = PROTOCOL_LAYERS[name]
    layer = make_layer()
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    dout = np.ones_like(make_layer().forward(x))  # shaped like the output, from another instance
    with pytest.raises(RuntimeError):
        layer.backward(dout)
    layer.forward(x)
    dx, grads = layer.backward(dout)
    assert dx.shape == x.shape
    assert set(grads) == set(layer.params)
    for k, g in grads.items():
        assert g.shape == layer.params[k].shape
    with pytest.raises(RuntimeError):
        layer.backward(dout)


def test_clear_caches_drops_what_backward_needs():
    model = small_model(np.random.default_rng(0))
    out = model.forward(np.random.default_rng(1).standard_normal((2, 1, 6, 8)))
    assert all(layer._cache is not None for layer in model.layers)
    model.clear_caches()
    assert all(layer._cache is None for layer in model.layers)
    with pytest.raises(RuntimeError):
        model.backward(np.ones_like(out))


def test_dropout_train_and_eval():
    """Train mode zeroes about p of the units and scales the rest by 1 / (1 - p), with masks from
    the layer's generator (the same seed, the same masks; a new mask every forward); eval mode
    and p = 0 are the identity, forward and backward."""
    x = np.random.default_rng(0).standard_normal((200, 50)).astype(np.float32)
    layer = Dropout(0.3, rng=np.random.default_rng(5))
    out = layer.forward(x)
    assert out.dtype == np.float32
    kept = out != 0
    assert abs(1 - kept.mean() - 0.3) < 0.01
    np.testing.assert_allclose(out[kept], x[kept] / 0.7, rtol=1e-6)
    dx, grads = layer.backward(np.ones_like(x))
    assert grads == {}
    np.testing.assert_allclose(dx, kept / np.float32(0.7), rtol=1e-6)
    np.testing.assert_array_equal(Dropout(0.3, rng=np.random.default_rng(5)).forward(x), out)
    assert np.any((layer.forward(x) != 0) != kept)
    layer.backward(np.ones_like(x))
    for still in (Dropout(0.0, rng=np.random.default_rng(5)),
                  Sequential(Dropout(0.3, rng=np.random.default_rng(5))).eval()):
        np.testing.assert_array_equal(still.forward(x), x)
        np.testing.assert_array_equal(still.backward(2 * x)[0], 2 * x)
    with pytest.raises(ValueError):
        Dropout(1.0)


# --- BatchNorm statistics and state dicts ----------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2, 3)], ids=["1d", "2d"])
def test_batch_norm_running_statistics_follow_pytorch(shape):
    rng = np.random.default_rng(30)
    layer = batch_norm(BatchNorm1d if len(shape) == 2 else BatchNorm2d, rng, 3, True)
    old_mean, old_var = layer.buffers["running_mean"].copy(), layer.buffers["running_var"].copy()
    x = bn_input(rng, shape)
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    out = layer.forward(x)
    np.testing.assert_allclose(layer.buffers["running_mean"],
                               0.9 * old_mean + 0.1 * np.mean(x, axis=axes), rtol=1e-12)
    m = x.size // x.shape[1]
    unbiased = np.var(x, axis=axes) * m / (m - 1)
    np.testing.assert_allclose(layer.buffers["running_var"], 0.9 * old_var + 0.1 * unbiased,
                               rtol=1e-12)
    # the batch is normalised with its biased variance and eps = 1e-5
    bshape = (1, 3) + (1,) * (len(shape) - 2)
    xhat = (x - np.mean(x, axis=axes).reshape(bshape)) / np.sqrt(
        np.var(x, axis=axes).reshape(bshape) + 1e-5)
    np.testing.assert_allclose(out, layer.params["gamma"].reshape(bshape) * xhat
                               + layer.params["beta"].reshape(bshape), rtol=1e-10, atol=1e-12)

    # eval: running statistics used and left exactly as they were
    layer.training = False
    mean, var = layer.buffers["running_mean"].copy(), layer.buffers["running_var"].copy()
    x2 = bn_input(rng, shape)
    out2 = layer.forward(x2)
    expected = (layer.params["gamma"].reshape(bshape) * (x2 - mean.reshape(bshape))
                / np.sqrt(var.reshape(bshape) + 1e-5) + layer.params["beta"].reshape(bshape))
    np.testing.assert_allclose(out2, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(layer.buffers["running_mean"], mean)
    np.testing.assert_array_equal(layer.buffers["running_var"], var)
    layer.backward(np.ones_like(out2))
    np.testing.assert_array_equal(layer.buffers["running_var"], var)


@pytest.mark.parametrize("rows", [1, 3, 32])
def test_batch_norm_in_blocks_of_channels_gives_the_same_floats(rows):
    """The first BatchNorm of the exercise's CNN (32 channels, batch innermost as conv1 leaves
    it) a block of 1, 3 (the last block 2) or all 32 channels at a time: the same forward, input
    and parameter gradients and running statistics, bit for bit, in train and eval mode."""
    rng = np.random.default_rng(rows)
    x = np.transpose(rng.standard_normal((32, 24, 24, 5), dtype=np.float32) + 1.0, (3, 0, 1, 2))
    dout = np.transpose(rng.standard_normal((32, 24, 24, 5), dtype=np.float32), (3, 0, 1, 2))
    gamma, beta, mean, var = (rng.random(32, dtype=np.float32) + 0.5 for _ in range(4))

    def passes(block_bytes):
        with patch("nn.functional.BLOCK_BYTES", block_bytes):
            results = []
            for train in (True, False):
                out, cache, running = batch_norm_forward(x, gamma, beta, mean, var, train=train)
                results += [out, *running, *batch_norm_backward(dout, cache)]
            return results

    for blocked, whole in zip(passes(rows * 24 * 24 * 5 * 4), passes(2**40), strict=True):
        np.testing.assert_array_equal(blocked, whole)


def test_model_eval_forward_is_per_sample_and_leaves_buffers():
    """In eval mode an image's output does not depend on the rest of its batch."""
    rng = np.random.default_rng(31)
    model = as_float64(reference_cnn(batch_norm=True, rng=rng))
    x = rng.random((3, 1, 28, 28))
    model.train().forward(x)  # give the running statistics values of its own
    before = model.state_dict()
    model.eval()
    together = model.forward(x)
    alone = np.concatenate([model.forward(x[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-10, atol=1e-12)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_state_dict_round_trip_includes_buffers():
    a = reference_cnn(batch_norm=True, rng=np.random.default_rng(1))
    x = np.random.default_rng(2).random((4, 1, 28, 28)).astype(np.float32)
    a.forward(x)  # moves the running statistics away from 0 and 1
    state = a.state_dict()
    assert set(state) == set(a.params) | set(a.buffers)
    assert {"1.running_mean", "1.running_var", "5.running_mean", "5.running_var"} <= set(state)
    assert not np.allclose(state["1.running_mean"], 0.0)

    b = reference_cnn(batch_norm=True, rng=np.random.default_rng(99))
    assert not np.array_equal(b.state_dict()["0.W"], state["0.W"])
    b.load_state_dict(state)
    for key, value in b.state_dict().items():
        np.testing.assert_array_equal(value, state[key])
    np.testing.assert_array_equal(b.eval().forward(x), a.eval().forward(x))

    # the state holds copies: changing the model afterwards leaves it alone
    a.params["0.W"][...] = 0.0
    assert not np.all(state["0.W"] == 0.0)


def test_models_loaded_from_one_state_do_not_share_parameters():
    state = reference_cnn(batch_norm=True, rng=np.random.default_rng(1)).state_dict()
    a = reference_cnn(batch_norm=True, rng=np.random.default_rng(2))
    b = reference_cnn(batch_norm=True, rng=np.random.default_rng(3))
    a.load_state_dict(state)
    b.load_state_dict(state)
    x = np.random.default_rng(4).random((2, 1, 28, 28)).astype(np.float32)
    logits = a.forward(x)
    _, dlogits = losses.softmax_cross_entropy(logits, np.array([1, 2]))
    _, grads = a.backward(dlogits)
    saved = {k: v.copy() for k, v in state.items()}
    SGD(lr=0.1).step(a.params, grads)  # trains a only
    for key, value in b.state_dict().items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)
    for key, value in state.items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_load_state_dict_rejects_mismatched_state(change):
    model = reference_cnn(batch_norm=True, rng=np.random.default_rng(1))
    before = model.state_dict()
    state = reference_cnn(batch_norm=True, rng=np.random.default_rng(2)).state_dict()
    if change == "missing":
        del state["5.running_var"]
    elif change == "unexpected":
        state["10.W"] = np.zeros(3, dtype=np.float32)
    else:
        state["9.W"] = np.zeros((10, 1024), dtype=np.float32)
    with pytest.raises(ValueError):
        model.load_state_dict(state)
    for key, value in model.state_dict().items():  # nothing was half-loaded
        np.testing.assert_array_equal(value, before[key])


# --- PyTorch oracle (optional) ---------------------------------------------------------------

def to_torch(model):
    """An equivalent float64 torch.nn.Sequential holding copies of the model's weights."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    def tensor(a):
        return torch.tensor(np.asarray(a, dtype=np.float64))

    modules = []
    for layer in model.layers:
        if isinstance(layer, Conv2d):
            Fo, C, K, _ = layer.params["W"].shape
            m = tnn.Conv2d(C, Fo, K, stride=layer.stride, padding=layer.padding,
                           dtype=torch.float64)
            m.weight.data, m.bias.data = tensor(layer.params["W"]), tensor(layer.params["b"])
        elif isinstance(layer, (BatchNorm2d, BatchNorm1d)):
            cls = tnn.BatchNorm2d if isinstance(layer, BatchNorm2d) else tnn.BatchNorm1d
            m = cls(layer.params["gamma"].shape[0], eps=layer.eps, momentum=layer.momentum,
                    dtype=torch.float64)
            m.weight.data, m.bias.data = tensor(layer.params["gamma"]), tensor(layer.params["beta"])
            m.running_mean.data = tensor(layer.buffers["running_mean"])
            m.running_var.data = tensor(layer.buffers["running_var"])
        elif isinstance(layer, MaxPool2d):
            m = tnn.MaxPool2d(layer.kernel_size, layer.stride)
        elif isinstance(layer, ReLU):
            m = tnn.ReLU()
        elif isinstance(layer, Flatten):
            m = tnn.Flatten()
        elif isinstance(layer, Dense):
            D, M = layer.params["W"].shape
            m = tnn.Linear(D, M, dtype=torch.float64)
            m.weight.data = tensor(layer.params["W"].T)  # Dense W is (in, out), Linear (out, in)
            m.bias.data = tensor(layer.params["b"])
        else:
            raise TypeError(f"no torch equivalent for {layer!r}")
        modules.append(m)
    return tnn.Sequential(*modules)


TORCH_NAMES = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}


@pytest.mark.oracle
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_reference_cnn_matches_pytorch(train):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(40)
    model = as_float64(reference_cnn(batch_norm=True, rng=rng))
    for layer in model.layers:
        if isinstance(layer, BatchNorm2d):
            randomize_batch_norm(layer, rng)
    for layer in model.layers:
        if "b" in layer.params:
            layer.params["b"] = 0.1 * rng.standard_normal(layer.params["b"].shape)
    net = to_torch(model)
    model.train() if train else model.eval()
    net.train(train)

    x = rng.random((4, 1, 28, 28))
    targets = np.array([1, 0, 9, 4])
    logits = model.forward(x)
    loss, dlogits = losses.softmax_cross_entropy(logits, targets)
    dx, grads = model.backward(dlogits)

    xt = torch.tensor(x, requires_grad=True)
    logits_t = net(xt)
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.tensor(targets))
    loss_t.backward()

    close = dict(rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(logits, logits_t.detach().numpy(), **close)
    np.testing.assert_allclose(float(loss), loss_t.item(), **close)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **close)
    assert set(grads) == set(model.params)
    for key, g in grads.items():
        i, name = key.split(".")
        g_t = getattr(net[int(i)], TORCH_NAMES[name]).grad.numpy()
        if isinstance(model.layers[int(i)], Dense) and name == "W":
            g_t = g_t.T
        np.testing.assert_allclose(g, g_t, err_msg=key, **close)
    for key, value in model.buffers.items():  # updated in train mode, unchanged in eval mode
        i, name = key.split(".")
        np.testing.assert_allclose(value, getattr(net[int(i)], name).numpy(), err_msg=key,
                                   **close)


@pytest.mark.oracle
@given(case=conv_cases(), seed=seeds)
def test_conv2d_matches_pytorch(case, seed):
    torch = pytest.importorskip("torch")
    N, C, H, W, Fo, K, stride, padding = case
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal((N, C, H, W)), rng.standard_normal((Fo, C, K, K)),
               rng.standard_normal(Fo))
    out, cache = conv2d_forward(x, w, b, stride, padding)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv2d_backward(dout, cache)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    out_t = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding)
    out_t.backward(torch.tensor(dout))
    for ours, theirs in [(out, out_t.detach()), (dx, xt.grad), (dw, wt.grad), (db, bt.grad)]:
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.oracle
@given(case=pool_cases(), levels=st.integers(1, 3), seed=seeds)
def test_max_pool2d_ties_match_pytorch(case, levels, seed):
    torch = pytest.importorskip("torch")
    N, C, H, W, K, stride = case
    rng = np.random.default_rng(seed)
    x = tied_input(rng, (N, C, H, W), levels)
    out, cache = max_pool2d_forward(x, K, stride)
    dout = rng.standard_normal(out.shape)
    dx = max_pool2d_backward(dout, cache)
    xt = torch.tensor(x, requires_grad=True)
    out_t = torch.nn.functional.max_pool2d(xt, K, stride)
    out_t.backward(torch.tensor(dout))
    np.testing.assert_array_equal(out, out_t.detach().numpy())
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_backward_without_input_grad_gives_the_same_parameter_gradients():
    """input_grad=False (training's first layer) skips dx and changes no parameter gradient."""
    rng = np.random.default_rng(3)
    model = as_float64(reference_cnn(batch_norm=True, rng=rng))
    x, dout = rng.random((3, 1, 28, 28)), rng.standard_normal((3, 10))
    model.forward(x)
    dx, grads = model.backward(dout)
    model.forward(x)
    none, grads_only = model.backward(dout, input_grad=False)
    assert dx.shape == x.shape and none is None
    assert grads_only.keys() == grads.keys()
    for k in grads:
        np.testing.assert_array_equal(grads_only[k], grads[k])
    for layer in [Flatten(), ReLU(), MaxPool2d(2), Dense(4, 2), BatchNorm1d(4)]:
        layer.forward(rng.random((2, 4, 2, 2)) if isinstance(layer, MaxPool2d) else
                      rng.random((2, 4)))
        dx, _ = layer.backward(np.ones((2, 4, 1, 1) if isinstance(layer, MaxPool2d) else
                                       (2, 2) if isinstance(layer, Dense) else (2, 4)),
                               input_grad=False)
        assert dx is None, type(layer).__name__


@pytest.mark.parametrize("train", [True, False])
def test_backward_without_param_grads_gives_the_same_input_gradient(train):
    """param_grads=False (attacks) skips every parameter gradient and changes no bit of dx, in
    train mode (BatchNorm's dx needs its dgamma and dbeta) and in eval mode."""
    rng = np.random.default_rng(4)
    model = as_float64(reference_cnn(batch_norm=True, rng=rng))
    model.train() if train else model.eval()
    x, dout = rng.random((3, 1, 28, 28)), rng.standard_normal((3, 10))
    model.forward(x)
    dx, grads = model.backward(dout)
    model.forward(x)
    dx_only, none = model.backward(dout, param_grads=False)
    assert grads and none == {}
    np.testing.assert_array_equal(dx_only, dx)
    conv = model.layers[0]  # the maths skips them too, not only the layer's dict
    out, cache = conv2d_forward(x, conv.params["W"], conv.params["b"], conv.stride, conv.padding)
    assert conv2d_backward(np.ones_like(out), cache, param_grads=False)[1:] == (None, None)

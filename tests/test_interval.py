"""Tests for interval bound propagation (nn/interval.py).

- The bounds contain: for every layer kind and for a whole network, the outputs of 10,000 random
  points of the box (its corners among them) lie inside the propagated bounds, and the elided
  margins lie below every sampled z_t - z_j (Hypothesis draws shapes, eps and seeds).
- At eps 0 the bounds are the forward pass itself, and the margins are z_t - z_j exactly.
- The backward: a loss on the margins' lower bounds, checked by central differences along
  random directions (float64) for every parameter, and exhaustively on a tiny network.
- PyTorch autograd on the same bounds gives the same margins and gradients (oracle).
"""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from nn import (
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dense,
    Flatten,
    MaxPool2d,
    ReLU,
    Sequential,
    reference_cnn,
)
from nn.gradcheck import as_float64, numerical_gradient, rel_error
from nn.interval import bounds, certified, input_box, margins, margins_backward


def small_net(seed, batch_norm=True):
    """Conv -> [BN] -> MaxPool -> ReLU -> Conv -> ReLU -> Flatten -> Dense -> [BN1d] -> ReLU ->
    Dense, float64, in eval mode with random running statistics."""
    rng = np.random.default_rng(seed)
    norm2 = [BatchNorm2d(4)] if batch_norm else []
    norm1 = [BatchNorm1d(12)] if batch_norm else []
    net = as_float64(Sequential(Conv2d(1, 4, 3, rng=rng), *norm2, MaxPool2d(2), ReLU(),
                                Conv2d(4, 5, 2, padding=1, rng=rng), ReLU(), Flatten(),
                                Dense(5 * 4 * 4, 12, rng=rng), *norm1, ReLU(),
                                Dense(12, 4, rng=rng))).eval()
    for layer in net.layers:
        if "b" in layer.params:  # zero biases put dead regions exactly on ReLU's kink
            layer.params["b"] = rng.normal(0, 0.1, layer.params["b"].shape)
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            c = layer.params["gamma"].shape
            layer.params["gamma"] = rng.normal(0, 1.5, c)  # negative scales too
            layer.params["beta"] = rng.normal(0, 1, c)
            layer.buffers["running_mean"] = rng.normal(0, 1, c)
            layer.buffers["running_var"] = rng.uniform(0.2, 3, c)
    return net


def box_samples(x, eps, n, rng):
    """n points of the box around x (1, C, H, W): corners for the first half, uniform after."""
    lo, hi = input_box(x, eps)
    corners = rng.integers(0, 2, (n // 2, *x.shape[1:])).astype(np.float64)
    uniform = rng.uniform(0, 1, (n - n // 2, *x.shape[1:]))
    return lo + (hi - lo) * np.concatenate([corners, uniform])


@given(seed=st.integers(0, 10_000), eps=st.sampled_from([0.01, 0.05, 0.2, 0.5]),
       batch_norm=st.booleans())
def test_every_layers_bounds_contain_ten_thousand_points_of_the_box(seed, eps, batch_norm):
    rng = np.random.default_rng(seed)
    net = small_net(seed, batch_norm)
    x = rng.uniform(0, 1, (1, 1, 8, 8))
    points = box_samples(x, eps, 10_000, rng)
    lo, hi = input_box(x, eps)
    out = points
    for layer in net.layers[:-1]:
        lo, hi, _ = bounds([layer], lo, hi)
        out = layer.forward(out)
        assert np.all(out >= lo - 1e-9) and np.all(out <= hi + 1e-9), type(layer).__name__
        assert np.all(lo <= hi + 1e-12)
    t = np.array([int(rng.integers(0, 4))])
    lower, _ = margins(net, x, t, eps)
    z = net.forward(points)
    assert np.all(z[:, t] - z >= lower - 1e-9) and lower[0, t[0]] == 0


def test_at_eps_zero_the_bounds_are_the_forward_pass():
    net, x = small_net(1), np.random.default_rng(1).uniform(0, 1, (3, 1, 8, 8))
    t = np.array([0, 2, 3])
    lo, hi, _ = bounds(net.layers, x, x)
    z = net.forward(x)
    np.testing.assert_allclose(lo, z, atol=1e-12)
    np.testing.assert_allclose(hi, z, atol=1e-12)
    lower, _ = margins(net, x, t, 0.0)
    np.testing.assert_allclose(lower, z[np.arange(3), t][:, None] - z, atol=1e-12)


def margin_loss(net, x, t, eps, dlower):
    lower, cache = margins(net, x, t, eps)
    return np.sum(lower * dlower), cache


@pytest.mark.parametrize("batch_norm", [False, True])
@given(seed=st.integers(0, 10_000), eps=st.sampled_from([0.02, 0.1, 0.3]))
def test_margins_backward_directional(batch_norm, seed, eps):
    rng = np.random.default_rng(seed)
    net, x = small_net(seed, batch_norm), rng.uniform(0, 1, (3, 1, 8, 8))
    t, dlower = rng.integers(0, 4, 3), rng.standard_normal((3, 4))
    _, cache = margin_loss(net, x, t, eps, dlower)
    grads = margins_backward(net, dlower, cache)
    assert set(grads) == set(net.params)
    for name, p in net.params.items():
        # a step of 1e-7 (float64); where even that crosses a ReLU or max-pool kink of the
        # bounds (seed 10000, eps 0.1: 0.06% apart) the one-sided quotients disagree, and
        # there is no derivative to compare with
        v = rng.standard_normal(p.shape)
        base, _ = margin_loss(net, x, t, eps, dlower)
        p += 1e-7 * v
        plus, _ = margin_loss(net, x, t, eps, dlower)
        p -= 2e-7 * v
        minus, _ = margin_loss(net, x, t, eps, dlower)
        p += 1e-7 * v
        right, left = (plus - base) / 1e-7, (base - minus) / 1e-7
        assume(abs(right - left) <= 1e-5 * max(1.0, abs(right)))
        numeric, analytic = (plus - minus) / 2e-7, float(np.sum(grads[name] * v))
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric)), (name, numeric, analytic)


def test_margins_backward_exhaustive_on_a_tiny_network():
    rng = np.random.default_rng(5)
    net = as_float64(Sequential(Conv2d(1, 2, 2, rng=rng), ReLU(), Flatten(),
                                Dense(2 * 3 * 3, 3, rng=rng))).eval()
    net.layers[0].params["b"] = rng.normal(0, 0.1, 2)
    x, t, dlower = rng.uniform(0, 1, (2, 1, 4, 4)), np.array([1, 2]), rng.standard_normal((2, 3))
    _, cache = margin_loss(net, x, t, 0.1, dlower)
    grads = margins_backward(net, dlower, cache)
    for name, p in net.params.items():
        numeric = numerical_gradient(lambda: margins(net, x, t, 0.1)[0], p, dlower)
        assert rel_error(numeric, grads[name]) < 1e-6, name


def test_certified_images_are_the_ones_whose_every_margin_is_positive():
    net, rng = small_net(3, batch_norm=False), np.random.default_rng(3)
    x = rng.uniform(0, 1, (20, 1, 8, 8))
    t = net.forward(x).argmax(axis=1)
    assert certified(net, x, t, 0.0).all()  # at eps 0, a correct label is certified
    wide = certified(net, x, t, 0.5)
    lower, _ = margins(net, x, t, 0.5)
    np.testing.assert_array_equal(wide, np.sort(lower, axis=1)[:, 1] > 0)
    assert not certified(net, x, (t + 1) % 4, 0.0).any()  # a wrong label never is


def test_a_layer_without_bounds_is_refused():
    from nn import Sigmoid
    net = Sequential(Flatten(), Dense(4, 3), Sigmoid(), Dense(3, 2))
    with pytest.raises(ValueError, match="no interval bounds for Sigmoid"):
        margins(net, np.zeros((1, 1, 2, 2), np.float32), np.array([0]), 0.1)


@pytest.mark.oracle
def test_margins_and_their_gradients_match_pytorch_autograd():
    """The exercise's CNN (with BatchNorm in eval mode), bounds written in PyTorch the same way
    (centre and radius through conv and linear with |W|, monotone layers on each bound,
    elided last layer), autograd for the gradients."""
    torch = pytest.importorskip("torch")
    net = as_float64(reference_cnn(batch_norm=True, rng=np.random.default_rng(0))).eval()
    for layer in net.layers:
        if isinstance(layer, BatchNorm2d):
            c = layer.params["gamma"].shape
            layer.params["gamma"] = np.random.default_rng(1).normal(0, 1, c)
            layer.buffers["running_var"] = np.random.default_rng(2).uniform(0.5, 2, c)
    rng = np.random.default_rng(4)
    x, t, eps = rng.uniform(0, 1, (3, 1, 28, 28)), np.array([3, 7, 1]), 0.05
    dlower = rng.standard_normal((3, 10))
    lower, cache = margins(net, x, t, eps)
    grads = margins_backward(net, dlower, cache)

    params = {k: torch.tensor(v, requires_grad=True) for k, v in net.params.items()}
    F = torch.nn.functional
    lo = torch.tensor(np.clip(x - eps, 0, 1))
    hi = torch.tensor(np.clip(x + eps, 0, 1))
    for i, layer in enumerate(net.layers[:-1]):
        mu, r = (hi + lo) / 2, (hi - lo) / 2
        if isinstance(layer, Conv2d):
            W, b = params[f"{i}.W"], params[f"{i}.b"]
            mu, r = F.conv2d(mu, W, b), F.conv2d(r, W.abs())
        elif isinstance(layer, BatchNorm2d):
            g, beta = params[f"{i}.gamma"], params[f"{i}.beta"]
            s = g / torch.sqrt(torch.tensor(layer.buffers["running_var"]) + layer.eps)
            m = torch.tensor(layer.buffers["running_mean"])
            mu = mu * s[None, :, None, None] + (beta - s * m)[None, :, None, None]
            r = r * s.abs()[None, :, None, None]
        if isinstance(layer, (Conv2d, BatchNorm2d)):
            lo, hi = mu - r, mu + r
        elif isinstance(layer, MaxPool2d):
            lo, hi = F.max_pool2d(lo, 2), F.max_pool2d(hi, 2)
        elif isinstance(layer, ReLU):
            lo, hi = lo.clamp(min=0), hi.clamp(min=0)
        elif isinstance(layer, Flatten):
            lo, hi = lo.flatten(1), hi.flatten(1)
    last = len(net.layers) - 1
    W, b = params[f"{last}.W"], params[f"{last}.b"]
    tt = torch.tensor(t)
    Wd = W[:, tt].T[:, :, None] - W[None]
    bd = b[tt][:, None] - b[None]
    mu, r = (hi + lo) / 2, (hi - lo) / 2
    lower_t = (mu[:, :, None] * Wd).sum(1) + bd - (r[:, :, None] * Wd.abs()).sum(1)
    (lower_t * torch.tensor(dlower)).sum().backward()
    np.testing.assert_allclose(lower, lower_t.detach().numpy(), rtol=1e-10, atol=1e-10)
    for name, p in params.items():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-8, atol=1e-10,
                                   err_msg=name)

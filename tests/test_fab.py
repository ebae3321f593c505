"""Tests for attacks/minimum_norm.py: FAB-T and its exact L-infinity projection.

- `project_linf` against a slow bisection on the piecewise-linear g(lam), feasible or not;
  its sort (`argsort_rows`) against a stable argsort, ties included;
- on a linear model the minimal L-infinity perturbation toward each class has a closed form
  (the same projection, from the original image): FAB finds it to within half a percent, and
  never anything smaller than the smallest over all classes;
- one step on a 2-layer ReLU network equals the step computed by hand, its mix biased toward the
  original (a = min(|d_k| / (|d_k| + |d_0|), 0.1), capped or not);
- [0, 1], eps, images left unchanged, BatchNorm untouched, every backend, no float64.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attacks.iterative import argsort_rows
from attacks.minimum_norm import fab_run, fab_targeted, project_linf
from helpers import assert_like, counting
from nn import Dense, Flatten, ReLU, Sequential, eval_mode
from nn.gradcheck import as_float64
from test_apgd import CLASSES, backend_case, batch, tiny_model
from test_attacks import assert_state_equal, modes, seeds


def project_slow(x, w, b):
    """project_linf for one point (n,), by bisection on lam of g(lam) = sum |w_i| min(lam, r_i)."""
    c = b - w @ x
    direction = np.sign(w) * np.sign(c)
    room = np.where(direction > 0, 1 - x, x)

    def g(lam):
        return np.sum(np.abs(w) * np.minimum(lam, room))
    if g(1.0) < abs(c):
        return direction * room
    low, high = 0.0, 1.0
    for _ in range(200):
        low, high = ((low + high) / 2, high) if g((low + high) / 2) < abs(c) else \
            (low, (low + high) / 2)
    return direction * np.minimum(high, room)


@given(seed=seeds, n=st.integers(1, 40), scale=st.floats(0.1, 30))
def test_projection_is_the_slow_bisection(seed, n, scale):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (7, n))
    x[:, : n // 3] = rng.integers(0, 2, (7, n // 3))  # some coordinates on the box's faces
    w, b = rng.normal(size=(7, n)), rng.normal(size=7) * scale  # large b: often out of reach
    d = project_linf(x, w, b)
    np.testing.assert_allclose(d, [project_slow(x[i], w[i], b[i]) for i in range(7)], atol=1e-12)
    assert np.all(x + d >= -1e-12) and np.all(x + d <= 1 + 1e-12)
    reached = np.abs(np.sum(w * (x + d), axis=1) - b) < 1e-9
    # where the plane is reached, the step is on it; where not, nothing in the box gets closer
    corner = np.where(np.sign(w) * np.sign(b - np.sum(w * x, axis=1))[:, None] > 0, 1.0, 0.0)
    assert np.all(reached | np.isclose(np.sum(w * (x + d), axis=1), np.sum(w * corner, axis=1)))


@given(seed=seeds, n=st.integers(1, 800))
def test_rows_sort_as_a_stable_argsort(seed, n):
    """argsort_rows, FAB's sort of each coordinate's room: in float32 a sort of packed 64-bit
    keys, which must order rows full of ties (0, 1, the same value, -0.0 as 0) exactly as
    argsort's stable sort; float64 takes argsort itself."""
    rng = np.random.default_rng(seed)
    room = rng.choice(np.float32([0.0, -0.0, 1.0, 0.25, 1e-30, 3e-45]), (5, n))
    room[:, ::3] = rng.random((5, len(range(0, n, 3))), dtype=np.float32)
    for a in (room, room.astype(np.float64)):
        np.testing.assert_array_equal(argsort_rows(a), np.argsort(a, axis=1, kind="stable"))


def linear_case(seed, n=40):
    """A 10-class linear model on 6x6 images in [0.2, 0.8], its labels, and per image and class
    the exact minimal L-infinity distance to z_class >= z_label inside [0, 1] (N, 10)."""
    rng = np.random.default_rng(seed)
    model = Sequential(Flatten(), Dense(36, 10, rng=rng))
    x = rng.uniform(0.2, 0.8, (n, 1, 6, 6))
    W, b = model.layers[1].params["W"], model.layers[1].params["b"]
    t = np.argmax(x.reshape(n, -1) @ W + b, axis=1)
    exact = np.full((n, 10), np.inf)
    for i in range(n):
        for j in set(range(10)) - {t[i]}:
            d = project_slow(x[i].ravel(), W[:, j] - W[:, t[i]], b[t[i]] - b[j])
            exact[i, j] = np.abs(d).max()
    return model, x, t, exact


def relu_plane(W1, b1, W2, b2, x, t, target):
    """(w (n,), b): the hyperplane <w, .> = b where z_target - z_label of relu(. W1 + b1) W2 + b2,
    linearised at x (n,), is 0."""
    h = x @ W1 + b1
    z = np.maximum(h, 0) @ W2 + b2
    w = W1 @ ((W2[:, target] - W2[:, t]) * (h > 0))
    return w, w @ x - (z[target] - z[t])


def relu_step(net, x_k, x0, t, target):
    """One FAB step by hand for one image (n,): both points projected onto the plane linearised
    at x_k, the mix biased toward x0 by a = min(|d_k| / (|d_k| + |d_0|), 0.1). -> (x_new, a)."""
    w, b = relu_plane(*net, x_k, t, target)
    d_k, d_0 = project_slow(x_k, w, b), project_slow(x0, w, b)
    a = min(np.abs(d_k).max() / (np.abs(d_k).max() + np.abs(d_0).max()), 0.1)
    return np.clip((1 - a) * (x_k + 1.05 * d_k) + a * (x0 + 1.05 * d_0), 0, 1), a


def test_one_step_on_a_relu_network_is_the_papers_mix_biased_toward_the_original():
    """fab_run's first step on a 2-layer ReLU network, from starts away from the images (half
    of them at random, where a reaches its cap 0.1, half near the boundary, where it does not), is
    the hand-computed one: where it is misclassified it is the best point so far, x elsewhere."""
    rng = np.random.default_rng(3)
    model = as_float64(Sequential(Flatten(), Dense(36, 16, rng=rng), ReLU(),
                                  Dense(16, 10, rng=rng)))
    model.layers[1].params["b"][...] = rng.normal(0, 0.5, 16)  # a mix of active and dead units
    net = (model.layers[1].params["W"], model.layers[1].params["b"],
           model.layers[3].params["W"], model.layers[3].params["b"])
    x = rng.uniform(0.2, 0.8, (20, 1, 6, 6))
    with eval_mode(model):
        ranked = np.argsort(model.forward(x), axis=1)
    t, target = ranked[:, -1], ranked[:, -2]
    start = np.clip(x + rng.choice([-0.15, 0.15], x.shape), 0, 1)
    for i in range(10, 20):  # 97% of the way to the plane linearised at x
        plane = relu_plane(*net, x[i].ravel(), t[i], target[i])
        start[i] = x[i] + 0.97 * project_slow(x[i].ravel(), *plane).reshape(x[i].shape)
    best, dist = fab_run(model, x, t, target, steps=1, start=start)
    hits, mixes = 0, []
    for i in range(len(x)):
        x_new, a = relu_step(net, start[i].ravel(), x[i].ravel(), t[i], target[i])
        with eval_mode(model):
            adversarial = np.argmax(model.forward(x_new.reshape(x[i:i + 1].shape))) != t[i]
        np.testing.assert_allclose(best[i].ravel(), x_new if adversarial else x[i].ravel(),
                                   atol=1e-12)
        hits, mixes = hits + adversarial, mixes + [a]
    assert hits >= 10 and 0.01 < min(mixes) < 0.05 and max(mixes) == 0.1


@pytest.mark.parametrize("seed", [0, 1])
def test_fab_finds_the_minimal_perturbation_of_a_linear_model(seed):
    model, x, t, exact = linear_case(seed)
    smallest = exact.min(axis=1)
    for shift in range(1, 10):
        target = (t + shift) % 10
        adv, dist = fab_run(model, x, t, target, steps=100)
        lam = exact[np.arange(len(t)), target]
        assert np.all(dist >= smallest * (1 - 1e-9))      # nothing beats the exact minimum
        assert np.all(dist <= lam * 1.01), np.max(dist / lam)  # FAB gets within 1% of it
        np.testing.assert_allclose(np.abs(adv - x).reshape(len(t), -1).max(axis=1), dist)
        with eval_mode(model):
            assert np.all(np.argmax(model.forward(adv), axis=1) != t)


def test_an_image_within_stop_at_leaves_the_run(monkeypatch):
    """With stop_at, the images that reach a misclassified point that close leave the batch
    there; the run finds the same images within it, and the others' points and distances are
    those of the whole run."""
    model, x, t, exact = linear_case(2)
    eps = float(np.median(exact.min(axis=1)))
    target = (t + 1) % 10
    calls = counting(model, monkeypatch)
    whole, dist = fab_run(model, x, t, target, steps=50)
    passes = sum(calls)
    calls.clear()
    early, early_dist = fab_run(model, x, t, target, steps=50, stop_at=eps)
    within = dist <= eps
    assert 0 < within.sum() < len(t) and sum(calls) < passes
    np.testing.assert_array_equal(early_dist <= eps, within)
    # the same floats but where the BLAS rounds a row by how many rows share its product
    # (OpenBLAS's Haswell kernels: the last bit of a few; tests/helpers.py)
    np.testing.assert_allclose(early[~within], whole[~within], rtol=1e-13, atol=0)
    np.testing.assert_allclose(early_dist[~within], dist[~within], rtol=1e-13, atol=0)
    np.testing.assert_allclose(np.abs(early - x).reshape(len(t), -1).max(axis=1), early_dist)


def test_fab_targeted_breaks_exactly_the_images_within_eps():
    model, x, t, exact = linear_case(2)
    eps = float(np.median(exact.min(axis=1)))
    adv = fab_targeted(model, x, t, eps, steps=100, n_target_classes=9)
    with eval_mode(model):
        broken = np.argmax(model.forward(adv), axis=1) != t
    size = np.abs(adv - x).reshape(len(t), -1).max(axis=1)
    assert np.all(size[broken] <= eps) and np.all(size[~broken] == 0)
    # within FAB's 1%: every image whose minimum is below eps / 1.01 is broken, none above eps
    assert np.all(broken[exact.min(axis=1) < eps / 1.01]) and not np.any(
        broken[exact.min(axis=1) > eps])


@given(seed=seeds, eps=st.floats(0.02, 0.5), restarts=st.integers(1, 2))
def test_fab_stays_in_the_unit_interval_and_the_ball(seed, eps, restarts):
    model = tiny_model(seed % 3)
    x, t = batch(seed, 6, np.float32, model)
    adv = fab_targeted(model, x, t, eps, steps=5, n_target_classes=3, restarts=restarts,
                       rng=np.random.default_rng(seed))
    assert adv.dtype == x.dtype and np.all((adv >= 0) & (adv <= 1))
    assert np.all(np.abs(adv - x) <= eps + 1e-6)
    with eval_mode(model):
        wrong = np.argmax(model.forward(x), axis=1) != t
    np.testing.assert_array_equal(adv[wrong], x[wrong])  # misclassified already: left alone


@pytest.mark.parametrize("train", [False, True])
def test_fab_touches_no_statistic_or_mode(train):
    model = tiny_model(4)
    x, t = batch(4, 6, np.float32, model)
    model.train() if train else model.eval()
    state, before = {k: np.copy(v) for k, v in model.state_dict().items()}, modes(model)
    fab_targeted(model, x, t, 0.2, steps=3, n_target_classes=2)
    assert_state_equal(model.state_dict(), state)
    assert modes(model) == before


def test_fab_on_every_backend(xp):
    model_np, model, x_np, t_np, x, t = backend_case(xp)
    assert_like(fab_targeted(model, x, t, 0.2, steps=4, n_target_classes=CLASSES - 1),
                fab_targeted(model_np, x_np, t_np, 0.2, steps=4, n_target_classes=CLASSES - 1), x)


def test_fab_never_needs_float64():
    xps = pytest.importorskip("array_api_strict")
    model_np, model, x_np, t_np, x, t = backend_case(xps, xps.Device("no_float64"))
    assert_like(fab_targeted(model, x, t, 0.2, steps=4, n_target_classes=2),
                fab_targeted(model_np, x_np, t_np, 0.2, steps=4, n_target_classes=2), x)

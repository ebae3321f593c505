"""Tests for attacks/: FGS, FGV, sign noise, the evaluation protocol and the training steps.

- hand-computed cases on a linear model whose input gradient has a closed form;
- Hypothesis properties on the reference CNN (with and without BatchNorm) on random images;
- every attack, the evaluation and one step of each training mode on every backend;
- the evaluation protocol on a model whose answers the test controls;
- the adversarial step's gradient sum, observed through a recording optimizer.
"""
import copy
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attacks import (
    adversarial_step,
    adversarial_training,
    default_attacks,
    evaluate,
    fgs,
    fgs_step,
    fgv,
    fgv_step,
    input_gradient,
    loss_and_gradients,
    noise_step,
    pgd,
    pgd_step,
    sign_noise,
    standard_step,
)
from helpers import assert_like, blas_column_blocks_exact
from nn import (
    SGD,
    BatchNorm2d,
    Conv2d,
    Dense,
    Flatten,
    MaxPool2d,
    ReLU,
    Sequential,
    eval_mode,
    predict,
    reference_cnn,
)
from nn.backend import to_numpy
from nn.gradcheck import as_float64
from nn.losses import softmax_cross_entropy

seeds = st.integers(0, 2**32 - 1)


# --- a linear model with a closed-form input gradient ----------------------------------------
# Flatten -> Dense(4, 2) on 1x2x2 images, with W = [w, -w] (columns) and b = 0. Then
# z0 - z1 = 2 x.w and dJ/dx = (softmax(z) - onehot(t)) / N @ W^T, which for label 0 is
# -2 p1 / N * w and for label 1 is +2 p0 / N * w: every image's gradient is a multiple of w.

def linear_model(w, b=(0.0, 0.0)):
    """Flatten -> Dense(4, 2) in float64 with W = [w, -w] (as columns) and bias b."""
    w = np.asarray(w, dtype=np.float64)
    model = Sequential(Flatten(), Dense(w.size, 2))
    model.layers[1].params = {"W": np.stack([w, -w], axis=1), "b": np.asarray(b, np.float64)}
    return model


def hand_gradient(x, t, W, b):
    """dJ/dx of the mean cross-entropy of softmax(x_flat @ W + b), written out in NumPy."""
    N = x.shape[0]
    z = x.reshape(N, -1) @ W + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.eye(W.shape[1])[t]
    return ((p - onehot) / N @ W.T).reshape(x.shape)


def images(*rows):
    """1x2x2 float64 images from rows of 4 pixel values (row-major)."""
    return np.array(rows, dtype=np.float64).reshape(len(rows), 1, 2, 2)


W_LIN = np.array([4.0, -8.0, 2.0, 0.0])  # the last pixel never matters: its gradient is 0


def test_input_gradient_matches_hand_formula():
    model = linear_model(W_LIN)
    x = images([0.5, 0.5, 1.0, 0.2], [0.1, 0.7, 0.3, 0.9], [0.9, 0.2, 0.6, 0.4])
    t = np.array([0, 1, 0])
    dx = input_gradient(model, x, t)
    W, b = model.layers[1].params["W"], model.layers[1].params["b"]
    np.testing.assert_allclose(dx, hand_gradient(x, t, W, b), rtol=1e-12, atol=1e-15)
    # the closed form: image 0 has x.w = 0, so p = (1/2, 1/2) and dJ/dx = -2 * 0.5 / 3 * w
    np.testing.assert_allclose(dx[0].ravel(), -W_LIN / 3, rtol=1e-12)


def test_fgs_hand_case_with_clipping():
    model = linear_model(W_LIN)
    # label 0 moves against w: signs (-1, +1, -1, 0); label 1 moves along w: (+1, -1, +1, 0)
    x = images([0.1, 0.95, 0.5, 0.3],   # label 0: 0.1 - 0.2 clips to 0, 0.95 + 0.2 clips to 1
               [0.9, 0.15, 0.85, 0.0],  # label 1: 1.1 -> 1, -0.05 -> 0, 1.05 -> 1
               [0.5, 0.5, 0.5, 0.5])    # label 0: no clipping
    t = np.array([0, 1, 0])
    expected = images([0.0, 1.0, 0.3, 0.3],
                      [1.0, 0.0, 1.0, 0.0],
                      [0.3, 0.7, 0.3, 0.5])
    out = fgs(model, x, t, alpha=0.2)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-15)
    W, b = model.layers[1].params["W"], model.layers[1].params["b"]
    np.testing.assert_array_equal(
        out, np.clip(x + 0.2 * np.sign(hand_gradient(x, t, W, b)), 0, 1))
    assert out.dtype == x.dtype and out.shape == x.shape


def test_fgv_hand_case_scales_each_image_by_its_own_max():
    model = linear_model(W_LIN)
    # image 0: x.w = 0, so p1 = 1/2; image 1: 2 x.w = ln 199, so p1 = 1/200; same label, so
    # the gradients are -2 p1 / N * w: the same direction, sizes 100x apart.
    x2 = (np.log(199) / 2 - 2.0) / 2.0  # x.w = 4 * 0.5 + 2 * x2 = ln(199) / 2
    x = images([0.5, 0.5, 1.0, 0.2],
               [0.5, 0.0, x2, 0.7],
               [0.9, 0.2, 0.95, 0.4])  # label 1: moves along w, clipped at both ends
    t = np.array([0, 0, 1])
    W, b = model.layers[1].params["W"], model.layers[1].params["b"]
    g = hand_gradient(x, t, W, b)
    peaks = np.abs(g).reshape(3, -1).max(axis=1)
    assert peaks[0] / peaks[1] == pytest.approx(100, rel=1e-9)

    alpha = 0.3
    out = fgv(model, x, t, alpha=alpha)
    # g / max|g| = -w / 8 = (-0.5, 1, -0.25, 0) for label 0, and +w / 8 for label 1
    expected = images([0.5 - 0.15, 0.5 + 0.3, 1.0 - 0.075, 0.2],
                      [0.5 - 0.15, 0.0 + 0.3, x2 - 0.075, 0.7],
                      [1.0, 0.0, 1.0, 0.4])  # 1.05, -0.1, 1.025 clipped
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    delta = np.abs(out - x).reshape(3, -1)
    # both label-0 images reach |delta| = alpha exactly at their own largest-gradient pixel
    assert delta[0, 1] == pytest.approx(alpha, abs=1e-12)
    assert delta[1, 1] == pytest.approx(alpha, abs=1e-12)
    np.testing.assert_allclose(out, np.clip(x + alpha * g / peaks[:, None, None, None], 0, 1),
                               rtol=0, atol=1e-12)


def test_fgs_fgv_steps_leave_zero_gradient_pixels_and_images_alone():
    x = np.full((2, 1, 2, 2), 0.5, dtype=np.float32)
    grad = np.zeros_like(x)
    grad[1] = [[[1e-30, -2e-30], [0.0, 4e-30]]]  # image 1: tiny but non-zero; image 0: zero
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        out_fgs = fgs_step(x, grad, 0.25)
        out_fgv = fgv_step(x, grad, 0.2)
    np.testing.assert_array_equal(out_fgs[0], x[0])
    np.testing.assert_array_equal(out_fgs[1], [[[0.75, 0.25], [0.5, 0.75]]])
    np.testing.assert_array_equal(out_fgv[0], x[0])
    np.testing.assert_allclose(out_fgv[1], [[[0.55, 0.4], [0.5, 0.7]]], rtol=1e-6)
    assert out_fgs.dtype == out_fgv.dtype == np.float32


def test_zero_input_gradient_leaves_images_unchanged_without_warnings():
    """A model whose output ignores the input (Dense with W = 0): no NaN, no warning, no move."""
    model = Sequential(Flatten(), Dense(784, 10))
    model.layers[1].params["W"][...] = 0.0
    model.layers[1].params["b"][...] = np.arange(10, dtype=np.float32)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (5, 1, 28, 28)).astype(np.float32)
    t = rng.integers(0, 10, 5)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        assert not np.any(input_gradient(model, x, t))
        out_fgv, out_fgs = fgv(model, x, t, alpha=0.6), fgs(model, x, t, alpha=0.3)
    np.testing.assert_array_equal(out_fgv, x)
    np.testing.assert_array_equal(out_fgs, x)


# --- properties on the reference CNN ---------------------------------------------------------

def random_bn_state(model, rng):
    """Give every BatchNorm random gamma, beta and running statistics (eval mode then differs
    from train mode, and a changed statistic is visible)."""
    for layer in model.layers:
        if isinstance(layer, BatchNorm2d):
            C = layer.params["gamma"].shape[0]
            dtype = layer.params["gamma"].dtype
            layer.params["gamma"] = rng.uniform(0.5, 2.0, C).astype(dtype)
            layer.params["beta"] = rng.normal(0, 0.5, C).astype(dtype)
            layer.buffers["running_mean"] = rng.normal(0, 0.5, C).astype(dtype)
            layer.buffers["running_var"] = rng.uniform(0.5, 2.0, C).astype(dtype)
    return model


def cnn(batch_norm, seed=0):
    rng = np.random.default_rng(seed)
    return random_bn_state(reference_cnn(batch_norm=batch_norm, rng=rng), rng)


def random_batch(seed, n, shape=(1, 28, 28), classes=10, dtype=np.float32):
    """Images uniform in [0, 1] with about 10% of the pixels exactly 0 and 10% exactly 1."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, *shape))
    u = rng.uniform(0, 1, x.shape)
    x[u < 0.1], x[u > 0.9] = 0.0, 1.0
    return x.astype(dtype), rng.integers(0, classes, n)


MODELS = {True: cnn(True), False: cnn(False)}  # the attack tests below must not change them
ATTACKS = {"fgs": fgs, "fgv": fgv}


@given(seed=seeds, n=st.integers(1, 4), bn=st.booleans(), name=st.sampled_from(["fgs", "fgv"]))
def test_alpha_zero_is_a_no_op(seed, n, bn, name):
    x, t = random_batch(seed, n)
    out = ATTACKS[name](MODELS[bn], x, t, alpha=0.0)
    np.testing.assert_array_equal(out, x)


@given(seed=seeds, n=st.integers(1, 4), bn=st.booleans(), alpha=st.floats(0, 1))
def test_perturbation_bounded_and_pixels_in_range(seed, n, bn, alpha):
    model = MODELS[bn]
    x, t = random_batch(seed, n)
    grad = input_gradient(model, x, t)
    for name, attack in ATTACKS.items():
        out = attack(model, x, t, alpha=alpha)
        assert out.dtype == np.float32 and out.shape == x.shape
        assert np.all(np.isfinite(out)), name
        assert out.min() >= 0.0 and out.max() <= 1.0, name
        delta = out.astype(np.float64) - x
        assert np.all(np.abs(delta) <= alpha + 1e-6), name
        assert np.all(delta * grad >= 0), name  # every pixel moves up the gradient, or stays
    # FGS: every pixel with a non-zero gradient moves by alpha, unless it hits 0 or 1
    delta = fgs(model, x, t, alpha=alpha).astype(np.float64) - x
    target = x + alpha * np.sign(grad)
    free = (grad != 0) & (target >= 0) & (target <= 1)
    np.testing.assert_allclose(np.abs(delta[free]), alpha, atol=1e-6)
    # FGV: the largest-gradient pixel of each image moves by alpha, unless clipped
    out = fgv(model, x, t, alpha=alpha)
    for i in range(n):
        j = np.argmax(np.abs(grad[i]))
        if grad[i].flat[j] != 0 and 0 <= x[i].flat[j] + alpha * np.sign(grad[i].flat[j]) <= 1:
            assert abs(float(out[i].flat[j]) - float(x[i].flat[j])) == pytest.approx(alpha,
                                                                                        abs=1e-6)


def mean_loss(model, x, t):
    with eval_mode(model):
        return float(softmax_cross_entropy(model.forward(x), t)[0])


MODELS64 = {bn: as_float64(cnn(bn, seed=1)) for bn in (True, False)}


@given(seed=seeds, n=st.integers(1, 4), bn=st.booleans(), name=st.sampled_from(["fgs", "fgv"]))
def test_loss_does_not_fall_after_a_small_step(seed, n, bn, name):
    """In float64 a step of 1e-3 up the gradient raises the loss to first order."""
    model = MODELS64[bn]
    x, t = random_batch(seed, n, dtype=np.float64)
    before = mean_loss(model, x, t)
    after = mean_loss(model, ATTACKS[name](model, x, t, alpha=1e-3), t)
    assert after >= before - 1e-12 * max(1.0, abs(before))


@pytest.mark.parametrize("bn", [True, False])
def test_loss_rises_by_the_first_order_term(bn):
    """J(x_fgs) - J(x) ~ alpha * sum |dJ/dx| over pixels that can move (a sharp check)."""
    model = MODELS64[bn]
    x, t = random_batch(3, 4, dtype=np.float64)
    grad = input_gradient(model, x, t)
    alpha = 1e-5
    room = np.where(grad > 0, x < 1, x > 0)
    predicted = alpha * np.sum(np.abs(grad) * room)
    rise = mean_loss(model, fgs(model, x, t, alpha), t) - mean_loss(model, x, t)
    assert rise == pytest.approx(predicted, rel=1e-2)


def modes(model):
    return [layer.training for layer in model.layers]


def assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@given(seed=seeds, start=st.sampled_from(["train", "eval", "mixed"]))
def test_attacks_touch_no_parameter_statistic_or_mode(seed, start):
    model = cnn(True, seed=seed % 7)
    if start == "train":
        model.train()
    elif start == "eval":
        model.eval()
    else:
        model.train()
        model.layers[1].training = False  # a mode per layer must come back as it was
    x, t = random_batch(seed, 3)
    before_state, before_modes = model.state_dict(), modes(model)
    calls = [lambda: fgs(model, x, t, 0.3), lambda: fgv(model, x, t, 0.6),
             lambda: input_gradient(model, x, t), lambda: predict(model, x),
             lambda: evaluate(model, x, t, batch_size=2)]
    for call in calls:
        call()
        assert_state_equal(model.state_dict(), before_state)
        assert modes(model) == before_modes


def test_attack_in_train_mode_uses_running_statistics():
    """fgs on a model left in train mode equals fgs on the same model in eval mode."""
    model = cnn(True)
    x, t = random_batch(0, 4)
    expected = fgs(model.eval(), x, t, 0.3)
    out = fgs(model.train(), x, t, 0.3)
    np.testing.assert_array_equal(out, expected)
    train_grad = loss_and_gradients(cnn(True).train(), x, t).dx  # batch statistics
    assert not np.allclose(train_grad, input_gradient(model, x, t))  # the modes do differ


def test_eval_mode_restores_modes_after_an_exception():
    model = cnn(True).train()
    with pytest.raises(ZeroDivisionError):
        with eval_mode(model):
            assert not any(modes(model))
            raise ZeroDivisionError
    assert all(modes(model))


# --- sign noise ------------------------------------------------------------------------------

def test_sign_noise_is_plus_or_minus_alpha_half_the_time():
    x = np.full((20, 1, 28, 28), 0.5, dtype=np.float32)
    out = sign_noise(x, 0.2, np.random.default_rng(0))
    delta = out.astype(np.float64) - x
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(np.abs(delta), 0.2, atol=1e-7)
    share = np.mean(delta > 0)
    assert abs(share - 0.5) < 0.02  # 15680 fair signs: 5 standard deviations is 0.02


def test_sign_noise_reproducible_and_seed_dependent():
    x, _ = random_batch(0, 3)
    a = sign_noise(x, 0.3, np.random.default_rng(7))
    b = sign_noise(x, 0.3, np.random.default_rng(7))
    c = sign_noise(x, 0.3, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    rng = np.random.default_rng(7)
    assert not np.array_equal(sign_noise(x, 0.3, rng), sign_noise(x, 0.3, rng))  # rng moves on


@given(seed=seeds, alpha=st.floats(0, 1))
def test_sign_noise_clips_to_unit_interval(seed, alpha):
    x, _ = random_batch(seed, 2)
    out = sign_noise(x, alpha, np.random.default_rng(seed))
    assert out.min() >= 0 and out.max() <= 1
    up, down = np.minimum(x + np.float32(alpha), 1), np.maximum(x - np.float32(alpha), 0)
    assert np.all((out == up) | (out == down))  # each pixel one of its two clipped choices
    if alpha == 0:
        np.testing.assert_array_equal(out, x)


# --- every backend ---------------------------------------------------------------------------

def small_model(seed=0):
    """Conv(1->2, 3x3) -> BatchNorm2d -> MaxPool 2 -> ReLU -> Flatten -> Dense(18 -> 3), 8x8 in."""
    rng = np.random.default_rng(seed)
    model = Sequential(Conv2d(1, 2, 3, rng=rng), BatchNorm2d(2), MaxPool2d(2), ReLU(), Flatten(),
                       Dense(18, 3, rng=rng))
    return random_bn_state(model, rng)


def backend_case(xp, device=None):
    """(NumPy model, model on xp, host x, host t, x on xp, t on xp)."""
    x_np, t_np = random_batch(1, 6, shape=(1, 8, 8), classes=3)
    kwargs = {} if device is None else {"device": device}
    return (small_model(), small_model().to(xp, **kwargs), x_np, t_np,
            xp.asarray(x_np, **kwargs), xp.asarray(t_np, **kwargs))


def test_attacks_on_every_backend(xp):
    model_np, model, x_np, t_np, x, t = backend_case(xp)
    assert_like(input_gradient(model, x, t), input_gradient(model_np, x_np, t_np), x)
    assert_like(fgs(model, x, t, 0.3), fgs(model_np, x_np, t_np, 0.3), x)
    assert_like(fgv(model, x, t, 0.6), fgv(model_np, x_np, t_np, 0.6), x)
    assert_like(sign_noise(x, 0.3, np.random.default_rng(5)),
                sign_noise(x_np, 0.3, np.random.default_rng(5)), x)
    np.testing.assert_array_equal(predict(model, x_np, batch_size=4),
                                  predict(model_np, x_np, batch_size=4))
    result, expected = evaluate(model, x_np, t_np, batch_size=4), \
        evaluate(model_np, x_np, t_np, batch_size=4)
    assert result.keys() == expected.keys()
    for k in expected:
        assert result[k] == pytest.approx(expected[k], rel=1e-5, abs=1e-6, nan_ok=True), k


@pytest.mark.parametrize("mode", ["standard", "noise", "adversarial", "pgd"])
def test_training_steps_on_every_backend(xp, mode):
    model_np, model, x_np, t_np, x, t = backend_case(xp)
    results = []
    for m, xs, ts in ((model_np, x_np, t_np), (model, x, t)):
        optimizer = SGD(0.1, momentum=0.9)
        m.train()
        for _ in range(2):  # the second step uses the momentum
            if mode == "standard":
                loss = standard_step(m, optimizer, xs, ts)
            elif mode == "noise":
                loss = noise_step(m, optimizer, xs, ts, 0.3, np.random.default_rng(3))
            elif mode == "pgd":
                loss = pgd_step(m, optimizer, xs, ts, 0.3, 2, np.random.default_rng(3))
            else:
                loss = adversarial_step(m, optimizer, xs, ts, 0.3)
        results.append((loss, m, optimizer))
    (loss_np, _, opt_np), (loss, _, opt) = results
    assert_like(loss, to_numpy(loss_np), x)
    assert model.params.keys() == model_np.params.keys()
    # two steps at lr 0.1 amplify float32 rounding: on an H200, CuPy's float32 sums (in another
    # order) left 2 of 18 weights 2e-6 away from NumPy's after FGS training's steps
    for store, ref in ((model.params, model_np.params), (model.buffers, model_np.buffers),
                       (opt.velocity, opt_np.velocity)):
        for k in ref:
            assert_like(store[k], ref[k], x, atol=1e-5)


@pytest.mark.parametrize("device_name", ["device1", "no_float64"])
def test_strict_backend_on_other_devices(device_name):
    """Attacks, the evaluation and a training step keep a non-default device and never need
    float64 (the no_float64 device has none)."""
    xps = pytest.importorskip("array_api_strict")
    device = xps.Device(device_name)
    model_np, model, x_np, t_np, x, t = backend_case(xps, device)
    assert_like(fgs(model, x, t, 0.3), fgs(model_np, x_np, t_np, 0.3), x)
    assert_like(fgv(model, x, t, 0.6), fgv(model_np, x_np, t_np, 0.6), x)
    assert_like(sign_noise(x, 0.3, np.random.default_rng(5)),
                sign_noise(x_np, 0.3, np.random.default_rng(5)), x)
    np.testing.assert_array_equal(predict(model, x_np), predict(model_np, x_np))
    expected = evaluate(model_np, x_np, t_np)
    assert evaluate(model, x_np, t_np) == pytest.approx(expected, rel=1e-5, nan_ok=True)
    adversarial_step(model.train(), SGD(0.1), x, t, 0.3)
    adversarial_step(model_np.train(), SGD(0.1), x_np, t_np, 0.3)
    for k, p in model_np.params.items():
        assert_like(model.params[k], p, x)


# --- the evaluation protocol -----------------------------------------------------------------
# A model that answers 0 when the top half of a 1x2x2 image is brighter than the bottom half
# and 1 otherwise: W = [w, -w] with w = (1, 1, -1, -1), so z0 - z1 = 2 (top - bottom). Every
# pixel's gradient has the same size, so FGS with alpha a moves the brightness gap s = top -
# bottom by 4a towards the wrong side (less where a pixel is clipped), and FGV does the same.

HALF_IMAGES = images(
    [0.9, 0.9, 0.1, 0.1],    # 0: label 0, s = 1.6   FGS .1: s = 1.2 ok   FGV .3: s = 0.4 ok
    [0.6, 0.6, 0.5, 0.5],    # 1: label 0, s = 0.2   FGS: s = -0.2 fooled
    [0.15, 0.15, 0.8, 0.8],  # 2: label 1, s = -1.3  FGS: s = -0.9 ok    FGV: s = -0.1 ok
    [0.45, 0.45, 0.5, 0.5],  # 3: label 1, s = -0.1  FGS: s = 0.3 fooled
    [1.0, 1.0, 0.0, 0.0],    # 4: label 0, s = 2     FGS: s = 1.6 ok     FGV: s = 0.8 ok
    [0.05, 0.9, 0.0, 0.1],   # 5: label 0, s = 0.85  FGS: (0, .8, .1, .2) s = 0.5 ok, FGV fooled
    [0.1, 0.1, 0.9, 0.9],    # 6: label 0, wrong
    [0.7, 0.7, 0.2, 0.2],    # 7: label 1, wrong
    [0.3, 0.3, 0.4, 0.4],    # 8: label 0, wrong
    [0.8, 0.6, 0.3, 0.5],    # 9: label 1, wrong
)
HALF_LABELS = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 1])
HALF_ATTACKS = default_attacks(fgs_alpha=0.1, fgv_alpha=0.3)


def half_model():
    return linear_model([1.0, 1.0, -1.0, -1.0])


def test_evaluation_protocol_on_a_controlled_model():
    model = half_model()
    r = evaluate(model, HALF_IMAGES, HALF_LABELS, attacks=HALF_ATTACKS)
    assert r["n"] == 10 and r["n_correct"] == 6
    assert r["clean_acc"] == 0.6
    assert r["fgs_acc"] == pytest.approx(4 / 6) and r["fgs_robust_acc"] == pytest.approx(4 / 10)
    assert r["fgv_acc"] == pytest.approx(3 / 6) and r["fgv_robust_acc"] == pytest.approx(3 / 10)
    # every correct image has a pixel free to move the full alpha; image 5's first pixel clips
    assert r["fgs_linf"] == pytest.approx(0.1) and r["fgv_linf"] == pytest.approx(0.3)
    assert r["fgs_l2"] == pytest.approx((5 * 0.2 + np.sqrt(0.05**2 + 3 * 0.1**2)) / 6)
    assert r["fgv_l2"] == pytest.approx((5 * 0.6 + np.sqrt(0.05**2 + 3 * 0.3**2)) / 6)
    z = HALF_IMAGES.reshape(10, 4) @ model.layers[1].params["W"]
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    assert r["clean_loss"] == pytest.approx(-np.mean(log_p[np.arange(10), HALF_LABELS]))
    np.testing.assert_array_equal(predict(model, HALF_IMAGES) == HALF_LABELS,
                                  [1, 1, 1, 1, 1, 1, 0, 0, 0, 0])


class BrightnessModel:
    """A stand-in for a Sequential: class 1 when the mean pixel is above 0.5, else class 0, and
    an input "gradient" of +1 on every pixel whatever the label, so every attack brightens the
    image, which can also turn a wrong answer into a right one."""

    def __init__(self):
        self.layers = []  # nothing for eval_mode to switch
        self.params = {"w": np.zeros(1)}  # evaluate takes namespace and device from here

    def eval(self):
        return self

    def forward(self, x):
        self._shape = x.shape
        m = x.reshape(x.shape[0], -1).mean(axis=1) - 0.5
        return np.stack([-m, m], axis=1) * 10

    def backward(self, dout, input_grad=True, param_grads=True):
        return np.ones(self._shape), {}


def test_evaluation_counts_only_images_correct_before_the_attack():
    x = images([1.0, 0.0, 0.0, 0.8],   # label 1, mean .45: wrong; after +.1 (one pixel clips)
               [0.7, 0.7, 0.7, 0.7],   # label 1, right, stays right     mean .525: right
               [0.3, 0.3, 0.3, 0.3],   # label 0, right, stays right
               [0.45, 0.45, 0.45, 0.45])  # label 0, right, fooled
    t = np.array([1, 1, 0, 0])
    r = evaluate(BrightnessModel(), x, t, attacks={"fgs": default_attacks(0.1)["fgs"]})
    assert r["n_correct"] == 3
    assert r["fgs_acc"] == pytest.approx(2 / 3) and r["fgs_robust_acc"] == pytest.approx(2 / 4)
    assert r["fgs_linf"] == pytest.approx(0.1) and r["fgs_l2"] == pytest.approx(0.2)


def attack_correct_only(model, x, t, alpha, attack):
    """The exercise's protocol, literally: keep the clean-correct images, attack only those."""
    keep = predict(model, x) == t
    xk, tk = x[keep], t[keep]
    x_adv = attack(model, xk, tk, alpha)
    delta = (x_adv.astype(np.float64) - xk).reshape(len(xk), -1)
    return {"acc": np.mean(predict(model, x_adv) == tk),
            "robust": np.sum(predict(model, x_adv) == tk) / len(x),
            "linf": np.mean(np.abs(delta).max(axis=1)),
            "l2": np.mean(np.sqrt((delta**2).sum(axis=1)))}


def assert_matches_correct_only(result, model, x, t, alphas, rel):
    for name, attack in ATTACKS.items():
        ref = attack_correct_only(model, x, t, alphas[name], attack)
        assert result[f"{name}_acc"] == pytest.approx(ref["acc"]), name
        assert result[f"{name}_robust_acc"] == pytest.approx(ref["robust"]), name
        assert result[f"{name}_linf"] == pytest.approx(ref["linf"], rel=rel), name
        assert result[f"{name}_l2"] == pytest.approx(ref["l2"], rel=rel), name


def test_evaluation_equals_attacking_the_correct_images_only():
    model = half_model()
    r = evaluate(model, HALF_IMAGES, HALF_LABELS, attacks=HALF_ATTACKS)
    assert_matches_correct_only(r, model, HALF_IMAGES, HALF_LABELS, {"fgs": 0.1, "fgv": 0.3},
                                rel=1e-12)


@pytest.fixture(scope="module")
def trained_cnn(mnist_small):
    """The reference CNN with BatchNorm after ten steps on 320 real images (about 40% right)."""
    (train_x, train_t), _ = mnist_small
    model = reference_cnn(batch_norm=True, rng=np.random.default_rng(0)).train()
    optimizer = SGD(0.05)
    for i in range(0, 320, 32):
        standard_step(model, optimizer, train_x[i:i + 32], train_t[i:i + 32])
    return model.eval()


def test_evaluation_on_a_real_cnn_equals_attacking_the_correct_images_only(trained_cnn,
                                                                           mnist_small):
    _, (test_x, test_t) = mnist_small
    x, t = test_x[:100], test_t[:100]
    r = evaluate(trained_cnn, x, t, attacks=default_attacks(0.1, 0.2), batch_size=32)
    assert 20 <= r["n_correct"] <= 90  # a partly trained model: both groups are large enough
    assert r["n_correct"] == np.sum(predict(trained_cnn, x) == t)
    # batches of 32 against the correct images alone: the same floats where the BLAS gives a
    # product's columns the same whatever columns share it; elsewhere (OpenBLAS's Haswell
    # kernels) a gradient's last bit can flip the sign of a pixel's step at the [0, 1] border
    rng = np.random.default_rng(0)
    exact = blas_column_blocks_exact(rng.standard_normal((64, 801), dtype=np.float32),
                                     rng.random((801, 64 * 100), dtype=np.float32), 64 * 32)
    assert_matches_correct_only(r, trained_cnn, x, t, {"fgs": 0.1, "fgv": 0.2},
                                rel=1e-5 if exact else 1e-3)


@pytest.mark.parametrize("batch_size", [1, 3, 500])
def test_batch_size_does_not_change_the_evaluation(batch_size):
    model = half_model()
    reference = evaluate(model, HALF_IMAGES, HALF_LABELS, attacks=HALF_ATTACKS, batch_size=10)
    result = evaluate(model, HALF_IMAGES, HALF_LABELS, attacks=HALF_ATTACKS,
                      batch_size=batch_size)
    assert result.keys() == reference.keys()
    for k, v in reference.items():
        assert result[k] == pytest.approx(v, rel=1e-12), k


@pytest.mark.parametrize("batch_size", [1, 4])
def test_batch_size_does_not_change_the_evaluation_of_a_cnn(trained_cnn, mnist_small,
                                                            batch_size):
    _, (test_x, test_t) = mnist_small
    x, t = test_x[:14], test_t[:14]
    reference = evaluate(trained_cnn, x, t, batch_size=14)
    result = evaluate(trained_cnn, x, t, batch_size=batch_size)
    # Counts are exact. Sizes are float32 means: the batch size changes the rounding, and two of
    # these 14 images, which the model is sure of, have input gradients near 1e-9 whose float32
    # direction (so their FGV L2 size) agrees with float64 to about 1% only.
    for k, v in reference.items():
        exact = k.startswith("n") or k.endswith("acc")
        assert result[k] == (v if exact else pytest.approx(v, rel=5e-3)), k


def test_float32_evaluation_agrees_with_float64(trained_cnn, mnist_small):
    # Fails if p_t - 1 is rounded away for sure images (FGS accuracy was then 14.8%, not 6.6%).
    _, (test_x, test_t) = mnist_small
    x, t = test_x[:100], test_t[:100]
    result = evaluate(trained_cnn, x, t)
    exact = evaluate(as_float64(copy.deepcopy(trained_cnn)), x.astype(np.float64), t)
    for k, v in exact.items():
        close = pytest.approx(v, abs=0.011) if k.endswith("acc") else pytest.approx(v, rel=5e-3)
        assert result[k] == (v if k.startswith("n") else close), k


def test_evaluation_with_no_correct_image_gives_nan_not_an_error():
    model = half_model()
    wrong = np.array([1, 1, 0, 0, 1, 1])  # every label of images 0..5 flipped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = evaluate(model, HALF_IMAGES[:6], wrong, attacks=HALF_ATTACKS)
    assert r["n_correct"] == 0 and r["clean_acc"] == 0 and r["fgs_robust_acc"] == 0
    assert np.isnan(r["fgs_acc"]) and np.isnan(r["fgv_linf"])


# --- the training steps ----------------------------------------------------------------------

class RecordingOptimizer:
    """An optimizer that only records what it is given (and never changes a parameter)."""

    def __init__(self):
        self.calls = []

    def step(self, params, grads):
        self.calls.append((params, {k: np.array(v) for k, v in grads.items()}))


def twin(model):
    """A second model in the same state (parameters, statistics and per-layer modes)."""
    other = small_model(seed=99)
    other.load_state_dict(model.state_dict())
    for a, b in zip(other.layers, model.layers):
        a.training = b.training
    return other


def assert_grads_equal(got, expected):
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


def test_adversarial_step_adds_clean_and_fgs_gradients(monkeypatch):
    model = small_model().train()
    ref = twin(model)
    x, t = random_batch(2, 8, shape=(1, 8, 8), classes=3)
    alpha = 0.3

    built_from = []
    real_fgs_step = adversarial_training.fgs_step
    monkeypatch.setattr(adversarial_training, "fgs_step",
                        lambda x, grad, alpha: built_from.append(np.array(grad))
                        or real_fgs_step(x, grad, alpha))
    optimizer = RecordingOptimizer()
    loss = adversarial_step(model, optimizer, x, t, alpha)

    clean = loss_and_gradients(ref, x, t)  # train mode: batch statistics, as in the step
    adv = loss_and_gradients(ref, fgs_step(x, clean.dx, alpha), t)
    (params, grads), = optimizer.calls
    assert_grads_equal(grads, {k: clean.grads[k] + adv.grads[k] for k in clean.grads})
    assert params.keys() == model.params.keys()
    assert all(params[k] is model.params[k] for k in params)  # the live arrays, to update
    assert float(loss) == pytest.approx(float(clean.loss + adv.loss), rel=1e-6)
    # the FGS batch comes from the clean pass's own (train-mode) input gradient
    (grad,) = built_from
    np.testing.assert_array_equal(grad, clean.dx)
    assert not np.array_equal(np.sign(grad), np.sign(input_gradient(twin(model), x, t)))
    # both passes ran in train mode: the running statistics moved twice, as in the reference
    assert_state_equal(model.state_dict(), ref.state_dict())
    assert model.training


def test_adversarial_step_is_not_the_clean_gradient_twice():
    """The recorded sum differs from 2 * clean and from clean + FGS-from-eval-mode gradients."""
    model = small_model().train()
    ref, ref_eval = twin(model), twin(model)
    x, t = random_batch(4, 8, shape=(1, 8, 8), classes=3)
    optimizer = RecordingOptimizer()
    adversarial_step(model, optimizer, x, t, 0.3)
    grads = optimizer.calls[0][1]
    clean = loss_and_gradients(ref, x, t)
    assert not np.allclose(grads["0.W"], 2 * clean.grads["0.W"])
    eval_dx = input_gradient(ref_eval, x, t)
    clean_e = loss_and_gradients(ref_eval, x, t)
    wrong = loss_and_gradients(ref_eval, fgs_step(x, eval_dx, 0.3), t)
    assert not np.allclose(grads["0.W"], clean_e.grads["0.W"] + wrong.grads["0.W"])


def test_standard_and_noise_steps_pass_their_batch_gradients():
    model = small_model().train()
    ref = twin(model)
    x, t = random_batch(5, 8, shape=(1, 8, 8), classes=3)
    optimizer = RecordingOptimizer()
    loss = standard_step(model, optimizer, x, t)
    clean = loss_and_gradients(ref, x, t)
    assert_grads_equal(optimizer.calls[0][1], clean.grads)
    assert float(loss) == float(clean.loss)

    optimizer = RecordingOptimizer()
    loss = noise_step(model, optimizer, x, t, 0.3, np.random.default_rng(11))
    noisy = loss_and_gradients(ref, sign_noise(x, 0.3, np.random.default_rng(11)), t)
    assert_grads_equal(optimizer.calls[0][1], noisy.grads)
    assert float(loss) == float(noisy.loss)


def test_pgd_step_trains_on_the_pgd_batch_alone():
    model = small_model().train()
    ref = twin(model)
    x, t = random_batch(5, 8, shape=(1, 8, 8), classes=3)
    optimizer = RecordingOptimizer()
    loss = pgd_step(model, optimizer, x, t, 0.2, 3, np.random.default_rng(4))
    x_adv = pgd(ref, x, t, eps=0.2, steps=3, random_start=True, rng=np.random.default_rng(4),
                keep_first=False)
    adv = loss_and_gradients(ref.train(), x_adv, t)
    assert_grads_equal(optimizer.calls[0][1], adv.grads)
    assert float(loss) == float(adv.loss)
    assert model.training  # crafting ran in eval mode and gave train mode back


def test_a_real_step_lowers_the_training_loss():
    model = small_model().train()
    x, t = random_batch(6, 16, shape=(1, 8, 8), classes=3)
    optimizer = SGD(0.05, momentum=0.0)
    first = float(standard_step(model, optimizer, x, t))
    for _ in range(20):
        last = float(standard_step(model, optimizer, x, t))
    assert last < first
    optimizer = SGD(0.05, momentum=0.0)
    first = float(adversarial_step(model, optimizer, x, t, 0.05))
    for _ in range(20):
        last = float(adversarial_step(model, optimizer, x, t, 0.05))
    assert last < first


def test_every_attacks_module_is_reachable_by_its_dotted_path():
    """No name exported by attacks/__init__.py hides a module of the package (before, `attacks.
    square` was the function, so `import attacks.square` and mock.patch("attacks.square.x")
    failed)."""
    import importlib
    import pkgutil
    import unittest.mock

    import attacks
    names = [m.name for m in pkgutil.iter_modules(attacks.__path__)]
    assert {"autopgd", "score_based", "minimum_norm", "evaluation"} <= set(names)
    for name in names:
        module = importlib.import_module(f"attacks.{name}")
        assert getattr(attacks, name) is module, name
    with unittest.mock.patch("attacks.score_based.HALVINGS", ()):
        assert attacks.score_based.p_schedule(9999, 10000) == 0.8

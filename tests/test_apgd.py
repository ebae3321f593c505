"""Tests for attacks/autopgd.py: APGD-CE, APGD-DLR and APGD-T.

- the batched attack against a slow per-image loop that follows the paper's algorithm
  (tests/reference.py), in float64 on a tiny CNN with BatchNorm: steps, momentum, checkpoints,
  step halving, restarts from the best point, the first misclassified iterate;
- APGD-T against separate targeted runs, one image and one target class at a time;
- the ball, [0, 1], eps 0, no change to BatchNorm statistics or layer modes;
- DLR against gradient masking: logits so large that the float32 cross-entropy gradient is 0;
- every backend, and the strict backend's no_float64 device.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attacks.autopgd import apgd, apgd_run, apgd_targeted, checkpoints
from attacks.iterative import put_rows, take_rows, uniform_start
from helpers import assert_like, counting
from nn import BatchNorm2d, Conv2d, Dense, Flatten, MaxPool2d, ReLU, Sequential, eval_mode
from nn.gradcheck import as_float64
from nn.losses import dlr_loss, softmax_cross_entropy
from reference import apgd_one_image
from test_attacks import assert_state_equal, modes, random_batch, random_bn_state, seeds

CLASSES = 5


def tiny_model(seed=0):
    """Conv(1->3, 3x3) -> BatchNorm2d -> MaxPool 2 -> ReLU -> Flatten -> Dense(27 -> 5), 8x8 in,
    float32, random BatchNorm statistics."""
    rng = np.random.default_rng(seed)
    model = Sequential(Conv2d(1, 3, 3, rng=rng), BatchNorm2d(3), MaxPool2d(2), ReLU(), Flatten(),
                       Dense(27, CLASSES, rng=rng))
    return random_bn_state(model, rng)


MODEL64 = as_float64(tiny_model(1)).eval()


def batch(seed, n, dtype=np.float64, model=MODEL64):
    """Images, and labels that are the model's prediction for all but the last third."""
    x, t = random_batch(seed, n, shape=(1, 8, 8), classes=CLASSES, dtype=dtype)
    with eval_mode(model):
        pred = np.argmax(model.forward(x), axis=1)
    keep = np.arange(n) < n - n // 3
    return x, np.where(keep, pred, t)


def value_and_grad(model, x, i, label, loss, target=None):
    """The reference's view of the model: image i -> (prediction, loss, gradient).

    The image goes through the model as row i of a batch shaped like x (its other rows are x's):
    BLAS may round a row differently in batches of other sizes, and a last-bit difference in
    the loss can flip APGD's comparisons where the loss stalls.
    """
    def f(image):
        rows = x.copy()
        rows[i] = image
        logits = model.forward(rows)[i:i + 1]
        if loss == "ce":
            value, dlogits = softmax_cross_entropy(logits, np.array([label]))
        else:
            value, dlogits = dlr_loss(logits, np.array([label]),
                                      None if target is None else np.array([target]))
        dx, _ = model.backward(np.eye(len(x))[:, i:i + 1] @ dlogits)
        return int(np.argmax(logits[0])), float(value), dx[i]
    return f


def test_checkpoints_follow_the_paper():
    """p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), times 100 steps."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1 + 1e-9:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert checkpoints(100) == [round(100 * q) for q in p[1:]] == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1) == [1] and checkpoints(10) == list(range(2, 11))


@given(seed=seeds, eps=st.floats(0.02, 0.5), steps=st.integers(1, 30),
       loss=st.sampled_from(["ce", "dlr", "dlr-targeted"]), start=st.booleans(),
       halving=st.sampled_from(["autoattack", "paper"]))
def test_apgd_matches_the_per_image_loop(seed, eps, steps, loss, start, halving):
    x, t = batch(seed, 6)
    rng = np.random.default_rng(seed)
    target = (t + 1 + rng.integers(0, CLASSES - 1, len(t))) % CLASSES if loss == "dlr-targeted" \
        else None
    kind = loss.split("-")[0]
    begin = uniform_start(x, eps, np.random.default_rng(seed)) if start else x
    got, found = apgd_run(MODEL64, x, t, eps, steps, kind, target,
                          np.random.default_rng(seed) if start else None, halving)
    for i in range(len(x)):
        expected, hit = apgd_one_image(
            value_and_grad(MODEL64, x, i, t[i], kind, None if target is None else target[i]),
            x[i], t[i], eps, steps, begin[i], halving=halving)
        np.testing.assert_allclose(got[i], expected, rtol=0, atol=1e-12, err_msg=f"image {i}")
        assert bool(found[i]) == hit, i


def test_apgd_halves_steps_restarts_and_keeps_the_first_hit():
    """The case above on a fixed batch where the loop's checkpoints halve steps, restart from
    the best point, and where some images are broken and others are not."""
    x, t = batch(3, 9)
    got, found = apgd_run(MODEL64, x, t, 0.15, 30, "ce")
    assert 0 < int(np.sum(found)) < len(x)
    for i in range(len(x)):
        expected, _ = apgd_one_image(value_and_grad(MODEL64, x, i, t[i], "ce"), x[i], t[i], 0.15,
                                     30, x[i], halving="autoattack")
        np.testing.assert_allclose(got[i], expected, rtol=0, atol=1e-12)
    with eval_mode(MODEL64):
        assert np.all((np.argmax(MODEL64.forward(got), axis=1) != t) == found)


def test_apgd_stops_once_every_image_is_broken(monkeypatch):
    """Images misclassified from the start cost one pass, not 1 + steps; a batch broken within
    a few steps stops there, with what the per-image loop returns."""
    x, t = batch(3, 9)
    calls = counting(MODEL64, monkeypatch)
    with eval_mode(MODEL64):
        wrong = (np.argmax(MODEL64.forward(x), axis=1) + 1) % CLASSES
    calls.clear()
    got, found = apgd_run(MODEL64, x, wrong, 0.1, 50, "ce")
    assert len(calls) == 1 and found.all()
    np.testing.assert_array_equal(got, x)
    calls.clear()
    got, found = apgd_run(MODEL64, x, t, 1.0, 50, "ce")  # eps 1: every image falls at once
    assert found.all() and len(calls) < 10
    for i in range(len(x)):
        expected, _ = apgd_one_image(value_and_grad(MODEL64, x, i, t[i], "ce"), x[i], t[i], 1.0,
                                     50, x[i], halving="autoattack")
        np.testing.assert_allclose(got[i], expected, rtol=0, atol=1e-12)


def test_a_broken_image_leaves_the_batch(monkeypatch):
    """The batch costs what its images cost one at a time: each pass carries only the images
    not yet misclassified, and an image alone stops at its first hit."""
    x, t = batch(3, 9)
    calls = counting(MODEL64, monkeypatch)
    alone = []
    for i in range(len(x)):
        calls.clear()
        apgd_run(MODEL64, x[i:i + 1], t[i:i + 1], 0.15, 30, "ce")
        alone.append(len(calls))
    calls.clear()
    _, found = apgd_run(MODEL64, x, t, 0.15, 30, "ce")
    assert 0 < int(np.sum(found)) < len(x) and min(alone) < 31 == max(alone)
    assert sum(calls) == sum(alone) and calls == sorted(calls, reverse=True)


@given(seed=seeds, eps=st.floats(0.05, 0.4), n_targets=st.integers(1, CLASSES - 1))
def test_apgd_targeted_is_one_targeted_run_per_class_until_one_succeeds(seed, eps, n_targets):
    x, t = batch(seed, 6)
    got = apgd_targeted(MODEL64, x, t, eps, steps=6, n_target_classes=n_targets)
    with eval_mode(MODEL64):
        logits = MODEL64.forward(x)
    for i in range(len(x)):
        expected = x[i]
        if np.argmax(logits[i]) == t[i]:
            for target in np.argsort(-logits[i])[1:n_targets + 1]:
                out, found = apgd_run(MODEL64, x[i:i + 1], t[i:i + 1], eps, 6, "dlr",
                                      np.array([target]))
                if found[0]:
                    expected = out[0]
                    break
        np.testing.assert_allclose(got[i], expected, rtol=0, atol=1e-12, err_msg=f"image {i}")


@given(seed=seeds, eps=st.floats(0, 0.5), steps=st.integers(1, 8),
       loss=st.sampled_from(["ce", "dlr", "targeted"]))
def test_apgd_stays_in_the_ball_and_the_unit_interval(seed, eps, steps, loss):
    model = tiny_model(seed % 3)
    x, t = batch(seed, 5, np.float32, model)
    rng = np.random.default_rng(seed)
    if loss == "targeted":
        out = apgd_targeted(model, x, t, eps, steps, n_target_classes=2, rng=rng)
    else:
        out = apgd(model, x, t, eps, steps, loss=loss, rng=rng)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out.astype(np.float64) - x).max() <= eps + 1e-6
    if eps == 0:
        np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("start", ["train", "eval"])
def test_apgd_touches_no_statistic_or_mode(start):
    model = tiny_model(2)
    model.train() if start == "train" else model.eval()
    before, mode = model.state_dict(), modes(model)
    x, t = batch(4, 6, np.float32, model)
    apgd(model, x, t, 0.2, steps=5, rng=np.random.default_rng(0))
    apgd_targeted(model, x, t, 0.2, steps=5, n_target_classes=2, rng=np.random.default_rng(0))
    assert_state_equal(model.state_dict(), before)
    assert modes(model) == mode


def test_dlr_finds_what_a_vanishing_cross_entropy_gradient_hides():
    """Logits scaled by 2,000: in float32 the softmax of every wrong class is exactly 0, so the
    cross-entropy gradient is 0 and APGD-CE (from x) cannot move, while the scale-free DLR
    gradient leads APGD-DLR across the boundary."""
    w = np.array([[1.0, -1.0, 0.5, 0.0], [-1.0, 1.0, 0.0, 0.5], [0.2, 0.1, -0.3, 0.4]])
    model = Sequential(Flatten(), Dense(4, 3))
    model.layers[1].params = {"W": (2000 * w.T).astype(np.float32),
                              "b": np.zeros(3, dtype=np.float32)}
    x = np.array([[0.55, 0.5, 0.5, 0.5], [0.5, 0.55, 0.5, 0.5]], np.float32).reshape(2, 1, 2, 2)
    t = np.argmax(model.forward(x), axis=1)  # margins 0.09 and 0.095 before the scaling
    assert np.all(softmax_cross_entropy(model.forward(x), t, reduction="none")[1] == 0)
    np.testing.assert_array_equal(apgd(model, x, t, 0.1, steps=10, loss="ce"), x)
    out = apgd(model, x, t, 0.1, steps=10, loss="dlr")
    assert np.all(np.argmax(model.forward(out), axis=1) != t)


def test_apgd_rejects_unknown_losses():
    x, t = batch(0, 2)
    with pytest.raises(ValueError, match="loss"):
        apgd(MODEL64, x, t, 0.1, steps=2, loss="hinge")
    with pytest.raises(ValueError, match="target"):
        apgd(MODEL64, x, t, 0.1, steps=2, loss="ce", target=(t + 1) % CLASSES)


def test_rows_are_taken_and_put_back():
    x = np.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(take_rows(x, [2, 0]), x[[2, 0]])
    expected = x.copy()
    expected[[3, 1]] = [[-1, -2, -3], [-4, -5, -6]]
    rows = np.array([[-1.0, -2, -3], [-4, -5, -6]])
    np.testing.assert_array_equal(put_rows(x, np.array([3, 1]), rows), expected)
    np.testing.assert_array_equal(put_rows(x, np.array([], dtype=int), rows[:0]), x)


def backend_case(xp, device=None):
    """(NumPy model, model on xp, host x, host t, x on xp, t on xp), float32."""
    x_np, t_np = batch(5, 6, np.float32, tiny_model(3))
    kwargs = {} if device is None else {"device": device}
    return (tiny_model(3), tiny_model(3).to(xp, **kwargs), x_np, t_np,
            xp.asarray(x_np, **kwargs), xp.asarray(t_np, **kwargs))


def run_all(model, x, t, target):
    return [apgd(model, x, t, 0.2, steps=6, rng=np.random.default_rng(1)),
            apgd(model, x, t, 0.2, steps=6, loss="dlr", target=target,
                 rng=np.random.default_rng(2)),
            apgd_targeted(model, x, t, 0.2, steps=4, n_target_classes=3,
                          rng=np.random.default_rng(3))]


def test_apgd_on_every_backend(xp):
    model_np, model, x_np, t_np, x, t = backend_case(xp)
    target_np = (t_np + 2) % CLASSES
    for out, ref in zip(run_all(model, x, t, xp.asarray(target_np)),
                        run_all(model_np, x_np, t_np, target_np)):
        assert_like(out, ref, x)


def test_apgd_never_needs_float64():
    xps = pytest.importorskip("array_api_strict")
    device = xps.Device("no_float64")
    model_np, model, x_np, t_np, x, t = backend_case(xps, device)
    target_np = (t_np + 2) % CLASSES
    for out, ref in zip(run_all(model, x, t, xps.asarray(target_np, device=device)),
                        run_all(model_np, x_np, t_np, target_np)):
        assert_like(out, ref, x)

"""Tests for attacks/iterative.py: PGD, targeted PGD, the smallest-perturbation search and
fooling images.

- closed forms on the linear model of test_attacks (its input gradient is always +-w);
- Hypothesis properties on the reference CNN: the L-infinity ball, [0, 1], no-ops, FGS as PGD;
- every attack on every backend, and on the strict backend's no_float64 device;
- PGD inside the exercise's evaluation.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attacks import (
    evaluate,
    fgs,
    fooling_images,
    pgd,
    pgd_attack,
    signed_steps,
    smallest_targeted,
    targeted_fgs,
    targeted_pgd,
)
from attacks.evaluation import default_attacks
from helpers import assert_like, counting
from nn import eval_mode, softmax
from nn.backend import to_numpy
from test_attacks import MODELS, backend_case, images, linear_model, mean_loss, random_batch, seeds

W_LIN = np.array([4.0, -8.0, 2.0, 1.0])


def test_pgd_on_a_linear_model_reaches_the_corner_of_the_ball():
    """The gradient of a linear model always points along -w (label 0): after enough steps
    every pixel sits at x - eps sign(w), clipped, whatever the step size (the last iterate:
    keep_first=False)."""
    model = linear_model(W_LIN)
    x = images([0.5, 0.5, 0.5, 0.5], [0.05, 0.9, 0.5, 0.95])
    t = np.array([0, 0])
    expected = np.clip(x - 0.2 * np.sign(W_LIN).reshape(1, 1, 2, 2), 0, 1)
    for step, steps in ((0.2, 1), (0.05, 4), (0.03, 10), (0.5, 3)):
        np.testing.assert_allclose(pgd(model, x, t, eps=0.2, step=step, steps=steps,
                                       keep_first=False), expected, atol=1e-12)
    # 3 steps of 0.05 do not reach the corner: each pixel moved 0.15 (less where clipped)
    np.testing.assert_allclose(pgd(model, x, t, eps=0.2, step=0.05, steps=3, keep_first=False),
                               np.clip(x - 0.15 * np.sign(W_LIN).reshape(1, 1, 2, 2), 0, 1),
                               atol=1e-12)


def test_pgds_default_step_crosses_the_ball_from_any_start():
    """The default step 2.5 eps / steps (Madry et al.) moves a pixel 2.5 eps in all, more than
    the ball's width 2 eps: from any random start the linear model's last iterate is the corner
    x - eps sign(w). eps / steps leaves the pixels that started on the far side short of it."""
    model = linear_model(W_LIN)
    x, t = images(*[[0.5, 0.5, 0.5, 0.5]] * 8), np.zeros(8, dtype=np.int64)
    corner = x - 0.2 * np.sign(W_LIN).reshape(1, 1, 2, 2)

    def last_iterate(**step):
        return pgd(model, x, t, eps=0.2, steps=5, random_start=True,
                   rng=np.random.default_rng(0), keep_first=False, **step)
    np.testing.assert_allclose(last_iterate(), corner, atol=1e-7)
    assert np.abs(last_iterate(step=0.2 / 5) - corner).max() > 0.05


def test_targeted_pgd_on_a_linear_model_reaches_the_target():
    """Label 0 wins where x.w > 0; targeting class 1 moves x against w until it flips."""
    model = linear_model(W_LIN)
    x = images([0.6, 0.2, 0.5, 0.5])  # x.w = 2.4 - 1.6 + 1 + 0.5 = 2.3; ||w||_1 = 15
    target = np.array([1])
    assert np.argmax(model.forward(x), axis=1)[0] == 0
    small = targeted_pgd(model, x, target, eps=0.1, steps=10)   # x.w falls by 1.5: still 0
    large = targeted_pgd(model, x, target, eps=0.2, steps=10)   # falls by 3: class 1
    assert np.argmax(model.forward(small), axis=1)[0] == 0
    assert np.argmax(model.forward(large), axis=1)[0] == 1
    np.testing.assert_allclose(large, x - 0.2 * np.sign(W_LIN).reshape(1, 1, 2, 2), atol=1e-12)


def test_smallest_targeted_finds_the_linear_boundary():
    """The smallest L-infinity change that flips a linear model is x.w / ||w||_1 (no clipping);
    bisection brackets it to max_eps / 2**searches."""
    model = linear_model(W_LIN)
    x = images([0.6, 0.2, 0.5, 0.5], [0.5, 0.4, 0.5, 0.5], [0.1, 0.6, 0.1, 0.1])
    target = np.array([1, 1, 0])
    boundary = np.abs(x.reshape(3, -1) @ W_LIN) / np.abs(W_LIN).sum()  # 2.3/15, 0.8/15, 4.3/15
    best, eps, ok = smallest_targeted(model, x, target, max_eps=0.5, steps=10, searches=10)
    assert ok.all()
    assert np.all(eps >= boundary) and np.all(eps <= boundary + 0.5 / 2**10)
    np.testing.assert_array_equal(np.argmax(model.forward(best), axis=1), target)
    assert np.abs(best - x).reshape(3, -1).max(axis=1) == pytest.approx(eps, abs=1e-12)


def test_smallest_targeted_in_l2_finds_the_linear_boundary():
    """In L2 the smallest change is |x.w| / ||w||_2, along w (no clipping on these images)."""
    model = linear_model(W_LIN)
    x = images([0.6, 0.2, 0.5, 0.5], [0.5, 0.4, 0.5, 0.5], [0.1, 0.6, 0.1, 0.1])
    target = np.array([1, 1, 0])
    boundary = np.abs(x.reshape(3, -1) @ W_LIN) / np.linalg.norm(W_LIN)
    best, eps, ok = smallest_targeted(model, x, target, max_eps=1.0, steps=10, searches=10,
                                      norm="l2")
    assert ok.all()
    assert np.all(eps >= boundary - 1e-9) and np.all(eps <= boundary + 1.0 / 2**10)
    np.testing.assert_array_equal(np.argmax(model.forward(best), axis=1), target)
    np.testing.assert_allclose(np.linalg.norm((best - x).reshape(3, -1), axis=1), eps,
                               atol=1e-9)


def test_smallest_targeted_reports_failure_outside_the_largest_ball():
    model = linear_model(W_LIN)
    x = images([0.6, 0.2, 0.5, 0.5])
    best, eps, ok = smallest_targeted(model, x, np.array([1]), max_eps=0.1, steps=5, searches=3)
    assert not ok[0] and np.isnan(eps[0])
    np.testing.assert_array_equal(best, x)


@given(seed=seeds, n=st.integers(1, 3), bn=st.booleans(), eps=st.floats(0, 0.5),
       steps=st.integers(1, 4), start=st.booleans())
def test_pgd_stays_in_the_ball_and_the_unit_interval(seed, n, bn, eps, steps, start):
    x, t = random_batch(seed, n)
    out = pgd(MODELS[bn], x, t, eps=eps, steps=steps, random_start=start,
              rng=np.random.default_rng(seed))
    assert out.dtype == x.dtype and out.shape == x.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out.astype(np.float64) - x).max() <= eps + 1e-6


@given(seed=seeds, bn=st.booleans(), start=st.booleans())
def test_eps_zero_is_a_no_op(seed, bn, start):
    x, t = random_batch(seed, 2)
    np.testing.assert_array_equal(pgd(MODELS[bn], x, t, eps=0.0, steps=3, random_start=start,
                                      rng=np.random.default_rng(0)), x)
    np.testing.assert_array_equal(targeted_pgd(MODELS[bn], x, (t + 1) % 10, eps=0.0), x)


@given(seed=seeds, bn=st.booleans(), eps=st.floats(0.01, 0.5))
def test_one_full_step_from_the_image_is_fgs(seed, bn, eps):
    x, t = random_batch(seed, 3)
    np.testing.assert_array_equal(pgd(MODELS[bn], x, t, eps=eps, step=eps, steps=1,
                                      keep_first=False),
                                  fgs(MODELS[bn], x, t, alpha=eps))


@given(seed=seeds, bn=st.booleans(), steps=st.integers(1, 5), targeted=st.booleans())
def test_keep_first_returns_the_first_successful_iterate(seed, bn, steps, targeted):
    """Against a loop over the last iterates of 0, 1, ..., steps steps: per image, the first of
    them that the model gets wrong (right, for a target), else the last one."""
    model = MODELS[bn]
    x, t = random_batch(seed, 6)
    labels = (t + 1) % 10 if targeted else t
    direction = -1.0 if targeted else 1.0
    walk = [signed_steps(model, x, labels, 0.3, 0.1, k, direction, keep_first=False)
            for k in range(steps + 1)]
    with eval_mode(model):
        hits = [(np.argmax(model.forward(w), axis=1) == labels) == targeted for w in walk]
    expected = walk[-1].copy()
    for i in range(len(x)):
        first = next((k for k in range(steps + 1) if hits[k][i]), None)
        if first is not None:
            expected[i] = walk[first][i]
    np.testing.assert_array_equal(signed_steps(model, x, labels, 0.3, 0.1, steps, direction),
                                  expected)


@pytest.mark.parametrize("targeted", [False, True])
def test_a_successful_image_leaves_the_batch(monkeypatch, targeted):
    """With keep_first the batch costs what its images cost one at a time: each pass carries
    only the images not yet successful."""
    model = MODELS[False]
    x, t = random_batch(5, 12)
    labels, direction = ((t + 1) % 10, -1.0) if targeted else (t, 1.0)
    calls = counting(model, monkeypatch)
    alone = []
    for i in range(len(x)):
        calls.clear()
        signed_steps(model, x[i:i + 1], labels[i:i + 1], 0.1, 0.02, 10, direction)
        alone.append(len(calls))
    calls.clear()
    signed_steps(model, x, labels, 0.1, 0.02, 10, direction)
    assert min(alone) < max(alone)
    assert sum(calls) == sum(alone) and calls == sorted(calls, reverse=True)


def test_pgd_stops_once_every_image_has_succeeded(monkeypatch):
    """A batch that every iterate already breaks costs one pass, not steps + 1 (keep_first);
    without keep_first (PGD training's last iterate) every step runs."""
    model = MODELS[False]
    x, t = random_batch(4, 6)
    with eval_mode(model):
        wrong = (np.argmax(model.forward(x), axis=1) + 1) % 10
    calls = counting(model, monkeypatch)
    np.testing.assert_array_equal(pgd(model, x, wrong, eps=0.3, steps=20), x)
    assert len(calls) == 1
    calls.clear()
    pgd(model, x, wrong, eps=0.3, steps=20, keep_first=False)
    assert len(calls) == 20


@given(seed=seeds, bn=st.booleans())
def test_pgd_raises_the_loss_and_targeted_pgd_lowers_the_target_loss(seed, bn):
    model = MODELS[bn]
    x, t = random_batch(seed, 4)
    before = mean_loss(model, x, t)
    assert mean_loss(model, pgd(model, x, t, eps=0.05, steps=5), t) >= before
    target = (t + 3) % 10
    assert mean_loss(model, targeted_pgd(model, x, target, eps=0.05, steps=5),
                     target) <= mean_loss(model, x, target)


def test_random_start_needs_a_generator_and_is_reproducible():
    x, t = random_batch(0, 2)
    with pytest.raises(ValueError, match="rng"):
        pgd(MODELS[False], x, t, eps=0.1, random_start=True)
    runs = [pgd(MODELS[False], x, t, eps=0.1, steps=2, random_start=True,
                rng=np.random.default_rng(s)) for s in (1, 1, 2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_fooling_images_aim_each_noise_image_at_every_class():
    model = MODELS[False]
    noise = random_batch(4, 3)[0]
    fooled, target, prob = fooling_images(model, noise, alpha=0.2)
    assert fooled.shape == (30, 1, 28, 28) and target.shape == prob.shape == (30,)
    np.testing.assert_array_equal(target, np.repeat(np.arange(10), 3))
    for k in range(10):
        expected = targeted_fgs(model, noise, np.full(3, k), 0.2)
        np.testing.assert_array_equal(fooled[3 * k:3 * k + 3], expected)
    np.testing.assert_allclose(prob, softmax(model.forward(fooled))[np.arange(30), target],
                               rtol=1e-6)
    assert np.abs(fooled - np.concatenate([noise] * 10)).max() <= 0.2 + 1e-6


def test_pgd_in_the_evaluation_is_fgs_for_one_step():
    """pgd_attack with one step of 2.5 eps from the image, projected, equals FGS with eps."""
    model = MODELS[True]
    x, t = random_batch(7, 12)
    r = evaluate(model, x, t, {**default_attacks(0.1), "pgd": pgd_attack(0.1, steps=1)})
    for key in ("acc", "robust_acc", "linf", "l2"):
        assert r[f"pgd_{key}"] == pytest.approx(r[f"fgs_{key}"], rel=1e-6)


def test_iterative_attacks_on_every_backend(xp):
    model_np, model, x_np, t_np, x, t = backend_case(xp)
    tgt_np = (t_np + 1) % 3
    tgt = xp.asarray(tgt_np)
    assert_like(pgd(model, x, t, eps=0.2, steps=3, random_start=True,
                    rng=np.random.default_rng(1)),
                pgd(model_np, x_np, t_np, eps=0.2, steps=3, random_start=True,
                    rng=np.random.default_rng(1)), x)
    assert_like(targeted_pgd(model, x, tgt, eps=0.2, steps=3),
                targeted_pgd(model_np, x_np, tgt_np, eps=0.2, steps=3), x)
    best, eps, ok = smallest_targeted(model, x, tgt, max_eps=0.5, steps=3, searches=3)
    best_np, eps_np, ok_np = smallest_targeted(model_np, x_np, tgt_np, max_eps=0.5, steps=3,
                                               searches=3)
    assert_like(best, best_np, x)
    np.testing.assert_array_equal(ok, ok_np)
    np.testing.assert_allclose(eps, eps_np)
    fooled, target, prob = fooling_images(model, x, 0.3, classes=3)
    fooled_np, target_np, prob_np = fooling_images(model_np, x_np, 0.3, classes=3)
    assert_like(fooled, fooled_np, x)
    assert_like(prob, prob_np, x)
    np.testing.assert_array_equal(to_numpy(target), target_np)


def test_iterative_attacks_never_need_float64():
    xps = pytest.importorskip("array_api_strict")
    model_np, model, x_np, t_np, x, t = backend_case(xps, xps.Device("no_float64"))
    assert_like(pgd(model, x, t, eps=0.2, steps=2, random_start=True,
                    rng=np.random.default_rng(1)),
                pgd(model_np, x_np, t_np, eps=0.2, steps=2, random_start=True,
                    rng=np.random.default_rng(1)), x)
    best, _, _ = smallest_targeted(model, x, (t + 1) % 3, max_eps=0.5, steps=2, searches=2)
    assert_like(best, smallest_targeted(model_np, x_np, (t_np + 1) % 3, max_eps=0.5, steps=2,
                                        searches=2)[0], x)
    assert_like(fooling_images(model, x, 0.3, classes=3)[0],
                fooling_images(model_np, x_np, 0.3, classes=3)[0], x)


def test_l2_targeted_pgd_stays_in_its_ball_and_the_box_and_reaches_targets():
    from attacks import targeted_pgd_l2
    from data.mnist import load_mnist
    from nn import predict, reference_cnn
    model = reference_cnn(rng=np.random.default_rng(0)).eval()
    x, t = load_mnist("test", limit=16)
    target = (t + 1) % 10
    for eps in (0.5, 4.0):
        adv = targeted_pgd_l2(model, x, target, eps=eps, steps=30)
        size = np.sqrt(((adv - x) ** 2).sum(axis=(1, 2, 3)))
        assert adv.dtype == x.dtype and adv.min() >= 0 and adv.max() <= 1
        assert np.all(size <= eps * (1 + 1e-5))
    assert np.mean(predict(model, adv) == target) > 0.8  # at L2 4 nearly every digit moves

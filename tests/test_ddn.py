"""Tests for attacks/minimum_norm.py: DDN, the minimum-norm L2 attack.

- on a linear model the smallest L2 perturbation has a closed form, |margin| / ||w||_2 for two
  classes, min over the other classes j of (z_t - z_j) / ||w_t - w_j||_2 for ten (inside the
  box): DDN on the logit margin finds it to within 0.1% (ten classes: with restarts, since one
  run can lock onto the boundary of a class that is not the nearest); on the cross-entropy,
  the paper's loss, it stops 5-30% above it, which the test pins down;
- a masked gradient: a model whose input gradient is exactly zero at (and around) every data
  point, a ReLU threshold that no image reaches; L2 PGD from the image never moves, DDN still
  finds the closed-form minimum (random directions where the gradient is zero, and restarts
  from random images);
- [0, 1], misclassified images left alone, BatchNorm untouched, every backend, no float64.
"""
import csv
import json

import numpy as np
import pytest

from attacks import targeted_pgd_l2
from attacks.minimum_norm import ddn, ddn_run, l2_norms, margin_loss, noise_start
from helpers import assert_like
from nn import Dense, Flatten, ReLU, Sequential, eval_mode
from test_apgd import backend_case, batch, tiny_model
from test_attacks import assert_state_equal, modes


def predict(model, x):
    with eval_mode(model):
        return np.argmax(model.forward(x), axis=1)


def linear_case(seed, n=30, classes=10):
    """A `classes`-class linear model on 6x6 images in [0.35, 0.65], its labels, and per image the
    exact minimal L2 distance to another class (N,), the minimiser inside [0, 1] (checked)."""
    rng = np.random.default_rng(seed)
    model = Sequential(Flatten(), Dense(36, classes, rng=rng))
    x = rng.uniform(0.35, 0.65, (n, 1, 6, 6))
    W, b = model.layers[1].params["W"], model.layers[1].params["b"]
    z = x.reshape(n, -1) @ W + b
    t = np.argmax(z, axis=1)
    exact = np.full(n, np.inf)
    for i in range(n):
        for j in set(range(classes)) - {t[i]}:
            w = W[:, j] - W[:, t[i]]
            d = (z[i, t[i]] - z[i, j]) / np.linalg.norm(w)
            if d < exact[i]:
                exact[i], point = d, x[i].ravel() + d * w / np.linalg.norm(w)
        assert np.all((point >= 0) & (point <= 1))  # the box does not bind
    return model, x, t, exact


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("classes, restarts", [(2, 0), (10, 9)])
def test_ddn_finds_the_minimal_perturbation_of_a_linear_model(seed, classes, restarts):
    model, x, t, exact = linear_case(seed, classes=classes)
    adv = ddn(model, x, t, steps=300, restarts=restarts, loss_fn=margin_loss,
              rng=np.random.default_rng(seed))
    dist = l2_norms(adv - x)
    assert np.all(predict(model, adv) != t)
    assert np.all(dist >= exact * (1 - 1e-9))                 # nothing beats the exact minimum
    np.testing.assert_allclose(dist, exact, rtol=1e-3)        # and DDN gets within 0.1% of it
    assert np.all((adv >= 0) & (adv <= 1))


def test_on_the_cross_entropy_ddn_stops_above_the_minimum():
    model, x, t, exact = linear_case(0)
    ratio = l2_norms(ddn(model, x, t, steps=200) - x) / exact
    assert np.all(ratio > 1.05) and np.all(ratio < 1.3)      # the softmax mixes the classes


def masked_case(seed, n=20, a=4.0, b0=0.2):
    """Two classes: z_0 = b0, z_1 = a relu(<w, x> - c), w a random unit vector over 36 pixels,
    images with c - 0.3 <= <w, x> <= c - 0.1 (all class 0, the ReLU off: dz/dx = 0 at and
    around every image); the closed-form minimum is c + b0 / a - <w, x>, inside the box."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=36)
    w /= np.linalg.norm(w)
    x = rng.uniform(0.3, 0.7, (20 * n, 1, 6, 6))
    proj = x.reshape(len(x), -1) @ w
    c = float(np.median(proj)) + 0.2
    x = x[(proj >= c - 0.3) & (proj <= c - 0.1)][:n]
    first, second = Dense(36, 1, rng=rng), Dense(1, 2, rng=rng)
    first.params["W"][...], first.params["b"][...] = w[:, None], -c
    second.params["W"][...], second.params["b"][...] = [[0.0, a]], [b0, 0.0]
    model = Sequential(Flatten(), first, ReLU(), second)
    exact = c + b0 / a - x.reshape(len(x), -1) @ w
    points = x.reshape(len(x), -1) + exact[:, None] * w
    assert len(x) == n and np.all((points >= 0) & (points <= 1))
    return model, x, np.zeros(n, dtype=np.int64), exact


def test_l2_pgd_is_masked_there_and_ddn_is_not():
    model, x, t, exact = masked_case(0)
    with eval_mode(model):
        model.forward(x)
        dx, _ = model.backward(np.ones((len(x), 2)), param_grads=False)
    assert np.all(dx == 0)                                    # no direction at the data point
    stuck = targeted_pgd_l2(model, x, np.ones_like(t), eps=2 * exact, steps=20)
    np.testing.assert_array_equal(stuck, x)                   # L2 PGD never leaves the image
    adv = ddn(model, x, t, steps=200, restarts=2, loss_fn=margin_loss,
              rng=np.random.default_rng(1))
    assert np.all(predict(model, adv) == 1)
    np.testing.assert_allclose(l2_norms(adv - x), exact, rtol=1e-3)
    # from the image alone, random directions where the gradient is zero, and a growing radius
    adv = ddn(model, x, t, steps=200, loss_fn=margin_loss, rng=np.random.default_rng(1))
    found = predict(model, adv) == 1
    assert np.mean(found) >= 0.8
    np.testing.assert_allclose(l2_norms(adv - x)[found], exact[found], rtol=1e-3)


def test_a_random_start_alone_finds_it():
    model, x, t, exact = masked_case(1)
    start = noise_start(model, x, t, np.random.default_rng(2))
    assert np.all(predict(model, start) == 1)
    adv, dist = ddn_run(model, x, t, steps=200, start=start, loss_fn=margin_loss)
    assert np.all(np.isfinite(dist)) and np.all(predict(model, adv) == 1)
    assert np.all(dist <= exact * 1.06)                       # DDN's radius steps of gamma = 5%


def test_ddn_leaves_misclassified_images_and_stays_in_the_box():
    model = tiny_model(2)
    x, t = batch(3, 9, np.float32, model)
    adv = ddn(model, x, t, steps=20, restarts=1, rng=np.random.default_rng(0))
    assert adv.dtype == x.dtype and np.all((adv >= 0) & (adv <= 1))
    wrong = predict(model, x) != t
    np.testing.assert_array_equal(adv[wrong], x[wrong])
    changed = np.any(adv != x, axis=(1, 2, 3))
    assert np.all(predict(model, adv)[changed] != t[changed])


@pytest.mark.parametrize("train", [False, True])
def test_ddn_touches_no_statistic_or_mode(train):
    model = tiny_model(4)
    x, t = batch(4, 6, np.float32, model)
    model.train() if train else model.eval()
    state, before = {k: np.copy(v) for k, v in model.state_dict().items()}, modes(model)
    ddn(model, x, t, steps=3, restarts=1)
    assert_state_equal(model.state_dict(), state)
    assert modes(model) == before


def test_ddn_on_every_backend(xp):
    model_np, model, x_np, t_np, x, t = backend_case(xp)
    assert_like(ddn(model, x, t, steps=5, restarts=1, rng=np.random.default_rng(0)),
                ddn(model_np, x_np, t_np, steps=5, restarts=1, rng=np.random.default_rng(0)), x,
                atol=1e-5)


def test_ddn_never_needs_float64():
    xps = pytest.importorskip("array_api_strict")
    model_np, model, x_np, t_np, x, t = backend_case(xps, xps.Device("no_float64"))
    assert_like(ddn(model, x, t, steps=5, restarts=1, rng=np.random.default_rng(0)),
                ddn(model_np, x_np, t_np, steps=5, restarts=1, rng=np.random.default_rng(0)), x,
                atol=1e-5)


def test_the_minimum_experiment(cli, checkpoint, tmp_path):
    code, _, err = cli("minimum", "--checkpoint", checkpoint, "--out", tmp_path, "--images", 4,
                         "--steps", 5, "--restarts", 1, "--decision", tmp_path / "none")
    assert code == 0, err
    report = json.loads((tmp_path / "minimum.json").read_text())
    (summary,) = report["models"].values()
    assert len(summary["median_after_runs"]) == 2 and summary["old_whitebox_median"] is None
    with open(tmp_path / "minimum.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["images"]
    # the best over the runs, bisected, is never farther than the run from the image
    assert all(float(r["ddn"]) <= float(r["from_image"]) + 1e-5 for r in rows)
    assert (tmp_path / "minimum.png").read_bytes().startswith(b"\x89PNG")

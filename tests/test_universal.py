"""Tests for attacks/universal.py: the adversarial patch and the universal perturbation.

The pasted patch changes nothing outside its (warped) mask and keeps the image in [0, 1]; its
gradient is the finite differences' through the warp, and train_patch, on a model trained
briefly on real digits, lowers the target's loss on digits and placements it never saw; a
universal perturbation stays in its ball and fools; every backend.
"""
import numpy as np
import pytest

from attacks.universal import (
    paste,
    patch_canvas,
    patch_gradient,
    placements,
    train_patch,
    universal_perturbation,
)
from experiments.common import load_model
from helpers import assert_like
from nn import predict
from nn.gradcheck import numerical_gradient
from nn.transforms import warp_forward


def test_the_patch_stays_inside_its_mask_and_the_image_in_the_unit_interval():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 1, 28, 28))
    patch = rng.uniform(0, 1, (6, 6))
    theta = placements(rng, 8, 6)
    out, _ = paste(x, patch, theta)
    mask = warp_forward(np.broadcast_to(patch_canvas(patch)[1], x.shape).copy(), theta)[0]
    np.testing.assert_array_equal(out[mask == 0], x[mask == 0])
    assert out.min() >= 0 and out.max() <= 1 and np.all(mask.sum(axis=(1, 2, 3)) > 25)


def test_the_patch_gradient_is_the_finite_differences():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.2, 0.4, (3, 1, 28, 28))
    patch = rng.uniform(0.2, 0.4, (4, 4))
    theta = placements(rng, 3, 4)
    dout = rng.standard_normal(x.shape)
    numeric = numerical_gradient(lambda: paste(x, patch, theta)[0], patch, dout)
    cache = paste(x, patch, theta)[1]
    np.testing.assert_allclose(patch_gradient(dout, cache, 4), numeric, rtol=1e-6, atol=1e-8)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A CNN trained for one epoch on 2,000 real digits."""
    import train
    from test_train import call
    run = tmp_path_factory.mktemp("patch") / "run"
    assert call(train.main, ["--train-limit", 2000, "--test-limit", 100, "--epochs", 1,
                             "--out", run]) == 0
    return load_model(run / "checkpoint.npz", np)[0]


def test_train_patch_lowers_the_targets_loss_on_held_out_images_and_placements(model):
    """40 steps of train_patch (14x14, target 3) on 300 training digits: on 200 test digits with
    placements it never saw, the target's cross-entropy falls from its starting patch's (3.76 to
    3.05) and the share of digits read as 3 rises (4.5% to 15.5%)."""
    from data.mnist import load_mnist
    from nn import eval_mode, softmax_cross_entropy
    x, _ = load_mnist("train", limit=300)
    test_x, _ = load_mnist("test", limit=200)
    theta = placements(np.random.default_rng(1), 200, 14)

    def loss_and_rate(patch):
        pasted = paste(test_x, patch, theta)[0].astype(np.float32)
        with eval_mode(model):
            loss, _ = softmax_cross_entropy(model.forward(pasted), np.full(200, 3))
        return float(loss), float(np.mean(predict(model, pasted) == 3))
    trained = train_patch(model, x, target=3, side=14, steps=40, batch=32, lr=0.05,
                          rng=np.random.default_rng(0))
    assert trained.shape == (14, 14) and trained.min() >= 0 and trained.max() <= 1
    start = np.random.default_rng(0).uniform(0, 1, (14, 14))  # train_patch's first patch
    (loss0, rate0), (loss, rate) = loss_and_rate(start), loss_and_rate(trained)
    assert loss < loss0 - 0.4 and rate > rate0 + 0.05, (loss0, loss, rate0, rate)


def test_a_universal_perturbation_stays_in_its_ball_and_fools(model):
    from data.mnist import load_mnist
    x, _ = load_mnist("train", limit=300)
    v = universal_perturbation(model, x, 0.3, steps=30, batch=32, rng=np.random.default_rng(4))
    assert v.shape == (1, 1, 28, 28) and np.abs(v).max() <= 0.3 + 1e-12
    clean = predict(model, x)
    fooled = np.mean(predict(model, np.clip(x + v, 0, 1).astype(np.float32)) != clean)
    assert fooled > 0.2, fooled


def test_patch_and_universal_on_every_backend(xp):
    from nn import reference_cnn
    rng = np.random.default_rng(5)
    x_np = rng.uniform(0, 1, (4, 1, 28, 28)).astype(np.float32)
    patch, theta = rng.uniform(0, 1, (6, 6)), placements(rng, 4, 6)
    assert_like(paste(xp.asarray(x_np), patch, theta)[0], paste(x_np, patch, theta)[0],
                xp.asarray(x_np))
    model, model_np = reference_cnn().to(xp), reference_cnn()
    v = universal_perturbation(model, x_np, 0.1, steps=2, batch=4, rng=np.random.default_rng(6))
    np.testing.assert_allclose(v, universal_perturbation(model_np, x_np, 0.1, steps=2, batch=4,
                                                         rng=np.random.default_rng(6)))

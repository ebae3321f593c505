"""Tests for nn/transforms.py: the differentiable transformations of the physical-world attacks.

- each family's backward against central differences of sum(out * dout), in float64, on random
  parameters drawn by the family itself (away from the clips' kinks);
- forwards against slow references: a 90-degree rotation is np.rot90, the identity warp and a
  zero-strength family change nothing, a shift by one pixel moves the image by one pixel, blur
  against a loop, quantisation to 8 bits and its straight-through gradient;
- every backend: namespace, device and dtype kept, values equal to NumPy's.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import assert_like
from nn.gradcheck import numerical_gradient, rel_error
from nn.transforms import FAMILIES, Blur, Chain, Light, Noise, Quantise, Warp, print_and_photograph

SHAPE = (2, 1, 8, 8)


def check_backward(family, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.3, 0.7, SHAPE)  # inside [0, 1] after a mild light or noise change
    params = family.sample(rng, SHAPE)
    out, cache = family.forward(x, params)
    dout = rng.standard_normal(out.shape)
    dx = family.backward(dout, cache)
    numeric = numerical_gradient(lambda: family.forward(x, params)[0], x, dout)
    # elements near 0 (a narrow blur's far weights) get an absolute tolerance
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)
    return rel_error(numeric[np.abs(numeric) > 1e-3], dx[np.abs(numeric) > 1e-3])


@given(seed=st.integers(0, 2**32 - 1))
@pytest.mark.parametrize("make", [lambda: Warp(1.0, 30, 0.1, 0.2), lambda: Blur(1.0, 1.5),
                                  lambda: Light(0.5), lambda: Noise(0.5, 0.05),
                                  lambda: Chain(Blur(0.5), Warp(0.5), Light(0.3))],
                         ids=["warp", "blur", "light", "noise", "chain"])
def test_backward_matches_finite_differences(make, seed):
    assert check_backward(make(), seed) < 1e-6


def warp_reference(x, theta):
    """The slow reference: the warp as a dense (HW, HW) matrix per image, built pixel by pixel
    from the 4 neighbours of each output pixel's source point."""
    N, C, H, W = x.shape
    out = np.zeros_like(x)
    for n in range(N):
        M = np.zeros((H * W, H * W))
        for i in range(H):
            for j in range(W):
                u, v = (2 * j + 1) / W - 1, (2 * i + 1) / H - 1
                sx, sy = theta[n] @ [u, v, 1]
                px, py = ((sx + 1) * W - 1) / 2, ((sy + 1) * H - 1) / 2
                for X in (int(np.floor(px)), int(np.floor(px)) + 1):
                    for Y in (int(np.floor(py)), int(np.floor(py)) + 1):
                        if 0 <= X < W and 0 <= Y < H:
                            M[i * W + j, Y * W + X] += (1 - abs(px - X)) * (1 - abs(py - Y))
        out[n] = (x[n].reshape(C, -1) @ M.T).reshape(C, H, W)
    return out


@pytest.mark.parametrize("strength", [0.5, 1.0, 1.5])
def test_the_warp_is_the_dense_reference_and_its_backward_the_transpose(strength):
    rng = np.random.default_rng(int(10 * strength))
    x, y = rng.uniform(0, 1, (3, 2, 9, 9)), rng.standard_normal((3, 2, 9, 9))
    family = Warp(strength, 30, 0.1, 0.2)
    theta = family.sample(rng, x.shape)
    out, cache = family.forward(x, theta)
    np.testing.assert_allclose(out, warp_reference(x, theta), atol=1e-12)
    # <W x, y> = <x, W^T y>: the backward's taps hold every pair of the forward's map
    assert np.sum(out * y) == pytest.approx(np.sum(x * family.backward(y, cache)), rel=1e-12)


def test_rotation_by_90_degrees_is_rot90_and_the_identity_changes_nothing():
    x = np.random.default_rng(0).uniform(0, 1, (3, 1, 28, 28))
    quarter = np.array([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]] * 3)
    np.testing.assert_allclose(Warp().forward(x, quarter)[0][:, 0],
                               np.rot90(x[:, 0], 1, axes=(1, 2)), atol=1e-12)
    identity = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]] * 3)
    np.testing.assert_allclose(Warp().forward(x, identity)[0], x, atol=1e-12)
    # one pixel to the right: theta's shift is 2 / W per pixel (the image spans [-1, 1])
    right = np.array([[[1.0, 0.0, -2 / 28], [0.0, 1.0, 0.0]]] * 3)
    out = Warp().forward(x, right)[0]
    np.testing.assert_allclose(out[..., 1:], x[..., :-1], atol=1e-12)
    assert np.all(out[..., 0] == 0)  # what came from outside the image is black


def test_zero_strength_is_the_identity():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (4, 1, 28, 28))
    for name, make in FAMILIES.items():
        family = make(0.0)
        out, _ = family.forward(x, family.sample(rng, x.shape))
        expected = np.round(x * 255) / 255 if name in ("quantise", "photo") else x
        np.testing.assert_allclose(out, expected, atol=1e-6, err_msg=name)


def test_blur_is_a_normalised_gaussian_loop():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (1, 1, 6, 6))
    sigma = 0.9
    out = Blur().forward(x, np.array([sigma]))[0][0, 0]
    expected = np.zeros((6, 6))
    for i in range(6):
        for j in range(6):
            w = np.array([[np.exp(-((i - a) ** 2 + (j - b) ** 2) / (2 * sigma ** 2))
                           for b in range(6)] for a in range(6)])
            # separable normalisation: rows and columns each sum to one
            wr = np.exp(-(i - np.arange(6)) ** 2 / (2 * sigma ** 2))
            wc = np.exp(-(j - np.arange(6)) ** 2 / (2 * sigma ** 2))
            expected[i, j] = np.sum(w * x[0, 0]) / (wr.sum() * wc.sum())
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_quantisation_rounds_to_8_bits_with_a_straight_through_gradient():
    x = np.array([0.0, 0.001, 0.5, 0.9987, 1.0]).reshape(1, 1, 1, 5)
    q = Quantise()
    out, cache = q.forward(x, None)
    np.testing.assert_array_equal(out * 255, np.round(out * 255))
    assert np.max(np.abs(out - x)) <= 0.5 / 255 + 1e-12
    dout = np.arange(5.0).reshape(x.shape)
    np.testing.assert_array_equal(q.backward(dout, cache), dout)


def test_the_composite_stays_in_the_unit_interval_and_is_reproducible():
    x = np.random.default_rng(3).uniform(0, 1, (5, 1, 28, 28)).astype(np.float32)
    family = print_and_photograph()
    a = family.forward(x, family.sample(np.random.default_rng(7), x.shape))[0]
    b = family.forward(x, family.sample(np.random.default_rng(7), x.shape))[0]
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - x).mean() > 0.01


def test_transforms_on_every_backend(xp):
    rng = np.random.default_rng(4)
    x_np = rng.uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    x = xp.asarray(x_np)
    family = print_and_photograph()
    params = family.sample(rng, x_np.shape)
    out, cache = family.forward(x, params)
    ref, ref_cache = family.forward(x_np, params)
    assert_like(out, ref, x)
    dout = rng.standard_normal(x_np.shape).astype(np.float32)
    assert_like(family.backward(xp.asarray(dout), cache), family.backward(dout, ref_cache), x)


# --- Expectation over Transformation (attacks.eot_pgd) -----------------------------------------

def eot_case():
    from data.mnist import load_mnist
    from nn import reference_cnn
    x, t = load_mnist("test", limit=6)
    return reference_cnn(rng=np.random.default_rng(0)).eval(), x, t


def test_eot_with_the_identity_is_pgd():
    from attacks import eot_pgd, pgd
    model, x, t = eot_case()
    np.testing.assert_array_equal(
        eot_pgd(model, x, t, Chain(), eps=0.2, steps=5, samples=1, rng=np.random.default_rng(0)),
        pgd(model, x, t, eps=0.2, steps=5, keep_first=False))


def test_the_expected_gradient_averages_gradients_through_fresh_transformations():
    from attacks.gradient import input_gradient
    from attacks.iterative import expected_gradient
    from nn import eval_mode
    model, x, t = eot_case()
    family = print_and_photograph()
    with eval_mode(model):
        _, got = expected_gradient(model, x, t, family, samples=3, rng=np.random.default_rng(5))
    rng, manual = np.random.default_rng(5), 0
    for _ in range(3):
        tx, cache = family.forward(x, family.sample(rng, x.shape))
        manual = manual + family.backward(input_gradient(model, tx, t), cache)
    np.testing.assert_allclose(got, manual / 3, rtol=1e-5, atol=1e-9)


def test_eot_stays_in_the_ball_and_the_unit_interval():
    from attacks import eot_pgd
    model, x, t = eot_case()
    adv = eot_pgd(model, x, t, print_and_photograph(), eps=0.1, steps=3, samples=2,
                  rng=np.random.default_rng(1))
    assert adv.dtype == x.dtype and adv.min() >= 0 and adv.max() <= 1
    assert np.abs(adv - x).max() <= 0.1 + 1e-6

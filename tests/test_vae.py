"""Tests for nn/vae.py: the sampling step, the KL terms and the whole negative ELBO against
central differences in float64; training lowers the loss on real digits."""
import numpy as np
import pytest

from nn.gradcheck import as_float64, numerical_gradient
from nn.vae import (
    VAE,
    kl_gaussians,
    kl_standard_normal,
    reparameterize_backward,
    reparameterize_forward,
)


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_reparameterisation_backward():
    rng = np.random.default_rng(0)
    mu, logvar, eps = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    dz = rng.normal(size=(3, 4))
    _, cache = reparameterize_forward(mu, logvar, eps)
    dmu, dlogvar = reparameterize_backward(dz, cache)
    close(dmu, numerical_gradient(lambda: reparameterize_forward(mu, logvar, eps)[0], mu, dz))
    close(dlogvar, numerical_gradient(lambda: reparameterize_forward(mu, logvar, eps)[0], logvar,
                                      dz))


def test_kl_terms_and_their_gradients():
    rng = np.random.default_rng(1)
    mu, logvar = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    mu2, logvar2 = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    one = np.ones(3)
    kl, (dmu, dlogvar) = kl_standard_normal(mu, logvar)
    close(dmu, numerical_gradient(lambda: kl_standard_normal(mu, logvar)[0], mu, one))
    close(dlogvar, numerical_gradient(lambda: kl_standard_normal(mu, logvar)[0], logvar, one))
    # the standard normal is the special case, and KL(q || q) = 0
    close(kl, kl_gaussians(mu, logvar, 0 * mu, 0 * logvar)[0])
    close(kl_gaussians(mu, logvar, mu, logvar)[0], np.zeros(3))
    _, (dmu2, dlogvar2) = kl_gaussians(mu, logvar, mu2, logvar2)
    close(dmu2, numerical_gradient(lambda: kl_gaussians(mu, logvar, mu2, logvar2)[0], mu, one))
    close(dlogvar2, numerical_gradient(lambda: kl_gaussians(mu, logvar, mu2, logvar2)[0], logvar,
                                       one))


def as64(vae):
    for part in vae.parts.values():
        as_float64(part)
    return vae


def test_the_negative_elbo_backward_to_every_parameter():
    rng = np.random.default_rng(2)
    vae = as64(VAE(code=3, hidden=5, rng=rng))
    x = rng.uniform(0.1, 0.9, (4, 1, 28, 28))
    eps = rng.normal(size=(4, 3))
    _, grads = vae.loss_and_gradients(x, eps)
    for name in ("enc.1.W", "enc.3.b", "dec.0.W", "dec.2.b"):
        part, key = name.split(".", 1)
        p = vae.parts[part].params[key]
        numeric = numerical_gradient(lambda: np.asarray(vae.loss_and_gradients(x, eps)[0]), p,
                                     np.ones(()))
        # rtol/atol as elsewhere, atol 1e-7: a ReLU input within h of 0 bends a difference
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-7)


def test_training_lowers_the_loss_on_real_digits():
    from data.mnist import load_mnist
    from nn import Adam
    x, _ = load_mnist("train", limit=512)
    vae, opt, rng = VAE(code=8, hidden=64, rng=np.random.default_rng(3)), Adam(1e-3), \
        np.random.default_rng(4)
    losses = []
    for step in range(60):
        batch = x[rng.integers(0, len(x), 64)]
        loss, grads = vae.loss_and_gradients(batch, rng.normal(size=(64, 8)))
        opt.step(vae.params, grads)
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    r = vae.reconstruct(x[:5])
    assert r.shape == (5, 784) and r.min() >= 0 and r.max() <= 1 and r.dtype == np.float32
    with pytest.raises(KeyError):
        vae.parts["nope"]

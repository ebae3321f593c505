"""A variational autoencoder (Kingma and Welling 2014) from the project's layers.

    encoder  Flatten -> Dense(784, hidden) -> ReLU -> Dense(hidden, 2 code): mu and log sigma^2
    sample   z = mu + exp(logvar / 2) eps, eps ~ N(0, I) drawn on the host (reparameterisation)
    decoder  Dense(code, hidden) -> ReLU -> Dense(hidden, 784): logits of Bernoulli pixels
    loss     per image, sum over pixels of BCE(sigmoid(logits), x) + KL(N(mu, sigma^2) || N(0, I)),
             averaged over the batch (the negative ELBO)
The sampling step and the KL terms are pure forward/backward pairs here; the layers' own
backward carries the rest, to the parameters and to the pixels (what an attack needs).
"""
import numpy as np

from .backend import device_of, xp_of
from .layers import Dense, Flatten, ReLU
from .losses import bce_with_logits
from .model import Parts, Sequential


def reparameterize_forward(mu, logvar, eps):
    """z = mu + exp(logvar / 2) eps: mu, logvar, eps (N, K) -> (z, cache)."""
    xp = xp_of(mu)
    std = xp.exp(0.5 * logvar)
    return mu + std * eps, (eps, std)


def reparameterize_backward(dz, cache):
    """(dmu, dlogvar) = (dz, dz eps sigma / 2)."""
    eps, std = cache
    return dz, dz * eps * std * 0.5


def kl_standard_normal(mu, logvar):
    """KL(N(mu, sigma^2) || N(0, I)) per image, -1/2 sum(1 + logvar - mu^2 - sigma^2) (N,),
    and the gradient of its sum: (dmu, dlogvar) = (mu, (sigma^2 - 1) / 2)."""
    xp = xp_of(mu)
    var = xp.exp(logvar)
    return -0.5 * xp.sum(1 + logvar - mu * mu - var, axis=1), (mu, 0.5 * (var - 1))


def kl_gaussians(mu, logvar, mu2, logvar2):
    """KL(N(mu, sigma^2) || N(mu2, sigma2^2)) per image (N,), diagonal Gaussians (N, K), and the
    gradient of its sum with respect to (mu, logvar): ((mu - mu2) / sigma2^2,
    (sigma^2 / sigma2^2 - 1) / 2). Tabacof et al.'s attack pulls q(z | x + d) to q(z | target)."""
    xp = xp_of(mu)
    var, var2 = xp.exp(logvar), xp.exp(logvar2)
    diff = mu - mu2
    kl = 0.5 * xp.sum(logvar2 - logvar + (var + diff * diff) / var2 - 1, axis=1)
    return kl, (diff / var2, 0.5 * (var / var2 - 1))


class VAE(Parts):
    """The encoder and the decoder (two Sequentials) with the sampling step between them."""

    def __init__(self, code=16, hidden=256, rng=None):
        rng = np.random.default_rng(0) if rng is None else rng
        self.code = code
        self.encoder = Sequential(Flatten(), Dense(28 * 28, hidden, rng=rng), ReLU(),
                                  Dense(hidden, 2 * code, rng=rng))
        self.decoder = Sequential(Dense(code, hidden, rng=rng), ReLU(),
                                  Dense(hidden, 28 * 28, rng=rng))
        self.parts = {"enc": self.encoder, "dec": self.decoder}

    def encode(self, x):
        """(mu, logvar) (N, code) of images x (N, 1, 28, 28); keeps the encoder's caches."""
        h = self.encoder.forward(x)
        return h[:, :self.code], h[:, self.code:]

    def encode_backward(self, dmu, dlogvar):
        """dx from the gradients of mu and logvar, through the encoder."""
        xp = xp_of(dmu)
        return self.encoder.backward(xp.concat([dmu, dlogvar], axis=1), param_grads=False)[0]

    def loss_and_gradients(self, x, eps):
        """(mean negative ELBO, {param name: gradient}) of images x (N, 1, 28, 28) with the
        host noise eps (N, code) of the sampling step."""
        xp = xp_of(x)
        N = x.shape[0]
        mu, logvar = self.encode(x)
        z, cache = reparameterize_forward(mu, logvar, xp.asarray(eps, dtype=x.dtype,
                                                                 device=device_of(x)))
        logits = self.decoder.forward(z)
        recon, dlogits = bce_with_logits(logits, xp.reshape(x, (N, -1)))  # sum/N over pixels
        kl, (dmu_kl, dlogvar_kl) = kl_standard_normal(mu, logvar)
        dz, dec_grads = self.decoder.backward(dlogits)
        dmu, dlogvar = reparameterize_backward(dz, cache)
        _, enc_grads = self.encoder.backward(
            xp.concat([dmu + dmu_kl / N, dlogvar + dlogvar_kl / N], axis=1), input_grad=False)
        grads = {**{f"enc.{k}": v for k, v in enc_grads.items()},
                 **{f"dec.{k}": v for k, v in dec_grads.items()}}
        return recon + xp.sum(kl) / N, grads

    def reconstruct(self, x):
        """sigmoid(decoder(mu)) (N, 784): the reconstruction at the mean of q(z | x)."""
        xp = xp_of(x)
        mu, _ = self.encode(x)
        return 1 / (1 + xp.exp(-self.decoder.forward(mu)))

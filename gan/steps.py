"""One alternating update of each GAN network: D on real and generated images, then G through D.

Both networks stay in train mode: D's dropout (if any) is on in both steps, as in Keras-style
dense GANs; G has no mode-dependent layer. Each
`Sequential` keeps one cache per layer, so every forward is followed by its own backward.
"""
from typing import NamedTuple

from nn.backend import xp_of
from nn.functional import sigmoid_forward
from nn.losses import bce_with_logits
from nn.optim import add_grads

from .losses import generator_loss


def _mean_prob(logits):
    """Mean sigmoid(logits) as a Python float."""
    s, _ = sigmoid_forward(logits)
    return float(xp_of(s).mean(s))


class DStep(NamedTuple):
    loss: float     # BCE(D(x), real_label) + BCE(D(G(z)), 0)
    d_real: float   # mean D(x), a probability, before the update
    d_fake: float   # mean D(G(z)), before the update


class GStep(NamedTuple):
    loss: float       # the generator cost of the chosen kind, before the update
    d_fake: float     # mean D(G(z)), before the update
    grad_norm: float  # mean over the batch of ||d loss_n / d G(z_n)||_2 (see generator_step)


def discriminator_step(G, D, opt_d, x_real, z, real_label=1.0):
    """One optimizer step of D on real images x_real (N, ...) and generated images G(z), z (M, Z).

    D's parameter gradients of BCE(D(x), real_label) and of BCE(D(G(z)), 0) (each a mean over its
    own batch) are summed into one step; real_label < 1 is one-sided label smoothing. G only
    runs forward and is not updated.
    """
    fake = G.forward(z)
    real_logits = D.forward(x_real)
    real_loss, dreal = bce_with_logits(real_logits, real_label)
    _, real_grads = D.backward(dreal, input_grad=False)
    fake_logits = D.forward(fake)
    fake_loss, dfake = bce_with_logits(fake_logits, 0.0)
    _, fake_grads = D.backward(dfake, input_grad=False)
    opt_d.step(D.params, add_grads(real_grads, fake_grads))
    return DStep(float(real_loss + fake_loss), _mean_prob(real_logits), _mean_prob(fake_logits))


def generator_step(G, D, opt_g, z, kind):
    """One optimizer step of G on the generator cost `kind` for z (N, Z); D is not updated.

    The gradient reaches G through D's backward: dL/dG(z) = D.backward(dL/dlogits), whose
    parameter gradients are dropped. grad_norm reports how much signal reaches G's output: with
    L = (1/N) sum_n l_n, row n of N * dL/dG(z) is d l_n / d G(z_n) (the per-sample cost's
    gradient, independent of N), and grad_norm is the mean of its L2 norms over the batch.
    """
    fake = G.forward(z)
    logits = D.forward(fake)
    loss, dlogits = generator_loss(logits, kind)
    dfake, _ = D.backward(dlogits, param_grads=False)
    _, g_grads = G.backward(dfake, input_grad=False)
    opt_g.step(G.params, g_grads)
    xp = xp_of(dfake)
    N = dfake.shape[0]
    per_sample = xp.reshape(dfake, (N, -1)) * N
    norms = xp.sqrt(xp.sum(per_sample * per_sample, axis=1))
    return GStep(float(loss), _mean_prob(logits), float(xp.mean(norms)))

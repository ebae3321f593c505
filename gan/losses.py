"""The GAN costs on discriminator logits z = D(x), with D(x) = sigmoid(z) the probability "real".

Discriminator: -E[log D(x)] - E[log(1 - D(G(z)))], two binary cross-entropies (bce_with_logits
of nn/losses.py, taken inline by steps.discriminator_step, one backward after each forward).
Generator, as the lecture writes them (both minimized by G):
    minimax         E[log(1 - D(G(z)))]  = mean(-softplus(z))    dz = -sigmoid(z) / N
    nonsaturating   E[-log D(G(z))]      = mean(softplus(-z))    dz = (sigmoid(z) - 1) / N
The minimax cost saturates when D rejects the samples confidently (z << 0): its gradient
sigmoid(z) vanishes exactly when G most needs one, while the non-saturating one tends to -1/N.
"""
from nn.backend import xp_of
from nn.functional import sigmoid_forward
from nn.losses import softplus

GAN_LOSSES = ("minimax", "nonsaturating")


def generator_loss(fake_logits, kind):
    """Generator cost on D's logits for generated images -> (loss 0-d, dlogits like fake_logits).

    fake_logits (N,) or (N, 1); kind "minimax" (E[log(1 - D(G(z)))]) or "nonsaturating"
    (E[-log D(G(z))]); see the module docstring for the formulas.
    """
    xp = xp_of(fake_logits)
    N = fake_logits.shape[0]
    s, _ = sigmoid_forward(fake_logits)
    if kind == "minimax":
        return -xp.sum(softplus(fake_logits)) / N, -s / N
    if kind == "nonsaturating":
        return xp.sum(softplus(-fake_logits)) / N, (s - 1.0) / N
    raise ValueError(f"unknown generator loss {kind!r}: choose one of {', '.join(GAN_LOSSES)}")

"""Attacking an autoencoder: a small change of the input that makes it reconstruct another image.

A classifier is fooled when its *label* changes; an autoencoder AE is fooled when its
*reconstruction* turns into something else (Tabacof et al. 2016, Kos et al. 2017). Given a
source image x and a target reconstruction r (for example AE of an image of another digit),
the attack looks for x + d with |d| <= eps in every pixel and x + d in [0, 1] such that
AE(x + d) is close to r. It is the targeted PGD of `attacks/iterative.py` with the squared
reconstruction distance ||AE(x + d) - r||^2 in place of the cross-entropy: signed steps down
its gradient with respect to the input, each followed by a projection into the allowed box.
"""
from nn import Adam, Sequential
from nn.backend import device_of, xp_of
from nn.interval import input_box
from nn.losses import mse_loss
from nn.model import eval_mode
from nn.vae import kl_gaussians

from .iterative import per_image, project


def reconstruct(ae, x):
    """AE(x) in eval mode: x (N, 1, 28, 28) -> (N, D) reconstructions (D = 784)."""
    with eval_mode(ae):
        return ae.forward(x)


def distance_and_gradient(ae, x, target):
    """(per-image distance (N,), dL/dx like x) for L = mse_loss(AE(x), target) = mean distance.

    One forward and one backward pass in eval mode: mse_loss gives dL/dAE(x) = 2 (AE(x) - r) / N
    and `ae.backward` carries it to the pixels. Each image's distance depends on its own pixels
    only, so dL/dx[n] is the gradient of image n's distance divided by N (the sign is the same).
    """
    xp = xp_of(x)
    with eval_mode(ae):
        out = ae.forward(x)
        _, dout = mse_loss(out, target)
        dx, _ = ae.backward(dout, param_grads=False)
    diff = out - target
    return xp.sum(diff * diff, axis=1), dx


def autoencoder_attack(ae, x, target, eps=0.1, steps=100, step=None):
    """Projected signed-gradient descent of ||AE(x + d) - target||^2 in the L-infinity ball.

    x (N, 1, 28, 28) in [0, 1]; target (N, D) reconstructions to aim at; eps and step scalars
    or (N,) per-image values; step defaults to 2.5 * eps / steps. Each step:
    x_adv <- clip(x_adv - step * sign(dL/dx_adv), max(x - eps, 0), min(x + eps, 1)).
    Signed steps of a fixed size end up circling the minimum, so the function returns, per
    image, the iterate (x itself included) with the smallest distance: never worse than x.
    Returns x_adv like x with |x_adv - x| <= eps and 0 <= x_adv <= 1. Runs in eval mode.
    """
    xp = xp_of(x)
    if step is None:
        step = 2.5 * eps / max(steps, 1)
    eps, step = per_image(eps, x), per_image(step, x)
    low, high = input_box(x, eps)
    x_adv = best = x
    best_dist = xp.full((x.shape[0],), float("inf"), dtype=x.dtype, device=device_of(x))
    for i in range(steps + 1):
        dist, dx = distance_and_gradient(ae, x_adv, target)
        better = dist < best_dist
        best = xp.where(xp.reshape(better, (-1,) + (1,) * (x.ndim - 1)), x_adv, best)
        best_dist = xp.where(better, dist, best_dist)
        if i < steps:
            x_adv = project(x_adv - step * xp.sign(dx), low, high)
    return best


# --- attacks with an L2 penalty, on the plain autoencoder and the VAE ----------------------------
# Tabacof et al. 2016 pull the *latent* code of x + d toward the target's, Kos et al. 2017 the
# *output*; both minimise  f(x + d) + lam ||d||^2  over d with x + d in [0, 1], swept over lam.

def penalty_attack(objective, x, lam, steps=200, lr=0.01):
    """argmin over d of objective(x + d) + lam ||d||^2 (per image), x + d kept in [0, 1]: Adam
    on d, then the projection onto the box after each step. objective(x_adv) -> (values (N,),
    d values / d x_adv like x). Returns x + d like x."""
    xp = xp_of(x)
    d = xp.zeros_like(x)
    opt = Adam(lr)
    for _ in range(steps):
        _, grad = objective(x + d)
        opt.step({"d": d}, {"d": grad + 2 * lam * d})
        d = xp.clip(x + d, 0.0, 1.0) - x
    return x + d


def ae_output_objective(ae, target):
    """||AE(x) - target||^2 per image and its gradient (target (N, 784) reconstructions)."""
    def f(x):
        dist, dx = distance_and_gradient(ae, x, target)
        return dist, dx * x.shape[0]  # mse_loss averages over the batch
    return f


def ae_latent_objective(ae, code_target, code_layers=4):
    """||enc(x) - code_target||^2, enc the first `code_layers` layers of the AE (to its code)."""
    enc = Sequential(*ae.layers[:code_layers])

    def f(x):
        xp = xp_of(x)
        with eval_mode(enc):
            diff = enc.forward(x) - code_target
            dx, _ = enc.backward(2 * diff, param_grads=False)
        return xp.sum(diff * diff, axis=1), dx
    return f


def vae_latent_objective(vae, mu_t, logvar_t):
    """KL(q(z | x) || q(z | target)) per image and its gradient (Tabacof et al.)."""
    def f(x):
        mu, logvar = vae.encode(x)
        kl, (dmu, dlogvar) = kl_gaussians(mu, logvar, mu_t, logvar_t)
        return kl, vae.encode_backward(dmu, dlogvar)
    return f


def vae_output_objective(vae, target):
    """||sigmoid(dec(mu(x))) - target||^2 per image and its gradient (Kos et al.'s output
    attack on the reconstruction at the mean)."""
    def f(x):
        xp = xp_of(x)
        mu, logvar = vae.encode(x)
        s = 1 / (1 + xp.exp(-vae.decoder.forward(mu)))
        diff = s - target
        dz, _ = vae.decoder.backward(2 * diff * s * (1 - s), param_grads=False)
        return xp.sum(diff * diff, axis=1), vae.encode_backward(dz, xp.zeros_like(logvar))
    return f

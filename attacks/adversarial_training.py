"""One optimizer step of each training mode: the exercise's standard, noise and adversarial
steps, PGD training (Madry et al.), the remedy for the gradient masking FGS training shows, and
IBP training (Gowal et al.), which trains on bounds that prove robustness."""
from nn.interval import margins, margins_backward
from nn.losses import softmax_cross_entropy
from nn.optim import add_grads

from .gradient import fgs_step, loss_and_gradients, sign_noise
from .iterative import pgd


def standard_step(model, optimizer, x, t):
    """Train on the clean batch x (N, C, H, W), t (N,); returns the batch loss (0-d array)."""
    p = loss_and_gradients(model, x, t, input_grad=False)
    optimizer.step(model.params, p.grads)
    return p.loss


def noise_step(model, optimizer, x, t, alpha, rng):
    """Train on x + alpha * {-1, +1} (random signs from host generator rng); returns the loss."""
    return standard_step(model, optimizer, sign_noise(x, alpha, rng), t)


def adversarial_step(model, optimizer, x, t, alpha):
    """The exercise's adversarial training step; returns J(x) + J(x_fgs), the loss it descends.

    1. forward and backward on the clean batch: parameter gradients and dJ/dx, in one pass;
    2. the FGS batch x + alpha * sign(dJ/dx), clipped to [0, 1], from that same dJ/dx;
    3. forward and backward on the FGS batch: its parameter gradients;
    4. the sum of both parameter gradients;
    5. one optimizer step with that sum.
    """
    clean = loss_and_gradients(model, x, t)
    x_fgs = fgs_step(x, clean.dx, alpha)
    adv = loss_and_gradients(model, x_fgs, t, input_grad=False)
    total = add_grads(clean.grads, adv.grads)
    optimizer.step(model.params, total)
    return clean.loss + adv.loss


def pgd_step(model, optimizer, x, t, eps, steps, rng):
    """Madry et al.'s step: train on the PGD batch alone; returns its loss.

    x_adv = pgd(x, eps, `steps` steps of 2.5 eps / steps, random start from host generator rng,
    last iterate),
    crafted in eval mode (BatchNorm on its running statistics, which crafting never changes), then
    one optimizer step on J(x_adv). It costs steps + 1 forward and backward passes per batch.
    """
    x_adv = pgd(model, x, t, eps=eps, steps=steps, random_start=True, rng=rng, keep_first=False)
    return standard_step(model, optimizer, x_adv, t)


def ibp_step(model, optimizer, x, t, eps, kappa):
    """Gowal et al.'s step: descend kappa * J(x) + (1 - kappa) * J(worst-case logits); returns
    that loss.

    The worst-case logits over the box of radius eps around x are -lower, where lower (N, K)
    bounds z_t - z_j from below (nn/interval.py: margins): the true class at 0, every other as
    high as the box lets it rise. Their cross-entropy falls only as the bounds prove more
    margin. Both losses' parameter gradients, weighted, make one optimizer step.
    """
    clean = loss_and_gradients(model, x, t, input_grad=False)
    lower, cache = margins(model, x, t, eps)
    worst, dworst = softmax_cross_entropy(-lower, t)
    bound_grads = margins_backward(model, -dworst, cache)
    total = {k: kappa * clean.grads[k] + (1 - kappa) * bound_grads[k] for k in clean.grads}
    optimizer.step(model.params, total)
    return kappa * clean.loss + (1 - kappa) * worst

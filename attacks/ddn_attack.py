"""DDN, Decoupled Direction and Norm (Rony et al. 2019, "Decoupling Direction and Norm for
Efficient Gradient-Based L2 Adversarial Attacks and Defenses"): the smallest L2 perturbation
that changes the decision, untargeted.

PGD in an L2 ball of fixed radius answers "is there an adversarial point within eps?"; bisecting
eps around it finds a minimum only if every run from the image itself succeeds whenever it can.
DDN instead keeps one radius eps_k per image and adapts it as it goes: each step
    delta <- delta + alpha_k g / ||g||                 (g = dJ/dx at x + delta, J cross-entropy)
    eps_k <- eps_k (1 - gamma) if x + delta was adversarial, else eps_k (1 + gamma)
    delta <- clip(x + eps_k delta / ||delta||, 0, 1) - x
so the direction comes from the gradient and the size from whether the last point crossed the
boundary; alpha_k falls from 1 to 0.01 on a cosine schedule. Every adversarial iterate smaller
than the best so far is remembered. Where the gradient is zero (||g|| < 1e-12: a saturated or
thresholded input, gradient masking), the step goes along a random unit direction instead
(Rony et al.'s reference code does the same), and eps_k keeps growing until the iterate reaches
a place where the model has a gradient; `restarts` further runs start from a random image that
the model misclassifies (uniform noise), off the data point where a masked gradient misleads,
and shrink onto the boundary from the far side. A final bisection on the segment from x to the
best point removes DDN's last few percent of radius oscillation.
"""
import numpy as np

from nn.backend import device_of, xp_of
from nn.losses import one_hot, softmax_cross_entropy

from .gradient import eval_mode, loss_and_gradients
from .iterative import where_rows


def l2_norms(a):
    """||a_i||_2 per image of a (N, ...) -> (N,)."""
    xp = xp_of(a)
    return xp.sqrt(xp.sum(xp.reshape(a * a, (a.shape[0], -1)), axis=1))


def margin_loss(logits, t):
    """(sum over the batch of max_{j != t} z_j - z_t, its gradient (N, K)): the logit margin,
    whose gradient at the boundary of the nearest class j is the normal w_j - w_t of that
    boundary (the cross-entropy's mixes every class by its probability). logits (N, K), t (N,).
    """
    xp = xp_of(logits)
    onehot = one_hot(t, logits.shape[1], logits)
    others = xp.where(onehot > 0, xp.min(logits, axis=1, keepdims=True) - 1.0, logits)
    rival = one_hot(xp.argmax(others, axis=1), logits.shape[1], logits)
    dlogits = rival - onehot
    return xp.sum(logits * dlogits), dlogits


def _rows(v, x):
    """(N,) as (N, 1, 1, 1) against x (N, C, H, W)."""
    return xp_of(x).reshape(v, (-1,) + (1,) * (x.ndim - 1))


def _random_unit(rng, x):
    """One random unit-L2 direction per image, like x, drawn on the host from rng."""
    u = rng.standard_normal(x.shape)
    u /= np.sqrt(np.sum(u.reshape(len(u), -1) ** 2, axis=1)).reshape((-1,) + (1,) * (x.ndim - 1))
    return xp_of(x).asarray(u, dtype=x.dtype, device=device_of(x))


def ddn_run(model, x, t, steps=100, gamma=0.05, init_norm=1.0, step_max=1.0, step_min=0.01,
            start=None, rng=None, loss_fn=softmax_cross_entropy):
    """One DDN run: (x_best like x, dist (N,): ||x_best - x||_2, inf where no misclassified
    iterate was found; x_best is x there).

    x (N, C, H, W) in [0, 1], t (N,) labels; `steps` iterations of one forward and one backward
    pass, plus one forward pass for the last iterate; from `start` (like x; default x). The
    radius eps_k starts at init_norm (from x) or at ||start - x|| (from a start), and never
    exceeds the largest L2 distance inside the box, ||max(x, 1 - x)||_2. rng: host generator of
    the directions taken where the gradient is zero.
    loss_fn(logits, t) -> (loss, dlogits): the loss J climbed (nn.losses; cross-entropy as in the
    paper, or dlr_loss, whose gradient does not vanish where the softmax saturates).
    """
    xp = xp_of(x)
    rng = np.random.default_rng(0) if rng is None else rng
    n = x.shape[0]
    worst = l2_norms(xp.maximum(x, 1.0 - x))
    if start is None:
        delta = xp.zeros_like(x)
        radius = xp.minimum(xp.full(n, init_norm, dtype=x.dtype, device=device_of(x)), worst)
    else:
        delta = xp.clip(start, 0.0, 1.0) - x
        radius = xp.minimum(xp.maximum(l2_norms(delta), 1e-3), worst)
    best = x
    dist = xp.full(n, xp.inf, dtype=x.dtype, device=device_of(x))
    with eval_mode(model):
        for k in range(steps + 1):
            last = k == steps
            if last:
                logits, dx = model.forward(x + delta), None
                model.clear_caches()
            else:
                r = loss_and_gradients(model, x + delta, t, loss_fn=loss_fn, param_grads=False)
                logits, dx = r.logits, r.dx
            adv = xp.argmax(logits, axis=1) != t
            size = l2_norms(delta)
            closer = adv & (size < dist)
            best, dist = where_rows(closer, x + delta, best), xp.where(closer, size, dist)
            if last:
                break
            cosine = (1 + np.cos(np.pi * (k + 1) / steps)) / 2
            alpha = float(step_min + (step_max - step_min) * cosine)
            g = l2_norms(dx)
            flat = _rows(g < 1e-12, x)
            direction = xp.where(flat, _random_unit(rng, x), dx / _rows(xp.maximum(g, 1e-12), x))
            delta = delta + alpha * direction
            radius = xp.minimum(radius * (1.0 + gamma - 2 * gamma * xp.astype(adv, x.dtype)), worst)
            delta = delta * _rows(radius / xp.maximum(l2_norms(delta), 1e-12), x)
            delta = xp.clip(x + delta, 0.0, 1.0) - x
    return best, dist


def bisect_segment(model, x, t, x_adv, searches=10):
    """Per image, the misclassified point nearest x on the segment from x to x_adv, by
    `searches` halvings of s in x + s (x_adv - x) (one forward pass each): x_adv (N, C, H, W)
    misclassified where it differs from x. Returns like x; rows of x_adv that are not
    misclassified come back as they are."""
    xp = xp_of(x)
    n = x.shape[0]
    low = xp.zeros(n, dtype=x.dtype, device=device_of(x))
    high = xp.ones(n, dtype=x.dtype, device=device_of(x))
    with eval_mode(model):
        for _ in range(searches):
            mid = (low + high) / 2
            adv = xp.argmax(model.forward(x + _rows(mid, x) * (x_adv - x)), axis=1) != t
            high, low = xp.where(adv, mid, high), xp.where(adv, low, mid)
        model.clear_caches()
    return x + _rows(high, x) * (x_adv - x)


def noise_start(model, x, t, rng, tries=100):
    """Per image a uniform random image of [0, 1]^n that the model misclassifies (the first of
    up to `tries` draws from host generator rng; the last draw where none is): like x."""
    xp = xp_of(x)
    start = xp.asarray(rng.uniform(0.0, 1.0, x.shape), dtype=x.dtype, device=device_of(x))
    with eval_mode(model):
        for _ in range(tries - 1):
            wrong = xp.argmax(model.forward(start), axis=1) != t
            if bool(xp.all(wrong)):
                break
            fresh = xp.asarray(rng.uniform(0.0, 1.0, x.shape), dtype=x.dtype, device=device_of(x))
            start = where_rows(wrong, start, fresh)
        model.clear_caches()
    return start


def ddn(model, x, t, steps=100, gamma=0.05, init_norm=1.0, restarts=0, searches=10, rng=None,
        loss_fn=softmax_cross_entropy):
    """DDN, untargeted, L2: x (N, C, H, W) in [0, 1], t (N,) -> x_adv like x, per image the
    smallest misclassified point found (x itself where none was found: test with the model).

    One run from x itself, then `restarts` runs from a random misclassified image (uniform
    noise: `noise_start`), off the data point: the radius then shrinks onto the boundary from
    the far side, where a gradient masked near x does not matter. Host generator rng draws
    the starts and the directions where the gradient is zero. The smallest adversarial point
    over all runs is kept, then moved toward x along the segment between them by `searches`
    bisection steps (0: none). 0 <= x_adv <= 1.
    """
    xp = xp_of(x)
    rng = np.random.default_rng(0) if rng is None else rng
    best, dist = ddn_run(model, x, t, steps, gamma, init_norm, rng=rng, loss_fn=loss_fn)
    for _ in range(restarts):
        out, d = ddn_run(model, x, t, steps, gamma, init_norm, start=noise_start(model, x, t, rng),
                         rng=rng, loss_fn=loss_fn)
        closer = d < dist
        best, dist = where_rows(closer, out, best), xp.where(closer, d, dist)
    return bisect_segment(model, x, t, best, searches) if searches else best

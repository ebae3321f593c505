"""Minimum-norm attacks: the *smallest* perturbation that changes the decision, where PGD and
APGD climb a loss inside a ball of fixed size eps. FAB-T in L-infinity, targeted; DDN in L2.

FAB-T, the Fast Adaptive Boundary attack (Croce and Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"), as AutoAttack runs it, compares the size of what
it found with eps only at the end. At each iterate x_k it linearises the difference of two
logits, g(x) = z_target(x) - z_label(x): g(x_k) + <dg/dx, x - x_k> = 0 is a hyperplane, and the
point of that hyperplane inside the box [0, 1]^n closest to a given point in L-infinity is a
small linear program with an exact solution (`project_linf`). FAB projects both the iterate x_k
and the original x_0, and mixes the two:

    x_{k+1} = clip((1 - a) (x_k + eta d_k) + a (x_0 + eta d_0), 0, 1),
    a = min(|d_k| / (|d_k| + |d_0|), alpha_max)          (|.| the L-infinity norm)

eta = 1.05 goes a little past the hyperplane (it is only the linear model's boundary); a biases
the step toward the original image, the more the farther the iterate has drifted. Whenever
x_{k+1} is misclassified it is remembered if it is the closest such point so far, and the iterate
moves back toward the original, x_0 + beta (x_{k+1} - x_0) with beta = 0.9, so that later steps
search closer in. FAB-T runs this toward each of the top wrong classes of the clean logits in
turn; an image is broken when a misclassified point within eps was found.

DDN (Rony et al. 2019, "Decoupling Direction and Norm ..."), untargeted, L2, keeps one radius
eps_k per image and adapts it as it goes: each step
    delta <- delta + alpha_k g / ||g||                 (g = dJ/dx at x + delta, J cross-entropy)
    eps_k <- eps_k (1 - gamma) if x + delta was adversarial, else eps_k (1 + gamma)
    delta <- clip(x + eps_k delta / ||delta||, 0, 1) - x
so the direction comes from the gradient and the size from whether the last point crossed the
boundary; alpha_k falls from 1 to 0.01 on a cosine schedule. Where the gradient is zero
(gradient masking) the step takes a random unit direction (as Rony et al.'s code does);
`restarts` start from misclassified uniform noise, and a final bisection toward x ends it.
"""
from types import SimpleNamespace

import numpy as np

from nn import eval_mode, no_grad
from nn.backend import device_of, to_numpy, xp_of
from nn.losses import one_hot, softmax_cross_entropy

from .gradient import loss_and_gradients
from .iterative import argsort_rows, put_rows, ranked_targets, retire, take_rows, where_rows

ETA, BETA, ALPHA_MAX = 1.05, 0.9, 0.1  # AutoAttack's settings of FAB


def project_linf(x, w, b):
    """The smallest L-infinity step onto the hyperplane <w, .> = b that stays inside [0, 1].

    x (N, n) points in [0, 1], w (N, n), b (N,) -> d (N, n) of least max_i |d_i| with
    <w, x + d> = b and 0 <= x + d <= 1; where no point of the box reaches the hyperplane, the
    step that comes closest (every coordinate as far as the box lets it go toward the plane).
    With c = b - <w, x>, coordinate i moves toward the plane with sign(w_i c), by at most its
    room r_i (1 - x_i going up, x_i going down). Steps of size <= lam change <w, x> by at most
    g(lam) = sum_i |w_i| min(lam, r_i), increasing and piecewise linear with its kinks at the r_i:
    d_i = sign(w_i c) min(lam*, r_i) with g(lam*) = |c|, lam* found between the two sorted r_i
    where g passes |c|.
    """
    xp = xp_of(x)
    N, n = x.shape
    c = b - xp.sum(w * x, axis=1)
    direction = xp.sign(w) * xp.sign(c)[:, None]
    room = xp.abs(xp.astype(direction > 0, x.dtype) - x)  # 1 - x going up, x going down
    # sort each row's room; the same permutation of |w| through flat indices (row * n + column)
    order = argsort_rows(room)
    flat = xp.reshape(order + n * xp.reshape(xp.arange(N, device=device_of(x)), (N, 1)), (-1,))
    r = xp.reshape(xp.take(xp.reshape(room, (-1,)), flat), (N, n))
    a = xp.reshape(xp.take(xp.reshape(xp.abs(w), (-1,)), flat), (N, n))
    zero = xp.zeros((N, 1), dtype=x.dtype, device=device_of(x))
    below = xp.concat([zero, xp.cumulative_sum(a * r, axis=1)[:, :-1]], axis=1)  # sum_{j<k} a_j r_j
    above = xp.sum(a, axis=1, keepdims=True) - xp.concat(
        [zero, xp.cumulative_sum(a, axis=1)[:, :-1]], axis=1)                  # sum_{j>=k} a_j
    need = xp.abs(c)[:, None]
    k = xp.sum(xp.astype(below + r * above < need, xp.int64), axis=1)  # first kink with g >= |c|
    at_k = xp.astype(xp.reshape(xp.arange(n, device=device_of(x)), (1, n)) == k[:, None], x.dtype)
    below_k, above_k = xp.sum(below * at_k, axis=1), xp.sum(above * at_k, axis=1)
    lam = (need[:, 0] - below_k) / xp.where(above_k > 0, above_k, 1.0)  # above_k = 0: lam = 0
    lam = xp.where(k < n, lam, 2.0)  # out of reach: every coordinate takes all its room (<= 1)
    return direction * xp.minimum(lam[:, None], room)


def _linf(a):
    """max |a| per row of a (N, ...) -> (N,)."""
    xp = xp_of(a)
    return xp.max(xp.abs(xp.reshape(a, (a.shape[0], -1))), axis=1)


def fab_run(model, x, t, target, steps=100, start=None, eta=ETA, beta=BETA, alpha_max=ALPHA_MAX,
            stop_at=None):
    """One targeted FAB run: (x_best like x, dist (N,): |x_best - x| in L-infinity, inf where no
    misclassified point was found; x_best is x there). x (N, C, H, W) in [0, 1], t (N,)
    labels, target (N,) the wrong class whose hyperplane z_target = z_label each step projects
    onto; `steps` iterations of one forward and one backward pass at x_k plus one forward at
    x_{k+1} (no_grad); from `start` (like x; default x). The gradient of z_target - z_label is
    one backward pass of dout = onehot(target) - onehot(t). stop_at: an image leaves once it
    has a misclassified point this close (FAB-T asks no more).
    """
    xp = xp_of(x)
    N = x.shape[0]
    s = SimpleNamespace(x=x, x0=xp.reshape(x, (N, -1)), x_k=x if start is None else start,
                        best=x, dist=xp.full(N, xp.inf, dtype=x.dtype, device=device_of(x)),
                        t=t, target=target)
    alive, results = np.arange(N), {"best": s.best, "dist": s.dist}
    with eval_mode(model):
        for _ in range(steps):
            if (n := alive.size) == 0:
                break
            logits = model.forward(s.x_k)
            dout = one_hot(s.target, logits.shape[1], logits) - one_hot(s.t, logits.shape[1], logits)
            dg, _ = model.backward(dout, param_grads=False)
            w, flat_k = xp.reshape(dg, (n, -1)), xp.reshape(s.x_k, (n, -1))
            b = xp.sum(w * flat_k, axis=1) - xp.sum(logits * dout, axis=1)
            d = project_linf(xp.concat([flat_k, s.x0], axis=0), xp.concat([w, w], axis=0),
                             xp.concat([b, b], axis=0))
            d_k, d_0 = d[:n, ...], d[n:, ...]
            size_k, size_0 = xp.maximum(_linf(d_k), 1e-8), xp.maximum(_linf(d_0), 1e-8)
            alpha = xp.minimum(size_k / (size_k + size_0), alpha_max)[:, None]
            x_new = xp.reshape(xp.clip((1 - alpha) * (flat_k + eta * d_k)
                                       + alpha * (s.x0 + eta * d_0), 0.0, 1.0), s.x.shape)
            with no_grad():
                adv = xp.argmax(model.forward(x_new), axis=1) != s.t
            size = _linf(x_new - s.x)
            closer = adv & (size < s.dist)
            s.best, s.dist = where_rows(closer, x_new, s.best), xp.where(closer, size, s.dist)
            s.x_k = where_rows(adv, s.x + beta * (x_new - s.x), x_new)
            if stop_at is not None:
                alive = retire(s, alive, s.dist <= stop_at, results)
        model.clear_caches()
    return put_rows(results["best"], alive, s.best), put_rows(results["dist"], alive, s.dist)


def fab_targeted(model, x, t, eps, steps=100, n_target_classes=9, restarts=1, rng=None):
    """FAB-T: FAB toward each of the top n_target_classes wrong classes of the clean logits in
    turn, on the images not yet broken: x (N, C, H, W) in [0, 1], t (N,) -> x_adv like x.

    An image is broken, and takes FAB's first point within eps of it (fab_run's stop_at),
    where one is misclassified; the others come back unchanged. AutoAttack's standard version
    runs restarts=1 from x itself; further restarts start from a uniform random point at
    L-infinity distance eps / 2 (host generator rng, needed then).
    """
    xp = xp_of(x)
    order, broken, ranks = ranked_targets(model, x, t, n_target_classes)
    x_adv = x
    for rank in ranks:
        for restart in range(restarts):
            todo = np.flatnonzero(~broken)
            if todo.size == 0:
                return x_adv
            x_todo = take_rows(x, todo)
            start = None
            if restart:
                u = rng.uniform(-1.0, 1.0, size=x_todo.shape)
                u = u / np.abs(u.reshape(len(todo), -1)).max(axis=1).reshape(-1, 1, 1, 1)
                start = xp.clip(x_todo + xp.asarray(0.5 * eps * u, dtype=x.dtype,
                                                    device=device_of(x)), 0.0, 1.0)
            out, dist = fab_run(model, x_todo, take_rows(t, todo),
                                take_rows(order[:, rank], todo), steps, start, stop_at=eps)
            hit = np.flatnonzero(to_numpy(dist <= eps))
            x_adv = put_rows(x_adv, todo[hit], take_rows(out, hit))
            broken[todo[hit]] = True
    return x_adv


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

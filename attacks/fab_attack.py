"""FAB-T, the Fast Adaptive Boundary attack (Croce and Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"), L-infinity and targeted, as AutoAttack runs it.

APGD climbs a loss inside a ball of fixed size eps. FAB instead looks for the *smallest*
perturbation that changes the decision, and only at the end compares its size with eps. At each
iterate x_k it linearises the difference of two logits, g(x) = z_target(x) - z_label(x):
g(x_k) + <dg/dx, x - x_k> = 0 is a hyperplane, and the point of that hyperplane inside the box
[0, 1]^n closest to a given point in L-infinity is a small linear program with an exact solution
(`project_linf`). FAB projects both the iterate x_k and the original x_0, and mixes the two:

    x_{k+1} = clip((1 - a) (x_k + eta d_k) + a (x_0 + eta d_0), 0, 1),
    a = min(|d_k| / (|d_k| + |d_0|), alpha_max)          (|.| the L-infinity norm)

eta = 1.05 goes a little past the hyperplane (it is only the linear model's boundary); a biases
the step toward the original image, the more the farther the iterate has drifted. Whenever
x_{k+1} is misclassified it is remembered if it is the closest such point so far, and the iterate
moves back toward the original, x_0 + beta (x_{k+1} - x_0) with beta = 0.9, so that later steps
search closer in. FAB-T runs this toward each of the top wrong classes of the clean logits in
turn; an image is broken when a misclassified point within eps was found.
"""
import numpy as np

from nn.backend import device_of, to_numpy, xp_of
from nn.losses import one_hot

from .gradient import eval_mode
from .iterative import put_rows, ranked_targets, take_rows, where_rows

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
    room = xp.where(direction > 0, 1.0 - x, x)
    # sort each row's room; the same permutation of |w| through flat indices (row * n + column)
    order = xp.argsort(room, axis=1)
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


def fab_run(model, x, t, target, steps=100, start=None, eta=ETA, beta=BETA, alpha_max=ALPHA_MAX):
    """One targeted FAB run: (x_best like x, dist (N,): |x_best - x| in L-infinity, inf where no
    misclassified point was found; x_best is x there).

    x (N, C, H, W) in [0, 1], t (N,) labels, target (N,) the wrong class whose hyperplane
    z_target = z_label each step projects onto; `steps` iterations of one forward and one
    backward pass at x_k plus one forward at x_{k+1}; from `start` (like x; default x).
    The gradient of z_target - z_label is one backward pass of dout = onehot(target) - onehot(t).
    """
    xp = xp_of(x)
    N = x.shape[0]
    x0 = xp.reshape(x, (N, -1))
    x_k, best = (x if start is None else start), x
    dist = xp.full(N, xp.inf, dtype=x.dtype, device=device_of(x))
    with eval_mode(model):
        for _ in range(steps):
            logits = model.forward(x_k)
            dout = one_hot(target, logits.shape[1], logits) - one_hot(t, logits.shape[1], logits)
            dg, _ = model.backward(dout, param_grads=False)
            w, flat_k = xp.reshape(dg, (N, -1)), xp.reshape(x_k, (N, -1))
            b = xp.sum(w * flat_k, axis=1) - xp.sum(logits * dout, axis=1)
            d = project_linf(xp.concat([flat_k, x0], axis=0), xp.concat([w, w], axis=0),
                             xp.concat([b, b], axis=0))
            d_k, d_0 = d[:N, ...], d[N:, ...]
            size_k, size_0 = xp.maximum(_linf(d_k), 1e-8), xp.maximum(_linf(d_0), 1e-8)
            alpha = xp.minimum(size_k / (size_k + size_0), alpha_max)[:, None]
            x_new = xp.reshape(xp.clip((1 - alpha) * (flat_k + eta * d_k)
                                       + alpha * (x0 + eta * d_0), 0.0, 1.0), x.shape)
            adv = xp.argmax(model.forward(x_new), axis=1) != t
            size = _linf(x_new - x)
            closer = adv & (size < dist)
            best, dist = where_rows(closer, x_new, best), xp.where(closer, size, dist)
            x_k = where_rows(adv, x + beta * (x_new - x), x_new)
        model.clear_caches()
    return best, dist


def fab_targeted(model, x, t, eps, steps=100, n_target_classes=9, restarts=1, rng=None):
    """FAB-T: FAB toward each of the top n_target_classes wrong classes of the clean logits in
    turn, on the images not yet broken: x (N, C, H, W) in [0, 1], t (N,) -> x_adv like x.

    An image is broken, and takes FAB's point, where that point is misclassified and within eps
    of it (|x_adv - x| <= eps); the others come back unchanged. AutoAttack's standard version
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
                                take_rows(order[:, rank], todo), steps, start)
            hit = np.flatnonzero(to_numpy(dist <= eps))
            x_adv = put_rows(x_adv, todo[hit], take_rows(out, hit))
            broken[todo[hit]] = True
    return x_adv

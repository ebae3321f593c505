"""HopSkipJump (Chen, Jordan and Wainwright 2020, "HopSkipJumpAttack: A Query-Efficient
Decision-Based Attack"), untargeted, in L2 or L-infinity.

A decision-based attack sees only the label a model answers (a `LabelOracle`, in-process or a
prediction API over HTTP: web/client.py), never a score or a gradient. It starts from any
misclassified image (uniform noise blended toward the original until just misclassified) and
repeats three moves, each made of label queries:
1. a binary search on the segment from the original x to the adversarial point (L2), or on the
   radius of the box around x (L-infinity), to sit just on the adversarial side of the boundary;
2. an estimate of the boundary's normal there: B random unit directions u_b, each probed at
   x_t + delta u_b, averaged with weights phi_b - mean(phi) (phi = +1 adversarial, -1 not);
   at the boundary this is an unbiased direction of the gradient of the decision;
3. a step from x_t along that direction (its sign for L-infinity), of size dist / sqrt(t), halved
   until the point is adversarial again.
B grows as 100 sqrt(t); delta shrinks with the distance. The distance falls as the queries go by;
`trace` records it, so a run can be read at any budget.
"""
import math

import numpy as np


def _distance(a, b, norm):
    diff = (a - b).ravel()
    return float(np.sqrt(np.sum(diff * diff)) if norm == "l2" else np.max(np.abs(diff)))


class Probe:
    """The oracle seen as phi: images -> adversarial or not (host bool), counting every image."""

    def __init__(self, oracle, label, budget):
        self.oracle, self.label, self.budget, self.used = oracle, label, budget, 0

    def left(self):
        return self.budget - self.used

    def __call__(self, images):
        images = np.clip(images, 0.0, 1.0).astype(np.float32)
        self.used += len(images)
        return np.asarray(self.oracle(images)) != self.label


def _toward(x, x_adv, alpha, norm):
    """The point at `alpha` between x (0) and x_adv (1): the segment (L2), or x_adv clipped into
    the L-infinity box of radius alpha around x."""
    if norm == "l2":
        return (1 - alpha) * x + alpha * x_adv
    return np.clip(x_adv, x - alpha, x + alpha)


def _boundary(phi, x, x_adv, norm, theta):
    """Binary search from adversarial x_adv toward x: the adversarial point just by the boundary
    (None if the budget ran out before the search ended: x_adv stays the answer)."""
    dist = _distance(x, x_adv, norm)
    low, high = 0.0, (1.0 if norm == "l2" else dist)
    threshold = theta if norm == "l2" else min(dist * theta, theta)
    while (high - low) > threshold:
        if phi.left() < 1:
            return None
        mid = (low + high) / 2
        if phi(_toward(x, x_adv, mid, norm)[None])[0]:
            high = mid
        else:
            low = mid
    return _toward(x, x_adv, high, norm)


def _start(phi, x, rng, tries=1000):
    """A misclassified point: uniform noise (the first of `tries` draws that is adversarial)
    blended toward x by binary search on the blend weight; None if none was found."""
    for _ in range(min(tries, phi.left())):
        noise = rng.uniform(0, 1, size=x.shape).astype(x.dtype)
        if phi(noise[None])[0]:
            break
    else:
        return None
    low, high = 0.0, 1.0
    while high - low > 0.001 and phi.left() > 0:
        mid = (low + high) / 2
        if phi(((1 - mid) * x + mid * noise)[None])[0]:
            high = mid
        else:
            low = mid
    return (1 - high) * x + high * noise


def hopskipjump(oracle, x, label, norm="l2", max_queries=20000, rng=None, gamma=1.0,
                init_evals=100, max_evals=10000):
    """HopSkipJump on one image: (x_adv like x or None, trace).

    oracle(images (M, C, H, W) float32 host) -> labels (M,): a LabelOracle or one over HTTP.
    x (C, H, W) host in [0, 1], label its class; norm "l2" or "linf"; at most max_queries
    images asked about (the start, binary searches, gradient estimates and step searches all
    count). rng: host generator of the noise and the probe directions. trace: (queries used,
    L2 distance, L-infinity distance) after the start and after every iteration; x_adv is the
    last adversarial point (None if no misclassified start was found within the budget).
    theta, the binary search's resolution, is gamma / d^1.5 (L2) or gamma / d^2 (L-infinity).
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"hopskipjump: norm must be 'l2' or 'linf', got {norm!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    x = np.asarray(x, dtype=np.float32)
    d = x.size
    theta = gamma / d ** 1.5 if norm == "l2" else gamma / d ** 2
    phi = Probe(oracle, label, max_queries)
    trace = []

    def record(point):
        trace.append((phi.used, _distance(x, point, "l2"), _distance(x, point, "linf")))

    start = _start(phi, x, rng)
    if start is None:
        return None, trace
    x_adv = _boundary(phi, x, start, norm, theta)
    x_adv = start if x_adv is None else x_adv
    record(x_adv)
    t = 0
    while phi.left() > 1:
        t += 1
        dist = _distance(x, x_adv, norm)
        delta = probe_radius(t, d, theta, dist, norm)
        n = min(int(init_evals * math.sqrt(t)), max_evals, phi.left() - 1)
        update = estimate_direction(phi, x_adv, n, delta, norm, rng)
        step = step_search(phi, x_adv, update, dist, t)
        if step is None:
            break
        nearer = _boundary(phi, x, np.clip(x_adv + step * update, 0.0, 1.0), norm, theta)
        if nearer is None:
            break
        x_adv = nearer
        record(x_adv)
    return x_adv, trace


def probe_radius(t, d, theta, dist, norm):
    """delta, the distance of iteration t's probes from the boundary point: 0.1 at first, then
    sqrt(d) theta dist (L2) or d theta dist (L-infinity), dist the current distance from x (the
    authors' code takes it before the binary search, this one after)."""
    if t == 1:
        return 0.1
    return (math.sqrt(d) if norm == "l2" else d) * theta * dist


def estimate_direction(phi, x_t, n, delta, norm, rng):
    """The step direction at boundary point x_t (C, H, W) from n probes at distance delta: the
    estimated unit normal (L2) or its sign (L-infinity), like x_t.

    u_b are random unit directions (Gaussian for L2, uniform in the cube for L-infinity); a probe
    x_t + delta u_b is clipped into [0, 1], and u_b is re-derived from the clipped probe, so that
    the average weighs the displacements phi was actually asked about (on MNIST most pixels sit
    at 0 or 1). grad = mean_b (phi_b - mean(phi)) u_b, phi_b = +1 adversarial, -1 not.
    """
    shape = (n, *x_t.shape)
    u = rng.standard_normal(shape) if norm == "l2" else rng.uniform(-1, 1, shape)
    u = (u / np.sqrt(np.sum(u ** 2, axis=tuple(range(1, u.ndim)), keepdims=True))).astype(
        np.float32)
    probes = np.clip(x_t + delta * u, 0.0, 1.0)
    u = (probes - x_t) / delta  # the directions as the box let them be probed
    f = np.where(phi(probes), 1.0, -1.0).reshape(-1, *[1] * x_t.ndim)
    if abs(f.mean()) < 1:  # the baseline mean(phi) lowers the estimate's variance
        f = f - f.mean()
    grad = np.mean(f * u, axis=0)
    grad = grad / max(float(np.sqrt(np.sum(grad ** 2))), 1e-12)
    return grad if norm == "l2" else np.sign(grad)


def step_search(phi, x_adv, update, dist, t):
    """The step of iteration t along update (like x_adv): dist / sqrt(t), halved until
    x_adv + step * update is adversarial; None if the budget ran out first."""
    step = dist / math.sqrt(t)
    while phi.left() > 0:
        if phi((x_adv + step * update)[None])[0]:
            return step
        step /= 2
    return None


def budget_curve(trace, budgets):
    """(L2, L-infinity) distance of a run after each of `budgets` queries (the last point
    recorded within it; inf before the start was found)."""
    out = []
    for b in budgets:
        done = [(l2, linf) for q, l2, linf in trace if q <= b]
        out.append(done[-1] if done else (math.inf, math.inf))
    return out

"""Many small signed steps instead of one big one: PGD, targeted attacks and fooling images.

FGS takes one step of size eps along sign(dJ/dx) and hopes the loss is linear that far. Projected
gradient descent (PGD, "iterated FGS") takes `steps` smaller steps, recomputing the gradient each
time, and after each step projects back into the allowed set: at most eps from the original in
every pixel (the L-infinity ball) and inside [0, 1]. A model that only *looks* robust to FGS
because its loss surface is bent near the data (gradient masking) falls to PGD.

A targeted attack walks *down* the cross-entropy of a chosen wrong class instead of up the true
class's; a fooling image is one targeted signed step from pure noise.
"""
from types import SimpleNamespace

import numpy as np

from nn.backend import device_of, is_numpy, to_device, to_numpy, xp_of
from nn.interval import input_box
from nn.losses import softmax
from nn.model import eval_mode

from .gradient import loss_and_gradients


def project(x_adv, low, high):
    """Clamp x_adv into [low, high] elementwise (the L-infinity ball intersected with [0, 1])."""
    xp = xp_of(x_adv)
    return xp.minimum(xp.maximum(x_adv, low), high)


def per_image(value, x):
    """A scalar, or one value per image (N,), as an array broadcastable against x (N, C, H, W)."""
    xp = xp_of(x)
    value = xp.asarray(value, dtype=x.dtype, device=device_of(x))
    return xp.reshape(value, (-1,) + (1,) * (x.ndim - 1)) if value.ndim else value


def where_rows(mask, a, b):
    """Per image, a where mask else b: mask (N,) bool, a and b (N, ...) alike."""
    xp = xp_of(a)
    return xp.where(xp.reshape(mask, (-1,) + (1,) * (a.ndim - 1)), a, b)


def retire(s, alive, hit, results):
    """Where an attack's images leave its batch once done: each entry of `results` (name ->
    array of the whole batch) takes, for the images of `alive` (host indices into the whole
    batch) that `hit` (device bool, one per row of the state s, a namespace of arrays) marks,
    their rows of s.<name>; their rows are dropped from every array of s (0-d arrays and None
    stay). Returns the images still standing: an image is done exactly when it is no longer
    there. Every step of these attacks is per image, so the others walk on as they would in the
    whole batch."""
    hit = to_numpy(hit).astype(bool)
    if not hit.any():
        return alive
    for name, whole in results.items():
        results[name] = put_rows(whole, alive[hit], take_rows(getattr(s, name), np.flatnonzero(hit)))
    keep = np.flatnonzero(~hit)
    for name, value in vars(s).items():
        if value is not None and value.ndim:
            setattr(s, name, take_rows(value, keep))
    return alive[~hit]


def take_rows(x, index):
    """x[index] along the first axis; index a host integer array (M,)."""
    xp = xp_of(x)
    return xp.take(x, xp.asarray(np.asarray(index, dtype=np.int64), device=device_of(x)), axis=0)


def put_rows(x, index, rows):
    """A copy of x (N, ...) with x[index[j]] replaced by rows[j] (M, ...); index a host array of
    distinct positions. A gather from concat([x, rows]): the Array API has no assignment
    through an integer array."""
    source = np.arange(x.shape[0])
    source[np.asarray(index, dtype=np.int64)] = x.shape[0] + np.arange(len(index))
    return take_rows(xp_of(x).concat([x, rows], axis=0), source)


def argsort_rows(a):
    """xp.argsort(a, axis=1, stable=True) for a (N, n) >= 0: each row's order, ties by column.

    On NumPy in float32, one sort of 64-bit keys instead, a value's bits above its column
    (non-negative floats order like their bits; -0.0 counted as 0), sorted as float64, which
    NumPy's SIMD sort takes and its argsort does not: FAB's 200 rows of 784, 3.9 -> 1.4 ms."""
    if not (is_numpy(a) and a.dtype == np.float32):
        return xp_of(a).argsort(a, axis=1, stable=True)
    keys = (a.view(np.uint32) & 0x7FFFFFFF).astype(np.uint64) << np.uint64(32)
    keys |= np.arange(a.shape[1], dtype=np.uint64)
    keys = np.sort(keys.view(np.float64), axis=1).view(np.uint64)
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.intp)


def ranked_targets(model, x, t, n_target_classes):
    """What APGD-T and FAB-T go through: (order (N, K): the classes by clean logit, largest
    first, so that order[:, r] is each image's r-th most likely class; broken (N,) host bool:
    the images misclassified already; the ranks 1 .. min(n_target_classes, K - 1) to try)."""
    xp = xp_of(x)
    with eval_mode(model):
        logits = model.forward(x)
        model.clear_caches()
    broken = to_numpy(xp.argmax(logits, axis=1) != t).astype(bool)
    return (xp.argsort(logits, axis=1, descending=True), broken,
            range(1, min(n_target_classes, logits.shape[1] - 1) + 1))


def expected_gradient(model, x, labels, transform=None, samples=1, rng=None):
    """(logits of x or None, dJ/dx) of the cross-entropy J: of J(x) itself without a transform;
    with a family of random transformations (nn/transforms.py), Expectation over Transformation
    (Athalye et al. 2018): `samples` fresh transformations T_k drawn from host generator rng,
    and mean_k dJ(T_k(x))/dx = mean_k T_k^T (dJ/dT_k(x)), each through the transform's backward.
    """
    if transform is None:
        r = loss_and_gradients(model, x, labels, param_grads=False)
        return r.logits, r.dx
    total = 0.0
    for _ in range(samples):
        tx, cache = transform.forward(x, transform.sample(rng, x.shape))
        total = total + transform.backward(
            loss_and_gradients(model, tx, labels, param_grads=False).dx, cache)
    return None, total / samples


def signed_steps(model, x, labels, eps, step, steps, direction=1.0, start=None, keep_first=True,
                 transform=None, samples=1, rng=None):
    """`steps` projected signed-gradient steps from `start` (default x) within eps of x.

    x (N, C, H, W) in [0, 1]; labels (N,) the classes whose cross-entropy J is followed;
    eps and step scalars or (N,) per-image values; direction +1 climbs J (untargeted), -1
    descends it (targeted). Each step: x_adv <- clip(x_adv + direction * step * sign(dJ/dx_adv),
    max(x - eps, 0), min(x + eps, 1)). Runs in eval mode; returns x_adv like x.

    keep_first: per image, return the first iterate that succeeds (argmax != labels when
    untargeted, == labels when targeted), so that an image broken by any iterate counts as
    broken even if later steps wander back; the last iterate where none succeeds. An image
    leaves the batch at its first success (no step could change its result), and the steps
    stop once every image has left. Each step's forward pass already classifies its iterate;
    only the last iterate costs one more forward.
    transform, samples, rng: follow the expected gradient over random transformations instead
    (`expected_gradient`); keep_first must then be False (success depends on the transform).
    """
    if transform is not None and keep_first:
        raise ValueError("signed_steps: with a transform, keep_first must be False")
    xp = xp_of(x)
    eps, step = per_image(eps, x), per_image(step, x)
    low, high = input_box(x, eps)
    x_adv = x if start is None else project(start, low, high)
    # with keep_first, the images not yet successful (host indices into x) and their state
    s = SimpleNamespace(x_adv=x_adv, low=low, high=high, labels=labels, step=step, dx=None)
    alive, results = np.arange(x.shape[0]), {"x_adv": x_adv}
    with eval_mode(model):
        for i in range(steps + keep_first):
            if i == steps:  # the last iterate: a forward pass only
                logits, s.dx = model.forward(s.x_adv), None
                model.clear_caches()
            else:
                logits, s.dx = expected_gradient(model, s.x_adv, s.labels, transform, samples, rng)
            if keep_first:
                hit = (xp.argmax(logits, axis=1) == s.labels) == (direction < 0)
                alive = retire(s, alive, hit, results)
                if alive.size == 0:  # every image has its first success: no step can change it
                    break
            if s.dx is not None:
                s.x_adv = project(s.x_adv + (direction * s.step) * xp.sign(s.dx), s.low, s.high)
    if not keep_first:
        return s.x_adv
    return put_rows(results["x_adv"], alive, s.x_adv)


def uniform_start(x, eps, rng):
    """x + uniform(-eps, eps) noise per pixel, from host generator rng (numpy.random.Generator)."""
    xp = xp_of(x)
    noise = rng.uniform(-1.0, 1.0, size=x.shape).astype(np.float32)
    return x + per_image(eps, x) * xp.asarray(noise, dtype=x.dtype, device=device_of(x))


def pgd(model, x, t, eps=0.3, step=None, steps=20, random_start=False, rng=None,
        keep_first=True):
    """Untargeted PGD in the L-infinity ball: x (N, C, H, W) in [0, 1], t (N,) -> x_adv like x.

    step defaults to 2.5 * eps / steps (Madry et al.), enough to cross the ball and come back.
    random_start begins at a uniform random point of the ball (needs rng); otherwise at x, so
    that the first step with step = eps is exactly FGS. |x_adv - x| <= eps, 0 <= x_adv <= 1.
    Per image the first misclassified iterate is returned (keep_first); PGD training (Madry et
    al.) passes keep_first=False and trains on the last iterate.
    """
    step = 2.5 * eps / steps if step is None else step
    if random_start and rng is None:
        raise ValueError("pgd: random_start needs rng, a numpy.random.Generator")
    start = uniform_start(x, eps, rng) if random_start else None
    return signed_steps(model, x, t, eps, step, steps, direction=1.0, start=start,
                        keep_first=keep_first)


def eot_pgd(model, x, t, transform, eps=0.3, step=None, steps=20, samples=10, rng=None,
            target=None):
    """PGD on the expectation over a family of random transformations (EOT, Athalye et al.
    2018): every step draws `samples` fresh transformations per image from `transform` with host
    generator rng and follows the sign of the mean gradient through them. Untargeted (climbs
    the cross-entropy of t (N,)), or targeted toward `target` (N,). Returns the last iterate,
    like x; |x_adv - x| <= eps, 0 <= x_adv <= 1. A family that is the identity gives PGD.
    """
    step = 2.5 * eps / steps if step is None else step
    labels, direction = (t, 1.0) if target is None else (target, -1.0)
    return signed_steps(model, x, labels, eps, step, steps, direction=direction,
                        keep_first=False, transform=transform, samples=samples, rng=rng)


def targeted_pgd_l2(model, x, target, eps=2.0, step=None, steps=20):
    """Targeted PGD in the L2 ball: descend the cross-entropy of `target` (N,) from x (N, C, H,
    W) by steps of `step` (default 2.5 eps / steps) along the gradient divided by its L2 norm
    (per image), each followed by the projection onto [0, 1] and then into ||x_adv - x|| <= eps
    (rescaling the change: a mix of two points of the box stays in the box). eps and step are
    scalars or (N,) per-image values. Returns x_adv."""
    xp = xp_of(x)
    step = 2.5 * np.asarray(eps) / steps if step is None else step
    eps, step = per_image(eps, x), per_image(step, x)
    x_adv = x
    with eval_mode(model):
        for _ in range(steps):
            dx = loss_and_gradients(model, x_adv, target, param_grads=False).dx
            norm = xp.sqrt(xp.sum(dx * dx, axis=(1, 2, 3), keepdims=True))
            delta = xp.clip(x_adv - step * dx / xp.maximum(norm, 1e-12), 0.0, 1.0) - x
            size = xp.sqrt(xp.sum(delta * delta, axis=(1, 2, 3), keepdims=True))
            x_adv = x + delta * xp.minimum(1.0, eps / xp.maximum(size, 1e-12))
        model.clear_caches()
    return x_adv


def targeted_pgd(model, x, target, eps=0.3, step=None, steps=20):
    """Targeted PGD: descend the cross-entropy of class `target` (N,) within eps of x (N, C, H, W).

    Returns x_adv like x; success is argmax(model(x_adv)) == target.
    """
    step = 2.5 * eps / steps if step is None else step
    return signed_steps(model, x, target, eps, step, steps, direction=-1.0)


def smallest_targeted(model, x, target, max_eps=1.0, steps=20, searches=8, norm="linf"):
    """The lecture's "closest image classified as the target", searched over the size of the ball.

    For each image, bisection over eps in (0, max_eps] for the smallest ball (L-infinity, or L2
    with norm="l2": targeted_pgd_l2) in which targeted PGD reaches class `target` (N,);
    `searches` halvings give a resolution of max_eps / 2**searches.
    Returns (x_adv like x, eps (N,) host float array, success (N,) host bool array): x_adv is
    the successful image of the smallest eps tried (x itself where none succeeded).
    """
    xp = xp_of(x)
    attack = {"linf": targeted_pgd, "l2": targeted_pgd_l2}[norm]
    n = x.shape[0]
    low, high = np.zeros(n), np.full(n, float(max_eps))
    success = np.zeros(n, dtype=bool)
    best = x
    # the largest ball first, then `searches` halvings of the interval that holds the boundary
    for i in range(searches + 1):
        eps = high.copy() if i == 0 else (low + high) / 2
        x_try = attack(model, x, target, eps=eps, steps=steps)
        with eval_mode(model):
            hit = xp.argmax(model.forward(x_try), axis=1) == target
        best = where_rows(hit, x_try, best)
        hit = to_numpy(hit).astype(bool)
        success |= hit
        high, low = np.where(hit, eps, high), np.where(hit, low, eps)
    return best, np.where(success, high, np.nan), success


def targeted_fgs(model, x, target, alpha):
    """One signed step down the cross-entropy of class target (N,): clip(x - alpha sign(dJ/dx))."""
    xp = xp_of(x)
    with eval_mode(model):
        dx = loss_and_gradients(model, x, target, param_grads=False).dx
    return xp.clip(x - alpha * xp.sign(dx), 0.0, 1.0)


def fooling_images(model, noise, alpha, classes=10):
    """One targeted signed step from each noise image toward every class.

    noise (N, C, H, W) in [0, 1] -> (images (classes * N, C, H, W), target (classes * N,),
    probability of the target class (classes * N,)); images k*N .. (k+1)*N - 1 aim at class k.
    """
    xp = xp_of(noise)
    n = noise.shape[0]
    x = xp.concat([noise] * classes, axis=0)
    target = to_device(np.repeat(np.arange(classes), n), like=noise)
    fooled = targeted_fgs(model, x, target, alpha)
    with eval_mode(model):
        probs = softmax(model.forward(fooled))
    chosen = xp.sum(probs * xp.astype(target[:, None] == xp.arange(classes, device=device_of(x)),
                                      probs.dtype), axis=1)
    return fooled, target, chosen

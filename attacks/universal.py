"""Attacks that one perturbation makes on every image: the adversarial patch and the universal
perturbation.

Adversarial patch (Brown et al. 2017): a small square of free pixels, pasted anywhere on any
image (a random place, a small random rotation and scale: the warp of nn/transforms.py), trained
so that the model answers one target class. The pasted image is (1 - m) x + w(c), with c the
patch on an empty canvas, m its mask and w the warp: its gradient reaches the patch through the
warp's backward, summed over the batch. The patch is unconstrained except for [0, 1].

Universal perturbation (Moosavi-Dezfooli et al. 2017): one v with |v| <= eps added to every
image. Fitted here by signed steps up the mean cross-entropy of a stream of training batches
(projected onto the eps ball), a stochastic-gradient variant of the paper's DeepFool-based
loop; reported on other images than those it was fitted on.
"""
import numpy as np

from nn import eval_mode, first_param, on_model
from nn.backend import device_of, to_numpy, xp_of
from nn.transforms import Warp, warp_backward, warp_forward

from .gradient import loss_and_gradients


def _like(host, x):
    """Host array as an array of x's namespace, device and dtype."""
    return xp_of(x).asarray(host, dtype=x.dtype, device=device_of(x))


def patch_canvas(patch, size=28):
    """(canvas, mask): the patch (s, s) host at the centre of an empty (size, size) image."""
    s = patch.shape[-1]
    top = (size - s) // 2
    canvas, mask = np.zeros((size, size)), np.zeros((size, size))
    canvas[top:top + s, top:top + s], mask[top:top + s, top:top + s] = patch, 1.0
    return canvas, mask


def placements(rng, n, side, size=28, max_degrees=10.0, max_zoom=0.1):
    """Host theta (n, 2, 3): a random place where the patch of `side` fits, a rotation up to
    +-max_degrees and a scale in 1 +- max_zoom (Warp's parameters plus a shift)."""
    theta = Warp(1.0, max_degrees, 0.0, max_zoom).sample(rng, (n, 1, size, size))
    room = (size - side) / size  # normalised half-range that keeps the patch inside
    theta[:, :, 2] = rng.uniform(-room, room, (n, 2))
    return theta


def paste(x, patch, theta):
    """x (N, 1, H, W) with the patch pasted by theta (N, 2, 3): (pasted like x, the warp's
    cache, for patch_gradient)."""
    xp = xp_of(x)
    canvas, mask = (_like(np.broadcast_to(a, x.shape).copy(), x)
                    for a in patch_canvas(patch, x.shape[-1]))
    both, cache = warp_forward(xp.concat([canvas, mask], axis=1), theta)  # one map, two channels
    placed, m = both[:, :1, ...], both[:, 1:, ...]
    return xp.clip((1 - m) * x + placed, 0.0, 1.0), cache


def patch_gradient(dout, cache, side):
    """d loss / d patch (side, side) host, from d loss / d pasted image dout (N, 1, H, W) and
    paste's cache."""
    canvas = to_numpy(warp_backward(dout, cache)).sum(axis=(0, 1))
    top = (canvas.shape[0] - side) // 2
    return canvas[top:top + side, top:top + side]


def train_patch(model, images, target, side, steps=300, batch=64, lr=0.02, rng=None):
    """A patch (side, side) host that sends pasted images toward class `target`: signed steps
    down the cross-entropy of the target, each on a batch of host `images` (N, 1, 28, 28) with
    fresh random placements (host generator rng); the model in eval mode."""
    rng = np.random.default_rng(0) if rng is None else rng
    patch = rng.uniform(0, 1, (side, side))
    with eval_mode(model):
        for _ in range(steps):
            x = on_model(model, images[rng.integers(0, len(images), batch)])
            pasted, cache = paste(x, patch, placements(rng, batch, side))
            t = on_model(model, np.full(batch, target))
            dx = loss_and_gradients(model, pasted, t, param_grads=False).dx
            patch = np.clip(patch - lr * np.sign(patch_gradient(dx, cache, side)), 0.0, 1.0)
        model.clear_caches()
    return patch


def universal_perturbation(model, images, eps, steps=500, batch=64, step=None, rng=None):
    """One L-infinity perturbation v (1, 1, 28, 28) host, |v| <= eps, that raises the mean
    cross-entropy of the model's own clean predictions on host `images` (N, 1, 28, 28): signed
    steps of `step` (default eps / 20) on random batches, then the projection onto the ball."""
    rng = np.random.default_rng(0) if rng is None else rng
    step = eps / 20 if step is None else step
    xp = xp_of(first_param(model))
    v = np.zeros((1, *images.shape[1:]))
    with eval_mode(model):
        for _ in range(steps):
            x = on_model(model, images[rng.integers(0, len(images), batch)])
            t = xp.argmax(model.forward(x), axis=1)
            x_v = xp.clip(x + _like(v, x), 0.0, 1.0)
            dx = to_numpy(loss_and_gradients(model, x_v, t, param_grads=False).dx)
            v = np.clip(v + step * np.sign(dx.sum(axis=0, keepdims=True)), -eps, eps)
        model.clear_caches()
    return v


def universal_passes(model, images, eps, passes=10, batch=100, step=None, target=None,
                     check=None, tol=0.005, update="sign", rng=None):
    """A universal perturbation fitted pass by pass with a decaying step, until it converges:
    (v (1, 1, 28, 28) host with |v| <= eps, history [(pass, rate on `check`)]).

    Each pass goes once through host `images` (N, 1, 28, 28) in a fresh random order (host
    generator rng), in batches of `batch`; each batch takes one step of step / p (pass p, step
    default eps / 10) along the batch's summed gradient g, its sign (update="sign") or g / max|g|
    (update="scaled", as FGV: a stochastic gradient step), up the cross-entropy of the model's
    own clean predictions (untargeted), or down that of class `target`, then the projection
    onto the eps ball. After every pass the rate on host images `check` (default `images`) is
    measured: the share whose prediction changes (untargeted) or becomes `target`; fitting stops
    after the first pass (from the third on) that raises it by less than tol, or after `passes`.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    step = eps / 10 if step is None else step
    check = images if check is None else check
    xp = xp_of(first_param(model))
    v = np.zeros((1, *images.shape[1:]))
    history = []

    def rate(v):
        hits = []
        with eval_mode(model):
            for s in range(0, len(check), 500):
                x = on_model(model, check[s:s + 500])
                clean = xp.argmax(model.forward(x), axis=1)
                after = xp.argmax(model.forward(xp.clip(x + _like(v, x), 0.0, 1.0)), axis=1)
                hits.append(to_numpy(after != clean if target is None else after == target))
            model.clear_caches()
        return float(np.mean(np.concatenate(hits)))

    with eval_mode(model):
        for p in range(1, passes + 1):
            order = rng.permutation(len(images))
            for s in range(0, len(images), batch):
                x = on_model(model, images[order[s:s + batch]])
                if target is None:
                    t, direction = xp.argmax(model.forward(x), axis=1), 1.0
                else:
                    t, direction = on_model(model, np.full(x.shape[0], target)), -1.0
                x_v = xp.clip(x + _like(v, x), 0.0, 1.0)
                g = to_numpy(loss_and_gradients(model, x_v, t, param_grads=False).dx).sum(
                    axis=0, keepdims=True)
                g = np.sign(g) if update == "sign" else g / max(float(np.abs(g).max()), 1e-30)
                v = np.clip(v + direction * (step / p) * g, -eps, eps)
            model.clear_caches()
            history.append((p, rate(v)))
            if p >= 3 and history[-1][1] - history[-2][1] < tol:
                break
    return v, history


def paste_at(x, patch, row, col):
    """x (N, 1, H, W) with the patch (s, s) host pasted, pixel-aligned and unwarped, with its
    top-left corner at (row, col): like x."""
    s = patch.shape[-1]
    canvas, mask = np.zeros(x.shape[-2:]), np.ones(x.shape[-2:])
    canvas[row:row + s, col:col + s], mask[row:row + s, col:col + s] = patch, 0.0
    return x * _like(mask, x) + _like(canvas, x)


def train_patch_at(model, images, target, side, row, col, steps=300, batch=64, lr=0.02,
                   rng=None):
    """A patch (side, side) host trained for one place: signed steps down the cross-entropy of
    class `target` of batches of host `images` (N, 1, 28, 28) with the patch pasted at (row,
    col) (`paste_at`), from uniform noise (host generator rng); the model in eval mode."""
    rng = np.random.default_rng(0) if rng is None else rng
    patch = rng.uniform(0, 1, (side, side))
    with eval_mode(model):
        for _ in range(steps):
            x = on_model(model, images[rng.integers(0, len(images), batch)])
            t = on_model(model, np.full(batch, target))
            dx = to_numpy(loss_and_gradients(model, paste_at(x, patch, row, col), t,
                                             param_grads=False).dx)
            grad = dx[:, 0, row:row + side, col:col + side].sum(axis=0)
            patch = np.clip(patch - lr * np.sign(grad), 0.0, 1.0)
        model.clear_caches()
    return patch


def per_image_patches(model, image, target, side, places, steps=40, lr=0.1):
    """For one host image (1, 28, 28): a patch trained for it alone at each of `places`
    [(row, col)], all places as one batch; returns (success (P,) host bool: the model puts
    the pasted image in `target`, patches (P, side, side) host). Signed steps of lr from grey."""
    xp = xp_of(first_param(model))
    P = len(places)
    patches = np.full((P, side, side), 0.5)
    x = on_model(model, np.broadcast_to(image, (P, *image.shape)).copy())
    t = on_model(model, np.full(P, target))
    masks, where = np.ones((P, 1, 28, 28)), np.zeros((P, 1, 28, 28), dtype=bool)
    for k, (r, c) in enumerate(places):
        masks[k, 0, r:r + side, c:c + side], where[k, 0, r:r + side, c:c + side] = 0.0, True
    keep = _like(masks, x)

    def pasted(patches):
        canvas = np.zeros((P, 1, 28, 28))
        canvas[where] = patches.reshape(-1)
        return x * keep + _like(canvas, x)

    with eval_mode(model):
        for _ in range(steps):
            dx = to_numpy(loss_and_gradients(model, pasted(patches), t, param_grads=False).dx)
            patches = np.clip(patches - lr * np.sign(dx[where].reshape(P, side, side)), 0.0, 1.0)
        success = to_numpy(xp.argmax(model.forward(pasted(patches)), axis=1) == t)
        model.clear_caches()
    return np.asarray(success, dtype=bool), patches

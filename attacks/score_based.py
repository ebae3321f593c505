"""The Square attack (Andriushchenko, Croce, Flammarion and Hein 2020) in the L-infinity ball.

A score-based black-box attack: it sees the model only through a `ScoreOracle` (logits or
probabilities per image, never a gradient), so a model that hides its gradient (gradient
masking) cannot hide from it. It starts each image at vertical stripes of +-eps, then at every
iteration proposes one change: a random square of the image, each channel of it moved by
+-2 eps and projected back into the ball and [0, 1], so that the square's pixels land on a
corner of the ball. The proposal is kept where it lowers the margin of the true class,
z_y - max_{i != y} z_i, or where it is misclassified (argmax != y, as the evaluation counts:
a tie counts as correct when the label is the first of the tied classes); an image is done once
misclassified, so the first adversarial point found is the one returned. Squares start large
(p_init = 0.8 of the pixels) and shrink as the queries go by: by default as in AutoAttack's
standard version (its schedule of halvings at fixed iterations, never rescaled: on 28x28 images
with 5,000 queries the squares never get smaller than 2x2); rescale=True stretches the schedule
over the query budget, as torchattacks' Square and AutoAttack's own default do (with 5,000
queries a fifth of the proposals are then 1x1 squares). Unlike AutoAttack, which places one
square per iteration for the whole batch, each image draws its own square and signs.
"""
import math

import numpy as np

from nn.backend import device_of, to_numpy, xp_of
from nn.interval import input_box
from nn.losses import one_hot

from .iterative import project, put_rows, take_rows, where_rows

# iterations (of 10,000 when rescaled to the query budget) after which the square's area halves
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(i, n_queries, p_init=0.8, rescale=False):
    """The share of an image's pixels the square covers at iteration i (0-based) of n_queries.

    p_init, halved each time i passes one of HALVINGS (AutoAttack's standard version), or, with
    rescale, each time i / n_queries * 10,000 does (torchattacks' Square).
    """
    progress = int(i / n_queries * 10000) if rescale else i
    return p_init / 2 ** sum(progress > h for h in HALVINGS)


def margins(scores, t):
    """z_y - max_{i != y} z_i per image: scores (N, K) logits or log-probabilities, t (N,) ->
    (N,); > 0 where the label wins. (Log-probabilities differ from logits by a constant per
    image, which the difference cancels.)"""
    xp = xp_of(scores)
    onehot = one_hot(t, scores.shape[1], scores)
    others = xp.where(onehot > 0, xp.min(scores, axis=1, keepdims=True) - 1.0, scores)
    return xp.sum(scores * onehot, axis=1) - xp.max(others, axis=1)


def _log_scores(oracle, images, ids):
    """The oracle's logits or log-probabilities as they are; the log of its probabilities (the
    smallest float for a 0) from an oracle that gives nothing better: a probability below the
    top one rounds to 0 once the margin passes about 87 in float32, and the signal is lost."""
    xp = xp_of(images)
    scores = oracle(images, ids)
    if getattr(oracle, "output", "logits") == "probs":
        return xp.log(xp.maximum(scores, xp.finfo(scores.dtype).smallest_normal))
    return scores


def _square_masks(rng, n, side, H, W, like):
    """(n, 1, H, W) masks of 0 and 1, each a side x side square at a random place (host rng)."""
    xp = xp_of(like)
    device = device_of(like)
    top = xp.asarray(rng.integers(0, H - side + 1, size=(n, 1)), device=device)
    left = xp.asarray(rng.integers(0, W - side + 1, size=(n, 1)), device=device)
    rows = xp.arange(H, device=device)[None, :]
    cols = xp.arange(W, device=device)[None, :]
    in_rows = (rows >= top) & (rows < top + side)   # (n, H)
    in_cols = (cols >= left) & (cols < left + side)  # (n, W)
    return xp.astype(in_rows[:, None, :, None] & in_cols[:, None, None, :], like.dtype)


def _signs(rng, shape, like):
    """+-1 of `shape`, equally likely, from host generator rng, moved to like's device."""
    signs = rng.integers(0, 2, size=shape, dtype=np.int8) * 2 - 1
    return xp_of(like).asarray(signs, dtype=like.dtype, device=device_of(like))


def square(oracle, x, t, eps, n_queries=5000, p_init=0.8, rng=None, ids=None, rescale=False):
    """Square attack: x (N, C, H, W) in [0, 1], t (N,) labels -> x_adv like x.

    oracle(images, ids) -> scores (a ScoreOracle); eps a scalar; at most n_queries queries per
    image (the stripes, then one proposal per iteration while the image is classified
    correctly). ids (N,) host integers name the images for the oracle's per-image counts
    (default 0..N-1). Host generator rng (numpy.random.Generator; default seeded 0) draws the
    stripes, squares and signs. Per image: the first misclassified point found, else the point
    of the lowest margin. |x_adv - x| <= eps, 0 <= x_adv <= 1. rescale: the square sizes'
    schedule stretched over n_queries (see the module's docstring).
    """
    xp = xp_of(x)
    rng = np.random.default_rng(0) if rng is None else rng
    N, C, H, W = x.shape
    ids = np.arange(N) if ids is None else np.asarray(ids)
    low, high = input_box(x, eps)
    x_best = project(x + eps * _signs(rng, (N, C, 1, W), x), low, high)
    scores = _log_scores(oracle, x_best, ids)
    margin, wrong = margins(scores, t), xp.argmax(scores, axis=1) != t
    for i in range(n_queries - 1):
        todo = np.flatnonzero(~to_numpy(wrong))
        if todo.size == 0:
            break
        side = min(max(int(round(math.sqrt(p_schedule(i, n_queries, p_init, rescale) * H * W))), 1),
                   H, W)
        best = take_rows(x_best, todo)
        change = (2.0 * eps) * _square_masks(rng, todo.size, side, H, W, x) * _signs(
            rng, (todo.size, C, 1, 1), x)
        proposal = project(best + change, take_rows(low, todo), take_rows(high, todo))
        old, labels = take_rows(margin, todo), take_rows(t, todo)
        scores = _log_scores(oracle, proposal, ids[todo])
        new, hit = margins(scores, labels), xp.argmax(scores, axis=1) != labels
        better = (new < old) | hit
        x_best = put_rows(x_best, todo, where_rows(better, proposal, best))
        margin = put_rows(margin, todo, xp.where(better, new, old))
        wrong = put_rows(wrong, todo, hit)
    return x_best

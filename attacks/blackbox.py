"""A black-box attack through a substitute (Papernot et al. 2017, "Practical Black-Box Attacks").

The attacker sees the victim only as a `LabelOracle`: images in, predicted labels out, every
image counted. It labels a small set of images with the oracle, trains a substitute network of
its own on those labels, and crafts FGS or PGD on the substitute's gradients, hoping that the
adversarial images transfer to the victim. Jacobian-based dataset augmentation chooses the next
images to query: each labelled image moved one signed step along the direction in which the
substitute's score for the oracle's label changes most, i.e. toward the substitute's decision
boundaries, where labels teach the substitute the most.

A `ScoreOracle` answers more: the logits (or log-probabilities, or probabilities) of each image,
still without a gradient. That is what score-based attacks such as Square (attacks/score_based.py)
work from.
"""
from collections import Counter

import numpy as np

from nn.backend import device_of, xp_of
from nn.layers import no_grad
from nn.losses import log_softmax, softmax
from nn.model import EVAL_BATCH, batch_slices, eval_mode, predict


class QueryBudgetExceeded(RuntimeError):
    """A query would take the oracle past its budget; nothing was answered or counted."""


class _Oracle:
    """What every oracle shares: the model, `queries` (every image asked about, asking twice
    counting twice) and an optional `budget` on them."""

    def __init__(self, model, budget=None, batch_size=EVAL_BATCH):
        if budget is not None and budget < 0:
            raise ValueError(f"{type(self).__name__}: budget must be >= 0, got {budget}")
        self._model, self._batch_size = model, batch_size
        self.budget, self.queries = budget, 0

    @property
    def remaining(self):
        """Queries left (None without a budget)."""
        return None if self.budget is None else self.budget - self.queries

    def _check_budget(self, n):
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(
                f"the oracle answers at most {self.budget} images; {self.queries} were asked "
                f"already, and {n} more would exceed the budget")


class LabelOracle(_Oracle):
    """A trained model seen from outside: host images (N, C, H, W) -> host labels (N,) int64.

    No logits, probabilities or gradients leave it. `queries` counts every image ever asked
    about (asking twice about the same image counts twice). With a `budget`, a request that
    would take `queries` past it raises QueryBudgetExceeded before the model runs.
    """

    def __call__(self, images):
        n = len(images)
        self._check_budget(n)
        labels = predict(self._model, images, self._batch_size).astype(np.int64)
        self.queries += n
        return labels


OUTPUTS = ("logits", "log_probs", "probs")


class ScoreOracle(_Oracle):
    """A trained model seen from outside through its scores, in eval mode; no gradient leaves it.

    oracle(images, ids=None): images (M, C, H, W) in the model's namespace and on its device ->
    scores (M, K) there: logits (output="logits"), log-probabilities computed stably from them
    (output="log_probs": z - max z - log sum exp(z - max z), exact where float32 probabilities
    below the top one round to 0), or probabilities (output="probs").
    `queries` counts every image asked about; ids (M,) host integers naming the images (say,
    their indices in the test set) count each one's queries in `per_image` (a Counter) too.
    `budget` caps `queries`, `per_image_budget` each named image's count: a request that would
    pass either raises QueryBudgetExceeded before the model runs, and nothing is counted.
    """

    def __init__(self, model, output="logits", budget=None, per_image_budget=None,
                 batch_size=EVAL_BATCH):
        if output not in OUTPUTS:
            raise ValueError(f"ScoreOracle: output must be one of {', '.join(OUTPUTS)}, got "
                             f"{output!r}")
        if per_image_budget is not None and per_image_budget < 0:
            raise ValueError(f"ScoreOracle: per_image_budget must be >= 0, got {per_image_budget}")
        super().__init__(model, budget, batch_size)
        self.output, self.per_image_budget, self.per_image = output, per_image_budget, Counter()

    def __call__(self, images, ids=None):
        n = images.shape[0]
        ids = None if ids is None else [int(i) for i in np.asarray(ids).reshape(-1)]
        if ids is not None and len(ids) != n:
            raise ValueError(f"ScoreOracle: {len(ids)} ids for {n} images")
        self._check_budget(n)
        if self.per_image_budget is not None:
            if ids is None:
                raise ValueError("ScoreOracle: a per_image_budget needs the ids of the images")
            asked = Counter(ids)
            over = [i for i in asked if self.per_image[i] + asked[i] > self.per_image_budget]
            if over:
                raise QueryBudgetExceeded(
                    f"the oracle answers at most {self.per_image_budget} queries per image; "
                    f"image {over[0]} has had {self.per_image[over[0]]}")
        xp = xp_of(images)
        with eval_mode(self._model), no_grad():
            scores = xp.concat([self._model.forward(images[s, ...])
                                for s in batch_slices(n, self._batch_size)], axis=0)
        self.queries += n
        self.per_image.update(ids or [])
        return {"logits": lambda z: z, "log_probs": log_softmax, "probs": softmax}[self.output](
            scores)


def jacobian_augmentation(substitute, x, labels, lam=0.1):
    """New query points x + lam * sign(dz_label/dx), clipped to [0, 1] (Papernot et al., eq. 4).

    x (N, C, H, W) in [0, 1], labels (N,) integer: the oracle's labels of x. z_label is the
    substitute's *logit* for that label (as in CleverHans' implementation; the paper writes the
    Jacobian of its softmax output F, whose sign differs only through the other classes' terms
    and which vanishes where the substitute is confident). Its input gradient is one backward
    pass of dout = onehot(label): each image's gradient depends on that image alone. Runs the
    substitute in eval mode; returns only the N new points, like x (the caller adds them to x).
    lam < 0 steps the other way (the paper alternates the sign to keep points near the data).
    """
    xp = xp_of(x)
    with eval_mode(substitute):
        logits = substitute.forward(x)
        classes = xp.arange(logits.shape[1], device=device_of(x))
        onehot = xp.astype(labels[:, None] == classes[None, :], logits.dtype)
        dx, _ = substitute.backward(onehot, param_grads=False)
    return xp.clip(x + lam * xp.sign(dx), 0.0, 1.0)

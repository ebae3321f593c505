"""A black-box attack through a substitute (Papernot et al. 2017, "Practical Black-Box Attacks").

The attacker sees the victim only as a `LabelOracle`: images in, predicted labels out, every
image counted. It labels a small set of images with the oracle, trains a substitute network of
its own on those labels, and crafts FGS or PGD on the substitute's gradients, hoping that the
adversarial images transfer to the victim. Jacobian-based dataset augmentation chooses the next
images to query: each labelled image moved one signed step along the direction in which the
substitute's score for the oracle's label changes most, i.e. toward the substitute's decision
boundaries, where labels teach the substitute the most.
"""
import numpy as np

from nn.backend import device_of, xp_of

from .evaluate import EVAL_BATCH, predict
from .gradient import eval_mode


class QueryBudgetExceeded(RuntimeError):
    """A query would take the oracle past its budget; nothing was answered or counted."""


class LabelOracle:
    """A trained model seen from outside: host images (N, C, H, W) -> host labels (N,) int64.

    No logits, probabilities or gradients leave it. `queries` counts every image ever asked
    about (asking twice about the same image counts twice). With a `budget`, a request that
    would take `queries` past it raises QueryBudgetExceeded before the model runs.
    """

    def __init__(self, model, budget=None, batch_size=EVAL_BATCH):
        if budget is not None and budget < 0:
            raise ValueError(f"LabelOracle: budget must be >= 0, got {budget}")
        self._model, self._batch_size = model, batch_size
        self.budget, self.queries = budget, 0

    @property
    def remaining(self):
        """Queries left (None without a budget)."""
        return None if self.budget is None else self.budget - self.queries

    def __call__(self, images):
        n = len(images)
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(
                f"the oracle answers at most {self.budget} images; {self.queries} were asked "
                f"already, and {n} more would exceed the budget")
        labels = predict(self._model, images, self._batch_size).astype(np.int64)
        self.queries += n
        return labels


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
        dx, _ = substitute.backward(onehot)
    return xp.clip(x + lam * xp.sign(dx), 0.0, 1.0)

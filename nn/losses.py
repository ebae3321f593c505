"""Losses and their gradients with respect to the model's output, as pure functions.

Each loss returns (loss, dloss/doutput): the loss a 0-d array (a mean over the batch), the
gradient shaped like the output, ready for Sequential.backward. Attacks follow the same
gradients back to the input image.
"""
from .backend import device_of, xp_of
from .functional import sigmoid_forward


def one_hot(labels, K, like):
    """(N,) integer labels -> (N, K) rows of 0 and 1 in the dtype and on the device of `like`."""
    xp = xp_of(like)
    classes = xp.arange(K, device=device_of(like))
    return xp.astype(xp.reshape(labels, (-1, 1)) == classes, like.dtype)


def _reduce(nll, dlogits, reduction):
    """The mean of per-sample losses (summed over axis 1 of nll (N, K)) and its gradient, or,
    with reduction="none", the losses (N,) and every row's gradient of its own loss."""
    xp = xp_of(nll)
    if reduction == "none":
        return xp.sum(nll, axis=1), dlogits
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    N = nll.shape[0]
    return xp.sum(nll) / N, dlogits / N


def softmax_cross_entropy(logits, targets, reduction="mean"):
    """Mean cross-entropy of softmax(logits) against integer class labels, and its gradient.

    logits (N, K) float, targets (N,) integer in [0, K) -> loss (0-d array), dlogits (N, K);
    reduction="none" (as PyTorch): the N losses (N,) and the gradient of their sum.
    log p = z - max z - log sum exp(z - max z) (stable for any logits);
    dL/dz = (softmax(z) - onehot(t)) / N, with p_t - 1 taken as -sum_{j != t} p_j: where the
    model is sure, p_t rounds to 1 in float32 and p_t - 1 to 0, while the other p_j keep their
    digits; the rounded form would drop the push down on the true logit that attacks follow.
    """
    xp = xp_of(logits, targets)
    log_p = log_softmax(logits)
    onehot = one_hot(targets, logits.shape[1], logits)
    wrong = xp.exp(log_p) * (1.0 - onehot)
    return _reduce(-(log_p * onehot), wrong - onehot * xp.sum(wrong, axis=1, keepdims=True),
                   reduction)


def dlr_loss(logits, targets, target=None, reduction="mean"):
    """Difference of Logits Ratio (Croce and Hein 2020), mean over the batch, and its gradient.

    logits (N, K) float, targets (N,) the true labels, target (N,) wrong classes to reach or None
    -> loss (0-d array), dlogits (N, K); reduction="none": the N losses and their sum's gradient.
    With the logits of each row sorted, z_pi1 >= z_pi2 >= z_pi3 >= z_pi4 >= ...:
      untargeted (K >= 3): l = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12),
      targeted (K >= 4):   l = -(z_y - z_target) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12).
    l = -u / D is unchanged by a shift or a rescaling of the logits. Each of u and D is a sum of
    logits with coefficients c_u, c_D (one-hot rows: +1 at y and -1 at the rival for u; +1 at
    pi1, -1 or -1/2 at pi3 (and pi4) for D), so dl/dz = -c_u / D + u c_D / D^2.
    """
    xp = xp_of(logits, targets)
    N, K = logits.shape
    order = xp.argsort(logits, axis=1, descending=True)
    rank = [one_hot(order[:, j], K, logits) for j in range(4 if target is not None else 3)]
    onehot = one_hot(targets, K, logits)
    if target is None:  # the largest other logit: the true one pushed below the row's minimum
        others = xp.where(onehot > 0, xp.min(logits, axis=1, keepdims=True) - 1.0, logits)
        c_u = onehot - one_hot(xp.argmax(others, axis=1), K, logits)
        c_d = rank[0] - rank[2]
    else:
        c_u = onehot - one_hot(target, K, logits)
        c_d = rank[0] - 0.5 * (rank[2] + rank[3])
    u = xp.sum(logits * c_u, axis=1, keepdims=True)
    d = xp.sum(logits * c_d, axis=1, keepdims=True) + 1e-12
    return _reduce(-u / d, -c_u / d + (u / (d * d)) * c_d, reduction)


def mse_loss(out, target):
    """Squared error summed over each sample's values and averaged over the batch, and its gradient.

    out (N, ...) float, target like out -> loss (0-d array), dout like out.
    loss = sum((out - target)^2) / N; dL/dout = 2 (out - target) / N.
    """
    xp = xp_of(out, target)
    diff = out - target
    N = out.shape[0]
    return xp.sum(diff * diff) / N, (2.0 / N) * diff


def softmax(logits):
    """Class probabilities (N, K) from logits (N, K), stable for any logits."""
    xp = xp_of(logits)
    e = xp.exp(logits - xp.max(logits, axis=1, keepdims=True))
    return e / xp.sum(e, axis=1, keepdims=True)


def log_softmax(logits):
    """Log class probabilities (N, K) from logits (N, K): z - max z - log sum exp(z - max z),
    exact where the probabilities themselves round to 0."""
    xp = xp_of(logits)
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def softplus(x):
    """log(1 + exp(x)), any shape, as max(x, 0) + log1p(exp(-|x|)) so that it never overflows."""
    xp = xp_of(x)
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))


def bce_with_logits(logits, targets):
    """Mean binary cross-entropy between sigmoid(logits) and targets, and its gradient.

    logits (N,) or (N, 1) float, targets in [0, 1] of the same shape (or a Python float)
    -> loss (0-d array), dlogits like logits.
    Per sample: -t log s(z) - (1 - t) log(1 - s(z)) = max(z, 0) - z t + log(1 + exp(-|z|));
    dL/dz = (sigmoid(z) - t) / N.
    """
    xp = xp_of(logits)
    N = logits.shape[0]
    loss = xp.sum(softplus(logits) - logits * targets) / N
    s, _ = sigmoid_forward(logits)
    return loss, (s - targets) / N

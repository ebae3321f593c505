"""Losses and their gradients with respect to the model's output, as pure functions.

Each loss returns (loss, dloss/doutput): the loss a 0-d array (a mean over the batch), the
gradient shaped like the output, ready for Sequential.backward. Attacks follow the same
gradients back to the input image.
"""
from .backend import device_of, xp_of
from .functional import sigmoid_forward


def softmax_cross_entropy(logits, targets):
    """Mean cross-entropy of softmax(logits) against integer class labels, and its gradient.

    logits (N, K) float, targets (N,) integer in [0, K) -> loss (0-d array), dlogits (N, K).
    log p = z - max z - log sum exp(z - max z) (stable for any logits);
    dL/dz = (softmax(z) - onehot(t)) / N, with p_t - 1 taken as -sum_{j != t} p_j: where the
    model is sure, p_t rounds to 1 in float32 and p_t - 1 to 0, while the other p_j keep their
    digits; the rounded form would drop the push down on the true logit that attacks follow.
    """
    xp = xp_of(logits, targets)
    N, K = logits.shape
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    log_p = shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
    classes = xp.arange(K, device=device_of(logits))
    onehot = xp.astype(xp.reshape(targets, (N, 1)) == classes, logits.dtype)
    loss = -xp.sum(log_p * onehot) / N
    wrong = xp.exp(log_p) * (1.0 - onehot)
    return loss, (wrong - onehot * xp.sum(wrong, axis=1, keepdims=True)) / N


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

"""One-step attacks: move each pixel along the gradient of the loss with respect to the image.

Training asks "how should the weights change to lower the loss?"; an attack asks "how should the
*pixels* change to raise it?". Both answers come out of the same backward pass (`loss_and_gradients`).
"""
from typing import NamedTuple

import numpy as np

from nn.backend import device_of, xp_of
from nn.losses import softmax_cross_entropy
from nn.model import eval_mode


class Pass(NamedTuple):
    """What one forward and one backward pass give: loss (0-d), logits (N, K), dx like x, grads."""
    loss: object
    logits: object
    dx: object
    grads: dict


def loss_and_gradients(model, x, t, input_grad=True, loss_fn=softmax_cross_entropy,
                       param_grads=True):
    """One forward and one backward pass of the mean cross-entropy (or of `loss_fn`): a `Pass`.

    x (N, C, H, W) float, t (N,) integer labels. dx = dL/dx (None if not input_grad),
    grads = {param name: dL/dparam} ({} if not param_grads: what attacks ask for). The model
    runs in whatever mode it is in (training uses this in train mode).
    loss_fn(logits, t) -> (loss, dlogits), as the losses of nn.losses.
    """
    logits = model.forward(x)
    loss, dlogits = loss_fn(logits, t)
    dx, grads = model.backward(dlogits, input_grad=input_grad, param_grads=param_grads)
    return Pass(loss, logits, dx, grads)


def input_gradient(model, x, t):
    """dJ/dx: the gradient of the mean cross-entropy J with respect to the input images.

    x (N, C, H, W), t (N,) -> dx (N, C, H, W), same namespace, device and dtype as x.

    How backprop reaches the input: `model.forward` keeps, in every layer, what that layer's
    backward needs. The loss gives dJ/dlogits = (softmax - onehot) / N. `model.backward` hands it
    from the last layer to the first; each layer maps dJ/d(its output) to dJ/d(its input) (Dense:
    dout @ W^T, ReLU: zero where the input was negative, MaxPool: to each window's maximum,
    Conv2d: the transposed convolution col2im(W^T @ dout)). What leaves the first layer is dJ/dx,
    one number per pixel: how much the loss rises if that pixel brightens. Training throws this
    array away; an attack follows it. The model runs in eval mode here, so BatchNorm's running
    statistics are used and never changed, and no parameter is touched.
    """
    with eval_mode(model):
        return loss_and_gradients(model, x, t, param_grads=False).dx


def _clip01(x):
    return xp_of(x).clip(x, 0.0, 1.0)


def fgs_step(x, grad, alpha):
    """Fast Gradient Sign from a known gradient: clip(x + alpha * sign(grad), 0, 1)."""
    return _clip01(x + alpha * xp_of(grad).sign(grad))


def fgv_step(x, grad, alpha):
    """Fast Gradient Value from a known gradient: clip(x + alpha * grad / max|grad|, 0, 1).

    The maximum is over each image separately (all axes but the first); an image whose gradient
    is zero everywhere is left unchanged.
    """
    xp = xp_of(grad)
    peak = xp.max(xp.abs(grad), axis=tuple(range(1, grad.ndim)), keepdims=True)
    return _clip01(x + alpha * grad / xp.where(peak > 0, peak, 1.0))


def fgs(model, x, t, alpha=0.3):
    """Fast Gradient Sign attack: x (N, C, H, W) in [0, 1], t (N,) -> x_adv like x."""
    return fgs_step(x, input_gradient(model, x, t), alpha)


def fgv(model, x, t, alpha=0.6):
    """Fast Gradient Value attack: x (N, C, H, W) in [0, 1], t (N,) -> x_adv like x."""
    return fgv_step(x, input_gradient(model, x, t), alpha)


def sign_noise(x, alpha, rng):
    """x + alpha * s with s = -1 or +1 per pixel, uniformly, clipped to [0, 1].

    The signs come from the host generator `rng` (numpy.random.Generator), then move to x's device.
    """
    xp = xp_of(x)
    signs = rng.integers(0, 2, size=x.shape, dtype=np.int8) * 2 - 1
    return _clip01(x + alpha * xp.asarray(signs, dtype=x.dtype, device=device_of(x)))

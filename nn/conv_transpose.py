"""Transposed convolution, fast (pix2pix's upsampling): conv2d's input gradient run forward.

The contract of `nn/functional.py`; built on nn/conv.py's im2col and col2im, so that the forward
is exactly conv2d_backward's dx and the backward a convolution. The loops: nn/naive.py,
conv_transpose2d_forward and _backward. Shapes use N batch, C input channels, F output channels,
H/W height/width, KH/KW kernel size.
"""
from .backend import xp_of
from .conv import _rows, _unrows, col2im, im2col
from .functional import product


def conv_transpose2d_forward(x, w, b, stride=1, padding=0):
    """Transposed convolution: conv2d's input gradient, run as a forward pass (it upsamples).

    x (N, C, H, W), w (C, F, KH, KW) (PyTorch's ConvTranspose2d layout), b (F,) ->
    out (N, F, OH, OW), OH = (H - 1) stride - 2 padding + KH: the conv2d whose output x would be
    carries each input value back onto its window. With W2 = w as (C, KH*KW*F) and X = x as
    (C, H*W*N): out = col2im(W2^T @ X) + b, exactly conv2d_backward's dx. The loops:
    nn/naive.py, conv_transpose2d_forward (and _backward).
    """
    xp = xp_of(x, w, b)
    N, C, H, W = x.shape
    _, F, KH, KW = w.shape
    shape = (N, F, (H - 1) * stride - 2 * padding + KH, (W - 1) * stride - 2 * padding + KW)
    X = xp.reshape(xp.permute_dims(x, (1, 2, 3, 0)), (C, -1))
    W2 = _rows(w)
    out = col2im(W2.T @ X, shape, KH, KW, stride, padding)
    return out + xp.reshape(b, (1, F, 1, 1)), (X, x.shape, W2, w.shape, stride, padding)


def conv_transpose2d_backward(dout, cache, input_grad=True, param_grads=True):
    """dout (N, F, OH, OW) -> dx (N, C, H, W), dw (C, F, KH, KW), db (F,): a convolution of
    dout. With cols = im2col(dout) (KH*KW*F, H*W*N): dx = W2 @ cols, dw = X @ cols^T, db the
    sum of dout over all but its channels."""
    xp = xp_of(dout)
    X, x_shape, W2, w_shape, stride, padding = cache
    C, F, KH, KW = w_shape
    N, _, H, W = x_shape
    cols = im2col(dout, KH, KW, stride, padding)
    dx = dw = db = None
    if input_grad:
        dx = xp.permute_dims(xp.reshape(product(W2, cols), (C, H, W, N)), (3, 0, 1, 2))
    if param_grads:
        dw = _unrows(X @ cols.T, w_shape)
        db = xp.sum(dout, axis=(0, 2, 3))
    return dx, dw, db

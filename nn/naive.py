"""The readable versions: convolution, transposed convolution and max pooling as plain loops.

Read these first. Each follows its definition index by index, forward and backward, on host
NumPy arrays; `nn/conv.py` computes the same numbers fast (im2col, one matrix product,
strided slices, the batch innermost in memory), and `tests/test_gradients.py` checks the fast
ones against these. Shapes: x (N, C, H, W), w (F, C, KH, KW) (transposed: (C, F, KH, KW)),
b (F,), out and dout (N, F or C, OH, OW); s is the stride, p the padding.
"""
import numpy as np


def out_size(size, kernel, stride, padding):
    """Number of window positions along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def _padded(x, padding):
    N, C, H, W = x.shape
    xpad = np.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=x.dtype)
    xpad[:, :, padding:padding + H, padding:padding + W] = x
    return xpad


def conv2d_forward(x, w, b, stride=1, padding=0):
    """out[n, f, oh, ow] = b[f] + sum_{c,i,j} xpad[n, c, oh*s + i, ow*s + j] * w[f, c, i, j],
    xpad being x zero-padded by p on each side of H and W."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = out_size(H, KH, stride, padding), out_size(W, KW, stride, padding)
    xpad = _padded(x, padding)
    out = np.zeros((N, F, OH, OW), dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            for oh in range(OH):
                for ow in range(OW):
                    r, s = oh * stride, ow * stride
                    out[n, f, oh, ow] = np.sum(xpad[n, :, r:r + KH, s:s + KW] * w[f]) + b[f]
    return out


def conv2d_backward(dout, x, w, stride=1, padding=0):
    """(dx, dw, db) of conv2d_forward: every output element gives dout times its weights back to
    its window of inputs (dx), dout times its window to the weights (dw), dout to the bias."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    _, _, OH, OW = dout.shape
    xpad = _padded(x, padding)
    dxpad, dw, db = np.zeros_like(xpad), np.zeros_like(w), np.zeros(F, dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            for oh in range(OH):
                for ow in range(OW):
                    r, s, g = oh * stride, ow * stride, dout[n, f, oh, ow]
                    dxpad[n, :, r:r + KH, s:s + KW] += g * w[f]
                    dw[f] += g * xpad[n, :, r:r + KH, s:s + KW]
                    db[f] += g
    return dxpad[:, :, padding:padding + H, padding:padding + W], dw, db


def conv_transpose2d_forward(x, w, b, stride=1, padding=0):
    """Every input value spreads over a window of the output: out[n, f, h*s + i - p,
    v*s + j - p] += x[n, c, h, v] * w[c, f, i, j], plus b[f]; OH = (H - 1) s - 2p + KH. It is
    conv2d_backward's dx with x as dout."""
    N, C, H, W = x.shape
    _, F, KH, KW = w.shape
    OH, OW = (H - 1) * stride - 2 * padding + KH, (W - 1) * stride - 2 * padding + KW
    outpad = np.zeros((N, F, OH + 2 * padding, OW + 2 * padding), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for v in range(W):
                    r, s = h * stride, v * stride
                    outpad[n, :, r:r + KH, s:s + KW] += x[n, c, h, v] * w[c]
    return outpad[:, :, padding:padding + OH, padding:padding + OW] + b[None, :, None, None]


def conv_transpose2d_backward(dout, x, w, stride=1, padding=0):
    """(dx, dw, db) of conv_transpose2d_forward: each input value's gradient is the sum of dout
    over its window times the weights; dw gathers x times that window of dout."""
    N, C, H, W = x.shape
    _, F, KH, KW = w.shape
    doutpad = _padded(dout, padding)
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for v in range(W):
                    r, s = h * stride, v * stride
                    window = doutpad[n, :, r:r + KH, s:s + KW]
                    dx[n, c, h, v] = np.sum(window * w[c])
                    dw[c] += x[n, c, h, v] * window
    return dx, dw, dout.sum(axis=(0, 2, 3))


def first_argmax(window):
    """(i, j) of the first maximum of a 2-D window in row-major order (PyTorch's tie rule)."""
    best = None
    for i in range(window.shape[0]):
        for j in range(window.shape[1]):
            if best is None or window[i, j] > window[best]:
                best = (i, j)
    return best


def max_pool2d_forward(x, kernel, stride):
    """out[n, c, oh, ow] = the maximum of the kernel x kernel window at (oh*s, ow*s)."""
    N, C, H, W = x.shape
    OH, OW = out_size(H, kernel, stride, 0), out_size(W, kernel, stride, 0)
    out = np.zeros((N, C, OH, OW), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    r, s = oh * stride, ow * stride
                    out[n, c, oh, ow] = np.max(x[n, c, r:r + kernel, s:s + kernel])
    return out


def max_pool2d_backward(dout, x, kernel, stride):
    """dx: each window's dout goes, whole, to its first maximum (row-major order)."""
    N, C, _, _ = x.shape
    _, _, OH, OW = dout.shape
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    r, s = oh * stride, ow * stride
                    i, j = first_argmax(x[n, c, r:r + kernel, s:s + kernel])
                    dx[n, c, r + i, s + j] += dout[n, c, oh, ow]
    return dx

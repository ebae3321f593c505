"""Slow loop-based references for convolution and max pooling, on host NumPy arrays.

They follow the definitions index by index (no im2col, no strided tricks), so the fast versions in
`nn/functional.py` can be tested against them. Shapes: x (N, C, H, W), w (F, C, KH, KW), b (F,),
out and dout (N, F or C, OH, OW).
"""
import numpy as np


def out_size(size, kernel, stride, padding):
    """Number of window positions along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def conv2d_forward_loops(x, w, b, stride, padding):
    """out[n, f, oh, ow] = b[f] + sum_{c,i,j} xpad[n, c, oh*s + i, ow*s + j] * w[f, c, i, j].

    xpad is x zero-padded by `padding` on each side of H and W, s the stride.
    """
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = out_size(H, KH, stride, padding), out_size(W, KW, stride, padding)
    xp = np.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=x.dtype)
    xp[:, :, padding:padding + H, padding:padding + W] = x
    out = np.zeros((N, F, OH, OW), dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            for oh in range(OH):
                for ow in range(OW):
                    r, s = oh * stride, ow * stride
                    out[n, f, oh, ow] = np.sum(xp[n, :, r:r + KH, s:s + KW] * w[f]) + b[f]
    return out


def conv2d_backward_loops(dout, x, w, stride, padding):
    """dx, dw, db of conv2d_forward_loops: every output element adds dout * (its inputs) back."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    _, _, OH, OW = dout.shape
    xp = np.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=x.dtype)
    xp[:, :, padding:padding + H, padding:padding + W] = x
    dxp, dw, db = np.zeros_like(xp), np.zeros_like(w), np.zeros(F, dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            for oh in range(OH):
                for ow in range(OW):
                    r, s, g = oh * stride, ow * stride, dout[n, f, oh, ow]
                    dxp[n, :, r:r + KH, s:s + KW] += g * w[f]
                    dw[f] += g * xp[n, :, r:r + KH, s:s + KW]
                    db[f] += g
    return dxp[:, :, padding:padding + H, padding:padding + W], dw, db


def first_argmax(window):
    """(i, j) of the first maximum of a 2-D window in row-major order (PyTorch's tie rule)."""
    best = None
    for i in range(window.shape[0]):
        for j in range(window.shape[1]):
            if best is None or window[i, j] > window[best]:
                best = (i, j)
    return best


def max_pool2d_forward_loops(x, kernel, stride):
    """out[n, c, oh, ow] = max of the kernel x kernel window at (oh*stride, ow*stride)."""
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


def max_pool2d_backward_loops(dout, x, kernel, stride):
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


def apgd_one_image(value_and_grad, x, label, eps, steps, start, rho=0.75, momentum=0.75,
                   halving="paper"):
    """APGD on one image, step by step as in Croce and Hein (2020), Algorithm 1, with
    AutoAttack's whole-number checkpoint intervals (0.22, then 0.03 shorter each time, at least
    0.06 of `steps`). halving="autoattack" follows AutoAttack's code instead of the paper's
    text: halve when the loss rose in at most rho of the steps, and the first iterate's loss is
    compared with 0 (the wrapped index into its zero-initialised array of losses).

    value_and_grad(image (C, H, W)) -> (predicted class, loss, dloss/dimage); start (C, H, W).
    Returns (the first misclassified iterate, else the iterate of the highest loss; whether
    some iterate was misclassified).
    """
    low, high = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)

    def project(p):
        return np.minimum(np.maximum(p, low), high)

    current = project(start)
    pred, loss, grad = value_and_grad(current)
    first = current if pred != label else None
    best, best_loss, best_grad = current, loss, grad
    previous, step = current, 2 * eps
    interval, since_check, rises = max(int(0.22 * steps), 1), 0, 0
    last_loss = 0.0 if halving == "autoattack" else loss
    reduced_at_check, best_at_check = True, best_loss
    for i in range(steps):
        a = momentum if i > 0 else 1.0
        z = project(current + step * np.sign(grad))
        previous, current = current, project(current + a * (z - current)
                                             + (1 - a) * (current - previous))
        pred, loss, grad = value_and_grad(current)
        if first is None and pred != label:
            first = current
        rises += loss > last_loss
        last_loss = loss
        if loss > best_loss:
            best, best_loss, best_grad = current, loss, grad
        since_check += 1
        if since_check == interval:
            few = rises <= rho * interval if halving == "autoattack" else rises < rho * interval
            reduce = few or (not reduced_at_check and best_loss <= best_at_check)
            reduced_at_check, best_at_check = reduce, best_loss
            if reduce:
                step /= 2
                current, grad = best, best_grad
            since_check = rises = 0
            interval = max(interval - max(int(0.03 * steps), 1), max(int(0.06 * steps), 1))
    return (best if first is None else first), first is not None

"""Max pooling, fast: each window's maximum over K*K strided views (nn/functional.py's contract).

`max_pool2d_forward(x, K, stride) -> (out, cache)`, `max_pool2d_backward(dout, cache) -> dx`.
The loops, window by window: nn/naive.py, max_pool2d_forward and _backward; the tests hold the
two to the same numbers, ties included. Shapes use N batch, C channels, H/W height/width.
"""
from .backend import xp_of
from .conv import _window, output_size


def max_pool2d_forward(x, kernel_size, stride, record=True):
    """Maximum over each KxK window: x (N, C, H, W) -> out (N, C, OH, OW).

    The maximum is taken over the K*K strided views x[:, :, i::stride, j::stride], one per
    window offset (i, j); this covers overlapping and non-overlapping windows alike. The cache
    keeps, for every offset after the first, where it raised the running maximum (bool, like
    out): what the backward needs, so that it never reads x again; record=False (no backward
    follows: nn.no_grad) skips them and returns no cache. The loops, window by window:
    nn/naive.py, max_pool2d_forward (and _backward).
    """
    xp = xp_of(x)
    N, C, H, W = x.shape
    OH, OW = output_size(H, kernel_size, stride, 0), output_size(W, kernel_size, stride, 0)
    out, rises = None, []
    for i in range(kernel_size):
        for j in range(kernel_size):
            v = x[:, :, _window(i, stride, OH), _window(j, stride, OW)]
            if out is None:
                out = v
            else:
                new = xp.maximum(out, v)
                if record:  # strictly above all earlier offsets: ties keep the first
                    rises.append(new != out)
                out = new
    return out, ((x, rises, kernel_size, stride) if record else None)


def _winners(rises):
    """rises (K*K - 1 bool arrays) -> K*K bool arrays: offset k holds its window's first maximum
    when it rose and no later offset rose again (offset 0 when none rose)."""
    won, later = [], None
    for rise in reversed(rises):
        won.append(rise if later is None else rise & ~later)
        later = rise if later is None else later | rise
    won.append(~later)
    return won[::-1]


def max_pool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W): each window's gradient goes, whole, to its first
    maximum in row-major window order (as in PyTorch on ties).

    Windows that tile x (stride = K, no remainder) see x as (N, C, OH, K, OW, K): dx is a 0/1
    float mask written offset by offset, times dout broadcast over each window in one product.
    Otherwise each offset adds dout * its mask to its strided view of dx.
    """
    xp = xp_of(dout)
    x, rises, K, stride = cache
    N, C, H, W = x.shape
    OH, OW = dout.shape[2:]
    if not rises:  # 1x1 windows: nothing to choose
        return _pool_scatter(dout, x, [None], K, stride)
    won = _winners(rises)
    if not (stride == K and H == K * OH and W == K * OW):
        return _pool_scatter(dout, x, [xp.astype(w, dout.dtype) for w in won], K, stride)
    # empty_like keeps x's memory order (batch innermost for a convolution's output); splitting
    # H into (OH, K) and W into (OW, K) is a view for any memory order
    mask = xp.reshape(xp.empty_like(x, dtype=xp.bool), (N, C, OH, K, OW, K))
    for k, w in enumerate(won):
        mask[:, :, :, k // K, :, k % K] = w
    dx = xp.astype(mask, dout.dtype)
    dx *= xp.reshape(dout, (N, C, OH, 1, OW, 1))
    return xp.reshape(dx, x.shape)


def _pool_scatter(dout, x, masks, K, stride):
    """Overlapping or partial windows: dx[:, :, i::stride, j::stride] += dout * mask of (i, j)."""
    OH, OW = dout.shape[2:]
    dx = xp_of(dout).zeros_like(x, dtype=dout.dtype)
    for k, mask in enumerate(masks):
        rows, cols = _window(k // K, stride, OH), _window(k % K, stride, OW)
        dx[:, :, rows, cols] += dout if mask is None else dout * mask
    return dx

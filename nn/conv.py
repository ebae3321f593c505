"""Windowed ops on images, fast: convolution (transposed: nn/conv_transpose.py, pooling: nn/pool.py).

The same contract as `nn/functional.py`: `op_forward(...) -> (out, cache)`, `op_backward(dout,
cache)` returning the input's gradient first, then the parameters'. Convolution is one matrix
product over an im2col unfolding, built from strided slices over the kernel offsets (KH*KW
Python iterations whatever the batch size), or for conv2's shapes Winograd's minimal filtering
(nn/winograd.py); nn/naive.py keeps the loops window by window, and the tests hold them all to
the same numbers. Shapes use N batch, C channels, H/W height/width, F filters, KH/KW kernel
size, OH/OW output size.
"""
import numpy as np

from . import winograd
from .backend import device_of, is_numpy, xp_of
from .functional import in_pieces, product, product_nt


def _zeros(shape, like):
    xp = xp_of(like)
    return xp.zeros(shape, dtype=like.dtype, device=device_of(like))


def output_size(size, kernel, stride, padding):
    """Spatial output length of a window of `kernel` sliding over `size` (+ padding) by `stride`."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"a {kernel}-wide window with padding {padding} does not fit "
                         f"in an input of size {size}")
    return out


def _window(offset, stride, count):
    """Slice picking `count` positions `offset, offset + stride, ...` (stop kept in bounds)."""
    return slice(offset, offset + stride * (count - 1) + 1, stride)


# --- convolution -----------------------------------------------------------------------------
# Convolution works on "channels first, batch last" copies (C, H, W, N) of its input: the
# strided slices that im2col and col2im move then have N contiguous values at their core, and
# the result, a (F, OH, OW, N) array seen as (N, F, OH, OW), keeps the batch innermost in memory
# for the layers after it (NumPy's element-wise ops keep their input's memory order). The
# columns' rows run over the kernel offsets (i, j) first and the channels c last, so that each
# offset's rows are one contiguous block: im2col writes it and col2im reads it in one piece
# (col2im 15-30% faster than with rows (c, i, j)); the weights are permuted to match (`_rows`).

def _padded_cnhw(x, padding):
    """x (N, C, H, W) as (C, H + 2p, W + 2p, N), zero-padded."""
    xp = xp_of(x)
    xt = xp.permute_dims(x, (1, 2, 3, 0))
    if padding == 0:
        # flattening copies (in the new order) only when xt is not laid out that way already
        return xp.reshape(xp.reshape(xt, (-1,)), xt.shape)
    C, H, W, N = xt.shape
    out = _zeros((C, H + 2 * padding, W + 2 * padding, N), x)
    out[:, padding:padding + H, padding:padding + W, :] = xt
    return out


def _row_length(n, itemsize):
    """n, rounded up to an odd number of 64-byte cache lines. The matrix product's packing reads
    one element from each row in turn, and rows an even number of lines long use only some of
    the L1 cache's 64 sets (rows of 4,096 floats, 16 KiB: one set): conv2's forward product ran
    at 48 GFLOP/s on rows of 4,096 floats, 59 on 4,112."""
    line = max(64 // itemsize, 1)
    return (-(-n // line) | 1) * line


def _rows(w):
    """w (F, C, KH, KW) as the (F, KH*KW*C) matrix whose columns match im2col's rows (i, j, c)."""
    xp = xp_of(w)
    return xp.reshape(xp.permute_dims(w, (0, 2, 3, 1)), (w.shape[0], -1))


def _unrows(m, shape):
    """Inverse of _rows: m (F, KH*KW*C) -> (F, C, KH, KW) = shape."""
    xp = xp_of(m)
    F, C, KH, KW = shape
    return xp.permute_dims(xp.reshape(m, (F, KH, KW, C)), (0, 3, 1, 2))


def im2col(x, KH, KW, stride, padding, ones=False):
    """Unfold x (N, C, H, W) into cols (KH*KW*C, OH*OW*N), plus a last row of ones if `ones`.

    Row (i, j, c), column (oh, ow, n) of cols holds x[n, c, i + stride*oh, j + stride*ow]
    (zero in the padding): one strided slice per kernel offset (i, j), so the Python loop runs
    KH*KW times whatever the batch size. The row of ones lets one matrix product add the bias.
    cols is a view of wider rows (`_row_length`).
    """
    xp = xp_of(x)
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, stride, padding), output_size(W, KW, stride, padding)
    xt = _padded_cnhw(x, padding)
    P = OH * OW * N
    width = _row_length(P, xp.finfo(x.dtype).bits // 8)
    rows = xp.empty((C * KH * KW + ones, width), dtype=x.dtype, device=device_of(x))
    cols = rows[:, :P]
    if ones:
        cols[-1, :] = 1.0
    _unfold(cols[:C * KH * KW, :], xt, KH, KW, stride, 0, OH, OW)
    return cols


def _unfold(cols, xt, KH, KW, stride, top, count, OW):
    """Write into cols (KH*KW*C, count*OW*N) the columns of output rows top .. top + count - 1
    of xt (C, H, W, N): row (i, j, c) is xt[c, i + stride*oh, j + stride*ow, n]."""
    C, N = xt.shape[0], xt.shape[-1]
    unfolded = xp_of(cols).reshape(cols, (KH, KW, C, count, OW, N))  # a view of cols
    for i in range(KH):
        for j in range(KW):
            rows, columns = _window(i + stride * top, stride, count), _window(j, stride, OW)
            unfolded[i, j, ...] = xt[:, rows, columns, :]


def _fold(dxt, dcols, KH, KW, stride, top, count, OW):
    """Adjoint of _unfold: add dcols (KH*KW*C, count*OW*N) into dxt (C, H, W, N), offset by
    offset in the order (i, then j)."""
    C, N = dxt.shape[0], dxt.shape[-1]
    dcols = xp_of(dcols).reshape(dcols, (KH, KW, C, count, OW, N))
    for i in range(KH):
        for j in range(KW):
            rows, columns = _window(i + stride * top, stride, count), _window(j, stride, OW)
            dxt[:, rows, columns, :] += dcols[i, j, ...]


def col2im(dcols, x_shape, KH, KW, stride, padding):
    """Adjoint of im2col: fold dcols (KH*KW*C, OH*OW*N) back into dx (N, C, H, W).

    Where windows overlap, the contributions of every offset are summed.
    """
    xp = xp_of(dcols)
    N, C, H, W = x_shape
    OH, OW = output_size(H, KH, stride, padding), output_size(W, KW, stride, padding)
    dxt = _zeros((C, H + 2 * padding, W + 2 * padding, N), dcols)
    _fold(dxt, dcols, KH, KW, stride, 0, OH, OW)
    dxt = dxt[:, padding:padding + H, padding:padding + W, :]
    return xp.permute_dims(dxt, (3, 0, 1, 2))


def conv2d_forward(x, w, b, stride=1, padding=0, keep_cols=False):
    """Cross-correlation out[n, f] = sum_c x[n, c] * w[f, c] + b[f], as one matrix product.

    x (N, C, H, W), w (F, C, KH, KW), b (F,) -> out (N, F, OH, OW). The bias rides along as a
    last column of the weights against im2col's row of ones. A large product on NumPy runs in
    blocks of output rows, without the input channels that are zero in every image, and the
    weight gradient unfolds x again block by block; keep_cols=True makes and keeps the whole
    columns instead (one product: what the tests hold the blocks to). Stride 1, 8 channels or
    more in and out and a 3x3 to 5x5 kernel (conv2): Winograd's tiles instead (nn/winograd.py,
    2.8 times fewer multiplications for 5x5), unless keep_cols. The loops: nn/naive.py,
    conv2d_forward; read first.
    """
    xp = xp_of(x, w, b)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = output_size(H, KH, stride, padding), output_size(W, KW, stride, padding)
    if not keep_cols and winograd.fits(x, w, stride):
        return winograd.conv2d_forward(x, w, b, padding)
    W2 = _rows(w)
    wb = xp.concat([W2, xp.reshape(b, (F, 1))], axis=1)
    if keep_cols or not _in_blocks(wb, x, OH * OW * N):
        cols = im2col(x, KH, KW, stride, padding, ones=True)   # (KH*KW*C + 1, OH*OW*N)
        out = xp.reshape(product(wb, cols), (F, OH, OW, N))
    else:
        out, cols = _streamed(x, wb, KH, KW, stride, padding, OH, OW), None
    return xp.permute_dims(out, (3, 0, 1, 2)), (x, cols, W2, w.shape, stride, padding)


# A product too large for OpenBLAS's small-matrix kernel packs its columns, which have left the
# L2 cache since im2col wrote them; unfolded and multiplied a block of output rows (~STREAM_BYTES)
# at a time they are still there: conv2's forward, 87 images, 13.8 -> 11.2 ms (1 thread), same sums.
# Likewise the weight gradient's, unfolded again (`_weight_grad`: two processes' training step x0.96
# on a 2-core AMD EPYC, their columns no longer crowding the shared L3 cache), and the input
# gradient's columns, folded by col2im block by block (`_folded`). Channels
# zero in every image (`_live`) leave the forward product: the PGD model's forward, 100 images, x0.79;
# after a ReLU (`gated`) the input gradient's too: its forward and backward x0.91.
STREAM_BYTES = 2 * 2**20


def _in_blocks(w, x, columns):
    """Whether a product of w by `columns` columns made from x runs in blocks: NumPy, and not
    in small pieces (`in_pieces`)."""
    return is_numpy(w) and is_numpy(x) and not in_pieces(w, x, columns, w.size)


def _block_rows(K, OW, N, itemsize, OH):
    """Output rows per block: K x (rows*OW*N) columns of about STREAM_BYTES, 1 to OH rows."""
    return min(max(STREAM_BYTES // (K * OW * N * itemsize), 1), OH)


def _blocks(xt, KH, KW, stride, OH, OW):
    """(top, r, cols) for blocks of R output rows: im2col's columns of rows top .. top + r - 1
    of xt (C, H, W, N), the last row ones, in one buffer reused from block to block (NumPy)."""
    K, N = KH * KW * xt.shape[0] + 1, xt.shape[-1]
    R = _block_rows(K, OW, N, xt.dtype.itemsize, OH)
    rows = np.empty((K, _row_length(R * OW * N, xt.dtype.itemsize)), dtype=xt.dtype)
    rows[-1, :] = 1.0  # the bias's row of ones
    for top in range(0, OH, R):
        r = min(R, OH - top)
        cols = rows[:, :r * OW * N]
        _unfold(cols[:-1, :], xt, KH, KW, stride, top, r, OW)
        yield top, r, cols


def _streamed(x, wb, KH, KW, stride, padding, OH, OW):
    """[W b] @ im2col(x) -> (F, OH, OW, N), a block at a time (`_blocks`)."""
    xt, wb = _live(_padded_cnhw(x, padding), wb, KH * KW)
    out = np.empty((len(wb), OH, OW, x.shape[0]), dtype=x.dtype)
    for top, r, cols in _blocks(xt, KH, KW, stride, OH, OW):
        np.matmul(wb, cols, out=out[:, top:top + r].reshape(len(wb), -1))
    return out


def _weight_grad(d2, x, KH, KW, stride, padding):
    """[dW db] = d2 (F, OH*OW*N) @ im2col(x)^T, summed over the blocks (`_blocks`) of x."""
    OW = output_size(x.shape[3], KW, stride, padding)
    dwb, span = 0.0, OW * x.shape[0]
    for top, r, cols in _blocks(_padded_cnhw(x, padding), KH, KW, stride, d2.shape[1] // span, OW):
        dwb = dwb + product_nt(d2[:, top * span:(top + r) * span], cols)
    return dwb


def _live(xt, wb, offsets):
    """xt (C, H, W, N) and [W b] (F, offsets*C + 1) without the channels that are zero in every
    image (a ReLU's dead units): their columns add nothing but zeros to each sum."""
    C = xt.shape[0]
    live = np.flatnonzero(np.any(xt.reshape(C, -1), axis=1))
    if live.size == C:
        return xt, wb
    return xt[live], np.concatenate([_live_columns(wb[:, :-1], offsets, live), wb[:, -1:]], axis=1)


def _live_columns(w, offsets, live):
    """w (F, offsets*C), columns (i, j, c) as im2col's rows: the live c of every offset."""
    C = w.shape[1] // offsets
    return w.reshape(len(w), offsets, C)[:, :, live].reshape(len(w), -1)


def conv2d_backward(dout, cache, input_grad=True, param_grads=True, gated=False):
    """dout (N, F, OH, OW) -> dx (N, C, H, W), dw (F, C, KH, KW), db (F,).

    With W2 = w as (F, KH*KW*C) and D = dout as (F, OH*OW*N): [dw db] = D @ cols^T (the row of
    ones gives db, the sum of D over its columns), and dx = col2im(W2^T @ D), for a large
    product a block of output rows at a time (`_folded`). dx is None when not input_grad; dw
    and db are None when not param_grads (an attack needs only dx, and skips a matrix product).
    gated: the layer before drops the gradient wherever x is 0 (a ReLU), so that the blocks
    leave dx 0 in the channels zero in every image. The loops: nn/naive.py, conv2d_backward.
    """
    xp = xp_of(dout)
    if isinstance(cache, winograd.Cache):
        return winograd.conv2d_backward(dout, cache, input_grad, param_grads, gated)
    x, cols, W2, w_shape, stride, padding = cache
    F, C, KH, KW = w_shape
    d2 = xp.reshape(xp.permute_dims(dout, (1, 2, 3, 0)), (F, -1))
    dw = db = dx = None
    if param_grads:  # no columns kept (the forward ran in blocks): x unfolded again
        dwb = _weight_grad(d2, x, KH, KW, stride, padding) if cols is None else product_nt(d2, cols)
        dw, db = _unrows(dwb[:, :-1], w_shape), dwb[:, -1]
    if input_grad and not _in_blocks(W2.T, d2, d2.shape[1]):
        dx = col2im(product(W2.T, d2), x.shape, KH, KW, stride, padding)
    elif input_grad:
        dx = _folded(W2, d2, x, KH, KW, stride, padding, gated)
    return dx, dw, db


def _folded(W2, d2, x, KH, KW, stride, padding, gated=False):
    """col2im(W2^T @ d2) -> dx (N, C, H, W), R output rows of d2 at a time, the last rows first:
    each element of dx then adds its offsets in col2im's order (i, then j), the same floats.
    gated: only x's live channels (`_live`) enter the product; the others' dx stays 0."""
    N, C, H, W = x.shape
    OW = output_size(W, KW, stride, padding)
    OH = d2.shape[1] // (OW * N)
    dxt = np.zeros((C, H + 2 * padding, W + 2 * padding, N), dtype=d2.dtype)
    live = np.flatnonzero(np.any(x, axis=(0, 2, 3))) if gated else np.arange(C)
    part = dxt if live.size == C else dxt[live]  # a copy: written back below
    if live.size < C:
        W2 = _live_columns(W2, KH * KW, live)
    K = W2.shape[1]
    R = _block_rows(max(K, 1), OW, N, d2.dtype.itemsize, OH)
    buffer = np.empty((K, R * OW * N), dtype=d2.dtype)
    for top in reversed(range(0, OH, R)):
        r = min(R, OH - top)
        dcols = np.matmul(W2.T, d2[:, top * OW * N:(top + r) * OW * N], out=buffer[:, :r * OW * N])
        _fold(part, dcols, KH, KW, stride, top, r, OW)
    if part is not dxt:
        dxt[live] = part
    return dxt[:, padding:padding + H, padding:padding + W].transpose(3, 0, 1, 2)

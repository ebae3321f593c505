"""Pure maths of every layer: `op_forward(...) -> (out, cache)` and `op_backward(dout, cache)`.

Each backward returns the gradient with respect to the op's input first, then the parameter
gradients. Nothing here holds state; `nn/layers.py` wraps these functions in classes. All ops
take their array namespace from their arguments (`xp_of`), so they run on NumPy, CuPy and the
strict Array API backend alike. Here: the convolutions' matrix products, channel concatenation,
batch normalisation, dense and element-wise ops; the windowed ones are in `nn/conv.py`,
`nn/conv_transpose.py` and `nn/pool.py`. Shapes use N batch, C channels, H/W height/width.
"""
import numpy as np

from .backend import device_of, is_numpy, xp_of

# --- matrix products -------------------------------------------------------------------------
# Products with a long side and a small rest (conv1's: 32 x 26 by 26 x 36,864 at 64 images, its
# dW and dX likewise) run on NumPy in pieces of SMALL_K columns, each small enough for OpenBLAS's
# small-matrix kernel (M*N*K <= 2**20, no packing): 35-57% faster on SkylakeX (conv1's forward
# product 1.36 -> 0.76 ms, dW 2.50 -> 1.08, dX 1.38 -> 0.87 at 64 images, one thread).
SMALL_K = 1024


def in_pieces(a, b, long, rest):
    """Whether a product of a long axis `long` by the others' product `rest` goes in pieces."""
    return is_numpy(a) and is_numpy(b) and long >= 4 * SMALL_K and rest * SMALL_K <= 2**20


def product(a, b):
    """a (F, K) @ b (K, P) -> (F, P); for long P, written SMALL_K columns at a time."""
    F, P = a.shape[0], b.shape[1]
    if not in_pieces(a, b, P, F * a.shape[1]):
        return a @ b
    out = np.empty((F, P), dtype=np.result_type(a, b))
    for s in range(0, P, SMALL_K):
        np.matmul(a, b[:, s:s + SMALL_K], out=out[:, s:s + SMALL_K])
    return out


def product_nt(a, b):
    """a (F, P) times b (R, P) transposed -> (F, R); for long P, the sum of the products of
    SMALL_K columns at a time; otherwise (b @ a^T)^T, one product with the long axis inside,
    which BLAS runs much faster than a @ b^T."""
    P = a.shape[1]
    if not in_pieces(a, b, P, a.shape[0] * b.shape[0]):
        return (b @ a.T).T
    out = a[:, :SMALL_K] @ b[:, :SMALL_K].T
    for s in range(SMALL_K, P, SMALL_K):
        out += a[:, s:s + SMALL_K] @ b[:, s:s + SMALL_K].T
    return out


# --- channel concatenation ------------------------------------------------------------------

def concat_forward(a, b):
    """Channels of a (N, Ca, H, W) then of b (N, Cb, H, W) -> (N, Ca + Cb, H, W): a U-Net's skip
    connection. Its backward splits dout back: concat_backward(dout, Ca) -> (da, db)."""
    return xp_of(a, b).concat([a, b], axis=1), a.shape[1]


def concat_backward(dout, channels):
    return dout[:, :channels, ...], dout[:, channels:, ...]


# --- batch normalisation -----------------------------------------------------------------------
# BatchNorm works on x as a (C, M) matrix, one row per channel holding its M = N*H*W values.
# For a convolution's output (batch innermost in memory, see nn/conv.py) that matrix is a view,
# and every statistic is a fast reduction along contiguous rows.

def _channel_rows(x):
    """x (N, C) or (N, C, H, W) -> (C, M)."""
    xp = xp_of(x)
    if x.ndim == 2:
        return x.T
    return xp.reshape(xp.permute_dims(x, (1, 2, 3, 0)), (x.shape[1], -1))


def _from_channel_rows(rows, shape):
    """Inverse of _channel_rows: (C, M) -> shape (N, C) or (N, C, H, W)."""
    xp = xp_of(rows)
    if len(shape) == 2:
        return rows.T
    N, C, H, W = shape
    return xp.permute_dims(xp.reshape(rows, (C, H, W, N)), (3, 0, 1, 2))


def _row_sums(rows):
    """rows (C, M) -> (C,): a product with a vector of ones, which BLAS runs about 10 times
    faster than NumPy's summing reduction (0.04 against 0.40 ms for 32 x 18,432)."""
    xp = xp_of(rows)
    return rows @ xp.ones(rows.shape[1], dtype=rows.dtype, device=device_of(rows))


# A large (C, M) goes a few rows at a time on NumPy: each block's later passes read what its
# first left in the L2 cache (BatchNorm 1 at 32 images, forward and backward x0.8, same floats).
BLOCK_BYTES = 2**18


def _blockwise(f, like):
    """f(rows) -> those rows of a (C, M) result like `like`: called for slices of about
    BLOCK_BYTES (NumPy, over 4 blocks in all) and gathered, otherwise once, f(...)."""
    if not is_numpy(like) or like.nbytes <= 4 * BLOCK_BYTES:
        return f(...)
    out = np.empty(like.shape, dtype=like.dtype)
    step = max(BLOCK_BYTES // max(like[0].nbytes, 1), 1)
    for top in range(0, like.shape[0], step):
        out[top:top + step] = f(slice(top, top + step))
    return out


def alone(*parts):
    """A batch norm's `exchange` when the batch is not split: its own parts are all there are."""
    return [parts]


def _summed(slices):
    """[(a, b, ...) per slice] -> (sum of a, sum of b, ...), added in slice order."""
    return [sum(column[1:], column[0]) for column in zip(*slices)]


def batch_norm_forward(x, gamma, beta, running_mean, running_var, *, train,
                       momentum=0.1, eps=1e-5, exchange=alone):
    """Normalise each channel (axis 1) of x (N, C) or (N, C, H, W), then scale and shift.

    out = gamma * xhat + beta with xhat = (x - mean) / sqrt(var + eps). train=True uses the
    batch's mean and biased variance and also returns the updated running statistics (the
    running variance takes the unbiased batch variance, as in PyTorch); train=False uses the
    running statistics and returns them unchanged.
    gamma, beta, running_mean, running_var (C,) -> out like x, cache, (running_mean, running_var).
    exchange(*parts) -> the parts of every slice of the batch (one per process), in slice order
    (nn/parallel.py), so that the statistics are the whole batch's; alone, its own parts.
    """
    xp = xp_of(x)
    x2 = _channel_rows(x)
    C = x2.shape[0]
    if train:
        # each slice centres on its own mean; one exchange then gives the batch's statistics by
        # Chan et al.'s combination: squares about the batch mean = the slices' squares about
        # their own means + m_k * (mean_k - mean)**2, with no cancellation of large sums
        sums = _row_sums(x2)
        own_mean = xp.reshape(sums / x2.shape[1], (C, 1))
        squares = xp.empty_like(sums)

        def centre(rows):
            block = x2[rows] - own_mean[rows]
            squares[rows] = xp.vecdot(block, block, axis=-1)
            return block

        centred = _blockwise(centre, x2)
        slices = exchange(sums, squares, x2.shape[1])
        all_sums, squares, m = _summed(slices)
        mean = all_sums / m
        for s_k, _, m_k in slices:
            squares = squares + m_k * (s_k / m_k - mean) ** 2
        var = squares / m
        shift = mean - xp.reshape(own_mean, (C,))  # x - mean = centred - shift (0 alone)
        unbiased = var * (m / (m - 1)) if m > 1 else var
        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var = (1 - momentum) * running_var + momentum * unbiased
        inv_std = 1.0 / xp.sqrt(var + eps)
        scale = gamma * inv_std
        out = _affine(centred, scale, beta - shift * scale)
        cache = (centred, shift, inv_std, gamma, x.shape, exchange, True)
    else:
        # fixed statistics: one scale and one shift per channel
        inv_std = 1.0 / xp.sqrt(running_var + eps)
        scale = gamma * inv_std
        out = _affine(x2, scale, beta - running_mean * scale)
        cache = (x2, running_mean, inv_std, gamma, x.shape, exchange, False)
    return _from_channel_rows(out, x.shape), cache, (running_mean, running_var)


def _affine(rows, scale, shift):
    """rows (C, M) * scale (C,) + shift (C,), per row, a block at a time."""
    scale, shift = (xp_of(rows).reshape(v, (-1, 1)) for v in (scale, shift))

    def block(r):
        out = rows[r] * scale[r]
        out += shift[r]  # in place: one temporary fewer
        return out

    return _blockwise(block, rows)


def batch_norm_backward(dout, cache, input_grad=True, param_grads=True):
    """dout like x -> dx, dgamma (C,), dbeta (C,); sums run over the m values of each channel.

    dbeta = sum(dout), dgamma = sum(dout * xhat) with xhat = (x - mean) * inv_std;
    train: dx = gamma * inv_std / m * (m * dout - dbeta - xhat * dgamma);
    eval (fixed statistics): dx = gamma * inv_std * dout. dx is None when not input_grad,
    dgamma and dbeta are None when not param_grads. On a slice of the batch (nn/parallel.py)
    dgamma and dbeta are the slice's shares, and train mode's dx takes the whole batch's sums.
    """
    xp = xp_of(dout)
    d2 = _channel_rows(dout)
    C, m = d2.shape
    # x - mean = centred - shift: train caches x centred on its slice's mean, eval x itself
    centred, shift, inv_std, gamma, shape, exchange, train = cache
    dx = dgamma = dbeta = None
    if train or param_grads:  # train mode's dx needs them too
        if not train:
            centred, shift = centred - xp.reshape(shift, (C, 1)), 0.0
        dbeta = _row_sums(d2)
        dgamma = (xp.vecdot(d2, centred, axis=-1) - shift * dbeta) * inv_std
    if input_grad:
        scale = gamma * inv_std
        if train:  # the batch statistics depend on x too: xhat*dgamma = (x - mean)*inv_std*dgamma
            all_dbeta, all_dgamma, m = _summed(exchange(dbeta, dgamma, m))
            k = scale * inv_std * all_dgamma / m
            k, c = xp.reshape(k, (C, 1)), xp.reshape(scale * all_dbeta / m - shift * k, (C, 1))
            scale = xp.reshape(scale, (C, 1))

            def block(r):  # d2 * scale - (centred * k + c)
                through_stats = centred[r] * k[r]
                through_stats += c[r]
                out = d2[r] * scale[r]
                out -= through_stats  # in place: one temporary fewer
                return out

            dx = _blockwise(block, d2)
        else:
            dx = d2 * xp.reshape(scale, (C, 1))
        dx = _from_channel_rows(dx, shape)
    return (dx, dgamma, dbeta) if param_grads else (dx, None, None)


# --- dense and element-wise ------------------------------------------------------------------

def dense_forward(x, w, b):
    """out = x @ w + b: x (N, D), w (D, M), b (M,) -> out (N, M)."""
    return x @ w + b, (x, w)


def dense_backward(dout, cache, input_grad=True, param_grads=True):
    """dout (N, M) -> dx = dout @ w^T (N, D), dw = x^T @ dout (D, M), db = sum_n dout (M,);
    dx None when not input_grad, dw and db None when not param_grads."""
    xp = xp_of(dout)
    x, w = cache
    # dx as (w @ dout^T)^T: the same numbers, laid out batch-innermost like the forward pass's
    # activations (see nn/conv.py's note on memory order), so the layers below mix no orders
    dx = (w @ dout.T).T if input_grad else None
    return (dx, x.T @ dout, xp.sum(dout, axis=0)) if param_grads else (dx, None, None)


def relu_forward(x):
    """out = max(x, 0), any shape; caches out itself (out > 0 exactly where x > 0), so that a
    forward pass with no backward after it (a query, a prediction) makes no mask."""
    out = xp_of(x).maximum(x, 0.0)
    return out, out


def relu_backward(dout, out):
    """dx = dout * (x > 0), the mask as 0/1 floats from the cached output."""
    return dout * xp_of(dout).astype(out > 0, dout.dtype)


def leaky_relu_forward(x, negative_slope=0.01):
    """out = x where x > 0, else negative_slope * x."""
    xp = xp_of(x)
    positive = x > 0
    return xp.where(positive, x, negative_slope * x), (positive, negative_slope)


def leaky_relu_backward(dout, cache):
    """dx = dout where x > 0, else negative_slope * dout."""
    positive, negative_slope = cache
    return xp_of(dout).where(positive, dout, negative_slope * dout)


def dropout_forward(x, mask):
    """out = x * mask, any shape; mask (like x) holds 0 for a dropped unit and 1 / (1 - p) for a
    kept one (inverted dropout, as PyTorch: the expected output equals x)."""
    return x * mask, mask


def dropout_backward(dout, mask):
    """dx = dout * mask."""
    return dout * mask


def sigmoid_forward(x):
    """out = 1 / (1 + exp(-x)), computed from exp(-|x|) so that it never overflows."""
    xp = xp_of(x)
    e = xp.exp(-xp.abs(x))
    out = xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out, out


def sigmoid_backward(dout, out):
    """dx = dout * s * (1 - s) with s the forward output."""
    return dout * out * (1.0 - out)


def tanh_forward(x):
    """out = tanh(x)."""
    out = xp_of(x).tanh(x)
    return out, out


def tanh_backward(dout, out):
    """dx = dout * (1 - tanh(x)^2)."""
    return dout * (1.0 - out * out)

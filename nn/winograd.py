"""Convolution by Winograd's minimal filtering F(2x2, r x r) (Lavin & Gray 2016): a stride-1
convolution computed in 2x2 tiles of its output, with (r+1)^2 products per tile and channel pair
where im2col does 4 r^2 (36 against 100 for conv2's 5x5 kernel), so that its matrix products,
forward and both backward, do 2.8 times less work.

In one dimension, two outputs y_u = sum_k g_k d_{u+k} (u = 0, 1) of a filter g (r,) on a = r+1
inputs d come out of a products: y = A^T [(G g) * (B^T d)], where G (a, r) evaluates g as a
polynomial at a points (POINTS, then infinity), A^T (2, a) does the same for the output's
degree, and B^T (a, a) is the inverse transpose of the points' Vandermonde matrix: the Toom-Cook
product of two polynomials, read backwards (`matrices`). In two dimensions, for a 2x2 output tile
from an a x a input tile, Y = A^T [(G g G^T) * (B^T d B)] A, and the sum over input channels moves
inside the brackets: one (F, C) @ (C, tiles) product per transformed position, a^2 of them.

Backward, each step transposed: dM = A dY A^T per tile; dU = dM V^T and dV = U^T dM (the a^2
products); dw = G^T dU G; dx = B dV B^T per tile, the overlapping tiles (stride 2, width a)
added up. The tests hold all three to im2col's convolution (nn/conv.py) and to the loops
(nn/naive.py). Layout as nn/conv.py: channels first, batch last (C, H, W, N).
"""
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .backend import device_of, is_numpy, xp_of

# The finite interpolation points, infinity the last. The transforms' rounding grows with them:
# conv2 in float32 is off its float64 self by 1.2e-6 of the largest output (dw 5e-6) with these,
# 2.3e-6 (7.5e-6) with 0, +-1, +-2; im2col's product by about 2e-7 (7e-7).
POINTS = (0.0, 1.0, -1.0, 0.5, -2.0)


@lru_cache(maxsize=None)
def matrices(r):
    """(AA = kron(A^T, A^T) (4, a*a), B^T (a, a), GG = kron(G, G) (a*a, r*r)) in float64 for
    F(2, r), a = r + 1 <= 6, G (a, r): GG[(p, q), (k, l)] = G[p, k] G[q, l] makes G g G^T one
    product (`_filters`), and AA[(u, v), (p, q)] = A^T[u, p] A^T[v, q] likewise A^T M A."""
    a = r + 1
    if not 2 <= r <= len(POINTS):
        raise ValueError(f"F(2, {r}) needs {a} points, this module has {len(POINTS) + 1}")
    p = np.array(POINTS[:a - 1])
    V = np.zeros((a, a))                       # row j: the monomials 1, p_j, p_j^2, ... at p_j
    V[:-1] = p[:, None] ** np.arange(a)
    V[-1, -1] = 1.0                            # at infinity: the leading coefficient
    G = np.zeros((a, r))
    G[:-1] = p[:, None] ** np.arange(r)
    G[-1, -1] = 1.0
    AT = np.zeros((2, a))
    AT[:, :-1] = (p[:, None] ** np.arange(2)).T
    AT[-1, -1] = 1.0
    return np.kron(AT, AT), np.linalg.inv(V).T, np.kron(G, G)


def fits(x, w, stride):
    """Whether conv2d_forward takes this path: NumPy, stride 1, a square 3x3 to 5x5 kernel, and
    at least 8 input and 8 output channels (fewer leave the a^2 products too thin to gain). On
    CuPy (an H200) conv2's forward and backward took 2.0 ms this way against im2col's 1.1 at
    64 images, 2.7 against 1.9 at 1,000: many small kernels, where the GPU has flops to spare."""
    F, C, KH, KW = w.shape
    return (is_numpy(x) and stride == 1 and KH == KW and 3 <= KH <= len(POINTS) and C >= 8
            and F >= 8)


class Cache(NamedTuple):
    x_shape: tuple
    padding: int
    V: list            # (a*a, C', T') per block: the transformed input tiles of the C' live channels
    blocks: list       # (top, n) per block: its tile rows (`_blocks`)
    U: object          # (a*a, F, C'): the transformed filters of those channels
    w: object          # (F, C, r, r): all the filters, for an ungated dx
    live: object       # the live channels' indices (NumPy), or None: all of them


def _const(m, like):
    xp = xp_of(like)
    return xp.asarray(m, dtype=like.dtype, device=device_of(like))


def _along_first(m, t):
    """m (P, Q) applied to t's first axis (Q, ...) -> (P, ...), one matrix product."""
    xp = xp_of(t)
    return xp.reshape(m @ xp.reshape(t, (t.shape[0], -1)), (m.shape[0], *t.shape[1:]))


def _filters(w):
    """G g G^T of every filter of w (F, C, r, r) -> U (a*a, F, C), positions (p, q) as V's."""
    xp = xp_of(w)
    F, C, r, _ = w.shape
    GG = _const(matrices(r)[2], w)
    return xp.reshape(GG @ xp.reshape(xp.permute_dims(w, (2, 3, 0, 1)), (r * r, -1)),
                      ((r + 1) ** 2, F, C))


def _tiles_cnhw(x, padding, r):
    """x (N, C, H, W) as (C, 2TH + r - 1, 2TW + r - 1, N), zero-padded by `padding` and at the
    bottom and right up to whole 2x2 output tiles; and (TH, TW, OH, OW)."""
    xp = xp_of(x)
    N, C, H, W = x.shape
    OH, OW = H + 2 * padding - r + 1, W + 2 * padding - r + 1
    TH, TW = -(-OH // 2), -(-OW // 2)
    xt = xp.zeros((C, 2 * TH + r - 1, 2 * TW + r - 1, N), dtype=x.dtype, device=device_of(x))
    xt[:, padding:padding + H, padding:padding + W, :] = xp.permute_dims(x, (1, 2, 3, 0))
    return xt, (TH, TW, OH, OW)


def _live(xt):
    """Indices of the channels of xt (C, ...) not zero in every image (NumPy), None if all are:
    the others (a ReLU's dead units) add only zeros to each sum and leave the products."""
    if not is_numpy(xt):
        return None
    live = np.flatnonzero(np.any(xt.reshape(len(xt), -1), axis=1))
    return None if live.size == len(xt) else live


# The tiles go through in blocks of tile rows, about BLOCK_COLUMNS tiles times images each: the
# a^2 products stay as fast (113 GFLOP/s at 128 to 800 columns on one AMD EPYC core, 99 at 1,600)
# and their largest operand, M, stays in cache for the output's transform. 256 rather than 512:
# the two processes of a training step (nn/parallel.py) then crowd their shared L3 cache less.
BLOCK_COLUMNS = 256


def _blocks(TH, TW, N):
    """(top, n): tile rows top .. top + n - 1, about BLOCK_COLUMNS columns TW * N a block."""
    R = max(BLOCK_COLUMNS // (TW * N), 1)
    return [(top, min(R, TH - top)) for top in range(0, TH, R)]


def _transformed(xt, BT, n, TW):
    """B^T d B of the n x TW tiles of xt (C, 2n + a - 2, W', N) -> V (a*a, C, n*TW*N), (p, q)."""
    xp, a = xp_of(xt), BT.shape[0]
    # columns first (input columns 2 tx + j of every tile column tx, j < a), on the smaller
    # array, where the strided slices move runs of only N; then rows, runs of TW*N
    cols = xp.stack([xt[..., j:j + 2 * TW - 1:2, :] for j in range(a)])     # (j, C, H', TW, N)
    t1 = _along_first(BT, cols)                                              # (q, C, H', TW, N)
    rows = xp.stack([t1[:, :, i:i + 2 * n - 1:2, ...] for i in range(a)])   # (i, q, C, n, TW, N)
    return xp.reshape(_along_first(BT, rows), (a * a, xt.shape[0], n * TW * xt.shape[-1]))


def conv2d_forward(x, w, b, padding=0):
    """x (N, C, H, W), w (F, C, r, r), b (F,) -> out (N, F, OH, OW), stride 1, and the cache."""
    xp = xp_of(x, w, b)
    F, C, r, _ = w.shape
    N = x.shape[0]
    AA, BT, _ = (_const(m, x) for m in matrices(r))
    xt, (TH, TW, OH, OW) = _tiles_cnhw(x, padding, r)
    live = _live(xt)
    if live is not None:
        xt = xt[live]
    U = _filters(w if live is None else w[:, live])
    Y = xp.empty((F, TH, 2, TW, 2, N), dtype=x.dtype, device=device_of(x))
    V, blocks = [], _blocks(TH, TW, N)
    for top, n in blocks:
        V.append(_transformed(xt[:, 2 * top:2 * (top + n) + r - 1, ...], BT, n, TW))
        Yb = xp.reshape(_along_first(AA, U @ V[-1]), (2, 2, F, n, TW, N))    # (u, v, F, ...)
        Y[:, top:top + n, ...] = xp.permute_dims(Yb, (2, 3, 0, 4, 1, 5))
    Y += xp.reshape(b, (F, 1, 1, 1, 1, 1))
    out = xp.reshape(Y, (F, 2 * TH, 2 * TW, N))[:, :OH, :OW, :]
    return xp.permute_dims(out, (3, 0, 1, 2)), Cache(x.shape, padding, V, blocks, U, w, live)


def conv2d_backward(dout, cache, input_grad=True, param_grads=True, gated=False):
    """dout (N, F, OH, OW) -> dx (N, C, H, W) or None, dw (F, C, r, r) or None, db (F,) or None.
    gated: a ReLU comes before, so dx may stay 0 in the channels zero in every image."""
    xp = xp_of(dout)
    (N, C, H, W), padding, V, blocks, U, w, live = cache
    F, r = w.shape[0], w.shape[2]
    AA, BT, GG = (_const(m, dout) for m in matrices(r))
    OH, OW = dout.shape[2:]
    TH, TW = -(-OH // 2), -(-OW // 2)
    dyt = xp.zeros((F, 2 * TH, 2 * TW, N), dtype=dout.dtype, device=device_of(dout))
    dyt[:, :OH, :OW, :] = xp.permute_dims(dout, (1, 2, 3, 0))
    gate = gated and live is not None
    Ux = U if gate or live is None else _filters(w)
    dxt = xp.zeros((Ux.shape[2], 2 * TH + r - 1, 2 * TW + r - 1, N), dtype=dout.dtype,
                   device=device_of(dout))
    dU = 0.0
    for (top, n), Vb in zip(blocks, V):
        dY = xp.reshape(dyt[:, 2 * top:2 * (top + n), ...], (F, n, 2, TW, 2, N))
        dY = xp.permute_dims(dY, (2, 4, 0, 1, 3, 5))                         # (u, v, F, ...)
        dM = _along_first(AA.T, xp.reshape(dY, (4, F, -1)))                  # (p q, F, n*TW*N)
        if param_grads:
            dU = dU + dM @ xp.permute_dims(Vb, (0, 2, 1))                    # (p q, F, C')
        if input_grad:
            _untransform(xp.permute_dims(Ux, (0, 2, 1)) @ dM, BT,
                         dxt[:, 2 * top:2 * (top + n) + r - 1, ...], n, TW)
    dx = dw = db = None
    if param_grads:
        dg = xp.reshape(_along_first(GG.T, dU), (r, r, F, U.shape[2]))
        dg = xp.permute_dims(dg, (2, 3, 0, 1))
        dw = dg if live is None else _scattered(dg, live, C, 1)               # (F, C, r, r)
        db = xp.sum(dyt, axis=(1, 2, 3))
    if input_grad:
        dxt = dxt[:, padding:padding + H, padding:padding + W, :]
        dx = xp.permute_dims(_scattered(dxt, live, C) if gate else dxt, (3, 0, 1, 2))
    return dx, dw, db


def _untransform(dV, BT, dxt, n, TW):
    """Adjoint of _transformed: add B dV B^T of each tile, dV (a*a, C, n*TW*N), into its place
    in dxt (C, 2n + a - 2, W', N), where neighbouring tiles overlap."""
    xp, a = xp_of(dV), BT.shape[0]
    C, N = dxt.shape[0], dxt.shape[-1]
    drows = _along_first(BT.T, xp.reshape(dV, (a, a, C, n, TW, N)))        # (i, q, C, n, TW, N)
    t1 = xp.zeros((a, C, 2 * n + a - 2, TW, N), dtype=dV.dtype, device=device_of(dV))
    for i in range(a):
        t1[:, :, i:i + 2 * n - 1:2, ...] += drows[i, ...]
    dcols = _along_first(BT.T, t1)                                           # (j, C, H', TW, N)
    for j in range(a):
        dxt[..., j:j + 2 * TW - 1:2, :] += dcols[j, ...]


def _scattered(part, live, C, axis=0):
    """part, C' channels on `axis`, placed at the channels `live` of zeros with C (NumPy)."""
    out = np.zeros((*part.shape[:axis], C, *part.shape[axis + 1:]), dtype=part.dtype)
    out[(slice(None),) * axis + (live,)] = part
    return out

"""Differentiable image transformations: what a printer, a camera and a hand do to an image.

Each transformation is a family with random parameters, drawn on the host from the run's
generator (`sample(rng, shape)`, shape (N, C, H, W)), and a pure pair `forward(x, params) ->
(out, cache)`, `backward(dout, cache) -> dx`, on images x (N, C, H, W) in [0, 1] in any array
namespace, so that an attack can follow the gradient through the transformation to the image
(Expectation over Transformation, attacks.eot_pgd). Families:
  Warp         rotation, translation and scale: one bilinear resampling, zero outside;
  Blur         Gaussian blur, separable;
  Light        contrast and brightness, clipped to [0, 1];
  Noise        additive Gaussian noise, clipped to [0, 1];
  Quantise     8-bit rounding, with a straight-through gradient (dx = dout);
  Chain        several in turn; `print_and_photograph` is the composite of all five.
Every family takes a `strength` in [0, 1] that scales its ranges (0: the identity), so that a
curve can be drawn against it and a "shifted" family built with wider ranges.
"""
import numpy as np

from .backend import device_of, xp_of


def _on(host, like):
    return xp_of(like).asarray(host, dtype=like.dtype, device=device_of(like))


def _clip_mask(pre):
    """(clip(pre, 0, 1), the mask where the clip passed the gradient)."""
    xp = xp_of(pre)
    return xp.clip(pre, 0.0, 1.0), xp.astype((pre > 0.0) & (pre < 1.0), pre.dtype)


# --- the warp: bilinear resampling by an affine map ------------------------------------------
# Output pixel (i, j), at normalised coordinates (u, v) = ((2j + 1) / W - 1, (2i + 1) / H - 1)
# (PyTorch's affine_grid, align_corners=False), reads the input at theta @ (u, v, 1): pixel
# coordinates (px, py), mixed from its 4 neighbours (X, Y) with the tent weights
# max(0, 1 - |px - X|) max(0, 1 - |py - Y|); neighbours outside the image count as 0.

def _source(theta, i, j, H, W):
    """Pixel coordinates (px, py) that output pixels (i, j) read under theta (N, 2, 3): host
    arrays; i and j integer arrays that broadcast against (N, ...)."""
    t = np.asarray(theta, dtype=np.float64).reshape(-1, 2, 3, *([1] * (np.ndim(i) - 1)))
    u, v = (2 * j + 1) / W - 1, (2 * i + 1) / H - 1
    px = ((t[:, 0, 0] * u + t[:, 0, 1] * v + t[:, 0, 2] + 1) * W - 1) / 2
    py = ((t[:, 1, 0] * u + t[:, 1, 1] * v + t[:, 1, 2] + 1) * H - 1) / 2
    return px, py


def _tent(d):
    return np.maximum(0.0, 1.0 - np.abs(d))


def warp_forward(x, theta):
    """x (N, C, H, W), theta (N, 2, 3) host -> (out like x, cache): out[q] = sum over the 4
    neighbours p of q's source point of tent weight * x[p], gathered with xp.take. The cache is
    the map itself, host index and weight (N, 4, HW): the backward transposes it."""
    N, C, H, W = x.shape
    rows, cols = np.divmod(np.arange(H * W), W)
    px, py = _source(theta, rows[None], cols[None], H, W)                          # (N, HW)
    x0, y0 = np.floor(px), np.floor(py)
    corners = [(x0 + dx, y0 + dy) for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1))]
    index = np.stack([np.clip(Y, 0, H - 1) * W + np.clip(X, 0, W - 1) for X, Y in corners],
                     1).astype(np.int64)
    weight = np.stack([_tent(px - X) * _tent(py - Y) * ((X >= 0) & (X < W) & (Y >= 0) & (Y < H))
                       for X, Y in corners], 1)                                    # (N, 4, HW)
    return _gather(x, index, weight), (index, weight)


def warp_backward(dout, cache):
    """dx[p] = sum over the (q, k) with index[q, k] = p of weight[q, k] * dout[q]: the forward's
    exact transpose, gathered in turn.

    The forward's pairs (q -> p, weight) of nonzero weight are sorted by p; the j-th pair of
    input pixel p becomes its tap j, so the transpose is a gather with as many taps as an input
    pixel has readers (4 or 5 for a rotation, against the forward's 4), zero-weighted where it
    has fewer.
    """
    index, weight = cache
    N, K, HW = index.shape
    # image n's pixel p as n HW + p; a pair of weight 0 sorts past the last, N HW, and is dropped
    key = np.where(weight > 0, np.arange(N)[:, None, None] * HW + index, N * HW).reshape(-1)
    order = np.argsort(key)[:np.count_nonzero(key < N * HW)]
    key = key[order]
    count = np.bincount(key, minlength=N * HW)
    tap = np.arange(key.size) - (np.cumsum(count) - count)[key]  # rank of the pair among p's
    taps = max(int(count.max(initial=0)), 1)
    t_index = np.zeros(N * HW * taps, dtype=np.int64)
    t_weight = np.zeros(N * HW * taps)
    t_index[key * taps + tap] = order % HW  # a flat position in (N, K, HW) ends in q
    t_weight[key * taps + tap] = weight.reshape(-1)[order]
    return _gather(dout, np.reshape(t_index, (N, HW, taps)).transpose(0, 2, 1),
                   np.reshape(t_weight, (N, HW, taps)).transpose(0, 2, 1))


def _gather(x, index, weight):
    """out[n, c, p] = sum_k weight[n, k, p] * x[n, c, index[n, k, p]]: host index and weight
    (N, K, HW), one flat gather per image row offset (n * C + c) * HW."""
    xp = xp_of(x)
    N, C, H, W = x.shape
    K = index.shape[1]
    rows = (np.arange(N)[:, None] * C + np.arange(C)[None, :]) * (H * W)           # (N, C)
    flat = (rows[:, :, None, None] + index[:, None]).reshape(-1)                  # (N C K HW)
    picked = xp.reshape(xp.take(xp.reshape(x, (-1,)), _on_int(flat, x)), (N, C, K, H * W))
    return xp.reshape(xp.sum(picked * _on(weight[:, None], x), axis=2), x.shape)


def _on_int(host, like):
    return xp_of(like).asarray(host.astype(np.int64), device=device_of(like))


# --- linear maps given as matrices --------------------------------------------------------------

def blur_matrices(sigma, size):
    """Host (N, size, size) row-normalised Gaussian smoothing matrices, one per sigma (N,)."""
    d = np.arange(size)[:, None] - np.arange(size)[None, :]
    s = np.maximum(np.asarray(sigma, dtype=np.float64), 1e-6)[:, None, None]
    k = np.exp(-0.5 * (d[None] / s) ** 2)
    return k / k.sum(axis=2, keepdims=True)


def blur_forward(x, B):
    """out[n, c] = B[n] @ x[n, c] @ B[n]^T: x (N, C, H, H), B (N, H, H) -> like x."""
    xp = xp_of(x)
    Bn = B[:, None, ...]
    return Bn @ x @ xp.permute_dims(Bn, (0, 1, 3, 2)), B


def blur_backward(dout, B):
    """dx = B^T @ dout @ B."""
    xp = xp_of(dout)
    Bn = B[:, None, ...]
    return xp.permute_dims(Bn, (0, 1, 3, 2)) @ dout @ Bn


# --- pointwise ---------------------------------------------------------------------------------

def light_forward(x, contrast, brightness):
    """clip(c (x - 0.5) + 0.5 + b, 0, 1), c and b per image (N,) -> (out, cache)."""
    c, b = _per_image(contrast, x), _per_image(brightness, x)
    out, mask = _clip_mask(c * (x - 0.5) + 0.5 + b)
    return out, mask * c


def noise_forward(x, noise):
    """clip(x + noise, 0, 1), noise like x -> (out, cache)."""
    return _clip_mask(x + noise)


def masked_backward(dout, scale):
    """dx = dout * scale: the pointwise maps' backward (the clip's mask, times c for Light)."""
    return dout * scale


def quantise_forward(x, levels=255):
    """round(x * levels) / levels; its backward is the straight-through dx = dout."""
    xp = xp_of(x)
    return xp.round(x * levels) / levels, None


def _per_image(value, x):
    return xp_of(x).reshape(_on(value, x), (-1, 1, 1, 1))


# --- families ------------------------------------------------------------------------------

class Warp:
    """Rotation up to +-max_degrees, shift up to +-max_shift of the image's width, scale in
    [1 - max_zoom, 1 + max_zoom], all times `strength`."""

    def __init__(self, strength=1.0, max_degrees=30.0, max_shift=0.1, max_zoom=0.1):
        self.ranges = (strength * max_degrees, strength * max_shift, strength * max_zoom)

    def sample(self, rng, shape):
        n = shape[0]
        deg, shift, zoom = self.ranges
        a = np.deg2rad(rng.uniform(-deg, deg, n))
        s = 1 + rng.uniform(-zoom, zoom, n)
        t = rng.uniform(-2 * shift, 2 * shift, (n, 2))  # normalised coordinates span 2
        cos, sin = np.cos(a) / s, np.sin(a) / s
        return np.stack([np.stack([cos, -sin, t[:, 0]], 1), np.stack([sin, cos, t[:, 1]], 1)], 1)

    forward = staticmethod(warp_forward)
    backward = staticmethod(warp_backward)


class Blur:
    """Gaussian blur of sigma uniform in [0, max_sigma * strength] pixels."""

    def __init__(self, strength=1.0, max_sigma=1.0):
        self.max_sigma = strength * max_sigma

    def sample(self, rng, shape):
        return rng.uniform(0, self.max_sigma, shape[0])

    def forward(self, x, sigma):
        return blur_forward(x, _on(blur_matrices(sigma, x.shape[2]), x))

    backward = staticmethod(blur_backward)


class Light:
    """Contrast in [1 - max_contrast, 1] and brightness in +-max_brightness, times strength."""

    def __init__(self, strength=1.0, max_contrast=0.3, max_brightness=0.15):
        self.ranges = (strength * max_contrast, strength * max_brightness)

    def sample(self, rng, shape):
        n = shape[0]
        return np.stack([1 - rng.uniform(0, self.ranges[0], n),
                         rng.uniform(-self.ranges[1], self.ranges[1], n)], 1)

    def forward(self, x, params):
        return light_forward(x, params[:, 0], params[:, 1])

    backward = staticmethod(masked_backward)


class Noise:
    """Additive Gaussian noise of standard deviation max_std * strength."""

    def __init__(self, strength=1.0, max_std=0.05):
        self.std = strength * max_std

    def sample(self, rng, shape):
        return rng.standard_normal(shape) * self.std

    def forward(self, x, noise):
        return noise_forward(x, _on(noise, x))

    backward = staticmethod(masked_backward)


class Quantise:
    """8-bit rounding (no random parameter); straight-through gradient."""

    def sample(self, rng, shape):
        return None

    def forward(self, x, params):
        return quantise_forward(x)

    @staticmethod
    def backward(dout, cache):
        return dout


class Chain:
    """Several families in turn; params and caches are lists, one per family."""

    def __init__(self, *families):
        self.families = families

    def sample(self, rng, shape):
        return [f.sample(rng, shape) for f in self.families]

    def forward(self, x, params):
        caches = []
        for f, p in zip(self.families, params):
            x, cache = f.forward(x, p)
            caches.append(cache)
        return x, caches

    def backward(self, dout, caches):
        for f, cache in zip(reversed(self.families), reversed(caches)):
            dout = f.backward(dout, cache)
        return dout


def print_and_photograph(strength=1.0):
    """The composite: blur, contrast and brightness, a small warp (up to 5 degrees, 5% shift
    and zoom), noise, 8-bit quantisation; `strength` scales every range."""
    return Chain(Blur(strength, 0.8), Light(strength), Warp(strength, 5.0, 0.05, 0.05),
                 Noise(strength, 0.03), Quantise())


FAMILIES = {"rotation": lambda s: Warp(s, 30.0, 0.0, 0.0),
            "translation": lambda s: Warp(s, 0.0, 0.1, 0.0),
            "scale": lambda s: Warp(s, 0.0, 0.0, 0.2),
            "blur": lambda s: Blur(s, 1.5), "light": Light, "noise": lambda s: Noise(s, 0.1),
            "quantise": lambda s: Quantise(), "photo": print_and_photograph}

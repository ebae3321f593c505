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


# --- linear maps: out = A x (per image), dx = A^T dout ---------------------------------------

def warp_operator(theta, H, W, dtype=np.float64):
    """Host (N, H W, H W) matrices (of `dtype`) of bilinear resampling by affine maps theta
    (N, 2, 3); for 28x28 images 2.5 MB an image in float32.

    Output pixel (i, j) at normalised coordinates (u, v) = ((2j + 1) / W - 1, (2i + 1) / H - 1)
    (PyTorch's affine_grid, align_corners=False) reads the input at theta @ (u, v, 1), mixing
    its 4 neighbours with bilinear weights; neighbours outside the image count as 0.
    """
    v, u = np.meshgrid((2 * np.arange(H) + 1) / H - 1, (2 * np.arange(W) + 1) / W - 1,
                       indexing="ij")
    grid = np.stack([u.ravel(), v.ravel(), np.ones(H * W)])          # (3, HW)
    src = np.asarray(theta, dtype=np.float64) @ grid                 # (N, 2, HW)
    px, py = ((src[:, 0] + 1) * W - 1) / 2, ((src[:, 1] + 1) * H - 1) / 2
    x0, y0 = np.floor(px), np.floor(py)
    op = np.zeros((len(src), H * W, H * W), dtype=dtype)
    cells = np.arange(H * W)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xs, ys = x0 + dx, y0 + dy
        weight = (1 - np.abs(px - xs)) * (1 - np.abs(py - ys))
        inside = (xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)
        index = np.where(inside, ys * W + xs, -1)
        # one-hot rows instead of a scatter: op[n, p, index[n, p]] += weight[n, p]
        op += (index[:, :, None] == cells) * np.where(inside, weight, 0)[:, :, None].astype(dtype)
    return op


def linear_forward(x, op):
    """out[n, c] = op[n] @ x[n, c] (flattened): x (N, C, H, W), op (N, HW, HW) -> like x."""
    xp = xp_of(x)
    N, C, H, W = x.shape
    flat = xp.reshape(x, (N, C, H * W))
    return xp.reshape(flat @ xp.permute_dims(op, (0, 2, 1)), x.shape), op


def linear_backward(dout, op):
    """dx[n, c] = op[n]^T @ dout[n, c]."""
    xp = xp_of(dout)
    N, C, H, W = dout.shape
    return xp.reshape(xp.reshape(dout, (N, C, H * W)) @ op, dout.shape)


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

    def forward(self, x, theta):
        single = x.dtype == xp_of(x).float32
        op = warp_operator(theta, x.shape[2], x.shape[3], np.float32 if single else np.float64)
        return linear_forward(x, _on(op, x))

    backward = staticmethod(linear_backward)


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

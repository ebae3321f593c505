"""Stateful layers: each holds its `params` (name -> array) and the cache of its last forward.

Protocol of every layer:
    out = layer.forward(x)            remembers what its backward needs
    dx, grads = layer.backward(dout)  grads has the keys of layer.params; uses up the cache
    _, grads = layer.backward(dout, input_grad=False)   skips dx (None): the first layer in training
    dx, {} = layer.backward(dout, param_grads=False)    skips the parameter gradients: attacks
The maths lives in `nn/functional.py` and `nn/conv.py`. Parameters are initialised on the host
from a seeded `numpy.random.Generator` in float32; `Sequential.to(xp)` moves them to another
array library.
"""
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

from . import conv, conv_transpose, pool
from . import functional as F
from .backend import device_of, xp_of

# False inside no_grad(): forward passes keep nothing for a backward (per thread and task)
_keep_caches = ContextVar("keep_caches", default=True)


def keeps_caches():
    """Whether forward passes now keep what a backward needs (False inside no_grad)."""
    return _keep_caches.get()


@contextmanager
def no_grad():
    """A block of forward passes that no backward follows (an oracle's scores, a prediction):
    the layers keep no cache, and max pooling does not note where each maximum was (Square's
    queries x0.94 on the PGD model). A backward after such a forward raises."""
    token = _keep_caches.set(False)
    try:
        yield
    finally:
        _keep_caches.reset(token)


class Layer:
    """Base class: no parameters, no buffers, train mode, an empty cache."""

    def __init__(self):
        self.params = {}
        self.buffers = {}
        self.training = True
        self._cache = None

    def _remember(self, cache):
        self._cache = cache if keeps_caches() else None

    def _take_cache(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a forward "
                               "before it (each forward allows one backward, one under no_grad "
                               "none)")
        cache, self._cache = self._cache, None
        return cache

    def __repr__(self):
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.params.items())
        return f"{type(self).__name__}({shapes})"


def _he_normal(rng, shape, fan_in):
    """Kaiming/He normal initialisation, std sqrt(2 / fan_in), float32 on the host."""
    rng = np.random.default_rng() if rng is None else rng
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


class Conv2d(Layer):
    """2-D convolution: x (N, C, H, W) -> (N, F, OH, OW); W (F, C, KH, KW), b (F,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, rng=None):
        super().__init__()
        k = kernel_size
        self.stride, self.padding = stride, padding
        self.params = {"W": _he_normal(rng, (out_channels, in_channels, k, k), in_channels * k * k),
                       "b": np.zeros(out_channels, dtype=np.float32)}

    def forward(self, x):
        out, cache = conv.conv2d_forward(x, self.params["W"], self.params["b"], self.stride,
                                         self.padding)
        self._remember(cache)
        return out

    def backward(self, dout, input_grad=True, param_grads=True, gated=False):
        """gated: a ReLU comes before, so that dx may stay 0 in its dead channels."""
        dx, dw, db = conv.conv2d_backward(dout, self._take_cache(), input_grad, param_grads,
                                          gated)
        return dx, ({"W": dw, "b": db} if param_grads else {})


class ConvTranspose2d(Layer):
    """Transposed 2-D convolution (upsampling): x (N, C, H, W) -> (N, F, OH, OW),
    OH = (H - 1) stride - 2 padding + K; W (C, F, K, K) as PyTorch's, b (F,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, rng=None):
        super().__init__()
        k = kernel_size
        self.stride, self.padding = stride, padding
        self.params = {"W": _he_normal(rng, (in_channels, out_channels, k, k),
                                       in_channels * k * k // (stride * stride)),
                       "b": np.zeros(out_channels, dtype=np.float32)}

    def forward(self, x):
        out, cache = conv_transpose.conv_transpose2d_forward(
            x, self.params["W"], self.params["b"], self.stride, self.padding)
        self._remember(cache)
        return out

    def backward(self, dout, input_grad=True, param_grads=True):
        dx, dw, db = conv_transpose.conv_transpose2d_backward(dout, self._take_cache(),
                                                              input_grad, param_grads)
        return dx, ({"W": dw, "b": db} if param_grads else {})


class MaxPool2d(Layer):
    """Max pooling over KxK windows: (N, C, H, W) -> (N, C, OH, OW); stride defaults to K."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride

    def forward(self, x):
        out, cache = pool.max_pool2d_forward(x, self.kernel_size, self.stride,
                                             record=keeps_caches())
        self._remember(cache)
        return out

    def backward(self, dout, input_grad=True, param_grads=True):
        cache = self._take_cache()
        return (pool.max_pool2d_backward(dout, cache) if input_grad else None), {}


class _BatchNorm(Layer):
    """Shared by BatchNorm1d and BatchNorm2d: gamma, beta (C,); running_mean, running_var (C,).
    `exchange` shares its statistics with the slices of a batch split across processes
    (nn/parallel.py)."""
    exchange = staticmethod(F.alone)

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.params = {"gamma": np.ones(num_features, dtype=np.float32),
                       "beta": np.zeros(num_features, dtype=np.float32)}
        self.buffers = {"running_mean": np.zeros(num_features, dtype=np.float32),
                        "running_var": np.ones(num_features, dtype=np.float32)}

    def forward(self, x):
        if x.ndim != self.ndim:
            raise ValueError(f"{type(self).__name__} expects a {self.ndim}-D input, "
                             f"got shape {tuple(x.shape)}")
        out, cache, running = F.batch_norm_forward(
            x, self.params["gamma"], self.params["beta"], self.buffers["running_mean"],
            self.buffers["running_var"], train=self.training, momentum=self.momentum, eps=self.eps,
            exchange=self.exchange)
        self.buffers["running_mean"], self.buffers["running_var"] = running
        self._remember(cache)
        return out

    def backward(self, dout, input_grad=True, param_grads=True):
        dx, dgamma, dbeta = F.batch_norm_backward(dout, self._take_cache(), input_grad, param_grads)
        return dx, ({"gamma": dgamma, "beta": dbeta} if param_grads else {})


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of features: x (N, C)."""
    ndim = 2


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of channels over batch and space: x (N, C, H, W)."""
    ndim = 4


class Dense(Layer):
    """Fully connected: x (N, D) -> x @ W + b (N, M); W (D, M), b (M,)."""

    def __init__(self, in_features, out_features, rng=None):
        super().__init__()
        self.params = {"W": _he_normal(rng, (in_features, out_features), in_features),
                       "b": np.zeros(out_features, dtype=np.float32)}

    def forward(self, x):
        out, cache = F.dense_forward(x, self.params["W"], self.params["b"])
        self._remember(cache)
        return out

    def backward(self, dout, input_grad=True, param_grads=True):
        dx, dw, db = F.dense_backward(dout, self._take_cache(), input_grad, param_grads)
        return dx, ({"W": dw, "b": db} if param_grads else {})


class _Elementwise(Layer):
    """A parameter-free layer given by a functional forward/backward pair."""
    _forward = _backward = None

    def forward(self, x):
        out, cache = type(self)._forward(x)
        self._remember(cache)
        return out

    def backward(self, dout, input_grad=True, param_grads=True):
        cache = self._take_cache()
        return (type(self)._backward(dout, cache) if input_grad else None), {}


class ReLU(_Elementwise):
    """max(x, 0), any shape."""
    _forward, _backward = F.relu_forward, F.relu_backward


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x)), any shape."""
    _forward, _backward = F.sigmoid_forward, F.sigmoid_backward


class Tanh(_Elementwise):
    """tanh(x), any shape."""
    _forward, _backward = F.tanh_forward, F.tanh_backward


class LeakyReLU(Layer):
    """x where x > 0, else negative_slope * x; any shape."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        out, cache = F.leaky_relu_forward(x, self.negative_slope)
        self._remember(cache)
        return out

    def backward(self, dout, input_grad=True, param_grads=True):
        cache = self._take_cache()
        return (F.leaky_relu_backward(dout, cache) if input_grad else None), {}


class Dropout(Layer):
    """Inverted dropout, any shape: in train mode each unit is zeroed with probability p and the
    kept ones scaled by 1 / (1 - p); in eval mode the identity.

    The masks are drawn on the host from `rng` (a numpy.random.Generator, or anything with its
    `random(shape, dtype=...)`) and moved to the input's device; a run that checkpoints this
    generator's state resumes with the same masks.
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout needs 0 <= p < 1, got {p}")
        self.p = p
        self.rng = np.random.default_rng() if rng is None else rng

    def forward(self, x):
        if not self.training or self.p == 0:
            self._remember((None,))  # the identity: backward passes dout through
            return x
        keep = self.rng.random(tuple(x.shape), dtype=np.float32) >= self.p
        mask = xp_of(x).asarray(keep.astype(np.float32) / np.float32(1 - self.p), dtype=x.dtype,
                                device=device_of(x))
        out, cache = F.dropout_forward(x, mask)
        self._remember((cache,))
        return out

    def backward(self, dout, input_grad=True, param_grads=True):
        (mask,) = self._take_cache()
        if not input_grad:
            return None, {}
        return (dout if mask is None else F.dropout_backward(dout, mask)), {}


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)); backward reshapes the gradient back."""

    def forward(self, x):
        self._remember(x.shape)
        return xp_of(x).reshape(x, (x.shape[0], -1))

    def backward(self, dout, input_grad=True, param_grads=True):
        shape = self._take_cache()
        return (xp_of(dout).reshape(dout, shape) if input_grad else None), {}

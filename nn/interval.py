"""Interval bound propagation (Gowal et al. 2018): every layer's interval forward and backward.

The box of images [x - eps, x + eps] (clipped to [0, 1]) goes through the network as a lower and
an upper bound per unit, lo <= hi, such that every image in the box gives outputs inside them:
- an affine layer (Conv2d, Dense, BatchNorm in eval mode) maps the centre mu = (hi + lo) / 2
  and the radius r = (hi - lo) / 2 as mu' = W mu + b, r' = |W| r;
- a monotone layer (ReLU, MaxPool2d, Flatten) maps each bound by itself: lo' = f(lo).
The last layer is not bounded on its own: `margins` bounds z_t - z_j, the true logit minus each
other, directly through the difference of the last layer's weights (Gowal's elision), which is
exact for that layer. A lower bound above 0 for every j proves the label for every image in the
box: the image is *certified*.

Backward: a loss on the margins' lower bounds reaches the parameters through both paths:
dmu' = dlo' + dhi', dr' = dhi' - dlo'; the affine maps give dW from (mu, dmu') plus
sign(W) * d|W| from (r, dr'); back in bounds, dlo = (dmu - dr) / 2, dhi = (dmu + dr) / 2.
"""
from . import conv, pool
from . import functional as F
from .backend import xp_of
from .layers import BatchNorm1d, BatchNorm2d, Conv2d, Dense, Flatten, MaxPool2d, ReLU
from .losses import one_hot


def _affine(forward, backward, weight_keys):
    """Interval forward/backward of an affine layer given its ordinary pair: forward(layer, x,
    absolute) runs the layer on x with |W| and no bias where absolute; backward(layer, dout,
    cache) -> (dx, {name: grad})."""
    def interval_forward(layer, lo, hi):
        mu, r = (hi + lo) / 2, (hi - lo) / 2
        mu_out, mu_cache = forward(layer, mu, False)
        r_out, r_cache = forward(layer, r, True)
        return mu_out - r_out, mu_out + r_out, (mu_cache, r_cache)

    def interval_backward(layer, dlo, dhi, cache):
        xp = xp_of(dlo)
        mu_cache, r_cache = cache
        dmu, grads = backward(layer, dlo + dhi, mu_cache)
        dr, abs_grads = backward(layer, dhi - dlo, r_cache)
        for key in weight_keys:  # d|W| / dW = sign(W)
            grads[key] = grads[key] + xp.sign(layer.params[key]) * abs_grads[key]
        return (dmu - dr) / 2, (dmu + dr) / 2, grads
    return interval_forward, interval_backward


def _conv_forward(layer, x, absolute):
    xp, W, b = xp_of(x), layer.params["W"], layer.params["b"]
    return conv.conv2d_forward(x, xp.abs(W) if absolute else W, b * 0 if absolute else b,
                            layer.stride, layer.padding)


def _conv_backward(layer, dout, cache):
    dx, dw, db = conv.conv2d_backward(dout, cache)
    return dx, {"W": dw, "b": db}


def _dense_forward(layer, x, absolute):
    xp, W, b = xp_of(x), layer.params["W"], layer.params["b"]
    return F.dense_forward(x, xp.abs(W) if absolute else W, b * 0 if absolute else b)


def _dense_backward(layer, dout, cache):
    dx, dw, db = F.dense_backward(dout, cache)
    return dx, {"W": dw, "b": db}


def _norm_scale(layer, x):
    """BatchNorm in eval mode as x * s + c per channel: (s, c, shape to broadcast them)."""
    xp = xp_of(x)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    s = layer.params["gamma"] / xp.sqrt(layer.buffers["running_var"] + layer.eps)
    return s, layer.params["beta"] - s * layer.buffers["running_mean"], shape


def _norm_forward(layer, x, absolute):
    if layer.training:
        raise ValueError("interval bounds need BatchNorm in eval mode (its running statistics)")
    xp = xp_of(x)
    s, c, shape = _norm_scale(layer, x)
    s = xp.reshape(s, shape)
    return (x * xp.abs(s) if absolute else x * s + xp.reshape(c, shape)), (x, absolute)


def _norm_backward(layer, dout, cache):
    """out = x * gamma / sd + beta - gamma * mean / sd: dgamma = sum dout * (x - mean) / sd
    (for |s|: sum dout * x / sd, its sign applied by _affine), dbeta = sum dout."""
    xp = xp_of(dout)
    x, absolute = cache
    s, _, shape = _norm_scale(layer, x)
    sd = xp.sqrt(layer.buffers["running_var"] + layer.eps)
    axes = (0,) + tuple(range(2, x.ndim))
    centred = x if absolute else x - xp.reshape(layer.buffers["running_mean"], shape)
    dgamma = xp.sum(dout * centred, axis=axes) / sd
    dbeta = xp.zeros_like(dgamma) if absolute else xp.sum(dout, axis=axes)
    dx = dout * xp.reshape(xp.abs(s) if absolute else s, shape)
    return dx, {"gamma": dgamma, "beta": dbeta}


def _relu_forward(layer, lo, hi):
    (lo2, lo_cache), (hi2, hi_cache) = F.relu_forward(lo), F.relu_forward(hi)
    return lo2, hi2, (lo_cache, hi_cache)


def _relu_backward(layer, dlo, dhi, cache):
    return F.relu_backward(dlo, cache[0]), F.relu_backward(dhi, cache[1]), {}


def _pool_forward(layer, lo, hi):
    (lo2, lo_cache), (hi2, hi_cache) = (pool.max_pool2d_forward(v, layer.kernel_size, layer.stride)
                                        for v in (lo, hi))
    return lo2, hi2, (lo_cache, hi_cache)


def _pool_backward(layer, dlo, dhi, cache):
    return pool.max_pool2d_backward(dlo, cache[0]), pool.max_pool2d_backward(dhi, cache[1]), {}


def _flatten_forward(layer, lo, hi):
    xp = xp_of(lo)
    return xp.reshape(lo, (lo.shape[0], -1)), xp.reshape(hi, (hi.shape[0], -1)), lo.shape


def _flatten_backward(layer, dlo, dhi, shape):
    xp = xp_of(dlo)
    return xp.reshape(dlo, shape), xp.reshape(dhi, shape), {}


_NORM = _affine(_norm_forward, _norm_backward, ("gamma",))
RULES = {Conv2d: _affine(_conv_forward, _conv_backward, ("W",)),
         Dense: _affine(_dense_forward, _dense_backward, ("W",)),
         BatchNorm1d: _NORM, BatchNorm2d: _NORM,
         ReLU: (_relu_forward, _relu_backward),
         MaxPool2d: (_pool_forward, _pool_backward),
         Flatten: (_flatten_forward, _flatten_backward)}


def _rule(layer):
    if type(layer) not in RULES:
        raise ValueError(f"no interval bounds for {type(layer).__name__}: IBP covers "
                         f"{', '.join(k.__name__ for k in RULES)}")
    return RULES[type(layer)]


def bounds(layers, lo, hi):
    """Bounds (lo, hi) of the output of `layers` over the box [lo, hi] of their input, and the
    caches for bounds_backward."""
    caches = []
    for layer in layers:
        lo, hi, cache = _rule(layer)[0](layer, lo, hi)
        caches.append(cache)
    return lo, hi, caches


def bounds_backward(layers, dlo, dhi, caches):
    """d(loss)/d(parameters) of `layers` from the gradients of their output bounds; keys
    "<index>.<name>" as Sequential.params."""
    grads = {}
    for i in reversed(range(len(layers))):
        dlo, dhi, layer_grads = _rule(layers[i])[1](layers[i], dlo, dhi, caches[i])
        grads.update({f"{i}.{name}": g for name, g in layer_grads.items()})
    return grads


def input_box(x, eps):
    """The box of L-infinity radius eps around images x, inside [0, 1]: (lo, hi) like x; eps a
    scalar or broadcastable against x (per image). The L-infinity attacks project onto it too."""
    xp = xp_of(x)
    return xp.clip(x - eps, 0.0, 1.0), xp.clip(x + eps, 0.0, 1.0)


def margins(model, x, t, eps):
    """Lower bounds (N, K) of z_t - z_j over the box of radius eps around x (N, C, H, W), with
    labels t (N,); column t is 0. The model is a Sequential ending in Dense. Returns (bounds,
    cache for margins_backward)."""
    xp = xp_of(x)
    *body, last = model.layers
    if not isinstance(last, Dense):
        raise ValueError("margins needs a network that ends in a Dense layer")
    lo, hi, caches = bounds(body, *input_box(x, eps))
    W, b = last.params["W"], last.params["b"]
    # Wd[n, :, j] = W[:, t_n] - W[:, j]: the last layer of the logit differences, per image
    Wd = xp.take(W, t, axis=1).T[:, :, None] - W[None]
    bd = xp.take(b, t)[:, None] - b[None]
    mu, r = (hi + lo) / 2, (hi - lo) / 2
    lower = xp.sum(mu[:, :, None] * Wd, axis=1) + bd - xp.sum(r[:, :, None] * xp.abs(Wd), axis=1)
    return lower, (body, caches, mu, r, Wd, t)


def margins_backward(model, dlower, cache):
    """Parameter gradients (Sequential.params' keys) of a loss given dloss/d(lower) (N, K)."""
    xp = xp_of(dlower)
    body, caches, mu, r, Wd, t = cache
    dmu = xp.sum(dlower[:, None, :] * Wd, axis=2)
    dr = -xp.sum(dlower[:, None, :] * xp.abs(Wd), axis=2)
    # dWd[n, d, j] = mu[n, d] dlower[n, j] - r[n, d] sign(Wd[n, d, j]) dlower[n, j]; Wd's column
    # j took -W[:, j] for every image and +W[:, t_n] for image n
    dWd = (mu[:, :, None] - r[:, :, None] * xp.sign(Wd)) * dlower[:, None, :]
    onehot = one_hot(t, dlower.shape[1], dlower)
    dW = xp.sum(dWd, axis=2).T @ onehot - xp.sum(dWd, axis=0)
    db = xp.sum(xp.sum(dlower, axis=1)[:, None] * onehot, axis=0) - xp.sum(dlower, axis=0)
    grads = bounds_backward(body, (dmu - dr) / 2, (dmu + dr) / 2, caches)
    grads[f"{len(body)}.W"], grads[f"{len(body)}.b"] = dW, db
    return grads


def certified(model, x, t, eps):
    """Whether each image of x (N, C, H, W) is proven to keep label t (N,) against every
    perturbation of L-infinity norm <= eps inside [0, 1]: (N,) booleans."""
    xp = xp_of(x)
    lower, _ = margins(model, x, t, eps)
    return xp.all((lower > 0) | (one_hot(t, lower.shape[1], lower) > 0), axis=1)

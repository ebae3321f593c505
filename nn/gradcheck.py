"""Finite-difference gradient checks that work on any layer with the `forward`/`backward`/`params`
protocol (a `Sequential` included), on host NumPy arrays in float64.

    layer = as_float64(MyLayer(...))
    errors = check_layer(layer, x)        # {"x": 3e-10, "W": 1e-9, ...}: all should be < 1e-6
"""
import numpy as np


def rel_error(a, b):
    """Largest element-wise |a - b| / max(1e-8, |a| + |b|)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def as_float64(layer):
    """Convert a layer's (or model's) parameters and buffers to float64 NumPy arrays, in place."""
    layers = getattr(layer, "layers", [layer])
    for l in layers:
        l.params = {k: np.asarray(v, dtype=np.float64) for k, v in l.params.items()}
        l.buffers = {k: np.asarray(v, dtype=np.float64) for k, v in l.buffers.items()}
    return layer


def numerical_gradient(f, x, dout, h=1e-6):
    """Central differences of sum(f() * dout) with respect to every element of array x.

    f takes no argument and reads x, which is perturbed in place and restored.
    """
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        plus = np.sum(f() * dout)
        x[i] = old - h
        minus = np.sum(f() * dout)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def _analytic(layer, x, rng):
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx, grads = layer.backward(dout)
    return dout, {"x": dx, **grads}


def check_layer(layer, x, seed=0, h=1e-6):
    """Worst relative error of the backward pass, per input: {"x": e, <param name>: e, ...}.

    Exhaustive: every element of x and of every parameter is perturbed, for a random dout.
    """
    dout, analytic = _analytic(layer, x, np.random.default_rng(seed))
    arrays = {"x": x, **layer.params}
    return {name: rel_error(numerical_gradient(lambda: layer.forward(x), arrays[name], dout, h),
                            analytic[name]) for name in arrays}


def directional_check(layer, x, seed=0, eps=1e-6):
    """Per input: (numeric, analytic) derivative of sum(out * dout) along a random direction v.

    numeric = (L(a + eps v) - L(a - eps v)) / (2 eps), analytic = <grad a, v>: two forward passes
    per input whatever its size.
    """
    rng = np.random.default_rng(seed)
    dout, analytic = _analytic(layer, x, rng)
    arrays = {"x": x, **layer.params}
    result = {}
    for name, a in arrays.items():
        v = rng.standard_normal(a.shape)
        a += eps * v
        plus = np.sum(layer.forward(x) * dout)
        a -= 2 * eps * v
        minus = np.sum(layer.forward(x) * dout)
        a += eps * v
        result[name] = ((plus - minus) / (2 * eps), float(np.sum(analytic[name] * v)))
    return result

"""Optimizers: `step(params, grads)` updates the arrays of `params` in place.

`params` and `grads` are dicts name -> array with the same keys (`Sequential.params` and
the grads of `Sequential.backward`), so several gradient dicts can be summed before one step.
"""
import numpy as np

from .backend import device_of, to_numpy, xp_of


def add_grads(*grads):
    """Element-wise sum of gradient dicts with identical keys."""
    keys = set(grads[0])
    if any(set(g) != keys for g in grads):
        raise ValueError("gradient dicts to add have different keys")
    total = dict(grads[0])
    for g in grads[1:]:
        for k in total:
            total[k] = total[k] + g[k]
    return total


class SGD:
    """SGD with momentum as in PyTorch: v = momentum * v + g (v = g at the first step);
    p -= lr * v."""

    def __init__(self, lr, momentum=0.9):
        if lr <= 0 or not 0 <= momentum < 1:
            raise ValueError("SGD needs lr > 0 and 0 <= momentum < 1; "
                             f"got lr={lr}, momentum={momentum}")
        self.lr, self.momentum = lr, momentum
        self.velocity = {}

    def step(self, params, grads):
        for name, p in params.items():
            g = grads[name]
            v = self.velocity.get(name)
            v = g if v is None else self.momentum * v + g
            self.velocity[name] = v
            p -= self.lr * v

    def state_dict(self):
        return {f"velocity.{k}": np.array(to_numpy(v)) for k, v in self.velocity.items()}

    def load_state_dict(self, state, like):
        """Restore velocities from host arrays; `like` (name -> array) gives namespace and device."""
        self.velocity = {k: xp_of(like[k]).asarray(state[f"velocity.{k}"], device=device_of(like[k]))
                         for k in like if f"velocity.{k}" in state}


class Adam:
    """Adam (Kingma & Ba): m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    p -= lr * m_hat / (sqrt(v_hat) + eps) with m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        b1, b2 = betas
        if lr <= 0 or not (0 <= b1 < 1 and 0 <= b2 < 1) or eps <= 0:
            raise ValueError(f"Adam needs lr > 0, betas in [0, 1) and eps > 0; "
                             f"got lr={lr}, betas={betas}, eps={eps}")
        self.lr, self.betas, self.eps = lr, betas, eps
        self.t = 0
        self.m, self.v = {}, {}

    def step(self, params, grads):
        b1, b2 = self.betas
        self.t += 1
        for name, p in params.items():
            xp, g = xp_of(p), grads[name]
            self.m[name] = b1 * self.m.get(name, 0.0) + (1 - b1) * g
            self.v[name] = b2 * self.v.get(name, 0.0) + (1 - b2) * (g * g)
            m_hat = self.m[name] / (1 - b1 ** self.t)
            v_hat = self.v[name] / (1 - b2 ** self.t)
            p -= self.lr * m_hat / (xp.sqrt(v_hat) + self.eps)

    def state_dict(self):
        state = {f"m.{k}": np.array(to_numpy(v)) for k, v in self.m.items()}
        state.update({f"v.{k}": np.array(to_numpy(v)) for k, v in self.v.items()})
        state["t"] = np.array(self.t)
        return state

    def load_state_dict(self, state, like):
        def load(prefix):
            return {k: xp_of(like[k]).asarray(state[f"{prefix}.{k}"], device=device_of(like[k]))
                    for k in like if f"{prefix}.{k}" in state}
        self.m, self.v, self.t = load("m"), load("v"), int(state["t"])

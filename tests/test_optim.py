"""Tests for nn/optim.py: SGD with momentum and Adam, by hand and against torch.optim.

Steps written out on numbers, then several steps on random parameters against PyTorch's own
optimizers (float64; the oracle runs where torch is installed: CI installs it). In place, on every
backend: tests/test_backends.py.
"""
import numpy as np
import pytest

from nn import SGD, Adam


def test_sgd_with_momentum_two_steps_by_hand():
    """lr 0.1, momentum 0.9: v1 = g1, p1 = p0 - 0.1 v1; v2 = 0.9 v1 + g2, p2 = p1 - 0.1 v2."""
    p = {"w": np.array([1.0, -2.0, 0.5])}
    w = p["w"]
    optimizer = SGD(lr=0.1, momentum=0.9)
    optimizer.step(p, {"w": np.array([0.5, 1.0, -4.0])})
    np.testing.assert_allclose(w, [0.95, -2.1, 0.9], atol=1e-15)
    optimizer.step(p, {"w": np.array([-1.0, 0.0, 2.0])})  # v2 = [-0.55, 0.9, -1.6]
    np.testing.assert_allclose(w, [1.005, -2.19, 1.06], atol=1e-15)
    assert p["w"] is w  # in place


def test_adam_first_step_moves_each_parameter_by_lr():
    """At t = 1, m_hat = g and v_hat = g^2: the step is lr g / (|g| + eps), lr sign(g)."""
    p = {"w": np.array([1.0, -2.0, 0.5])}
    Adam(lr=0.01).step(p, {"w": np.array([0.5, 0.1, -4.0])})
    np.testing.assert_allclose(p["w"], [0.99, -2.01, 0.51], atol=1e-7)


@pytest.mark.parametrize("ours, theirs", [
    (lambda: SGD(lr=0.05, momentum=0.9), lambda torch, ps: torch.optim.SGD(ps, lr=0.05,
                                                                           momentum=0.9)),
    (lambda: SGD(lr=0.05, momentum=0.0), lambda torch, ps: torch.optim.SGD(ps, lr=0.05)),
    (lambda: Adam(lr=1e-2, betas=(0.8, 0.99), eps=1e-6),
     lambda torch, ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-6)),
], ids=["sgd-momentum", "sgd", "adam"])
@pytest.mark.oracle
def test_five_steps_equal_torch_optim(ours, theirs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(5)]
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    optimizer, reference = ours(), theirs(torch, list(tensors.values()))
    for g in grads:
        optimizer.step(params, g)
        for k, t in tensors.items():
            t.grad = torch.from_numpy(g[k])
        reference.step()
    for k, t in tensors.items():
        np.testing.assert_allclose(params[k], t.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: SGD(lr=0), lambda: SGD(lr=0.1, momentum=1.0),
                                  lambda: Adam(lr=-1), lambda: Adam(betas=(1.0, 0.9))])
def test_bad_settings_are_refused(make):
    with pytest.raises(ValueError, match="needs"):
        make()

"""Tests for attacks/hopskipjump_attack.py: the decision-based attack.

On a linear two-class model the smallest perturbations have closed forms (|margin| / ||w||_2 in
L2, |margin| / ||w||_1 in L-infinity, inside the box): HopSkipJump, asking only for labels,
gets within 10% (L2) and 15% (L-infinity) of them in 3,000 queries and never below them. The
model's backward raises, so no gradient can have been used; every query is counted.
"""
import math

import numpy as np
import pytest

from attacks import LabelOracle, predict
from attacks.hopskipjump_attack import budget_curve, hopskipjump
from nn import Dense, Flatten, Sequential


def no_gradient(*args, **kwargs):
    raise AssertionError("HopSkipJump asked for a gradient")


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    model = Sequential(Flatten(), Dense(64, 2, rng=rng)).eval()
    model.backward = no_gradient
    x = rng.uniform(0.3, 0.7, (4, 1, 8, 8)).astype(np.float32)
    W, b = model.layers[1].params["W"], model.layers[1].params["b"]
    z = x.reshape(4, -1) @ W + b
    margin, w = np.abs(z[:, 1] - z[:, 0]), W[:, 1] - W[:, 0]
    return model, x, z.argmax(axis=1), {"l2": margin / np.linalg.norm(w),
                                        "linf": margin / np.abs(w).sum()}


@pytest.mark.parametrize("norm, within", [("l2", 1.10), ("linf", 1.15)])
def test_hopskipjump_nears_the_exact_minimum_from_labels_alone(linear, norm, within):
    model, x, t, exact = linear
    oracle = LabelOracle(model)
    for i in range(len(x)):
        before = oracle.queries
        adv, trace = hopskipjump(oracle, x[i], t[i], norm, max_queries=3000,
                                 rng=np.random.default_rng(i))
        assert trace[-1][0] <= oracle.queries - before <= 3000  # every query counted, in budget
        assert predict(model, adv[None])[0] != t[i] and adv.min() >= 0 and adv.max() <= 1
        dist = trace[-1][1 if norm == "l2" else 2]
        assert exact[norm][i] * (1 - 1e-4) <= dist <= within * exact[norm][i], (i, dist)
        assert dist < trace[0][1 if norm == "l2" else 2] / 2  # far better than its start
        assert [q for q, _, _ in trace] == sorted(q for q, _, _ in trace)


def test_a_budget_too_small_to_start_gives_none(linear):
    model, x, t, _ = linear
    adv, trace = hopskipjump(LabelOracle(model), x[0], t[0], max_queries=1,
                             rng=np.random.default_rng(1))
    assert (adv is None and trace == []) or predict(model, adv[None])[0] != t[0]


def test_budget_curve_reads_the_trace_at_each_budget():
    trace = [(50, 3.0, 0.5), (400, 2.0, 0.4), (1200, 1.0, 0.3)]
    assert budget_curve(trace, [10, 100, 1000, 5000]) == [(math.inf, math.inf), (3.0, 0.5),
                                                          (2.0, 0.4), (1.0, 0.3)]


def test_bad_norm_is_refused(linear):
    model, x, t, _ = linear
    with pytest.raises(ValueError, match="norm must be"):
        hopskipjump(LabelOracle(model), x[0], t[0], norm="l1")

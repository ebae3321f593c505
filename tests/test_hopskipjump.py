"""Tests for attacks/decision_based.py: the decision-based attack.

- On a linear two-class model the smallest perturbations have closed forms (|margin| / ||w||_2 in
  L2, |margin| / ||w||_1 in L-infinity, inside the box): HopSkipJump, asking only for labels,
  gets within 10% (L2) and 15% (L-infinity) of them in 3,000 queries and never below them. The
  model's backward raises, so no gradient can have been used; every query is counted.
- Its parts, each against what the paper says it must do: the normal's estimate in d = 784 nears
  the true normal as the probes grow, as the theory says, with and without the point on the
  boundary (the baseline mean(phi)); at a boundary point by the box (an MNIST digit, its
  background at 0) it still points along the normal; iteration t asks int(100 sqrt(t)) probes at
  the radius of the paper's schedule; the step starts at dist / sqrt(t) and halves until
  adversarial.
- On a small ReLU network (non-linear boundaries) the median distortion after 1,000, 2,000 and
  4,000 queries is within 10% of the authors' reference implementation's on the same images.
"""
import math

import numpy as np
import pytest

from attacks import LabelOracle, standard_step
from attacks.decision_based import (
    Probe,
    budget_curve,
    estimate_direction,
    hopskipjump,
    probe_radius,
    step_search,
)
from nn import SGD, Dense, Flatten, ReLU, Sequential, batch_slices, predict


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


# --- the parts -------------------------------------------------------------------------------

def half_space(w, b):
    """phi of the half-space <w, x> > b: a Probe over an oracle answering 1 there, 0 elsewhere."""
    def oracle(images):
        return (images.reshape(len(images), -1).astype(np.float64) @ w > b).astype(np.int64)
    return Probe(oracle, label=0, budget=10 ** 9)


def cosine(a, b):
    return float(np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b))


def theory(B, d, c):
    """E cos(estimate, normal) for B probes in d dimensions, the boundary c delta / sqrt(d) away:
    signal 2 phi(c) / sqrt(d) along the normal (phi the normal density), noise (1 - mean(f)^2)
    / (d B) in each of the d - 1 other coordinates, mean(f) = erf(c / sqrt 2)."""
    signal = 4 * (math.exp(-c * c / 2) / math.sqrt(2 * math.pi)) ** 2
    return 1 / math.sqrt(1 + (d - 1) * (1 - math.erf(c / math.sqrt(2)) ** 2) / (B * signal))


@pytest.mark.parametrize("c", [0.0, 1.5])
def test_the_estimate_nears_the_normal_as_the_probes_grow(c):
    """d = 784, x in [0.3, 0.7] (no clipping), probes at delta = 0.1: the mean cosine over
    30,000 / B draws (standard error about 1%) rises with B and is the theory's within 5%. With
    the boundary off the point (c = 1.5: 87% of the probes adversarial) it is the baseline
    mean(phi) that keeps it there (0.71 at B = 3,000; 0.45 without)."""
    d, delta = 784, 0.1
    rng = np.random.default_rng(0)
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    x = rng.uniform(0.3, 0.7, (1, 28, 28)).astype(np.float32)
    phi = half_space(w, float(w @ x.ravel().astype(np.float64)) - c * delta / math.sqrt(d))
    means = []
    for B in (100, 1000, 3000):
        cos = [cosine(estimate_direction(phi, x, B, delta, "l2", np.random.default_rng(s))
                      .ravel(), w) for s in range(30_000 // B)]
        means.append(np.mean(cos))
        assert abs(means[-1] / theory(B, d, c) - 1) < 0.05, (B, means[-1], theory(B, d, c))
    assert means == sorted(means)


@pytest.mark.parametrize("into", [True, False])
def test_by_the_box_the_estimate_follows_the_probes_actually_made(mnist_small, into):
    """At a boundary point of a real digit (85% of its pixels at 0) whose normal points into the
    box (or out of it) on the dark pixels, clipping moves every probe to the same side, so that
    phi is the same for all: the estimate must then be the mean of the displacements actually
    probed (re-derived after clipping), along the normal (cosine 0.7), not the mean of the
    random directions drawn (cosine 0.0)."""
    _, (test_x, _) = mnist_small
    x = test_x[0]
    dark = x.ravel() == 0
    assert dark.mean() > 0.8
    w = np.random.default_rng(1).standard_normal(x.size)
    w = np.where(dark, np.abs(w) if into else -np.abs(w), w)
    phi = half_space(w, float(w @ x.ravel().astype(np.float64)))
    for s in range(3):
        grad = estimate_direction(phi, x, 100, 0.1, "l2", np.random.default_rng(s))
        assert cosine(grad.ravel(), w) > 0.6


def test_the_probe_radius_follows_the_papers_schedule():
    d, dist = 784, 2.0
    assert probe_radius(1, d, 1 / d ** 1.5, dist, "l2") == 0.1
    assert probe_radius(3, d, 1 / d ** 1.5, dist, "l2") == pytest.approx(dist / d)
    assert probe_radius(3, d, 1 / d ** 2, dist, "linf") == pytest.approx(dist / d)


def test_each_iteration_asks_int_100_sqrt_t_probes_at_its_radius(linear):
    """The estimates are the only batches of more than one image; iteration t's probes lie at
    delta_t from the boundary point (their mean): 0.1, then sqrt(d) theta dist_t."""
    model, x, t, _ = linear
    batches = []

    def recording(images):
        batches.append(np.array(images))
        return predict(model, images)
    _, trace = hopskipjump(recording, x[0], t[0], max_queries=3000, rng=np.random.default_rng(0))
    probes = [b for b in batches if len(b) > 1]
    assert 5 <= len(trace) - 1 <= len(probes) <= len(trace)  # one estimate per iteration
    sizes = [len(b) for b in probes]
    assert sizes[:-1] == [int(100 * math.sqrt(k)) for k in range(1, len(sizes))]
    assert sizes[-1] <= int(100 * math.sqrt(len(sizes)))  # the last one as the budget allows
    d = x[0].size
    for k, b in enumerate(probes[:-1], start=1):
        radius = np.linalg.norm((b - b.mean(axis=0)).reshape(len(b), -1), axis=1).mean()
        expected = 0.1 if k == 1 else math.sqrt(d) * d ** -1.5 * trace[k - 1][1]
        assert radius == pytest.approx(expected * math.sqrt(1 - 1 / len(b)), rel=1e-3), k
    batches.clear()
    hopskipjump(recording, x[0], t[0], max_queries=1000, rng=np.random.default_rng(0),
                init_evals=50, max_evals=80)
    assert [len(b) for b in batches if len(b) > 1][:4] == [50, 70, 80, 80]


def test_the_step_starts_at_dist_over_sqrt_t_and_halves_until_adversarial():
    """Adversarial up to 0.07 along the update: from dist 0.8 at t = 4 the steps tried are 0.4,
    0.2, 0.1, 0.05; the last is the answer. With the budget spent first, None."""
    x_adv, update = np.full((1, 4, 4), 0.5), np.zeros((1, 4, 4))
    update[0, 0, 0] = 1.0
    tried = []

    def oracle(images):
        steps = images[:, 0, 0, 0].astype(np.float64) - 0.5
        tried.extend(steps.round(6))
        return (steps <= 0.07).astype(np.int64)
    assert step_search(Probe(oracle, 0, 100), x_adv, update, 0.8, 4) == 0.05
    assert tried == [0.4, 0.2, 0.1, 0.05]
    assert step_search(Probe(oracle, 0, 2), x_adv, update, 0.8, 4) is None


# --- against the authors' implementation ------------------------------------------------------

# The authors' hsja.py (github.com/Jianbo-Lab/HSJA, commit 6a91456), on relu_net() and the same
# 20 images, L2, its defaults (init_num_evals 100, gamma 1, geometric step search), seeded
# np.random.seed(i) for test image i: the median L2 distance after 1,000, 2,000 and 4,000 queries.
# `python tests/test_hopskipjump.py PATH/TO/HSJA` reruns it and prints these numbers.
BUDGETS = (1000, 2000, 4000)
AUTHORS = (1.697, 1.476, 1.315)


def relu_net(train_x, train_t):
    """784-32-10 ReLU network, 2 epochs of SGD (batch 50) on the 2,000 images given."""
    rng = np.random.default_rng(0)
    model = Sequential(Flatten(), Dense(784, 32, rng=rng), ReLU(), Dense(32, 10, rng=rng)).train()
    optimizer = SGD(lr=0.05, momentum=0.9)
    for _ in range(2):
        order = rng.permutation(len(train_x))
        for s in batch_slices(len(train_x), 50):
            standard_step(model, optimizer, train_x[order[s]], train_t[order[s]])
    return model.eval()


def relu_case(mnist_small):
    """(network, indices of the first 20 test images it gets right, its labels of the first 100)."""
    (train_x, train_t), (test_x, test_t) = mnist_small
    model = relu_net(train_x[:2000], train_t[:2000])
    pred = predict(model, test_x[:100])
    return model, np.flatnonzero(pred == test_t[:100])[:20], pred


def test_distortion_on_a_relu_network_is_the_authors(mnist_small):
    model, images, pred = relu_case(mnist_small)
    test_x = mnist_small[1][0]
    oracle = LabelOracle(model)
    ours = []
    for i in images:
        adv, trace = hopskipjump(oracle, test_x[i], pred[i], max_queries=BUDGETS[-1],
                                 rng=np.random.default_rng(i))
        assert predict(model, adv[None])[0] != pred[i]
        ours.append([l2 for l2, _ in budget_curve(trace, BUDGETS)])
    median = np.median(ours, axis=0)
    print(f"median L2 after {BUDGETS} queries: ours {median.round(3)}, the authors' {AUTHORS}")
    np.testing.assert_allclose(median, AUTHORS, rtol=0.1)


def authors_run(hsja, model, x, seed, budget):
    """The authors' hsja() on x (C, H, W): its trace (queries, L2 distance) at each new point."""
    queries, trace = [0], []

    class Model:  # hsja asks for scores and takes their argmax: the label, one-hot
        def predict(self, images):
            images = np.asarray(images, dtype=np.float32).reshape(-1, *x.shape)
            queries[0] += len(images)
            return np.eye(10)[predict(model, images)]
    search = hsja.binary_search_batch

    def recorded(original, perturbed, *args):
        out, dist = search(original, perturbed, *args)
        trace.append((queries[0], float(np.linalg.norm(out - original)), 0.0))
        return out, dist
    hsja.binary_search_batch = recorded
    np.random.seed(seed)
    try:
        hsja.hsja(Model(), x.astype(np.float64), constraint="l2",
                  num_iterations=iterations_for(budget), verbose=False)
    finally:
        hsja.binary_search_batch = search
    return trace


def iterations_for(budget):
    """Iterations enough to spend `budget` queries in estimates alone (each asks >= 100 sqrt(t))."""
    spent, t = 0, 0
    while spent < budget:
        t += 1
        spent += int(100 * math.sqrt(t))
    return t


if __name__ == "__main__":  # the reference numbers above, from the authors' code
    import sys
    sys.path.insert(0, sys.argv[1])
    import hsja

    from data.mnist import load_mnist
    test_x = load_mnist("test", limit=100)
    model, images, pred = relu_case((load_mnist("train", limit=2000), test_x))
    test_x = test_x[0]
    curves = [[l2 for l2, _ in budget_curve(authors_run(hsja, model, test_x[i], i, BUDGETS[-1]),
                                            BUDGETS)] for i in images]
    print("AUTHORS =", tuple(float(v) for v in np.median(curves, axis=0).round(3)))

"""Tests for attacks/score_based.py: the Square attack, which sees a model only through a
ScoreOracle.

- no gradient: it breaks an easy model whose every backward raises;
- its procedure, read from the queries a recording oracle sees: stripes first, then one square
  of the scheduled side per proposal, every pixel on a corner of the ball, a proposal kept only
  where the margin falls, no query after an image is misclassified, at most n_queries each;
- the schedule of the square's area, the margin, probabilities as good as logits;
- every backend, and the strict backend's no_float64 device.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attacks import ScoreOracle, square
from attacks.score_based import margins, p_schedule
from helpers import assert_like
from nn import Dense, Flatten, Sequential, eval_mode
from test_apgd import backend_case, batch, tiny_model
from test_attacks import seeds


def no_backward(model):
    """The model, with every layer's backward replaced by one that raises."""
    def refuse(*args, **kwargs):
        raise AssertionError("the Square attack asked for a gradient")
    for layer in model.layers:
        layer.backward = refuse
    model.backward = refuse
    return model


def easy_linear_model():
    """Flatten -> Dense(64 -> 4) on 1x8x8 images, float32, with margins that eps 0.1 can undo."""
    rng = np.random.default_rng(11)
    model = Sequential(Flatten(), Dense(64, 4))
    model.layers[1].params = {"W": rng.normal(0, 1, (64, 4)).astype(np.float32),
                              "b": np.zeros(4, dtype=np.float32)}
    return model


def test_square_breaks_an_easy_model_without_any_gradient():
    model = no_backward(easy_linear_model())
    x = np.random.default_rng(0).uniform(0.2, 0.8, (20, 1, 8, 8)).astype(np.float32)
    t = np.argmax(model.forward(x), axis=1)
    oracle = ScoreOracle(model)
    out = square(oracle, x, t, 0.1, n_queries=300, rng=np.random.default_rng(1))
    fooled = np.argmax(model.forward(out), axis=1) != t
    assert fooled.mean() >= 0.9
    assert np.abs(out - x).max() <= 0.1 + 1e-6
    assert max(oracle.per_image.values()) <= 300 and oracle.queries == sum(
        oracle.per_image.values())


class RecordingOracle(ScoreOracle):
    """A ScoreOracle that keeps a copy of every request: (images, ids, scores)."""

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self.log = []

    def __call__(self, images, ids=None):
        scores = super().__call__(images, ids)
        self.log.append((np.array(images), np.array(ids), np.array(scores)))
        return scores


def square_bounding_box(changed):
    """Height and width of the smallest box around the True pixels of changed (C, H, W)."""
    rows, cols = np.flatnonzero(changed.any(axis=(0, 2))), np.flatnonzero(changed.any(axis=(0, 1)))
    return (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) if rows.size else (0, 0)


@given(seed=seeds, eps=st.floats(0.05, 0.4), n_queries=st.integers(1, 60),
       p_init=st.sampled_from([0.8, 0.3, 0.05]))
def test_square_procedure_as_the_oracle_sees_it(seed, eps, n_queries, p_init):
    model = tiny_model(seed % 3)
    x, t = batch(seed, 6, np.float32, model)
    oracle = RecordingOracle(model)
    out = square(oracle, x, t, eps, n_queries=n_queries, p_init=p_init,
                 rng=np.random.default_rng(seed))
    low, high = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    images, ids, scores = oracle.log[0]
    np.testing.assert_array_equal(ids, np.arange(6))
    corner = (np.isclose(images, low, atol=1e-6) | np.isclose(images, high, atol=1e-6))
    assert corner.all()                                   # every pixel on a corner of the ball
    up_down = np.sign(images - x)  # vertical stripes: one sign per column (0 where clipped)
    assert not np.any((up_down.max(axis=2) > 0) & (up_down.min(axis=2) < 0))
    best, margin, wrong = images.copy(), margins(scores, t), np.argmax(scores, axis=1) != t
    for i, (images, ids, scores) in enumerate(oracle.log[1:]):
        assert not np.any(wrong[ids])  # only images still classified correctly are asked about
        side = min(max(int(round(np.sqrt(p_schedule(i, n_queries, p_init) * 64))), 1), 8)
        for j, k in enumerate(ids):
            h, w = square_bounding_box(images[j] != best[k])
            assert h <= side and w <= side
            assert np.all(np.isclose(images[j], low[k], atol=1e-6)
                          | np.isclose(images[j], high[k], atol=1e-6))
        new, hit = margins(scores, t[ids]), np.argmax(scores, axis=1) != t[ids]
        keep = (new < margin[ids]) | hit
        best[ids[keep]], margin[ids[keep]] = images[keep], new[keep]
        wrong[ids] = hit
    np.testing.assert_array_equal(out, best)
    assert len(oracle.log) <= n_queries
    assert all(n <= n_queries for n in oracle.per_image.values())
    with eval_mode(model):
        np.testing.assert_array_equal(np.argmax(model.forward(out), axis=1) != t, wrong)


def test_a_tie_counts_as_the_evaluation_counts_it():
    """All logits 0 (every ReLU off, no bias): margin 0 but argmax is class 0, so an image
    labelled 0 is correct and must be attacked, one labelled 1 is already misclassified."""
    model = Sequential(Flatten(), Dense(4, 3))
    model.layers[1].params = {"W": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    oracle = RecordingOracle(model)
    x = np.full((2, 1, 2, 2), 0.5, np.float32)
    out = square(oracle, x, np.array([0, 1]), 0.1, n_queries=5)
    assert len(oracle.log) == 5 and all(list(ids) == [0] for _, ids, _ in oracle.log[1:])
    assert out.shape == x.shape


def test_eps_zero_is_a_no_op():
    model = tiny_model(0)
    x, t = batch(1, 4, np.float32, model)
    np.testing.assert_array_equal(square(ScoreOracle(model), x, t, 0.0, n_queries=20), x)


def test_p_schedule_halves_at_the_references_iterations():
    assert [p_schedule(i, 10000) for i in (0, 10, 11, 50, 51, 200, 201, 8000, 8001, 9999)] == \
        [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.8 / 256, 0.8 / 512, 0.8 / 512]
    # AutoAttack's standard version does not rescale: with 5,000 queries the last halving is at
    # 4,000, and squares on 28x28 images never get below 2x2
    assert [p_schedule(i, 5000) for i in (5, 6, 4000, 4001, 4999)] == \
        [0.8, 0.8, 0.8 / 64, 0.8 / 128, 0.8 / 128]
    assert min(round(np.sqrt(p_schedule(i, 5000) * 784)) for i in range(5000)) == 2
    # rescaled to 5,000 queries (torchattacks): the same schedule at half the iterations
    assert [p_schedule(i, 5000, rescale=True) for i in (5, 6, 25, 26, 4001)] == \
        [0.8, 0.4, 0.4, 0.2, 0.8 / 512]


def test_margins_are_the_true_score_minus_the_best_other():
    scores = np.array([[1.0, 3.0, 2.0], [5.0, -1.0, 4.5], [0.0, 0.0, -2.0]])
    np.testing.assert_allclose(margins(scores, np.array([1, 0, 0])), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(margins(scores, np.array([2, 1, 2])), [-1.0, -6.0, -2.0])


def test_log_probabilities_keep_what_float32_probabilities_lose():
    """A confident float32 model (a linear one whose margins are hundreds of logits, where every
    probability below the top one rounds to 0): Square through the oracle's log-probabilities
    breaks exactly the images it breaks through logits; through probabilities it walks blind."""
    rng = np.random.default_rng(1)
    model = Sequential(Flatten(), Dense(256, 10, rng=rng))
    dense = model.layers[-1]
    dense.params["W"], dense.params["b"] = dense.params["W"] * 1000, dense.params["b"] * 1000
    x = rng.uniform(0, 1, (30, 1, 16, 16)).astype(np.float32)
    with eval_mode(model):
        logits = model.forward(x)
    t = np.argmax(logits, axis=1)
    assert np.all(ScoreOracle(model, output="probs")(x).max(axis=1) == 1.0)  # the blind spot

    def broken(output):
        out = square(ScoreOracle(model, output=output), x, t, 0.05, n_queries=300,
                     rng=np.random.default_rng(5))
        with eval_mode(model):
            return np.argmax(model.forward(out), axis=1) != t
    by_logits, by_log_probs, by_probs = broken("logits"), broken("log_probs"), broken("probs")
    np.testing.assert_array_equal(by_log_probs, by_logits)
    assert by_probs.sum() < by_logits.sum() / 1.5, (by_probs.sum(), by_logits.sum())
    np.testing.assert_allclose(ScoreOracle(model, output="log_probs")(x),
                               logits - logits.max(axis=1, keepdims=True), atol=1e-2)


def test_square_on_every_backend(xp):
    model_np, model, x_np, t_np, x, t = backend_case(xp)
    out = square(ScoreOracle(model), x, t, 0.2, n_queries=30, rng=np.random.default_rng(4))
    assert_like(out, square(ScoreOracle(model_np), x_np, t_np, 0.2, n_queries=30,
                            rng=np.random.default_rng(4)), x)


def test_square_never_needs_float64():
    xps = pytest.importorskip("array_api_strict")
    model_np, model, x_np, t_np, x, t = backend_case(xps, xps.Device("no_float64"))
    for output in ("logits", "log_probs", "probs"):
        out = square(ScoreOracle(model, output=output), x, t, 0.2, n_queries=30,
                     rng=np.random.default_rng(4))
        assert_like(out, square(ScoreOracle(model_np, output=output), x_np, t_np, 0.2,
                                n_queries=30, rng=np.random.default_rng(4)), x)


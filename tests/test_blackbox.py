"""Tests for attacks/blackbox.py and `attack.py blackbox`.

- the label oracle: labels only, every image counted, nothing answered past the budget;
- the score oracle: eval-mode logits or probabilities, counted in total and per image, budgets;
- Jacobian augmentation on a linear model whose logit gradients are its weight columns, on
  every backend, and on a CNN: the oracle label's logit rises after a small step;
- a tiny in-process run of the experiment, and its one-sentence errors.
"""
import json

import numpy as np
import pytest

import attack
import train
from attacks.blackbox import LabelOracle, QueryBudgetExceeded, ScoreOracle, jacobian_augmentation
from helpers import assert_like
from nn import Conv2d, Dense, Flatten, ReLU, Sequential, eval_mode, predict, reference_cnn, softmax
from nn.gradcheck import as_float64
from test_attacks import random_bn_state


def random_images(n, seed=0, shape=(1, 28, 28)):
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)


def test_oracle_returns_only_labels_and_counts_every_image():
    model = reference_cnn(rng=np.random.default_rng(1))
    x = random_images(7)
    oracle = LabelOracle(model)
    labels = oracle(x[:3])
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int64 and labels.shape == (3,)
    np.testing.assert_array_equal(labels, predict(model, x[:3]))
    oracle(x)
    oracle(x[:3])  # the same images again count again
    assert oracle.queries == 13 and oracle.remaining is None


def test_oracle_refuses_past_its_budget_without_counting():
    oracle = LabelOracle(reference_cnn(rng=np.random.default_rng(1)), budget=10)
    x = random_images(10)
    oracle(x[:6])
    with pytest.raises(QueryBudgetExceeded, match="at most 10 images"):
        oracle(x[:5])
    assert oracle.queries == 6 and oracle.remaining == 4
    assert oracle(x[:4]).shape == (4,)
    with pytest.raises(QueryBudgetExceeded):
        oracle(x[:1])
    assert oracle.queries == 10


def bn_model():
    """A reference CNN with BatchNorm in train mode, its running statistics made random."""
    rng = np.random.default_rng(2)
    return random_bn_state(reference_cnn(batch_norm=True, rng=rng), rng).train()


def test_score_oracle_answers_eval_mode_scores_and_counts_each_image():
    model = bn_model()
    before = model.state_dict()
    x = random_images(5)
    with eval_mode(model):
        logits = model.forward(x)
    model.train()
    oracle = ScoreOracle(model, batch_size=2)
    np.testing.assert_allclose(oracle(x[:3], ids=[7, 8, 9]), logits[:3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(oracle(x[1:], ids=np.array([8, 9, 10, 11])), logits[1:],
                               rtol=1e-5, atol=1e-6)
    oracle(x[:1])  # unnamed images count in the total only
    assert oracle.queries == 8 and dict(oracle.per_image) == {7: 1, 8: 2, 9: 2, 10: 1, 11: 1}
    assert model.training  # the mode is restored, the statistics untouched
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    probs = ScoreOracle(model, output="probs")(x)
    np.testing.assert_allclose(probs, softmax(logits), rtol=1e-5, atol=1e-7)


def test_score_oracle_refuses_past_its_budgets_without_counting():
    x = random_images(4)
    oracle = ScoreOracle(reference_cnn(rng=np.random.default_rng(1)), budget=6,
                         per_image_budget=2)
    oracle(x[:2], ids=[0, 1])
    oracle(x[:2], ids=[0, 1])
    with pytest.raises(QueryBudgetExceeded, match="at most 2 queries per image"):
        oracle(x[1:3], ids=[1, 2])
    with pytest.raises(QueryBudgetExceeded, match="at most 6 images"):
        oracle(x[:3], ids=[2, 3, 3])
    assert oracle.queries == 4 and oracle.remaining == 2 and oracle.per_image[2] == 0
    with pytest.raises(ValueError, match="needs the ids"):
        oracle(x[:1])
    with pytest.raises(ValueError, match="ids for"):
        oracle(x[:2], ids=[1])
    oracle(x[2:], ids=[2, 3])
    assert oracle.remaining == 0
    with pytest.raises(ValueError, match="output"):
        ScoreOracle(reference_cnn(), output="labels")


def test_score_oracle_on_every_backend(xp):
    model, _ = linear(xp, np.float32)
    host, _ = linear(np, np.float32)
    x_np = random_images(5, shape=(1, 2, 2))
    x = xp.asarray(x_np)
    for output in ("logits", "probs"):
        assert_like(ScoreOracle(model, output=output)(x),
                    ScoreOracle(host, output=output)(x_np), x)


def linear(xp, dtype):
    """Flatten -> Dense(4, 3): the gradient of logit k with respect to x is column k of W."""
    model = Sequential(Flatten(), Dense(4, 3))
    W = np.array([[1.0, -2.0, 0.5], [-1.0, 3.0, 0.0], [2.0, 1.0, -4.0], [-0.5, -1.0, 2.0]])
    model.layers[1].params = {"W": W.astype(dtype), "b": np.array([0.1, -0.2, 0.3], dtype)}
    return model.to(xp), W


def test_jacobian_augmentation_on_every_backend(xp):
    model, W = linear(xp, np.float32)
    x_host = np.array([[0.5, 0.05, 0.98, 0.5], [0.2, 0.5, 0.0, 0.5], [0.5, 0.5, 0.5, 0.5]],
                      np.float32).reshape(3, 1, 2, 2)
    t_host = np.array([0, 1, 2])
    x, t = xp.asarray(x_host), xp.asarray(t_host)
    out = jacobian_augmentation(model, x, t, lam=0.1)
    expected = np.clip(x_host + 0.1 * np.sign(W[:, t_host].T).reshape(x_host.shape), 0, 1)
    assert_like(out, expected, x)
    assert expected[0].ravel()[1] == 0.0 and expected[0].ravel()[2] == 1.0  # both clips happen
    assert_like(jacobian_augmentation(model, x, t, lam=-0.1),
                np.clip(x_host - 0.1 * np.sign(W[:, t_host].T).reshape(x_host.shape), 0, 1), x)


def test_jacobian_augmentation_climbs_the_labels_logit():
    rng = np.random.default_rng(3)
    model = as_float64(Sequential(Conv2d(1, 4, 3, rng=rng), ReLU(), Flatten(),
                                  Dense(4 * 6 * 6, 10, rng=rng)))
    x = random_images(6, shape=(1, 8, 8)).astype(np.float64)
    t = np.arange(6)
    model.train()
    new = jacobian_augmentation(model, x, t, lam=1e-4)
    assert model.training  # the mode is restored
    assert new.shape == x.shape and np.all(np.abs(new - x) <= 1e-4 + 1e-12)
    before, after = model.forward(x)[t, t], model.forward(new)[t, t]
    assert np.all(after > before)


@pytest.fixture(scope="module")
def victim(tmp_path_factory):
    folder = tmp_path_factory.mktemp("victim")
    assert train.main(["--train-limit", "300", "--test-limit", "20", "--epochs", "1",
                       "--out", str(folder)]) == 0
    return folder / "checkpoint.npz"


def run_blackbox(victim, out, *flags):
    return attack.main(["blackbox", "--checkpoint", str(victim), "--out", str(out),
                        "--images", "30", "--steps", "2", "--substitute-steps", "8", *flags])


def test_blackbox_cli_writes_results(victim, tmp_path, capsys):
    assert run_blackbox(victim, tmp_path / "out", "--budgets", "20", "10") == 0
    assert "jacobian, 20 queries" in capsys.readouterr().out
    for name in ("blackbox.csv", "blackbox.json", "blackbox.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    result = json.loads((tmp_path / "out" / "blackbox.json").read_text())
    rows = result["rows"]
    assert [(r["method"], r["queries"]) for r in rows] == [
        ("jacobian", 10), ("jacobian", 20), ("random", 10), ("random", 20)]
    assert result["held_out"] == 30 and result["eval_queries"] == 30 + 4 * 2 * 30
    for r in rows:
        assert r["eval_queries"] == 60
        for key in ("agreement", "fgs_success", "pgd_success", "pgd_success_on_substitute"):
            assert 0.0 <= r[key] <= 1.0
    # the same seed images, initialisation and shuffles: the first budget agrees across methods
    assert rows[0]["agreement"] == rows[2]["agreement"]


@pytest.mark.parametrize("flags, message", [
    (["--budgets", "10", "30"], "30 cannot follow 10"),
    (["--budgets", "9990"], "more test images than the 10000"),
])
def test_blackbox_bad_budgets_are_one_sentence(victim, tmp_path, capsys, flags, message):
    assert run_blackbox(victim, tmp_path / "out", *flags) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_blackbox_bad_flag_is_an_argparse_error(victim, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_blackbox(victim, tmp_path / "out", "--lam", "0")
    assert exc.value.code == 2 and "--lam" in capsys.readouterr().err


def test_augmentation_step_starts_down_the_logit_and_flips_every_tau_rounds():
    from experiments.blackbox import augmentation_step
    assert [augmentation_step(r, 0.1, 3) for r in range(7)] == [-0.1] * 3 + [0.1] * 3 + [-0.1]
    assert [augmentation_step(r, 0.2, 1) for r in range(3)] == [-0.2, 0.2, -0.2]


def test_augmentation_rounds_use_the_schedule(victim, tmp_path, monkeypatch):
    import attacks.blackbox
    from experiments import blackbox
    steps = []

    def recording(model, x, labels, lam):
        steps.append(lam)
        return attacks.blackbox.jacobian_augmentation(model, x, labels, lam)
    monkeypatch.setattr(blackbox, "jacobian_augmentation", recording)
    assert run_blackbox(victim, tmp_path / "out", "--budgets", "5", "10", "20", "40",
                        "--methods", "jacobian", "--tau", "2") == 0
    assert sorted(set(steps), key=steps.index) == [-0.1, 0.1]
    assert steps[0] == -0.1 and steps[-1] == 0.1  # rounds 0, 1 down the logit, round 2 up


def test_substitute_pgd_is_the_last_iterate(victim, tmp_path, monkeypatch):
    """As in attack.py transfer: PGD on the substitute keeps its last iterate, not the first one
    that fools the substitute (which transfers worst)."""
    import experiments.blackbox as blackbox
    real, seen = blackbox.pgd, []
    monkeypatch.setattr(blackbox, "pgd", lambda *a, **k: seen.append(k["keep_first"])
                        or real(*a, **k))
    assert run_blackbox(victim, tmp_path / "out", "--budgets", "10") == 0
    assert seen and not any(seen)

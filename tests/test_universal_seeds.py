"""Tests for attacks.universal.universal_passes and attack.py universal_seeds, on tiny runs."""
import csv
import json

import numpy as np

from attacks.universal import universal_passes
from data.mnist import load_mnist
from experiments.common import load_model
from nn.backend import namespace_for


def test_universal_passes_stays_in_the_ball_and_stops(checkpoint):
    model, _ = load_model(checkpoint, namespace_for("cpu"))
    x, _ = load_mnist("train", limit=300)
    for target, update in ((None, "sign"), (3, "scaled")):
        v, history = universal_passes(model, x[:200], 0.2, passes=4, target=target,
                                      check=x[200:], update=update,
                                      rng=np.random.default_rng(0))
        assert v.shape == (1, 1, 28, 28) and np.abs(v).max() <= 0.2 + 1e-12
        assert [p for p, _ in history] == list(range(1, len(history) + 1))
        assert len(history) == 4 or history[-1][1] - history[-2][1] < 0.005
        assert all(0 <= r <= 1 for _, r in history)


def test_the_universal_seeds_experiment(cli, checkpoint, tmp_path):
    code, _, err = cli("universal_seeds", "--checkpoint", checkpoint, "--out", tmp_path,
                       "--images", 20, "--eps", 0.2, 0.3, "--seeds", 0, 1, "--passes", 2,
                       "--train-images", 100, "--check-images", 50, "--old-steps", 3,
                       "--old-train-images", 100)
    assert code == 0, err
    report = json.loads((tmp_path / "universal_seeds.json").read_text())
    with open(tmp_path / "universal_seeds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2  # eps x seeds x (new, old); no targets with --checkpoint
    s = next(v for k, v in report["summary"].items() if k.endswith("eps 0.3, passes"))
    assert s["seeds"] == [0, 1] and s["fooling"]["min"] <= s["fooling"]["mean"] <= s[
        "fooling"]["max"]
    assert (tmp_path / "universal_seeds.png").read_bytes().startswith(b"\x89PNG")

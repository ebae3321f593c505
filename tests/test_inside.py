"""Tests for `attack.py visualise`: class visualisations raise their logit, unit stimuli raise
their unit, the judge is trained on the other half only, and a tiny real run writes every
number and figure."""
import json

import numpy as np

from experiments.visualise import class_images, logit_gradient, spearman, unit_stimuli
from nn import Sequential, reference_cnn
from nn.gradcheck import as_float64


def test_class_visualisations_raise_their_logit():
    model = reference_cnn(rng=np.random.default_rng(0)).eval()
    start = np.full((1, 1, 28, 28), 0.5, dtype=np.float32)
    images = class_images(model, start, steps=20)
    before, after = model.forward(np.repeat(start, 10, axis=0)), model.forward(images)
    assert np.all(np.diag(after) > np.diag(before) + 0.1)
    assert images.min() >= 0 and images.max() <= 1
    # the gradient it follows is the logit's: finite differences of z_3 at one pixel (float64)
    model = as_float64(reference_cnn(rng=np.random.default_rng(0))).eval()
    x = np.random.default_rng(1).uniform(0, 1, (1, 1, 28, 28))
    g = logit_gradient(model, x, np.array([3]))[0, 0, 14, 14]
    h = 1e-7
    up, down = x.copy(), x.copy()
    up[0, 0, 14, 14] += h
    down[0, 0, 14, 14] -= h
    assert abs((model.forward(up)[0, 3] - model.forward(down)[0, 3]) / (2 * h) - g) < 1e-6


def test_unit_stimuli_raise_their_unit():
    model = reference_cnn(rng=np.random.default_rng(2)).eval()
    stimuli = unit_stimuli(model, 0, [0, 5], steps=20)
    head = Sequential(*model.layers[:2])  # conv, pool: the unit before its ReLU
    grey = head.forward(np.full((2, 1, 28, 28), 0.5, dtype=np.float32))
    act = head.forward(stimuli)
    assert act[0, 0, 6, 6] > grey[0, 0, 6, 6] and act[1, 5, 6, 6] > grey[1, 5, 6, 6]


def test_rank_correlation():
    a = np.random.default_rng(3).uniform(size=(4, 1, 5, 5))
    assert spearman(a, a) == 1.0 and spearman(a, -a) == -1.0


def test_inside_runs_and_its_judge_never_saw_what_it_judges(cli, checkpoint, tmp_path):
    code, out, err = cli("visualise", "--checkpoint", checkpoint, "--out", tmp_path / "in",
                         "--images", 10, "--steps", 3, "--epochs", 1, "--train-limit", 200,
                         "--test-limit", 20)
    assert code == 0, err
    judge = json.loads((tmp_path / "standard-seed1-t200-e20-half2" / "settings.json").read_text())
    assert judge["train_half"] == 2 and judge["mode"] == "standard"
    r = json.loads((tmp_path / "in" / "inside.json").read_text())
    (m,) = r["models"]
    assert len(m["deletion_salient"]) == len(r["fractions"]) == len(m["deletion_random"])
    assert set(m["judge_targeted"]) == {"l2", "linf"} and -1 <= m["sanity_rank_correlation"] <= 1
    for name in ("saliency", "classes", "units", "targeted", "deletion"):
        assert (tmp_path / "in" / f"{name}.png").read_bytes().startswith(b"\x89PNG")

"""Tests for `attack.py physical`: the destruction rate's bookkeeping on a hand-made case, and
a tiny real run (every attack, every transformation family, the figures)."""
import json
import math

import numpy as np
import pytest

from experiments.common import destruction_rate
from experiments.physical import ATTACKS
from nn.transforms import FAMILIES


def test_destruction_rate_counts_only_successful_adversarial_images():
    clean = np.array([1, 1, 1, 1, 0, 1], dtype=bool)   # image 4 was wrong from the start
    adv = np.array([0, 0, 0, 1, 0, 0], dtype=bool)     # 0, 1, 2, 5 fooled; 3 not
    transformed = np.array([[1, 0, 0, 1, 1, 1],        # two draws of T on the adversarial images
                            [1, 1, 0, 0, 1, 0]], dtype=bool)
    # successful: images 0, 1, 2, 5 in 2 draws = 8; back to correct: 0, 5 | 0, 1 = 4
    assert destruction_rate(clean, adv, transformed) == (0.5, 4, 8)
    assert destruction_rate(clean, adv, transformed[0]) == (0.5, 2, 4)
    rate, destroyed, total = destruction_rate(clean, clean, transformed)
    assert math.isnan(rate) and total == 0


def test_physical_runs_every_attack_under_every_family(cli, checkpoint, tmp_path):
    code, out, err = cli("physical", "--checkpoint", checkpoint, "--out", tmp_path, "--images", 6,
                         "--eps", 0.25, "--draws", 2, "--eot-samples", 2, "--strengths", 0, 1)
    assert code == 0, err
    r = json.loads((tmp_path / "physical.json").read_text())
    rows = r["rows"]
    assert {(x["attack"], x["family"], x["strength"]) for x in rows} == {
        (a, f, s) for a in ("clean", *ATTACKS) for f in FAMILIES for s in (1.0, 1.5)}
    for x in rows:
        if x["attack"] != "clean" and x["successful"]:
            assert x["destruction"] == x["destroyed"] / x["successful"]
            assert x["successful"] % 2 == 0  # two draws each
    assert len(r["rotation_curves"]) == len(ATTACKS)
    assert "destruction by the photo composite" in out
    for name in ("physical.png", "transformations.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_patch_experiment_with_its_controls(cli, checkpoint, tmp_path):
    code, out, err = cli("patch", "--checkpoint", checkpoint, "--out", tmp_path, "--images", 20,
                         "--sides", 4, 8, "--targets", 1, 7, "--steps", 3, "--train-images", 64)
    assert code == 0, err
    rows = json.loads((tmp_path / "patch.json").read_text())["rows"]
    assert [(r["target"], r["side"]) for r in rows] == [(1, 4), (1, 8), (7, 4), (7, 8)]
    for r in rows:
        assert 0 <= r["patch"] <= 1 and 0 <= r["noise"] <= 1 and 0 <= r["natural"] <= 1
        assert r["area"] == r["side"] ** 2 / 784 and r["images"] <= 20
    assert "natural digit" in out
    for name in ("patch.png", "patches.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_shrunk_digits_keep_their_mean():
    from experiments.patch import shrink
    image = np.random.default_rng(0).uniform(0, 1, (28, 28))
    for side in (4, 6, 7, 10):
        small = shrink(image, side)
        assert small.shape == (side, side)
        assert small.mean() == pytest.approx(image.mean())
    np.testing.assert_allclose(shrink(image, 14), image.reshape(14, 2, 14, 2).mean(axis=(1, 3)))


def test_universal_experiment_reports_on_unseen_images_and_transfers(cli, checkpoint,
                                                                     tmp_path):
    code, out, err = cli("universal", "--checkpoint", checkpoint, "--out", tmp_path / "u",
                         "--images", 30, "--eps", 0.3, "--steps", 5, "--train-images", 64,
                         "--epochs", 1, "--train-limit", 200, "--test-limit", 20)
    assert code == 0, err
    rows = json.loads((tmp_path / "u" / "universal.json").read_text())["rows"]
    assert [r["model"] for r in rows][-1] == "standard half 1" and "transfer_fooling" in rows[-1]
    for r in rows:
        assert 0 <= r["fooling"] <= 1 and 0 <= r["noise_fooling"] <= 1
    assert (tmp_path / "u" / "universal.png").read_bytes().startswith(b"\x89PNG")

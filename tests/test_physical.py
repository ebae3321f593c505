"""Tests for `attack.py physical`: the destruction rate's bookkeeping on a hand-made case, and
a tiny real run (every attack, every transformation family, the figures)."""
import json
import math

import numpy as np

from experiments.physical import ATTACKS, destruction_rate
from nn.transforms import FAMILIES
from test_experiments import checkpoint, cli  # noqa: F401  (the fixtures)


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


def test_physical_runs_every_attack_under_every_family(cli, checkpoint, tmp_path):  # noqa: F811
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

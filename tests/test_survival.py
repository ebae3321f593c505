"""Tests for experiments/survival.py: Kurakin's schedule, the margin bins, and one tiny run."""
import csv
import json

import numpy as np

from experiments.survival import ATTACKS, binned, kurakin_iterations


def test_kurakin_iterations():
    # min(eps + 4, 1.25 eps) in grey levels: Kurakin et al. give 20 iterations at eps 16
    assert kurakin_iterations(16 / 255) == 20
    assert kurakin_iterations(2 / 255) == 2
    assert [kurakin_iterations(e) for e in (0.1, 0.2, 0.3)] == [29, 55, 80]


def test_binned_counts_each_image_once():
    margin = np.array([0.5, 1.5, 3.0, 3.5, 20.0])
    destroyed = np.array([2, 1, 0, 1, 0])
    bins = binned(margin, destroyed, draws=2, edges=(0, 1, 2, 4, np.inf))
    assert [n for _, _, n, _ in bins] == [1, 1, 2, 1]
    assert [d for _, _, _, d in bins] == [1.0, 0.5, 0.25, 0.0]
    assert binned(margin, destroyed, 2, edges=(100, np.inf)) == [(100, np.inf, 0, None)]


def test_the_survival_experiment(cli, checkpoint, tmp_path):
    code, _, err = cli("survival", "--checkpoint", checkpoint, "--out", tmp_path, "--images", 6,
                       "--eps", 0.3, "--draws", 2, "--eot-samples", 1)
    assert code == 0, err
    report = json.loads((tmp_path / "survival.json").read_text())
    assert [r["attack"] for r in report["rows"]] == list(ATTACKS)
    with open(tmp_path / "survival_images.csv", newline="") as f:
        images = list(csv.DictReader(f))
    for r in report["rows"]:
        mine = [i for i in images if i["attack"] == r["attack"]]
        assert len(mine) == r["successful"]
        if mine:  # the composite's destruction rate is the images' destroyed draws, pooled
            assert np.isclose(r["photo"], sum(int(i["destroyed"]) for i in mine) / (2 * len(mine)))
            assert all(float(i["margin"]) >= 0 for i in mine)
    assert (tmp_path / "survival.png").read_bytes().startswith(b"\x89PNG")

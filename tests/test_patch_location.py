"""Tests for the pixel-aligned patches of attacks/universal.py and attack.py patch_location."""
import csv
import json

import numpy as np

from attacks.universal import paste_at, per_image_patches, train_patch_at
from data.mnist import load_mnist
from experiments.common import load_model
from nn import predict
from nn.backend import namespace_for


def test_paste_at_replaces_exactly_the_square():
    x = np.random.default_rng(0).uniform(0, 1, (3, 1, 28, 28))
    patch = np.arange(16.0).reshape(4, 4) / 16
    out = paste_at(x, patch, 5, 20)
    np.testing.assert_array_equal(out[:, 0, 5:9, 20:24], np.broadcast_to(patch, (3, 4, 4)))
    outside = np.ones((28, 28), dtype=bool)
    outside[5:9, 20:24] = False
    np.testing.assert_array_equal(out[:, 0][:, outside], x[:, 0][:, outside])


def test_patches_trained_for_a_place_work_there(checkpoint):
    model, _ = load_model(checkpoint, namespace_for("cpu"))
    x, t = load_mnist("train", limit=200)
    patch = train_patch_at(model, x, 3, 10, 9, 9, steps=30, rng=np.random.default_rng(0))
    assert patch.shape == (10, 10) and patch.min() >= 0 and patch.max() <= 1
    rate = np.mean(predict(model, paste_at(x, patch, 9, 9)) == 3)
    noise = np.mean(predict(model, paste_at(x, np.random.default_rng(1).uniform(0, 1, (10, 10)),
                                            9, 9)) == 3)
    assert rate > noise
    image = x[np.flatnonzero(t != 3)[0]]
    places = [(0, 0), (9, 9), (18, 18)]
    ok, patches = per_image_patches(model, image, 3, 10, places, steps=30)
    assert ok.shape == (3,) and patches.shape == (3, 10, 10)
    for k, (r, c) in enumerate(places):  # the reported success is the pasted image's
        assert (predict(model, paste_at(image[None], patches[k], r, c))[0] == 3) == ok[k]


def test_the_patch_location_experiment(cli, checkpoint, tmp_path):
    code, _, err = cli("patch_location", "--checkpoint", checkpoint, "--out", tmp_path,
                       "--images", 12, "--targets", 3, "--side", 8, "--steps", 3,
                       "--train-images", 50, "--per-image", 2, "--per-image-steps", 2,
                       "--stride", 10)
    assert code == 0, err
    report = json.loads((tmp_path / "patch_location.json").read_text())
    assert {np.shape(m) for m in report["maps"].values()} == {(21, 21)}
    with open(tmp_path / "patch_location.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["patch"] for r in rows] == ["random", "centre", "per image"]
    for r, m in zip(rows, report["maps"].values()):
        assert np.isclose(float(r["best_place"]), np.max(m))
    assert (tmp_path / "patch_location.png").read_bytes().startswith(b"\x89PNG")

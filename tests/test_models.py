"""Tests for models/: the shipped models, their manifest and `python -m models.build`.

A tiny model (one epoch on 96 images) is built from scratch into a temporary models folder by
the real build (train, export, measure, manifest); loading checks its SHA-256; attack.py
without --checkpoint attacks the shipped model that --model names. The committed models are
checked against their manifest: size, SHA-256, and the clean accuracy it states.
"""
import json

import numpy as np
import pytest

import models
from attacks import certify
from data.mnist import load_mnist
from experiments.common import load_model
from models import build
from nn import predict
from test_train import SMALL, assert_one_sentence

SHIPPED = {"FOLDER": models.FOLDER, "MANIFEST": models.MANIFEST, "MODELS": models.MODELS}


def test_build_trains_exports_measures_and_writes_the_manifest(tiny, capsys):
    entry = models.manifest()["tiny"]
    path = models.path_of("tiny")
    assert entry["sha256"] == models.sha256(path) and entry["bytes"] == path.stat().st_size
    assert entry["bytes"] < 1_000_000 and entry["file"] == "tiny.safetensors"
    assert entry["command"] == ("python train.py --mode standard --epochs 1 "
                                f"{' '.join(SMALL)} --seed 0 --out {tiny / 'runs' / 'tiny-seed0'}")
    report = json.loads((tiny / "runs" / "tiny-seed0" / "robust.json").read_text())
    assert report["sha256"] == entry["sha256"]
    assert entry["robust"] == report["report"]["robust_acc"] <= entry["pgd20"] <= 1
    assert set(entry["robust_attacks"]) == {"apgd-ce", "apgd-t", "fab-t", "square"}
    assert entry["attack_images"] == 8 and entry["test_images"] == 50 and entry["eps"] == 0.3
    # the shipped file is the checkpoint's model: the same predictions, the accuracy stated
    model, settings, _ = models.load("tiny")
    ckpt_model, _ = load_model(tiny / "runs" / "tiny-seed0" / "checkpoint.npz", np)
    x, t = load_mnist("test", limit=50)
    np.testing.assert_array_equal(predict(model, x), predict(ckpt_model, x))
    assert np.mean(predict(model, x) == t) == pytest.approx(entry["clean"])
    capsys.readouterr()
    assert build.main(["--images", "8"]) == 0  # again: nothing to train, nothing to measure
    out = capsys.readouterr().out
    assert "already has 1 epochs" in out and "unchanged since its last measurement" in out
    assert build.main(["--table"]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith(f"| tiny | 1 | {100 * entry['clean']:.1f} | ")
    assert row.endswith(f"| **{100 * entry['robust']:.1f}** ± {100 * entry['robust_se']:.1f} | "
                        f"{100 * entry['certified']:.1f} |")
    # proven robust (interval bounds) on the same images: a lower bound of the worst case
    x8, t8 = load_mnist("test", limit=8)
    assert entry["certified"] == np.mean(certify(model, x8, t8, 0.3)) <= entry["robust"]


def test_a_changed_file_fails_its_sha256_in_one_sentence(tiny, tmp_path):
    path = models.path_of("tiny")
    good = path.read_bytes()
    try:
        path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        with pytest.raises(models.ModelError) as err:
            models.load("tiny")
        assert str(err.value).count(".") <= 3 and "does not match its SHA-256" in str(err.value)
    finally:
        path.write_bytes(good)
    with pytest.raises(models.ModelError, match="no shipped model 'nine'"):
        models.load("nine")


def test_attack_without_checkpoint_uses_the_shipped_model(tiny, cli, tmp_path):
    code, out, err = cli("fooling", "--model", "tiny", "--out", tmp_path, "--images", 2)
    assert code == 0, err
    assert "training" not in out and (tmp_path / "fooling.json").is_file()
    path = models.path_of("tiny")
    path.rename(path.with_suffix(".bak"))
    try:
        code, out, err = cli("fooling", "--model", "tiny", "--out", tmp_path, "--images", 2)
    finally:
        path.with_suffix(".bak").rename(path)
    assert code == 1
    assert_one_sentence(err.replace("attack.py fooling: error", "train.py: error"),
                        "tiny.safetensors is missing: run python -m models.build")


def test_a_file_that_is_no_export_is_one_sentence(cli, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    code, out, err = cli("gallery", "--checkpoint", bad, "--out", tmp_path / "g", "--images", 2)
    assert code == 1
    assert_one_sentence(err.replace("attack.py gallery: error", "train.py: error"),
                        "bad.safetensors is not a readable export of the reference CNN")


def test_the_committed_models_match_their_manifest(monkeypatch):
    """Every model the manifest lists: its file, under 1 MB, matches its SHA-256 (models.load
    checks it), was made by the command it names, and reads the first 1,000 test images about
    as accurately as the manifest says of all 10,000."""
    for name, value in SHIPPED.items():  # the real folder, whatever `tiny` has patched
        monkeypatch.setattr(models, name, value)
    entries = models.manifest()
    assert entries, "no shipped model: run python -m models.build"
    x, t = load_mnist("test", limit=1000)
    for name, entry in entries.items():
        model, settings, _ = models.load(name)
        assert entry["bytes"] < 1_000_000 and settings["mode"] == name
        assert entry["command"].startswith("python train.py " + " ".join(models.MODELS[name][1]))
        assert entry["certified"] <= entry["robust"] <= entry["pgd20"] <= entry["clean"]
        # the first 1,000 test images are easier than the rest, by about a point here
        assert abs(np.mean(predict(model, x) == t) - entry["clean"]) < 0.015, name

"""Tests for attack.py's gallery, curve, targeted and fooling experiments, for train.py's
--pgd-images, --train-half and PGD training flags, and for every --help. Everything runs
in-process on a CNN trained for one epoch on 96 images, with a handful of test images per
experiment."""
import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import attack
import train
from data.mnist import load_mnist
from test_train import PNG, SMALL, assert_one_sentence, read_rows
from training import classifier


def test_gallery(cli, checkpoint, tmp_path):
    code, out, err = cli("gallery", "--checkpoint", checkpoint, "--out", tmp_path, "--images", 3,
                         "--steps", 2)
    assert code == 0, err
    for name in ("fgs", "fgv", "pgd", "targeted"):
        assert (tmp_path / f"gallery-{name}.png").read_bytes().startswith(PNG)
    report = json.loads((tmp_path / "gallery.json").read_text())
    assert report["clean_pred"] == report["labels"]  # only correctly classified images
    for name, r in report["attacks"].items():
        assert len(r["pred"]) == len(r["conf"]) == 3
        assert max(r["linf"]) <= (0.6 if name == "fgv" else 0.3) + 1e-6
    assert report["attacks"]["targeted"]["target"] == [(t + 1) % 10 for t in report["labels"]]


def test_curve(cli, checkpoint, tmp_path):
    code, out, err = cli("curve", "--checkpoint", checkpoint, "--compare", checkpoint,
                         "--out", tmp_path, "--images", 20, "--eps", 0, 0.1, 0.3, "--steps", 2)
    assert code == 0, err
    assert (tmp_path / "curve.png").read_bytes().startswith(PNG)
    with open(tmp_path / "curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["eps"]) for r in rows] == [0, 0.1, 0.3] * 2
    for r in rows:
        if float(r["eps"]) == 0:  # no attack: everything is the clean accuracy
            assert float(r["fgs_acc"]) == float(r["pgd_acc"]) == float(r["clean_acc"])
        assert 0 <= float(r["pgd_acc"]) <= float(r["clean_acc"])
    assert [r[k] for r in rows[:3] for k in ("fgs_acc", "pgd_acc")] == \
        [r[k] for r in rows[3:] for k in ("fgs_acc", "pgd_acc")]  # same model, same seed


def test_targeted(cli, checkpoint, tmp_path):
    code, out, err = cli("targeted", "--checkpoint", checkpoint, "--out", tmp_path,
                         "--images", 4, "--steps", 2, "--searches", 2)
    assert code == 0, err
    summary = json.loads((tmp_path / "targeted.json").read_text())
    with open(tmp_path / "targeted.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert summary["attacks"] == len(rows) == 4 * 9
    assert sum(s["attacks"] for s in summary["per_target"].values()) == 4 * 9
    assert all(r["label"] != r["target"] for r in rows)
    found = [r for r in rows if r["found"] == "True"]
    assert summary["found_within_1"] == pytest.approx(len(found) / len(rows))
    for r in found:
        assert float(r["linf"]) <= float(r["smallest_eps"]) + 1e-6
    assert (tmp_path / "targeted-grid.png").read_bytes().startswith(PNG)


def test_fooling(cli, checkpoint, tmp_path):
    code, out, err = cli("fooling", "--checkpoint", checkpoint, "--out", tmp_path,
                         "--images", 12, "--show", 2)
    assert code == 0, err
    r = json.loads((tmp_path / "fooling.json").read_text())
    assert len(r["per_class_rate"]) == 10 and sum(r["noise_predicted_as"]) == 12
    assert r["fooling_rate"] == pytest.approx(np.mean(r["per_class_rate"]))
    assert "fooling images are classified as their target" in out
    assert (tmp_path / "fooling.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize("argv, fragment", [
    (("gallery", "--checkpoint", "missing.npz"), "no checkpoint file at missing.npz"),
    (("curve", "--compare", "{bad}"), "is not a checkpoint"),
])
def test_bad_checkpoint_is_one_sentence(cli, checkpoint, tmp_path, argv, fragment):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a checkpoint")
    argv = [str(a).replace("{bad}", str(bad)) for a in argv]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", checkpoint]
    code, out, err = cli(*argv, "--out", tmp_path / "out", "--images", 2)
    assert code == 1
    assert_one_sentence(err.replace(f"attack.py {argv[0]}: error", "train.py: error"), fragment)


def _npy(path):
    np.save(path.with_suffix(".npy"), np.zeros(3))
    path.with_suffix(".npy").rename(path)


def _zip_of_text(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")


def _objects(path):
    np.savez(path, __meta__=np.array("{}"), model=np.array([{"a": 1}], dtype=object))


def _cut(path, checkpoint):
    path.write_bytes(Path(checkpoint).read_bytes()[:3000])


@pytest.mark.parametrize("make, fragment", [
    (lambda p, c: p.write_text("not a checkpoint"), "is not a checkpoint: train.py writes"),
    (lambda p, c: p.write_bytes(bytes(range(256)) * 8), "is not a checkpoint: train.py writes"),
    (lambda p, c: _npy(p), "is not a checkpoint: train.py writes"),
    (lambda p, c: _zip_of_text(p), "is not a checkpoint: train.py writes"),
    (lambda p, c: _objects(p), "holds Python objects"),
    (lambda p, c: _cut(p, c), "is not a readable checkpoint: the file is cut short"),
], ids=["text", "bytes", "npy", "zip", "pickled", "cut"])
def test_a_file_that_is_not_a_checkpoint_is_one_sentence(cli, checkpoint, tmp_path, make,
                                                         fragment):
    """--checkpoint on anything but train.py's checkpoint.npz: one sentence that names the file
    and says what a checkpoint is, never NumPy's advice to load pickles, never a traceback."""
    bad = tmp_path / "bad.npz"
    make(bad, checkpoint)
    code, out, err = cli("curve", "--checkpoint", bad, "--out", tmp_path / "out", "--images", 2)
    assert code == 1 and err.startswith(f"attack.py curve: error: {bad} ") and fragment in err
    assert err.count("\n") == 1 and "pickle" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("argv", [("curve", "--eps", "2"), ("targeted", "--eps", "0"),
                                  ("gallery", "--images", "0"), ("nonsense",),
                                  ("fooling", "--alpha", "x")])
def test_bad_flag_is_an_argparse_error(cli, argv):
    code, out, err = cli(*argv)
    assert code == 2 and "error:" in err and "Traceback" not in err


def test_train_measures_pgd_without_changing_training(cli, tmp_path):
    plain, with_pgd = tmp_path / "plain", tmp_path / "pgd"
    assert cli(*SMALL, "--epochs", 2, "--out", plain, main=train.main)[0] == 0
    code, out, err = cli(*SMALL, "--epochs", 2, "--out", with_pgd, "--pgd-images", 10,
                         "--pgd-steps", 2, main=train.main)
    assert code == 0, err
    assert "PGD" in out
    a, b = read_rows(plain), read_rows(with_pgd)
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    for row in b:
        assert int(row["pgd_n_correct"]) <= 10
        assert 0 <= float(row["pgd_acc"]) <= 1 and 0 <= float(row["pgd_robust_acc"]) <= 1
    code, out, err = cli(*SMALL, "--epochs", 3, "--out", with_pgd, "--resume", main=train.main)
    assert code == 1 and "--pgd-images None (now" not in err and "--pgd-images 10" in err


@pytest.mark.parametrize("argv, message", [
    (("--pgd-steps", 3), "--pgd-steps needs --pgd-images"),
    (("--pgd-train-steps", 3), "--pgd-train-steps needs --mode pgd"),
    (("--mode", "adversarial", "--pgd-train-steps", 3), "--pgd-train-steps needs --mode pgd"),
    (("--pgd-warmup", 2), "--pgd-warmup needs --mode pgd"),
    (("--mode", "pgd", "--pgd-warmup", -1), "expected a number in [0, inf)"),
])
def test_pgd_flags_need_their_partner(cli, tmp_path, argv, message):
    code, out, err = cli(*argv, "--out", tmp_path, main=train.main)
    assert code == 2 and message in err


def test_pgd_training_settings(cli, tmp_path):
    assert train.parse_args(["--mode", "pgd"]).pgd_train_steps == 7
    assert train.parse_args(["--mode", "standard"]).pgd_train_steps is None  # old runs resume
    code, out, err = cli(*SMALL, "--mode", "pgd", "--pgd-train-steps", 2, "--epochs", 1,
                         "--out", tmp_path, main=train.main)
    assert code == 0, err
    assert json.loads((tmp_path / "settings.json").read_text())["pgd_train_steps"] == 2


@pytest.mark.parametrize("warmup, expected", [
    (1, [0.0, 0.1, 0.2, 0.3, 0.3, 0.3]),   # 3 batches an epoch: eps grows over the first epoch
    (0, [0.3] * 6),
    (4, [0.0, 0.025, 0.05, 0.075, 0.1, 0.125]),
])
def test_pgd_training_warms_eps_up(cli, tmp_path, monkeypatch, warmup, expected):
    seen = []

    def recording(model, optimizer, x, t, eps, steps, rng):
        seen.append(eps)
        return classifier.standard_step(model, optimizer, x, t)
    monkeypatch.setattr(classifier, "pgd_step", recording)
    code, out, err = cli(*SMALL, "--mode", "pgd", "--pgd-warmup", warmup, "--epochs", 2,
                         "--out", tmp_path, main=train.main)
    assert code == 0, err
    assert seen == pytest.approx(expected)


def test_train_halves_are_disjoint(cli, tmp_path, monkeypatch):
    seen = {}
    epoch = classifier.train_epoch

    def recording(model, optimizer, step, images, labels, *args, **kwargs):
        seen[len(seen) + 1] = images
        return epoch(model, optimizer, step, images, labels, *args, **kwargs)
    monkeypatch.setattr(classifier, "train_epoch", recording)
    for half in (1, 2):
        code, out, err = cli(*SMALL, "--epochs", 1, "--train-half", half,
                             "--out", tmp_path / str(half), main=train.main)
        assert code == 0, err
        assert "on 48 images" in out
    images = load_mnist("train", limit=96)[0]
    np.testing.assert_array_equal(seen[1], images[:48])
    np.testing.assert_array_equal(seen[2], images[48:])
    assert train.parse_args(["--train-half", "2"]).out.name == "standard-seed0-half2"


@pytest.mark.parametrize("argv", [["gallery"], ["curve"], ["targeted"], ["fooling"], ["transfer"],
                                  ["blackbox"], ["autoencoder"]])
def test_every_help_gives_defaults_but_never_none(cli, argv):
    code, out, err = cli(*argv, "--help")
    assert code == 0 and f"(default: runs/attack-{argv[0]})" in out
    assert "None" not in out


@pytest.mark.parametrize("name", list(attack.EXPERIMENTS))
def test_every_help_opens_with_whole_sentences(cli, name):
    """The description under the usage is the experiment's first paragraph, whole: `attack.py
    robust --help` used to stop at "per image, the worst case over"."""
    code, out, err = cli(name, "--help")
    description = " ".join(out.split("\n\n")[1].split())
    assert code == 0 and description[-1] in ".?)", description
    if name == "robust":
        assert description.endswith("over APGD-CE, APGD-T, FAB-T and Square, attack for attack "
                                     "and with AutoAttack's settings."), description


@pytest.mark.parametrize("name, old", [("hopskipjump", "decision"), ("visualise", "inside")])
def test_renamed_experiments_still_answer_to_their_old_names(name, old):
    new, alias = attack.parse_args([name]), attack.parse_args([old])
    assert alias.run is new.run and alias.out == new.out == Path("runs") / f"attack-{name}"


def test_train_help_gives_defaults_but_never_none(cli):
    code, out, err = cli("--help", main=train.main)
    assert code == 0 and "(default: 0.3)" in out and "None" not in out


def test_fashion_mnist_needs_a_checkpoint(cli):
    code, out, err = cli("gallery", "--dataset", "fashion-mnist", "--images", 2)
    assert code == 1
    assert_one_sentence(err.replace("attack.py gallery: error", "train.py: error"),
                        "the shipped models are trained on MNIST: give --checkpoint")

"""Tests for `attack.py transfer`: a tiny in-process run and its one-sentence errors.

The run trains four tiny networks (standard and adversarial, each on one half of 200 training
images) next to its --out folder; the test recomputes one source's FGS images by hand to check
that rows are sources, columns targets, and the diagonal the white-box attack.
"""
import json

import numpy as np
import pytest
from array_api_compat import numpy as xnp

import attack
from attacks import fgs
from data.mnist import load_mnist
from experiments.common import load_model
from nn import predict

TINY = ["--train-limit", "200", "--test-limit", "20", "--epochs", "1", "--images", "20",
        "--steps", "2"]


def test_transfer_cli_writes_matrices(tmp_path, capsys):
    out = tmp_path / "out"
    assert attack.main(["transfer", "--out", str(out), *TINY]) == 0
    assert "crafted on adversarial half 2" in capsys.readouterr().out
    for name in ("transfer.csv", "transfer.json", "transfer.png"):
        assert (out / name).stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # train.py's names, next to --out
        "adversarial-seed0-t200-e20-half1", "adversarial-seed1-t200-e20-half2", "out",
        "standard-seed0-t200-e20-half1", "standard-seed1-t200-e20-half2"]
    result = json.loads((out / "transfer.json").read_text())
    nets = result["networks"]
    assert [n["name"] for n in nets] == ["standard half 1", "standard half 2",
                                         "adversarial half 1", "adversarial half 2"]
    for attack_name in ("fgs", "pgd"):
        matrix = np.array(result["accuracy"][attack_name])
        assert matrix.shape == (4, 4) and np.all((matrix >= 0) & (matrix <= 1))

    # row 1 (source: standard half 2) by hand: FGS on that network, every network tested
    images, labels = load_mnist("test", limit=20)
    models = [load_model(n["checkpoint"], xnp)[0] for n in nets]
    x_adv = fgs(models[1], images, labels, 0.3)
    expected = [np.mean(predict(m, x_adv) == labels) for m in models]
    np.testing.assert_allclose(result["accuracy"]["fgs"][1], expected)
    clean = [np.mean(predict(m, images) == labels) for m in models]
    np.testing.assert_allclose([n["clean_acc"] for n in nets], clean)


def test_transfer_training_failure_is_one_sentence(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert attack.main(["transfer", "--out", str(tmp_path / "out"),
                        "--runs", str(tmp_path / "file"), *TINY]) == 1
    err = capsys.readouterr().err
    assert "training the model failed" in err and err.count("\n") == 1


def test_transfer_bad_flag_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        attack.main(["transfer", "--out", str(tmp_path), "--modes", "robust"])
    assert exc.value.code == 2 and "--modes" in capsys.readouterr().err


def test_transferred_pgd_is_the_last_iterate(tmp_path, monkeypatch):
    """The first iterate that fools the source sits just past its boundary and transfers worst:
    the crafted PGD images are the last iterates (keep_first=False)."""
    import experiments.transfer as transfer
    real, seen = transfer.pgd, []
    monkeypatch.setattr(transfer, "pgd", lambda *a, **k: seen.append(k["keep_first"])
                        or real(*a, **k))
    assert attack.main(["transfer", "--out", str(tmp_path / "out"), *TINY]) == 0
    assert seen and not any(seen)

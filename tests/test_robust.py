"""Tests for `attack.py robust`: the worst case over AutoAttack's standard attacks (APGD-CE,
APGD-T, FAB-T, Square), with FGS and PGD in front on request.

In-process runs on CNNs trained for one epoch on 96 images (one with BatchNorm and --alpha
0.2), a handful of test images and few steps and queries: the cascade (each attack sees exactly
the images no attack before it broke), PGD alone on every correctly classified image, the
report's counts, the CSV, the figure, eps from the checkpoint, and the one-sentence errors.
"""
import csv
import json

import numpy as np
import pytest

import attack
from experiments import robust
from nn.checkpoint import load_checkpoint, save_checkpoint
from test_train import PNG, assert_one_sentence

QUICK = ("--images", 24, "--pgd-steps", 3, "--apgd-steps", 4, "--targets", 2,
         "--square-queries", 20, "--fab-steps", 3)


@pytest.fixture
def recorded(monkeypatch):
    """(attack name, test-image indices it was given) of every call of an attack, in order."""
    calls = []
    make = robust.make_attacks

    def recording(args, eps, oracle):
        def wrap(name, attack):
            def run(model, x, t, rng, ids):
                calls.append((name, list(ids)))
                return attack(model, x, t, rng, ids)
            return run
        return {name: wrap(name, attack) for name, attack in make(args, eps, oracle).items()}
    monkeypatch.setattr(robust, "make_attacks", recording)
    return calls


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_robust_runs_the_attacks_in_turn_on_the_images_still_robust(cli, checkpoints, tmp_path,
                                                                     recorded):
    code, out, err = cli("robust", "--checkpoint", checkpoints["plain"], "--out", tmp_path,
                         "--eps", 0.02, "--attacks", *robust.ATTACKS, *QUICK)
    assert code == 0, err
    rows = read_csv(tmp_path / "robust.csv")
    assert [int(r["index"]) for r in rows] == list(range(24))
    broken_by = np.array([r["broken_by"] for r in rows])
    wrong = np.array([r["label"] != r["clean_prediction"] for r in rows])
    np.testing.assert_array_equal(broken_by == "clean", wrong)
    # every attack was given exactly the images that were still robust when its turn came
    # (here at least one each), then PGD alone every correctly classified image
    expected, done = [], ["clean"]
    for name in robust.ATTACKS:
        expected.append((name, list(np.flatnonzero(~np.isin(broken_by, done)))))
        done.append(name)
    expected.append(("pgd", list(np.flatnonzero(~wrong))))
    assert recorded == expected and all(ids for _, ids in recorded)

    report = json.loads((tmp_path / "results.json").read_text())
    (model,) = report["models"]
    assert report["settings"]["attacks"] == list(robust.ATTACKS) and model["eps"] == 0.02
    assert report["settings"]["deviations"][0] == "attacks FGS, PGD, APGD-CE, APGD-T, FAB-T, Square"
    assert out.startswith("AutoAttack's standard version, with these deviations: attacks FGS")
    n, n_correct = model["n"], model["n_correct"]
    assert n == 24 and n_correct == int(np.sum(~wrong))
    still = n_correct
    for stage in model["attacks"]:
        assert stage["attacked"] == still
        assert stage["broke_first"] == int(np.sum(broken_by == stage["attack"]))
        still -= stage["broke_first"]
        assert stage["robust_acc"] == pytest.approx(still / n)
        assert stage["robust_acc_of_correct"] == pytest.approx(still / n_correct)
        assert stage["robust_acc_se"] == pytest.approx(np.sqrt(still / n * (1 - still / n) / n))
        assert stage["max_linf"] <= 0.02 + 1e-6 and stage["seconds"] >= 0
        assert f"{robust.NAMES[stage['attack']]:8s} broke {stage['broke_first']} of" in out
    assert model["robust_acc"] == pytest.approx(still / n) == pytest.approx(
        np.mean(broken_by == "none"))
    assert model["robust_acc"] <= model["pgd_alone"]["robust_acc"] <= model["clean_acc"]
    assert 0 < model["square_queries"] <= 20 * model["attacks"][-1]["attacked"]
    assert (tmp_path / "robust.png").read_bytes().startswith(PNG)


def test_robust_compares_models_each_at_its_own_eps(cli, checkpoints, tmp_path):
    code, out, err = cli("robust", "--checkpoint", checkpoints["plain"], "--compare",
                         checkpoints["bn"], "--out", tmp_path, "--attacks", "pgd", "square",
                         *QUICK)
    assert code == 0, err
    models = json.loads((tmp_path / "results.json").read_text())["models"]
    assert [m["eps"] for m in models] == [0.3, 0.2]  # each checkpoint's --alpha
    assert [m["label"] for m in models] == ["standard", "standard, BN"]
    for m in models:
        assert [s["attack"] for s in m["attacks"]] == ["pgd", "square"]
        assert m["robust_acc"] <= m["attacks"][0]["robust_acc"] <= m["clean_acc"]
    rows = read_csv(tmp_path / "robust.csv")
    assert len(rows) == 48 and {r["model"] for r in rows} == {"standard", "standard, BN"}
    assert {r["broken_by"] for r in rows} <= {"clean", "pgd", "square", "none"}
    assert out.count("PGD      broke") == 2


def test_restarts_run_again_on_the_images_still_robust(cli, checkpoints, tmp_path, recorded):
    code, out, err = cli("robust", "--checkpoint", checkpoints["plain"], "--out", tmp_path,
                         "--eps", 0.02, "--attacks", "apgd-ce", "square", "--restarts", 2,
                         *QUICK)
    assert code == 0, err
    broken_by = np.array([r["broken_by"] for r in read_csv(tmp_path / "robust.csv")])
    first, second = recorded[0][1], recorded[1][1]
    assert [name for name, _ in recorded] == ["apgd-ce", "apgd-ce", "square", "pgd"]
    assert first == list(np.flatnonzero(broken_by != "clean"))
    assert set(second) <= set(first) and recorded[2][1] == list(np.flatnonzero(
        ~np.isin(broken_by, ["clean", "apgd-ce"])))


def test_a_checkpoint_without_alpha_needs_eps(cli, checkpoints, tmp_path):
    arrays, meta = load_checkpoint(checkpoints["plain"])
    del meta["settings"]["alpha"]
    save_checkpoint(tmp_path / "old.npz", arrays, meta)
    code, out, err = cli("robust", "--checkpoint", tmp_path / "old.npz", "--out", tmp_path,
                         *QUICK)
    assert code == 1
    assert_one_sentence(err.replace("attack.py robust: error", "train.py: error"),
                        "has no --alpha in its settings: give --eps")


@pytest.mark.parametrize("argv", [("--eps", "1.5"), ("--attacks", "fab"),
                                  ("--square-p-init", "0"), ("--targets", "0")])
def test_bad_robust_flag_is_an_argparse_error(cli, argv):
    code, out, err = cli("robust", *argv)
    assert code == 2 and "error:" in err and "Traceback" not in err


def test_robust_help_gives_autoattacks_defaults(cli):
    code, out, err = cli("robust", "--help")
    assert code == 0 and "None" not in out
    for flag, default in (("--apgd-steps", 100), ("--targets", 9), ("--square-queries", 5000),
                          ("--square-p-init", 0.8), ("--pgd-steps", 20), ("--restarts", 1),
                          ("--fab-steps", 100), ("--square-schedule", "autoattack"),
                          ("--apgd-halving", "autoattack"),
                          ("--attacks", "['apgd-ce', 'apgd-t', 'fab-t', 'square']")):
        assert flag in out and f"(default: {default})" in " ".join(out.split())


def test_deviations_from_the_standard_version_are_named():
    args = attack.parse_args(["robust"])
    assert robust.deviations(args) == []
    args = attack.parse_args(["robust", "--square-schedule", "rescaled", "--apgd-halving", "paper",
                              "--attacks", "pgd", "apgd-ce", "--targets", "3"])
    assert robust.deviations(args) == [
        "attacks PGD, APGD-CE", "--targets 3 (AutoAttack: 9)",
        "--square-schedule rescaled (AutoAttack: autoattack)",
        "--apgd-halving paper (AutoAttack: autoattack)"]

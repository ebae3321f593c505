"""Tests for the GAN (issue 6): the losses and their gradients, Adam's update, the two alternating
steps, the Frechet distance, and train_gan.py (smoke runs for both costs, resume, bad flags).

The command line runs in-process on tiny runs (256 or 128 training images, 200 or 100 scored
samples) scored by a reference CNN trained here for one pass over 256 images.
"""
import csv
import json
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gan.classifier
import gan.run
import train_gan
from attacks import standard_step
from data.mnist import load_mnist
from gan import (
    discriminator,
    discriminator_step,
    frechet_distance,
    generator,
    generator_loss,
    generator_step,
)
from gan.classifier import load_classifier
from gan.fid import class_fractions, coverage, features_and_classes
from nn import SGD, Adam, reference_cnn
from nn.backend import namespace_for
from nn.checkpoint import load_checkpoint, save_checkpoint
from nn.gradcheck import as_float64, numerical_gradient, rel_error
from nn.losses import bce_with_logits
from nn.optim import add_grads
from tests.helpers import assert_like

PNG = b"\x89PNG\r\n\x1a\n"


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# --- losses ------------------------------------------------------------------------------------

LOSSES = {
    "bce": lambda z, t: bce_with_logits(z, t),
    "minimax": lambda z, t: generator_loss(z, "minimax"),
    "nonsaturating": lambda z, t: generator_loss(z, "nonsaturating"),
}


def direct(name, z, t):
    """The costs written as in the lecture, straight from sigmoid (float64, moderate z only)."""
    s = sigmoid(z)
    if name == "bce":
        return np.mean(-t * np.log(s) - (1 - t) * np.log(1 - s))
    if name == "minimax":
        return np.mean(np.log(1 - s))
    return np.mean(-np.log(s))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("shape", [(7, 1), (7,)])
def test_loss_gradient_matches_finite_differences(name, shape):
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, size=shape)
    t = rng.uniform(0, 1, size=shape)
    loss, dz = LOSSES[name](z, t)
    assert dz.shape == z.shape
    numeric = numerical_gradient(lambda: np.asarray(LOSSES[name](z, t)[0]), z, 1.0)
    assert rel_error(numeric, dz) < 1e-7


@pytest.mark.parametrize("name", LOSSES)
@given(n=st.integers(1, 40), scale=st.floats(0.1, 30.0), seed=st.integers(0, 2**16))
def test_loss_directional_derivative(name, n, scale, seed):
    """(L(z + eps v) - L(z - eps v)) / 2 eps equals <dL/dz, v> for random logits, targets, v."""
    rng = np.random.default_rng(seed)
    z, t = rng.normal(0, scale, size=(n, 1)), rng.uniform(0, 1, size=(n, 1))
    v = rng.normal(size=(n, 1))
    _, dz = LOSSES[name](z, t)
    eps = 1e-6
    plus, minus = LOSSES[name](z + eps * v, t)[0], LOSSES[name](z - eps * v, t)[0]
    numeric = (float(plus) - float(minus)) / (2 * eps)
    assert numeric == pytest.approx(float(np.sum(dz * v)), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_values_match_the_direct_formulas(name):
    rng = np.random.default_rng(2)
    z = rng.normal(0, 4, size=(50, 1))
    t = rng.uniform(0, 1, size=(50, 1))
    loss, _ = LOSSES[name](z, t)
    np.testing.assert_allclose(float(loss), direct(name, z, t), rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_are_finite_and_exact_for_huge_logits(dtype):
    """Where the direct formulas overflow or take log(0), the stable ones give the limits."""
    z = np.array([[-1000.0], [-60.0], [60.0], [1000.0]], dtype=dtype)
    # exp(-|z|) may underflow to 0 (harmless, silent by default); nothing may overflow
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        results = {name: LOSSES[name](z, t) for name, t in
                   (("bce", np.array([[1.0], [0.0], [1.0], [0.0]], dtype=dtype)),
                    ("minimax", None), ("nonsaturating", None))}
        real1, _ = bce_with_logits(z, 1.0)
        fake0, _ = bce_with_logits(z, 0.0)
    for loss, dz in results.values():
        assert np.isfinite(loss) and np.all(np.isfinite(dz)) and dz.dtype == dtype
    # per sample, softplus(z) = max(z, 0) up to exp(-60) ~ 1e-26
    np.testing.assert_allclose(float(results["bce"][0]), (1000 + 0 + 0 + 1000) / 4, rtol=1e-6)
    np.testing.assert_allclose(float(real1), (1000 + 60) / 4, rtol=1e-6)
    np.testing.assert_allclose(float(fake0), (60 + 1000) / 4, rtol=1e-6)
    np.testing.assert_allclose(float(results["minimax"][0]), -(60 + 1000) / 4, rtol=1e-6)
    np.testing.assert_allclose(float(results["nonsaturating"][0]), (1000 + 60) / 4, rtol=1e-6)
    # the minimax cost saturates where D rejects the samples; the non-saturating one does not
    np.testing.assert_allclose(results["minimax"][1][:, 0], [0, 0, -0.25, -0.25], atol=1e-12)
    np.testing.assert_allclose(results["nonsaturating"][1][:, 0], [-0.25, -0.25, 0, 0],
                               atol=1e-12)


def test_unknown_generator_loss_is_refused():
    with pytest.raises(ValueError, match="unknown generator loss"):
        generator_loss(np.zeros((2, 1)), "wasserstein")


@pytest.mark.parametrize("name", LOSSES)
def test_losses_on_every_backend(xp, name):
    rng = np.random.default_rng(3)
    z, t = rng.normal(0, 5, size=(6, 1)), rng.uniform(0, 1, size=(6, 1))
    ref_loss, ref_dz = LOSSES[name](z, t)
    zx = xp.asarray(z.astype(np.float32))
    tx = xp.asarray(t.astype(np.float32))
    loss, dz = LOSSES[name](zx, tx)
    assert_like(loss, np.asarray(ref_loss), zx)
    assert_like(dz, ref_dz, zx)


# --- Adam --------------------------------------------------------------------------------------

def test_adam_one_and_three_steps_follow_the_formula():
    lr, b1, b2, eps = 0.1, 0.5, 0.999, 1e-8
    p0 = np.array([1.0, -2.0, 0.5])
    gs = [np.array([0.3, -1.0, 0.0]), np.array([-0.2, 2.0, 1e-3]), np.array([0.5, 0.5, -4.0])]
    p = {"w": p0.copy()}
    opt = Adam(lr, betas=(b1, b2), eps=eps)
    # step 1 by hand: m = (1-b1) g, v = (1-b2) g^2, m_hat = g, v_hat = g^2
    opt.step(p, {"w": gs[0]})
    np.testing.assert_allclose(p["w"], p0 - lr * gs[0] / (np.abs(gs[0]) + eps), rtol=1e-12)
    for g in gs[1:]:
        opt.step(p, {"w": g})
    m = (1 - b1) * (b1 ** 2 * gs[0] + b1 * gs[1] + gs[2])
    v = (1 - b2) * (b2 ** 2 * gs[0] ** 2 + b2 * gs[1] ** 2 + gs[2] ** 2)
    m_hat, v_hat = m / (1 - b1 ** 3), v / (1 - b2 ** 3)
    expected = (p0 - lr * gs[0] / (np.abs(gs[0]) + eps)
                - lr * (b1 * gs[0] + gs[1]) * (1 - b1) / (1 - b1 ** 2)
                / (np.sqrt((1 - b2) * (b2 * gs[0] ** 2 + gs[1] ** 2) / (1 - b2 ** 2)) + eps)
                - lr * m_hat / (np.sqrt(v_hat) + eps))
    np.testing.assert_allclose(p["w"], expected, rtol=1e-12)
    assert opt.t == 3


def test_adam_state_round_trip_continues_identically():
    rng = np.random.default_rng(4)
    grads = [{"w": rng.standard_normal(5)} for _ in range(4)]
    a, b = {"w": np.ones(5)}, {"w": np.ones(5)}
    opt_a = Adam(0.01, betas=(0.5, 0.999))
    for g in grads[:2]:
        opt_a.step(a, g)
    opt_b = Adam(0.01, betas=(0.5, 0.999))
    b["w"][:] = a["w"]
    opt_b.load_state_dict(opt_a.state_dict(), like=b)
    for g in grads[2:]:
        opt_a.step(a, g)
        opt_b.step(b, g)
    np.testing.assert_array_equal(a["w"], b["w"])


# --- the alternating steps ---------------------------------------------------------------------

class Recorder:
    """An optimizer that records the gradients it is given and changes nothing."""

    def __init__(self):
        self.grads = None

    def step(self, params, grads):
        assert set(grads) == set(params)
        self.grads = grads


def _nets(z_dim=8):
    rng = np.random.default_rng(5)
    return as_float64(generator(z_dim, rng=rng)), as_float64(discriminator(rng=rng)), rng


@pytest.mark.parametrize("kind", ["minimax", "nonsaturating"])
def test_generator_step_passes_the_gradient_chained_through_D(kind):
    G, D, rng = _nets()
    z = rng.standard_normal((6, 8))
    d_before = D.state_dict()
    # by hand: G(z), D's logits, the cost, back through D to G(z), then through G
    fake = G.forward(z)
    loss, dlogits = generator_loss(D.forward(fake), kind)
    dfake, _ = D.backward(dlogits)
    _, expected = G.backward(dfake)
    rec = Recorder()
    step = generator_step(G, D, rec, z, kind)
    assert set(rec.grads) == set(G.params)
    for k in expected:
        np.testing.assert_array_equal(rec.grads[k], expected[k])
    assert step.loss == pytest.approx(float(loss))
    norms = np.linalg.norm(6 * dfake, axis=1)
    assert step.grad_norm == pytest.approx(float(np.mean(norms)), rel=1e-12)
    assert step.d_fake == pytest.approx(float(np.mean(sigmoid(D.forward(fake)))), rel=1e-12)
    for k, v in D.state_dict().items():  # D is not touched
        np.testing.assert_array_equal(v, d_before[k])


def test_discriminator_step_sums_the_real_and_fake_gradients():
    G, D, rng = _nets()
    x = rng.uniform(0, 1, size=(5, 1, 28, 28))
    z = rng.standard_normal((4, 8))
    g_before = G.state_dict()
    real_loss, dreal = bce_with_logits(D.forward(x), 1.0)
    _, real_grads = D.backward(dreal)
    fake = G.forward(z)
    fake_loss, dfake = bce_with_logits(D.forward(fake), 0.0)
    _, fake_grads = D.backward(dfake)
    expected = add_grads(real_grads, fake_grads)
    rec = Recorder()
    step = discriminator_step(G, D, rec, x, z)
    for k in expected:
        np.testing.assert_allclose(rec.grads[k], expected[k], rtol=1e-12, atol=1e-15)
    assert step.loss == pytest.approx(float(real_loss + fake_loss), rel=1e-12)
    for k, v in G.state_dict().items():
        np.testing.assert_array_equal(v, g_before[k])


def test_generator_output_is_an_image_in_unit_range():
    G = generator(16, rng=np.random.default_rng(0))
    out = G.forward(np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32))
    assert out.shape == (3, 784) and out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))
    D = discriminator(rng=np.random.default_rng(0))
    assert D.forward(np.reshape(out, (3, 1, 28, 28))).shape == (3, 1)


# --- Frechet distance and class coverage -------------------------------------------------------

def _exact_gaussian(rng, n, mean, cov_sqrt):
    """n samples whose sample mean is exactly `mean` and sample covariance cov_sqrt @ cov_sqrt.T."""
    x = rng.standard_normal((n, len(mean)))
    x -= x.mean(axis=0)
    x = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T
    return x @ cov_sqrt.T + mean


def test_frechet_distance_of_identical_features_is_zero():
    f = np.random.default_rng(6).standard_normal((300, 20))
    assert abs(frechet_distance(f, f)) < 1e-9


def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form():
    rng = np.random.default_rng(7)
    m1, m2 = np.array([0.0, 1.0, -2.0, 3.0]), np.array([1.0, 1.0, 0.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([2.0, 1.0, 0.25, 9.0])
    f1 = _exact_gaussian(rng, 400, m1, np.diag(np.sqrt(s1)))
    f2 = _exact_gaussian(rng, 500, m2, np.diag(np.sqrt(s2)))
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(f1, f2) == pytest.approx(expected, rel=1e-9)
    # a rotation of both feature sets changes nothing
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    assert frechet_distance(f1 @ q, f2 @ q) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_handles_rank_deficient_covariances():
    """Fewer samples than features: singular covariances, tiny negative eigenvalues clipped."""
    rng = np.random.default_rng(8)
    f1, f2 = rng.standard_normal((10, 50)), rng.standard_normal((10, 50)) + 1
    d = frechet_distance(f1, f2)
    assert np.isfinite(d) and d > 0


def test_features_and_histogram_of_the_classifier(classifier):
    path, _ = classifier
    model = load_classifier(path, False, namespace_for("cpu"))
    images, labels = load_mnist("test", limit=50)
    feats, _ = features_and_classes(model, images, batch_size=20)
    assert feats.shape == (50, 1024) and feats.dtype == np.float64
    fractions = class_fractions(features_and_classes(model, images)[1])
    assert fractions.shape == (10,) and fractions.sum() == pytest.approx(1.0)
    assert coverage(np.array([0.5, 0.49, 0.01] + [0.0] * 7)) == 3
    assert coverage(np.array([0.995, 0.005] + [0.0] * 8)) == 1


# --- train_gan.py ------------------------------------------------------------------------------

def call(argv):
    try:
        code = train_gan.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return 0 if code is None else code


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A reference CNN trained for one pass over 256 images, saved as a train.py run would be."""
    folder = tmp_path_factory.mktemp("classifier")
    images, labels = load_mnist("train", limit=256)
    rng = np.random.default_rng(0)
    model = reference_cnn(rng=rng)
    opt = SGD(0.01, momentum=0.9)
    for s in range(0, 256, 64):
        standard_step(model, opt, images[s:s + 64], labels[s:s + 64])
    path = folder / "checkpoint.npz"
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()},
                    {"epoch": 1, "settings": {}, "history": []})
    (folder / "settings.json").write_text(json.dumps({"bn": False}))
    return path, model


@pytest.fixture
def cli(capsys, classifier):
    """run(*argv) -> (exit code, stdout, stderr); --classifier is the tiny one."""
    def run(*argv):
        code = call([*argv, "--classifier", classifier[0]])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("kind", ["minimax", "nonsaturating"])
def test_smoke_run_writes_every_output(cli, tmp_path, kind):
    out = tmp_path / kind
    code, stdout, err = cli("--gan-loss", kind, "--train-limit", 256, "--epochs", 1,
                            "--fid-samples", 200, "--out", out)
    assert code == 0, err
    assert f"{kind} generator cost" in stdout and "epoch 1/1" in stdout and "FID" in stdout
    for name in ("samples_epoch001.png", "samples.png", "gan.png"):
        assert (out / name).read_bytes().startswith(PNG)
    rows = read_csv(out / "metrics.csv")
    assert len(rows) == 1
    row = {k: float(v) for k, v in rows[0].items()}
    assert 0 < row["d_real"] < 1 and 0 < row["d_fake"] < 1 and row["grad_norm"] > 0
    assert np.isfinite(row["fid"]) and row["fid"] > 0 and 1 <= row["coverage"] <= 10
    assert sum(row[f"class_{c}"] for c in range(10)) == pytest.approx(1.0)
    assert row["g_steps"] == 4  # 256 images in batches of 64, one G step per D step
    first = read_csv(out / "first_steps.csv")
    assert [int(r["g_step"]) for r in first] == [1, 2, 3, 4]
    assert np.mean([float(r["grad_norm"]) for r in first]) == pytest.approx(row["grad_norm"])
    settings = json.loads((out / "settings.json").read_text())
    assert settings["gan_loss"] == kind and settings["classifier_bn"] is False
    arrays, meta = load_checkpoint(out / "checkpoint.npz")
    assert meta["epoch"] == 1 and len(meta["history"]) == 1
    assert {k.split(".")[0] for k in arrays} == {"G", "D", "opt_g", "opt_d"}


def test_d_steps_sets_the_generator_steps_per_epoch(cli, tmp_path):
    code, _, err = cli("--train-limit", 256, "--epochs", 1, "--fid-samples", 100,
                       "--d-steps", 2, "--out", tmp_path / "run")
    assert code == 0, err
    assert float(read_csv(tmp_path / "run" / "metrics.csv")[0]["g_steps"]) == 2


@pytest.mark.parametrize("remedies", [[], ["--d-dropout", 0.3, "--real-label", 0.9,
                                              "--d-lr", 1e-4]], ids=["plain", "remedies"])
def test_resume_equals_an_uninterrupted_run(cli, tmp_path, remedies):
    """Also with dropout in D, whose masks come from the run's checkpointed generator."""
    common = ["--train-limit", 128, "--fid-samples", 100, "--seed", 3, *remedies]
    assert cli(*common, "--epochs", 2, "--out", tmp_path / "straight")[0] == 0
    assert cli(*common, "--epochs", 1, "--out", tmp_path / "split")[0] == 0
    code, stdout, err = cli(*common, "--epochs", 2, "--resume", "--out", tmp_path / "split")
    assert code == 0, err
    assert "epochs 2..2" in stdout
    a, meta_a = load_checkpoint(tmp_path / "straight" / "checkpoint.npz")
    b, meta_b = load_checkpoint(tmp_path / "split" / "checkpoint.npz")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert meta_a["rng"] == meta_b["rng"]
    times = {"train_seconds", "eval_seconds"}
    strip = [[{k: v for k, v in r.items() if k not in times} for r in m["history"]]
             for m in (meta_a, meta_b)]
    assert strip[0] == strip[1]
    assert (tmp_path / "split" / "first_steps.csv").read_bytes() == \
        (tmp_path / "straight" / "first_steps.csv").read_bytes()


def test_resume_of_a_run_made_before_the_remedy_flags(cli, tmp_path):
    """A checkpoint without d_lr, d_dropout and real_label in its settings was trained without
    them: it resumes with the defaults, and refuses a run that asks for label smoothing."""
    common = ["--train-limit", 128, "--fid-samples", 100, "--real-label", 1.0, "--d-dropout", 0]
    assert cli(*common, "--epochs", 1, "--out", tmp_path / "old")[0] == 0
    ckpt = tmp_path / "old" / "checkpoint.npz"
    arrays, meta = load_checkpoint(ckpt)
    for key in ("d_lr", "d_dropout", "real_label"):
        del meta["settings"][key]
    save_checkpoint(ckpt, arrays, meta)
    code, _, err = cli("--train-limit", 128, "--fid-samples", 100, "--real-label", 0.9,
                       "--epochs", 2, "--resume", "--out", tmp_path / "old")
    assert code != 0
    assert_one_sentence(err, "--real-label 1.0 (now 0.9)")
    code, stdout, err = cli(*common, "--epochs", 2, "--resume", "--out", tmp_path / "old")
    assert code == 0, err
    assert "epochs 2..2" in stdout


def test_discriminator_dropout_keeps_the_initial_weights_and_is_off_in_eval():
    plain = discriminator(rng=np.random.default_rng(4))
    dropped = discriminator(rng=np.random.default_rng(4), dropout=0.3)
    assert [type(l).__name__ for l in dropped.layers].count("Dropout") == 2
    assert [p.shape for p in plain.params.values()] == [p.shape for p in dropped.params.values()]
    for a, b in zip(plain.params.values(), dropped.params.values()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(5).uniform(0, 1, (4, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(dropped.eval().forward(x), plain.forward(x), rtol=1e-6)
    assert not np.allclose(dropped.train().forward(x), plain.forward(x), rtol=1e-3)


def test_discriminator_step_with_label_smoothing_targets_real_label():
    G, D, rng = _nets()
    x = rng.uniform(0, 1, size=(5, 1, 28, 28))
    z = rng.standard_normal((4, 8))
    real_loss, dreal = bce_with_logits(D.forward(x), 0.9)
    _, real_grads = D.backward(dreal)
    fake_loss, dfake = bce_with_logits(D.forward(G.forward(z)), 0.0)
    _, fake_grads = D.backward(dfake)
    expected = add_grads(real_grads, fake_grads)
    rec = Recorder()
    step = discriminator_step(G, D, rec, x, z, real_label=0.9)
    for k in expected:
        np.testing.assert_allclose(rec.grads[k], expected[k], rtol=1e-12, atol=1e-15)
    assert step.loss == pytest.approx(float(real_loss + fake_loss), rel=1e-12)


def assert_one_sentence(err, *fragments):
    """The last line is "train_gan.py: error: ..." with every fragment; no traceback."""
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("train_gan.py: error: ") and last.count(". ") == 0, err
    for fragment in fragments:
        assert fragment in last, (fragment, err)


@pytest.mark.parametrize("argv, fragments", [
    (["--lr", "-0.001"], ["--lr", "-0.001"]),
    (["--lr", "abc"], ["--lr", "'abc'"]),
    (["--gan-loss", "wasserstein"], ["--gan-loss", "wasserstein"]),
    (["--d-steps", "0"], ["--d-steps", "positive whole number"]),
    (["--beta1", "1"], ["--beta1"]),
    (["--fid-samples", "1"], ["--fid-samples"]),
    (["--d-dropout", "1"], ["--d-dropout"]),
    (["--real-label", "0"], ["--real-label"]),
    (["--d-lr", "0"], ["--d-lr"]),
])
def test_bad_flags_give_one_sentence(cli, tmp_path, argv, fragments):
    code, _, err = cli(*argv, "--out", tmp_path / "run")
    assert code == 2
    assert_one_sentence(err, *fragments)
    assert not (tmp_path / "run").exists()


def test_run_errors_give_one_sentence(cli, capsys, tmp_path):
    code = call(["--train-limit", 64, "--epochs", 1, "--fid-samples", 50,
                 "--classifier", tmp_path / "none.npz", "--out", tmp_path / "a"])
    assert code == 1
    assert_one_sentence(capsys.readouterr().err, "--classifier", "none.npz")
    assert not (tmp_path / "a").exists()
    code, _, err = cli("--train-limit", 64, "--epochs", 1, "--fid-samples", 50,
                       "--classifier-bn", "--out", tmp_path / "b")
    assert code == 1
    assert_one_sentence(err, "with BatchNorm (from --classifier-bn")
    code, _, err = cli("--train-limit", 128, "--epochs", 1, "--fid-samples", 50,
                       "--d-steps", 3, "--out", tmp_path / "c")
    assert code == 1
    assert_one_sentence(err, "--d-steps 3")
    assert cli("--train-limit", 64, "--epochs", 1, "--fid-samples", 50,
               "--out", tmp_path / "d")[0] == 0
    code, _, err = cli("--train-limit", 64, "--epochs", 1, "--fid-samples", 50,
                       "--out", tmp_path / "d")
    assert code == 1
    assert_one_sentence(err, "--resume")
    code, _, err = cli("--train-limit", 64, "--epochs", 2, "--fid-samples", 50, "--lr", 0.01,
                       "--resume", "--out", tmp_path / "d")
    assert code == 1
    assert_one_sentence(err, "--lr 0.0002 (now 0.01)")


def test_default_classifier_is_trained_once_and_cached(tmp_path, monkeypatch, capsys):
    """Without --classifier the reference CNN is trained (here on 128 images) and then reused."""
    cached = tmp_path / "classifier" / "checkpoint.npz"
    monkeypatch.setattr(gan.classifier, "DEFAULT_CLASSIFIER", cached)
    monkeypatch.setattr(gan.run, "DEFAULT_CLASSIFIER", cached)
    for module in (gan.classifier, gan.run):
        monkeypatch.setattr(module, "load_mnist",
                            lambda split, data_dir=None, limit=None: load_mnist(split, data_dir,
                                                                                limit or 128))
    argv = ["--train-limit", 64, "--epochs", 1, "--fid-samples", 50]
    assert call([*argv, "--out", tmp_path / "a"]) == 0
    assert "training the reference CNN" in capsys.readouterr().out
    assert cached.is_file()
    assert json.loads((cached.parent / "settings.json").read_text())["bn"] is False
    assert call([*argv, "--out", tmp_path / "b"]) == 0
    assert "training the reference CNN" not in capsys.readouterr().out

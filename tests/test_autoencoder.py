"""Tests of the autoencoder attack: mse_loss, dense_autoencoder, attacks/autoencoder.py and the
`attack.py autoencoder` experiment.

- mse_loss: value against the written-out formula, exhaustive and directional gradient checks
  in float64, and the whole autoencoder's input gradient through it (what the attack follows);
- the attack's properties on a small random autoencoder: |d| <= eps, pixels in [0, 1], eps 0 is
  a no-op, the distance to the target falls;
- the attack on every backend (and mse_loss on the strict no_float64 device);
- the CLI on a tiny subset: files, sane numbers, reuse of the saved autoencoder, bad input.
"""
import json
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import attack
from attacks.autoencoder import autoencoder_attack, distance_and_gradient
from helpers import assert_like
from nn import Adam, Sequential, dense_autoencoder, reference_cnn
from nn.backend import to_numpy
from nn.checkpoint import save_checkpoint
from nn.gradcheck import as_float64, directional_check, numerical_gradient, rel_error
from nn.losses import mse_loss
from training.autoencoder import train_epoch

seeds = st.integers(0, 2**32 - 1)


class MSELayer:
    """mse_loss against a fixed target as a parameter-free layer (0-d output)."""

    def __init__(self, target, model=None):
        self.target, self.model, self._dout = target, model, None
        self.params = model.params if model is not None else {}

    def forward(self, x):
        out = self.model.forward(x) if self.model is not None else x
        loss, self._dout = mse_loss(out, self.target)
        return loss

    def backward(self, dout):
        if self.model is None:
            return dout * self._dout, {}
        return self.model.backward(dout * self._dout)


# --- mse_loss --------------------------------------------------------------------------------

def test_mse_loss_value_and_exhaustive_gradient():
    rng = np.random.default_rng(0)
    out, target = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 4))
    loss, dout = mse_loss(out, target)
    assert loss.shape == () and dout.shape == out.shape
    np.testing.assert_allclose(float(loss), np.sum((out - target) ** 2) / 3, rtol=1e-12)
    numeric = numerical_gradient(lambda: mse_loss(out, target)[0], out, 1.0)
    assert rel_error(numeric, dout) < 1e-6


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=seeds)
def test_mse_loss_directional(shape, seed):
    rng = np.random.default_rng(seed)
    layer = MSELayer(rng.standard_normal(shape))
    (numeric, analytic), = directional_check(layer, rng.standard_normal(shape), seed=seed).values()
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric))


def test_autoencoder_input_gradient_through_mse():
    """d mse(AE(x), r) / dx and / d every parameter, in float64 (the attack follows dx)."""
    rng = np.random.default_rng(1)
    ae = as_float64(dense_autoencoder(code=3, hidden=6, rng=rng))
    layer = MSELayer(rng.random((2, 784)), ae)
    result = directional_check(layer, rng.random((2, 1, 28, 28)), seed=2)
    assert set(result) == {"x", *ae.params} and len(ae.params) == 8
    for name, (numeric, analytic) in result.items():
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric)), (name, numeric, analytic)


def test_dense_autoencoder_shapes():
    ae = dense_autoencoder(code=5, hidden=7, rng=np.random.default_rng(0))
    out = ae.forward(np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32))
    assert out.shape == (4, 784) and out.dtype == np.float32
    assert np.all((out > 0) & (out < 1))
    dx, _ = ae.backward(np.ones_like(out))
    assert dx.shape == (4, 1, 28, 28)


# --- the attack ------------------------------------------------------------------------------

def toy_case(seed, n=3):
    """(small float32 autoencoder, source images, target reconstructions of other images)."""
    rng = np.random.default_rng(seed)
    ae = dense_autoencoder(code=4, hidden=16, rng=rng)
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    target = ae.forward(rng.random((n, 1, 28, 28), dtype=np.float32))
    return ae, x, target


def reconstruction_distance(ae, x, target):
    """Per-image ||AE(x) - target||^2 (N,), in eval mode."""
    return distance_and_gradient(ae, x, target)[0]


@given(eps=st.floats(0.0, 0.5), steps=st.integers(1, 6), seed=seeds)
def test_attack_stays_in_the_ball_and_in_range(eps, steps, seed):
    ae, x, target = toy_case(seed)
    x[0, 0, :3] = 0.0  # pixels at the edges of [0, 1], where clipping matters
    x[0, 0, 3:6] = 1.0
    adv = autoencoder_attack(ae, x, target, eps=eps, steps=steps)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert np.max(np.abs(adv - x)) <= eps + 1e-6
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    # the best iterate is kept, so the distance never rises
    assert np.all(reconstruction_distance(ae, adv, target)
                  <= reconstruction_distance(ae, x, target) + 1e-6)


def test_eps_zero_is_a_no_op():
    ae, x, target = toy_case(3)
    np.testing.assert_array_equal(autoencoder_attack(ae, x, target, eps=0.0, steps=5), x)


@pytest.fixture(scope="module")
def trained(mnist_small):
    """(small autoencoder trained 6 epochs on 3,000 MNIST images, 8 test images, targets):
    each target is the reconstruction of a test image of another digit."""
    (train_x, _), (test_x, test_y) = mnist_small
    ae = dense_autoencoder(code=8, hidden=64, rng=np.random.default_rng(0))
    opt = Adam(lr=3e-3)
    losses = [train_epoch(ae, opt, train_x, np.random.default_rng(e)) for e in range(6)]
    assert losses[-1] < 0.5 * losses[0]
    ae.eval()
    others = [np.flatnonzero(test_y != y)[0] for y in test_y[:8]]
    return ae, test_x[:8], ae.forward(test_x[others])


def test_distance_to_the_target_falls_and_grows_with_eps(trained):
    ae, x, target = trained
    before = reconstruction_distance(ae, x, target)
    after = [reconstruction_distance(ae, autoencoder_attack(ae, x, target, eps=eps, steps=20),
                                     target) for eps in (0.05, 0.3)]
    assert np.all(after[0] < before) and np.all(after[1] < before)
    assert np.mean(after[0]) < 0.95 * np.mean(before)
    assert np.mean(after[1]) < 0.2 * np.mean(after[0])


def test_attack_keeps_batch_norm_statistics_and_mode():
    """The attack runs in eval mode and gives the model back in the mode it was in."""
    ae, x, target = toy_case(5)
    ae.train()
    state = {k: v.copy() for k, v in ae.state_dict().items()}
    autoencoder_attack(ae, x, target, eps=0.1, steps=2)
    assert ae.training
    assert all(np.array_equal(v, state[k]) for k, v in ae.state_dict().items())


# --- backends --------------------------------------------------------------------------------

def test_attack_and_loss_on_every_backend(xp):
    ae_host, x, target = toy_case(6)
    ref = autoencoder_attack(ae_host, x, target, eps=0.1, steps=4)
    loss_ref, dout_ref = mse_loss(x, x[::-1])
    ae = dense_autoencoder(code=4, hidden=16, rng=np.random.default_rng(0)).to(xp)
    ae.load_state_dict(ae_host.state_dict())
    xb, tb = xp.asarray(x), xp.asarray(target)
    assert_like(autoencoder_attack(ae, xb, tb, eps=0.1, steps=4), ref, xb)
    loss, dout = mse_loss(xb, xb[::-1, ...])
    assert_like(loss, loss_ref, xb)
    assert_like(dout, dout_ref, xb)


def test_attack_on_no_float64_device():
    xps = pytest.importorskip("array_api_strict")
    devices = [d for d in xps.__array_namespace_info__().devices() if "no_float64" in str(d)]
    if not devices:
        pytest.skip("array_api_strict has no no_float64 device")
    ae_host, x, target = toy_case(7)
    ae = Sequential(*dense_autoencoder(code=4, hidden=16).layers).to(xps, device=devices[0])
    ae.load_state_dict(ae_host.state_dict())
    xb = xps.asarray(x, device=devices[0])
    adv = autoencoder_attack(ae, xb, xps.asarray(target, device=devices[0]), eps=0.1, steps=3)
    assert adv.device == devices[0] and adv.dtype == xps.float32
    np.testing.assert_allclose(to_numpy(adv),
                               autoencoder_attack(ae_host, x, target, eps=0.1, steps=3), atol=1e-6)


# --- the experiment from the command line -----------------------------------------------------

TINY = ["--ae-epochs", "1", "--train-limit", "256", "--test-limit", "60", "--images", "4",
        "--eps", "0.1", "0.3", "--steps", "5", "--rows", "3", "--code", "8"]


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path):
    """run(*argv) -> (exit code, stdout, stderr) of `attack.py autoencoder ...`.

    attack.py imports every experiment module to build its parser; only this one is kept, so
    that the test does not depend on the others.
    """
    monkeypatch.setattr(sys, "argv", ["attack.py"])
    monkeypatch.setattr(attack, "EXPERIMENTS", {"autoencoder": attack.EXPERIMENTS["autoencoder"]})
    checkpoint = tmp_path / "cnn.npz"  # an untrained CNN: enough to read the reconstructions
    state = reference_cnn(rng=np.random.default_rng(0)).state_dict()
    save_checkpoint(checkpoint, {f"model.{k}": v for k, v in state.items()},
                    {"settings": {"bn": False}})

    def run(*argv):
        try:
            code = attack.main(["autoencoder", "--checkpoint", str(checkpoint),
                                *[str(a) for a in argv]])
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_cli_writes_results_and_reuses_the_autoencoder(cli, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = cli(*TINY, "--out", out_dir)
    assert code == 0, err
    assert "autoencoder epoch 1/1" in out
    for name in ("autoencoder.npz", "results.json", "autoencoder.png"):
        assert (out_dir / name).stat().st_size > 0
    results = json.loads((out_dir / "results.json").read_text())
    assert results["pairs"] == 4 and results["autoencoder"]["test_images"] == 60
    assert 0 < results["autoencoder"]["test_mse_per_image"] < 784
    assert [a["eps"] for a in results["attacks"]] == [0.1, 0.3]
    for a in results["attacks"]:
        assert a["linf"] <= a["eps"] + 1e-6 and 0 < a["l2"] <= a["eps"] * 28
        assert a["distance_to_target"] < a["distance_before"] == results["clean"]["distance_to_target"]
        assert 0 <= a["read_as_target"] <= 1 and 0 <= a["read_as_source"] <= 1
    # a second run reuses the saved autoencoder; one with another code size refuses it
    code, out, err = cli(*TINY, "--out", out_dir)
    assert code == 0 and "reusing" in out and "epoch 1/1" not in out
    code, out, err = cli(*TINY, "--code", "9", "--out", out_dir)
    assert code == 1 and err.strip().startswith("attack.py autoencoder: error: ")
    assert "other settings" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--eps", "2"], "argument --eps: expected a number in [0, 1], got 2.0"),
    (["--images", "61"], "--images 61 is more than the 60 test images"),
])
def test_bad_input_is_one_sentence(cli, tmp_path, argv, message):
    code, out, err = cli(*TINY, "--out", tmp_path / "run", *argv)
    assert code in (1, 2) and "Traceback" not in err
    assert message in err.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "results.json").exists()


# --- the plain autoencoder against the VAE (--vae) ------------------------------------------------

def test_penalty_attacks_pull_toward_the_target_and_the_penalty_holds_them_back():
    from attacks.autoencoder import penalty_attack, vae_latent_objective, vae_output_objective
    from data.mnist import load_mnist
    from nn.vae import VAE
    x, _ = load_mnist("test", limit=4)
    vae = VAE(code=4, hidden=32, rng=np.random.default_rng(0))
    target = x[::-1].copy()
    for objective in (vae_latent_objective(vae, *vae.encode(target)),
                      vae_output_objective(vae, vae.reconstruct(target))):
        before = objective(x)[0]
        far = penalty_attack(objective, x, 0.01, steps=30)
        near = penalty_attack(objective, x, 10.0, steps=30)
        assert np.all(objective(far)[0] < before)
        assert np.all(np.abs(near - x).sum(axis=(1, 2, 3)) < np.abs(far - x).sum(axis=(1, 2, 3)))
        assert far.min() >= 0 and far.max() <= 1


def test_cli_vae_compares_both_autoencoders_and_the_blend(cli, tmp_path):
    out_dir = tmp_path / "vae"
    code, out, err = cli("--vae", "--ae-epochs", 1, "--train-limit", 256, "--test-limit", 200,
                         "--code", 8, "--steps", 10, "--lambdas", 0.1, 1, "--budgets", 2, 5,
                         "--out", out_dir)
    assert code == 0, err
    report = json.loads((out_dir / "vae.json").read_text())
    assert report["pairs"] == 90
    kinds = {(a["model"], a["kind"]) for a in report["attacks"]}
    assert kinds == {(m, k) for m in ("AE", "VAE") for k in ("latent", "output", "blend")}
    for a in report["attacks"]:
        assert [b["budget"] for b in a["at_budget"]] == [2, 5]
        assert all(0 <= b["to_target"] <= b["away_from_source"] <= 1 for b in a["at_budget"])
    assert "VAE epoch 1/1" in out and (out_dir / "vae.png").stat().st_size > 0

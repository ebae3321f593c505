"""Tests for gan/pix2pix.py: the U-Net's backward through its skip against central differences,
the PatchGAN's shape, and one training step of each variant moving the generator the expected
way on a tiny batch of real digits."""
import copy

import numpy as np
import pytest

from data.mnist import load_mnist
from gan.pix2pix import VARIANTS, UNet, inpainting_input, l1_loss, patch_discriminator, train_step
from nn import Adam
from nn.functional import sigmoid_forward
from nn.gradcheck import as_float64


def test_unet_backward_through_the_skip():
    """Directional checks (the U-Net has 60,000 parameters): for a random direction v of the
    input and of every parameter, <gradient, v> against (L(p + h v) - L(p - h v)) / 2h with
    L = sum(G(x) * dout), in float64, BatchNorm on the batch's statistics, no dropout."""
    g = UNet(rng=np.random.default_rng(0), dropout=0.0)
    for part in g.parts.values():
        as_float64(part)
    g.train()
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (2, 1, 28, 28))
    dout = rng.normal(size=(2, 1, 28, 28))
    g.forward(x)
    dx, grads = g.backward(dout)
    h = 1e-6
    for name, array, grad in [("x", x, dx)] + [
            (f"{p}.{k}", v, grads[f"{p}.{k}"]) for p, m in g.parts.items()
            for k, v in m.params.items()]:
        v = rng.normal(size=array.shape)
        array += h * v
        plus = np.sum(g.forward(x) * dout)
        array -= 2 * h * v
        minus = np.sum(g.forward(x) * dout)
        array += h * v
        assert (plus - minus) / (2 * h) == pytest.approx(np.sum(grad * v), rel=1e-5, abs=1e-8), \
            name


def test_patch_discriminator_judges_7x7_patches():
    x = np.zeros((3, 2, 28, 28), dtype=np.float32)
    assert patch_discriminator().forward(x).shape == (3, 1, 7, 7)
    assert patch_discriminator(conditional=False).forward(x[:, :1]).shape == (3, 1, 7, 7)


@pytest.fixture(scope="module")
def digits():
    y, _ = load_mnist("train", limit=32)
    return inpainting_input(y), y


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_step_moves_the_generator_the_expected_way(digits, variant):
    x, y = digits
    G, D = UNet(rng=np.random.default_rng(2)), patch_discriminator(variant != "l1+gan",
                                                                  np.random.default_rng(3))
    opt_g, opt_d = Adam(2e-3, betas=(0.5, 0.999)), Adam(2e-3, betas=(0.5, 0.999))
    before = copy.deepcopy(G)
    stats = train_step(G, D, opt_g, opt_d, x, y, variant)
    assert np.isfinite(stats["l1"])
    G.eval(), before.eval(), D.eval()
    new, old = G.forward(x), before.forward(x)
    if variant != "cgan":  # the L1 term pulls the output toward the target
        assert float(l1_loss(new, y)[0]) < float(l1_loss(old, y)[0])
    else:  # the GAN term alone raises D's belief in the generated images (D as it now is)
        def belief(out):
            return float(sigmoid_forward(D.forward(np.concatenate([x, out], axis=1)))[0].mean())
        assert belief(new) > belief(old)
    assert ("d_loss" in stats) == (variant != "l1")
    with pytest.raises(ValueError, match="variant must be one of"):
        train_step(G, D, opt_g, opt_d, x, y, "gan")


def test_train_pix2pix_runs_resumes_and_reports(tiny, tmp_path, capsys):
    import train_pix2pix
    runs = tmp_path / "pix2pix"
    for variant in ("l1", "l1+cgan"):
        argv = ["run", "--variant", variant, "--train-limit", 64, "--eval-images", 20,
                "--judge", "tiny", "--out", runs / f"{variant}-seed0"]
        assert train_pix2pix.main([str(a) for a in [*argv, "--epochs", 1]]) == 0
        assert train_pix2pix.main([str(a) for a in [*argv, "--epochs", 2, "--resume"]]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2  accuracy" in out and "epochs 2..2" in out
    assert train_pix2pix.main(["report", "--runs", str(runs)]) == 0
    table = (runs / "README.md").read_text()
    assert "| l1 | 1 |" in table and "| l1+cgan | 1 |" in table and "| truth |" in table
    assert (runs / "grid.png").read_bytes().startswith(b"\x89PNG")
    assert (runs / "l1-seed0" / "samples_epoch002.png").is_file()

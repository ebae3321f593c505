"""Our GAN steps against the PyTorch twin of benchmarks/gan_twin.py (skipped without torch).

Both start from the same weights and see the same real batches and noise; after each of a few
alternating D and G steps, for both generator costs (and with label smoothing), the losses, the mean D outputs, the
gradient norm at G's output, the parameter gradients handed to Adam and the updated weights
agree to float32 rounding. The gradients are compared directly because Adam hides their scale:
its update is invariant to a constant factor on every gradient, and its first step moves each
weight by about lr whatever the gradient's size. For the weights, Adam's g / (|g| + eps) turns
the rounding error of a gradient within ~eps of zero into a visible fraction of a step (at most
0.03 lr for one weight in 20 steps, measured): so every weight must agree within 0.1 lr, and
all but one in 1,000 within 1e-3 lr.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.oracle

from benchmarks import gan_twin  # noqa: E402
from gan import discriminator, discriminator_step, generator, generator_step  # noqa: E402
from nn import Adam  # noqa: E402

STEPS = 3
LR = 2e-4
BATCH = 32
Z_DIM = 100


class RecordingAdam(Adam):
    """Adam that keeps the gradients of its last step."""

    def step(self, params, grads):
        self.last_grads = {k: np.array(v) for k, v in grads.items()}
        super().step(params, grads)


def twin_name(name):
    i, key = name.split(".")
    return f"{i}.weight" if key == "W" else f"{i}.bias"


def assert_same_params(ours, twin, what):
    twin_params = dict(twin.named_parameters())
    for name, p in ours.params.items():
        t = twin_params[twin_name(name)].detach().numpy()
        diff = np.abs(p - (t.T if name.endswith(".W") else t)) / LR
        assert diff.max() < 0.1, f"{what} {name}: {diff.max():.3g} lr apart"
        assert np.quantile(diff, 0.999) < 1e-3, f"{what} {name}: 99.9% {np.quantile(diff, 0.999)}"


def assert_same_grads(ours_grads, twin, what):
    twin_params = dict(twin.named_parameters())
    for name, g in ours_grads.items():
        t = twin_params[twin_name(name)].grad.numpy()
        t = t.T if name.endswith(".W") else t
        scale = np.abs(t).max()
        np.testing.assert_allclose(g, t, rtol=0, atol=1e-4 * scale + 1e-12,
                                   err_msg=f"{what} {name}")


@pytest.mark.parametrize("kind, real_label", [("minimax", 1.0), ("nonsaturating", 1.0),
                                              ("nonsaturating", 0.9)])
def test_steps_match_pytorch(kind, real_label, mnist_small):
    torch.set_num_threads(1)
    images = mnist_small[0][0]
    G, D = generator(Z_DIM, rng=np.random.default_rng(0)), discriminator(rng=np.random.default_rng(0))
    TG, TD = gan_twin.copy_weights(G, gan_twin.torch_generator(Z_DIM)), \
        gan_twin.copy_weights(D, gan_twin.torch_discriminator())
    opt_g, opt_d = RecordingAdam(2e-4, betas=(0.5, 0.999)), RecordingAdam(2e-4, betas=(0.5, 0.999))
    topt_g, topt_d = gan_twin.adam(TG.parameters(), 2e-4, 0.5), gan_twin.adam(TD.parameters(),
                                                                              2e-4, 0.5)
    rng = np.random.default_rng(1)
    for step in range(STEPS):
        x = images[step * BATCH:(step + 1) * BATCH]
        z_d, z_g = (rng.standard_normal((BATCH, Z_DIM)).astype(np.float32) for _ in range(2))
        d = discriminator_step(G, D, opt_d, x, z_d, real_label)
        td = gan_twin.discriminator_step(TG, TD, topt_d, torch.from_numpy(x),
                                         torch.from_numpy(z_d), real_label)
        np.testing.assert_allclose(d, td, rtol=1e-5, err_msg=f"D step {step}")
        assert_same_grads(opt_d.last_grads, TD, f"D step {step} gradient")
        assert_same_params(D, TD, f"D step {step} weights")

        g = generator_step(G, D, opt_g, z_g, kind)
        tg = gan_twin.generator_step(TG, TD, topt_g, torch.from_numpy(z_g), kind)
        np.testing.assert_allclose(g, tg, rtol=1e-5, err_msg=f"G step {step}")
        assert_same_grads(opt_g.last_grads, TG, f"G step {step} gradient")
        assert_same_params(G, TG, f"G step {step} weights")

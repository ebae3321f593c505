"""pix2pix (Isola et al. 2017) on 28x28 digits: a U-Net generator, a PatchGAN discriminator and
the ablation of their costs, with the project's own layers.

The task is inpainting: the input is the digit with its bottom half removed (set to 0), the
target the whole digit; a 7 and a 9 part ways below the middle, so the input does not fix the
answer and the GAN term can matter.
    U-Net   x (N, 1, 28, 28) -> enc1: Conv 4x4/2 -> 14x14x32, LeakyReLU 0.2
                              -> enc2: Conv 4x4/2 -> 7x7x64, BatchNorm, LeakyReLU 0.2
                              -> dec1: ConvTranspose 4x4/2 -> 14x14x32, BatchNorm, ReLU,
                                       Dropout 0.5 (the generator's noise, as in pix2pix)
                              -> [dec1, enc1] concatenated (the skip) -> 14x14x64
                              -> dec2: ConvTranspose 4x4/2 -> 28x28x1, Sigmoid
    PatchGAN  (input, output) as 2 channels (1 for the unconditional variant) -> Conv 4x4/2
              -> 14x14x32, LeakyReLU -> Conv 4x4/2 -> 7x7x64, BatchNorm, LeakyReLU -> Conv 3x3
              -> 7x7 logits: one real/fake verdict per patch of the image.
Variants: "l1" (L1 alone), "cgan" (the conditional GAN alone), "l1+cgan" (both, lambda on L1),
"l1+gan" (both, with a discriminator that does not see the input). The generator's GAN cost is
the non-saturating one of gan/losses.py, averaged over the patches.
"""
import numpy as np

from nn import BatchNorm2d, Conv2d, ConvTranspose2d, Dropout, LeakyReLU, ReLU, Sequential, Sigmoid
from nn.backend import xp_of
from nn.functional import concat_backward, concat_forward
from nn.losses import bce_with_logits
from nn.model import Parts
from nn.optim import add_grads

from .losses import generator_loss

VARIANTS = ("l1", "cgan", "l1+cgan", "l1+gan")


def inpainting_input(y):
    """The digit y (N, 1, 28, 28) with its bottom half (rows 14-27) set to 0."""
    x = y.copy()
    x[:, :, 14:, :] = 0.0
    return x


class UNet(Parts):
    """The generator: two encoder blocks, two decoder blocks, one skip (see the module)."""

    def __init__(self, rng=None, dropout=0.5):
        rng = np.random.default_rng(0) if rng is None else rng
        self.parts = {
            "enc1": Sequential(Conv2d(1, 32, 4, 2, 1, rng=rng), LeakyReLU(0.2)),
            "enc2": Sequential(Conv2d(32, 64, 4, 2, 1, rng=rng), BatchNorm2d(64), LeakyReLU(0.2)),
            "dec1": Sequential(ConvTranspose2d(64, 32, 4, 2, 1, rng=rng), BatchNorm2d(32), ReLU(),
                               Dropout(dropout, rng=rng)),
            "dec2": Sequential(ConvTranspose2d(64, 1, 4, 2, 1, rng=rng), Sigmoid())}
        self._skip = None

    def forward(self, x):
        h1 = self.parts["enc1"].forward(x)
        u1 = self.parts["dec1"].forward(self.parts["enc2"].forward(h1))
        joined, self._skip = concat_forward(u1, h1)
        return self.parts["dec2"].forward(joined)

    def backward(self, dout, input_grad=True, param_grads=True):
        """dout (N, 1, 28, 28) -> (dx, grads): the skip's two gradients meet at enc1's output."""
        grads = {}

        def back(name, d, first=False):
            d, g = self.parts[name].backward(d, input_grad=input_grad or not first,
                                             param_grads=param_grads)
            grads.update({f"{name}.{k}": v for k, v in g.items()})
            return d
        du1, dh1_skip = concat_backward(back("dec2", dout), self._skip)
        dh1 = back("enc2", back("dec1", du1)) + dh1_skip
        return back("enc1", dh1, first=True), grads


def patch_discriminator(conditional=True, rng=None):
    """The PatchGAN: (N, 2 or 1, 28, 28) -> (N, 1, 7, 7) logits."""
    rng = np.random.default_rng(1) if rng is None else rng
    return Sequential(Conv2d(2 if conditional else 1, 32, 4, 2, 1, rng=rng), LeakyReLU(0.2),
                      Conv2d(32, 64, 4, 2, 1, rng=rng), BatchNorm2d(64), LeakyReLU(0.2),
                      Conv2d(64, 1, 3, 1, 1, rng=rng))


def _d_input(x, y, conditional):
    return concat_forward(x, y)[0] if conditional else y


def _patches(logits):
    xp = xp_of(logits)
    return xp.reshape(logits, (-1,))


def l1_loss(out, target):
    """mean |out - target| and its gradient sign(out - target) / count."""
    xp = xp_of(out)
    diff = out - target
    return xp.mean(xp.abs(diff)), xp.sign(diff) / diff.size


def train_step(G, D, opt_g, opt_d, x, y, variant, lam=100.0):
    """One update of D (unless "l1"), then one of G, on inputs x and targets y (N, 1, 28, 28).

    D: BCE(D(x, y), 1) + BCE(D(x, G(x)), 0), over every patch. G: lambda * L1(G(x), y) (not in
    "cgan") + the non-saturating cost of D(x, G(x)) (not in "l1"). Returns a dict of floats.
    """
    if variant not in VARIANTS:
        raise ValueError(f"pix2pix: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    conditional, use_gan, use_l1 = variant != "l1+gan", variant != "l1", variant != "cgan"
    fake = G.forward(x)
    out = {}
    if use_gan:
        real = D.forward(_d_input(x, y, conditional))
        real_loss, dreal = bce_with_logits(_patches(real), 1.0)
        _, g_real = D.backward(xp_of(real).reshape(dreal, real.shape), input_grad=False)
        fake_logits = D.forward(_d_input(x, fake, conditional))
        fake_loss, dfake = bce_with_logits(_patches(fake_logits), 0.0)
        _, g_fake = D.backward(xp_of(real).reshape(dfake, fake_logits.shape), input_grad=False)
        opt_d.step(D.params, add_grads(g_real, g_fake))
        out["d_loss"] = float(real_loss + fake_loss)
        logits = D.forward(_d_input(x, fake, conditional))
        gan_loss, dlogits = generator_loss(_patches(logits), "nonsaturating")
        d_in, _ = D.backward(xp_of(logits).reshape(dlogits, logits.shape), param_grads=False)
        dfake = d_in[:, 1:, ...] if conditional else d_in
        out["g_gan"] = float(gan_loss)
    else:
        dfake = 0.0
    l1, dl1 = l1_loss(fake, y)
    out["l1"] = float(l1)
    if use_l1:
        dfake = dfake + lam * dl1
    _, g_grads = G.backward(dfake, input_grad=False)
    opt_g.step(G.params, g_grads)
    return out

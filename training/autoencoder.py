"""Training the autoencoders that `attack.py autoencoder` attacks: a dense one and a VAE.

Both learn MNIST's training images with Adam (LR) in shuffled batches of BATCH and resume: the
checkpoint at `path` holds the model, the optimizer, the settings and the epochs done, so a call
asking for more epochs continues from it, one asking for no more reuses it, and one with other
settings refuses it (RunError).
"""
import time

import numpy as np

from data.mnist import load_mnist
from nn import Adam, batch_slices, dense_autoencoder, first_param, mse_loss, on_model
from nn.backend import to_numpy, xp_of
from nn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nn.vae import VAE

from .cli import RunError
from .loop import progress_bar

BATCH, LR = 128, 1e-3  # Adam's usual learning rate


def _prefixed(arrays, prefix):
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _load(path):
    """(arrays, meta) of checkpoint `path`; RunError if it cannot be read."""
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        raise RunError(str(exc)) from None


def _save(path, model, opt, settings, epochs):
    save_checkpoint(path, {**{f"model.{k}": v for k, v in model.state_dict().items()},
                           **{f"optim.{k}": v for k, v in opt.state_dict().items()}},
                    {"settings": settings, "epochs": epochs})


def _resume(path, settings, ae, opt):
    """Load `path` into ae and opt if it exists; the number of epochs it holds (0 if none)."""
    if not path.exists():
        return 0
    arrays, meta = _load(path)
    if meta.get("settings") != settings:
        raise RunError(
            f"{path} holds an autoencoder trained with other settings ({meta.get('settings')}, "
            f"now {settings}): delete it or choose another --out.")
    ae.load_state_dict(_prefixed(arrays, "model."))
    opt.load_state_dict(_prefixed(arrays, "optim."), like=ae.params)
    return int(meta["epochs"])


def train_epoch(ae, opt, images, rng, bar=None):
    """One epoch of Adam on mse_loss(AE(x), x) over host images (N, 1, 28, 28) in batches of
    BATCH, shuffled by host generator rng; returns the mean training loss (per image)."""
    xp, total = xp_of(first_param(ae)), 0.0
    order = rng.permutation(len(images))
    ae.train()
    for s in batch_slices(len(images), BATCH):
        x = on_model(ae, images[order[s]])
        loss, dout = mse_loss(ae.forward(x), xp.reshape(x, (x.shape[0], -1)))
        _, grads = ae.backward(dout, input_grad=False)
        opt.step(ae.params, grads)
        total += float(to_numpy(loss)) * x.shape[0]
        if bar is not None:
            bar.update(x.shape[0])
    return total / len(images)


def train_autoencoder(path, xp, *, code, epochs, seed, train_limit=None, data_dir=None):
    """The dense autoencoder (code size `code`) of checkpoint `path` (a Path) on namespace xp,
    trained (further) up to `epochs` epochs on the first `train_limit` training images first;
    in eval mode."""
    settings = {"code": code, "train_limit": train_limit, "seed": seed,
                "batch_size": BATCH, "lr": LR}
    ae = dense_autoencoder(code=code, rng=np.random.default_rng(seed)).to(xp)
    opt = Adam(lr=LR)
    done = _resume(path, settings, ae, opt)
    if done >= epochs:
        print(f"autoencoder: reusing {path} ({done} epochs)", flush=True)
        return ae.eval()
    images, _ = load_mnist("train", data_dir, train_limit)
    n = len(images)
    for epoch in range(done + 1, epochs + 1):
        start = time.perf_counter()
        with progress_bar(n, f"autoencoder epoch {epoch}") as bar:
            loss = train_epoch(ae, opt, images, np.random.default_rng([seed, epoch]), bar)
        _save(path, ae, opt, settings, epoch)
        print(f"autoencoder epoch {epoch}/{epochs}: training MSE {loss:.2f} per "
              f"image ({time.perf_counter() - start:.0f} s), saved {path}", flush=True)
    return ae.eval()


def train_vae(path, xp, *, code, epochs, seed, train_limit=None, data_dir=None):
    """The VAE (code size `code`) of checkpoint `path` (a Path) on namespace xp, trained
    (further) up to `epochs` epochs on the first `train_limit` training images first."""
    settings = {"code": code, "train_limit": train_limit, "seed": seed}
    vae, opt = VAE(code=code, rng=np.random.default_rng(seed)).to(xp), Adam(LR)
    done = 0
    if path.exists():
        arrays, meta = _load(path)
        if meta["settings"] != settings:
            raise RunError(f"{path} holds a VAE trained with other settings "
                           f"({meta['settings']}): delete it or choose another --out.")
        vae.load_state_dict(_prefixed(arrays, "model."))
        opt.load_state_dict(_prefixed(arrays, "optim."), like=vae.params)
        done = meta["epochs"]
    images, _ = load_mnist("train", data_dir, train_limit)
    for epoch in range(done + 1, epochs + 1):
        rng, total = np.random.default_rng([seed, epoch, 1]), 0.0
        order = rng.permutation(len(images))
        with progress_bar(len(images), f"VAE epoch {epoch}") as bar:
            for start in range(0, len(images), BATCH):
                x = on_model(vae.encoder, images[order[start:start + BATCH]])
                loss, grads = vae.loss_and_gradients(x, rng.normal(size=(len(x), code)))
                opt.step(vae.params, grads)
                total += float(to_numpy(loss)) * len(x)
                bar.update(len(x))
        _save(path, vae, opt, settings, epoch)
        print(f"VAE epoch {epoch}/{epochs}: negative ELBO {total / len(images):.1f} "
              f"per image, saved {path}", flush=True)
    return vae

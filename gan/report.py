"""What a GAN run shows of itself: samples, their scores, sample grids and training curves."""
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from nn import batch_slices, on_model
from nn.backend import to_numpy
from training.plots import save_figure

from .fid import class_fractions, coverage, features_and_classes, frechet_distance

GRID = 10          # the sample grid is GRID x GRID images
GEN_BATCH = 500    # images per generator forward when sampling for the score


def generate(G, z):
    """Host images (N, 1, 28, 28) float32 from host noise z (N, Z), in batches."""
    out = [to_numpy(G.forward(on_model(G, z[s]))) for s in batch_slices(len(z), GEN_BATCH)]
    G.clear_caches()  # forward only: no backward will use them
    return np.reshape(np.concatenate(out), (len(z), 1, 28, 28))


def save_grid(images, path, title):
    """A GRID x GRID mosaic of images (GRID^2, 1, 28, 28) in [0, 1] as a grey-scale PNG."""
    tiles = np.reshape(images[:GRID * GRID], (GRID, GRID, 28, 28))
    mosaic = np.transpose(tiles, (0, 2, 1, 3)).reshape(GRID * 28, GRID * 28)
    fig = plt.figure(figsize=(5, 5.3))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96 * 5 / 5.3))  # fixed margins: no layout pass
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, fontsize=10, y=0.985)
    save_figure(fig, path, tight=False)


def score(G, classifier, z_fid, test_features):
    """FID against the test features, the class fractions (10,) and the coverage of G(z_fid)."""
    features, classes = features_and_classes(classifier, generate(G, z_fid))
    fractions = class_fractions(classes)
    return frechet_distance(features, test_features), fractions, coverage(fractions)


def plot_gan(history, path, title):
    """gan.png: (a) D and G losses, (b) mean D(x) and D(G(z)), (c) generator output gradient
    norm (log scale), (d) FID, over epochs."""
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    (a, b), (c, d) = axes
    a.plot(epochs, [r["d_loss"] for r in history], marker=".", label="D loss")
    a.plot(epochs, [r["g_loss"] for r in history], marker=".", label="G loss")
    a.set(title="(a) losses", ylabel="loss")
    b.plot(epochs, [r["d_real"] for r in history], marker=".", label="D(x)")
    b.plot(epochs, [r["d_fake"] for r in history], marker=".", label="D(G(z)), D steps")
    b.plot(epochs, [r["g_d_fake"] for r in history], ":", marker=".", label="D(G(z)), G steps")
    b.set(title="(b) mean discriminator output", ylabel="probability", ylim=(0, 1))
    c.semilogy(epochs, [r["grad_norm"] for r in history], marker=".")
    c.set(title="(c) gradient reaching G's output", ylabel="mean ||dl_n / dG(z_n)||")
    d.plot(epochs, [r["fid"] for r in history], marker=".")
    d.set(title="(d) Frechet distance (classifier features)", ylabel="FID")
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in (a, b):
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.08, top=0.9, hspace=0.4, wspace=0.3)
    save_figure(fig, path, tight=False)

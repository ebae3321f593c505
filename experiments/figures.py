"""Figures the experiments share: image triplets (original, perturbation x10, adversarial) and
labelled image grids. Every function takes host arrays and writes one PNG. Every experiment's
figure is written by save_figure (training/plots.py's, which train.py's and the GAN's use too)."""
import matplotlib.pyplot as plt
import numpy as np

from training.plots import save_figure

MAGNIFY = 10  # perturbations are shown ten times larger, as in the lecture


def _show(ax, image, title, cmap="gray", vmin=0.0, vmax=1.0, colour="black"):
    ax.imshow(np.reshape(image, (28, 28)), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_title(title, fontsize=8, color=colour)
    ax.set_xticks([])
    ax.set_yticks([])


def triplets(path, originals, adversarials, before, after, title, note=""):
    """Columns of original / perturbation x10 / adversarial image, one column per example.

    originals, adversarials (N, 1, 28, 28); before, after: (labels (N,), probabilities (N, K))
    of the model on each. Each title gives the predicted digit and its probability; the
    perturbation's title its L-infinity and L2 size. Red marks a changed prediction.
    """
    n = len(originals)
    fig, axes = plt.subplots(3, n, figsize=(1.5 * n + 0.8, 5.1), squeeze=False)
    for i in range(n):
        delta = adversarials[i] - originals[i]
        p0, p1 = before[0][i], after[0][i]
        _show(axes[0, i], originals[i], f"{p0} ({100 * before[1][i, p0]:.0f}%)")
        _show(axes[1, i], MAGNIFY * delta, f"|d|max {np.abs(delta).max():.2f}\n"
              f"L2 {np.sqrt((delta ** 2).sum()):.1f}", cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        _show(axes[2, i], adversarials[i], f"{p1} ({100 * after[1][i, p1]:.0f}%)",
              colour="red" if p1 != p0 else "black")
    for row, name in enumerate(["original", f"perturbation x{MAGNIFY}", "adversarial"]):
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=10)
    save_figure(fig, path, dpi=100)


def grid(path, images, titles, title, row_labels=None, col_labels=None, colours=None):
    """A rows x cols grid of 28x28 images with a small title each.

    images (R, C, ...) with 784 values per image; titles and colours nested lists (R x C).
    """
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.05 * cols + 0.6, 1.15 * rows + 0.7),
                             squeeze=False)
    for r in range(rows):
        for c in range(cols):
            _show(axes[r, c], images[r, c], titles[r][c],
                  colour=colours[r][c] if colours else "black")
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=9)
    if col_labels is not None:
        for c in range(cols):
            axes[0, c].set_title(f"{col_labels[c]}\n{titles[0][c]}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=100)

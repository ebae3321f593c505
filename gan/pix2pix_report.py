"""What the pix2pix runs show: an epoch's sample figure, and the ablation's table and grid.

`report` reads run folders (settings.json, metrics.csv, final.npy: what pix2pix_run.py writes)
and writes their folder's README.md and grid.png; it trains nothing.
"""
import csv
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from data.mnist import load_mnist
from training.cli import RunError
from training.plots import save_figure

from .pix2pix import inpainting_input

SHOWN = 8  # test digits in each sample figure, in final.npy and in the grid


def samples(path, x, out, y, title):
    """Rows input / output / truth of images (N, 1, 28, 28) in [0, 1], one column per digit."""
    fig, axes = plt.subplots(3, len(x), figsize=(1.1 * len(x), 3.6), squeeze=False)
    for row, (images, name) in enumerate(((x, "input"), (out, "output"), (y, "truth"))):
        for ax, image in zip(axes[row], images):
            ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=100)


def report(runs):
    """results/pix2pix/README.md table (last epoch, mean ± std over seeds per variant) and
    grid.png (input | each variant | truth, seed 0)."""
    rows, shown = {}, {}
    for folder in sorted(Path(runs).glob("*")) if Path(runs).is_dir() else []:
        if not (folder / "metrics.csv").is_file():
            continue
        s = json.loads((folder / "settings.json").read_text())
        name = s["variant"] + ("" if s["lam"] == 100 or s["variant"] == "cgan"
                               else f" (lambda {s['lam']:g})")
        with open(folder / "metrics.csv", newline="") as f:
            last = list(csv.DictReader(f))[-1]
        rows.setdefault(name, []).append({k: float(v) for k, v in last.items()})
        if s["seed"] == 0 and (folder / "final.npy").is_file():
            shown[name] = np.load(folder / "final.npy")
    if not rows:
        raise RunError(f"{runs} holds no pix2pix runs")
    keys = ("accuracy", "l1", "mid_grey", "frechet", "diversity")
    lines = ["| variant | seeds | accuracy (%) | L1 | mid-grey (%) | Frechet | diversity |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, rs in rows.items():
        cells = []
        for k in keys:
            v = np.array([r[k] for r in rs]) * (100 if k in ("accuracy", "mid_grey") else 1)
            cells.append(f"{v.mean():.3g}" + (f" ± {v.std(ddof=1):.2g}" if len(v) > 1 else ""))
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    first = next(iter(rows.values()))[0]
    lines.append(f"| truth | | {100 * first['accuracy_ceiling']:.3g} | 0 | "
                 f"{100 * first['mid_grey_real']:.3g} | 0 | |")
    (Path(runs) / "README.md").write_text("\n".join(lines) + "\n")
    if shown:
        y, _ = load_mnist("test", limit=SHOWN)
        columns = [("input", inpainting_input(y))] + list(shown.items()) + [("truth", y)]
        fig, axes = plt.subplots(len(columns), SHOWN, figsize=(1.1 * SHOWN, 1.2 * len(columns)),
                                 squeeze=False)
        for row, (name, images) in enumerate(columns):
            for ax, image in zip(axes[row], images):
                ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[row, 0].set_ylabel(name, fontsize=7)
        save_figure(fig, Path(runs) / "grid.png", dpi=100)
    print("\n".join(lines))
    print(f"wrote {runs}/README.md and grid.png")
    return 0

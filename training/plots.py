"""Accuracy-over-epochs plots of one or several runs (the metrics.csv that train.py writes).

Colour tells the runs apart; line style tells clean (solid), FGS (dashed), FGV (dotted) and, when
the run measured them, PGD (dash-dot) and certified (dash-dot-dot, IBP runs) accuracy apart.
"""
import csv
import json
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from .cli import RunError

CURVES = (("clean_acc", "clean", "-"), ("fgs_acc", "FGS", "--"), ("fgv_acc", "FGV", ":"),
          ("pgd_acc", "PGD", "-."), ("certified_acc", "certified", (0, (6, 2, 1, 2, 1, 2))))


def save_figure(fig, path, dpi=110, tight=True, rect=None):
    """Write figure `fig` to `path` (PNG) at `dpi` and close it. First its subplots are fitted
    (tight_layout, within rect = (left, bottom, right, top) in figure fractions if given),
    unless tight is False: the caller placed them."""
    if tight:
        fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def read_metrics(run_dir):
    """Columns of run_dir/metrics.csv as a dict name -> list of floats."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise RunError(f"{run_dir} holds no metrics.csv: is it a run folder written by train.py?")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise RunError(f"{path} has no epochs yet")
    try:
        columns = {k: [float(r[k]) for r in rows] for k in rows[0]}
    except (TypeError, ValueError) as exc:
        raise RunError(f"{path} is damaged: {exc}") from None
    if "epoch" not in columns:
        raise RunError(f"{path} has no epoch column")
    return columns


def run_label(run_dir, seed=False):
    """'adversarial, BN' style label from the run's settings.json (', seed 1' added if `seed`),
    else the folder name."""
    try:
        s = json.loads((Path(run_dir) / "settings.json").read_text())
        eps = f", eps {s['alpha']:g}" if s["mode"] == "ibp" else ""  # IBP runs differ by it
        return f"{s['mode']}{', BN' if s['bn'] else ''}{eps}" + (f", seed {s['seed']}" if seed
                                                                   else "")
    except (OSError, ValueError, KeyError):
        return Path(run_dir).name


def run_labels(run_dirs):
    """run_label of each run, with its seed where two runs would otherwise share a label."""
    labels = [run_label(run) for run in run_dirs]
    return [run_label(run, seed=labels.count(label) > 1) for run, label in zip(run_dirs, labels)]


def plot_runs(run_dirs, out_path, title="Test accuracy over epochs"):
    """Draw clean, FGS, FGV (and PGD, certified) accuracy (%) over epochs for each run into out_path (PNG)."""
    metrics = [read_metrics(run) for run in run_dirs]
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (label, m) in enumerate(zip(run_labels(run_dirs), metrics)):
        colour = f"C{i}"
        for key, name, style in CURVES:
            if key in m:
                ax.plot(m["epoch"], [100 * v for v in m[key]], linestyle=style, color=colour,
                        marker=".",
                        label=f"{label}: {name}" if len(run_dirs) > 1 else name)
    ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100), title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=1 + (len(run_dirs) > 2))
    save_figure(fig, out_path)

"""Accuracy against the attack's size eps for FGS and PGD: curve.csv and curve.png.

Accuracy here is over all --images test images (at eps 0 it is the clean accuracy), the
measure papers plot; curve.csv also has the exercise's measure over the clean-correct images.
A model whose FGS curve stays high while its PGD curve falls is masking its gradient.
"""
import time
from pathlib import Path

import numpy as np

from attacks import evaluate
from attacks.evaluation import pgd_attack
from attacks.gradient import fgs_step
from nn.backend import namespace_for
from training.cli import float_in, positive_int

from .common import load_model, model_for, out_dir, run_name, test_set, write_csv
from .figures import plt, save_figure

DEFAULTS = {"images": 1000}


def add_arguments(p):
    p.add_argument("--eps", type=float_in(0, 1), nargs="+",
                   default=[round(0.05 * i, 2) for i in range(9)], help="attack sizes")
    p.add_argument("--steps", type=positive_int, default=20, help="PGD steps")
    p.add_argument("--compare", type=Path, nargs="+", default=[], metavar="CHECKPOINT",
                   help="more train.py checkpoints to measure and draw in the same figure")


def curve(model, images, labels, eps_values, steps, rng):
    """One row per eps: clean, FGS and PGD accuracy (all images and clean-correct ones)."""
    rows = []
    for eps in eps_values:
        t0 = time.perf_counter()
        attacks = {"fgs": lambda model, x, t, dx, eps=eps: fgs_step(x, dx, eps),
                   "pgd": pgd_attack(eps, steps, rng)}
        r = evaluate(model, images, labels, attacks)
        rows.append({"eps": eps, "n": r["n"], "clean_acc": r["clean_acc"],
                     "fgs_acc": r["fgs_robust_acc"], "pgd_acc": r["pgd_robust_acc"],
                     "fgs_acc_of_correct": r["fgs_acc"], "pgd_acc_of_correct": r["pgd_acc"]})
        print(f"  eps {eps:.2f}: FGS {100 * r['fgs_robust_acc']:.1f}%  "
              f"PGD {100 * r['pgd_robust_acc']:.1f}%  ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    return rows


def run(args):
    model, ckpt = model_for(args)
    xp = namespace_for(args.device)
    models = [(model, str(ckpt))] + [(load_model(path, xp)[0], str(path)) for path in args.compare]
    out = out_dir(args.out)
    images, labels = test_set(args)
    eps_values = sorted(set(args.eps))
    rows = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (m, path) in enumerate(models):
        label = run_name(path)
        print(f"{label} ({path}): FGS and {args.steps}-step PGD on {len(images)} test images",
              flush=True)
        rng = np.random.default_rng(args.seed)
        part = [{"model": label, "checkpoint": path, **r}
                for r in curve(m, images, labels, eps_values, args.steps, rng)]
        rows += part
        write_csv(out / "curve.csv", rows)  # after each model: an interruption keeps the rest
        for key, style in (("fgs_acc", "--"), ("pgd_acc", "-")):
            ax.plot(eps_values, [100 * r[key] for r in part], style, color=f"C{i}", marker=".",
                    label=f"{label}: {key[:3].upper()}")
    ax.set(xlabel="eps (L-infinity size of the attack)", ylabel="accuracy (%)", ylim=(0, 100),
           title=f"Accuracy under attack, {len(images)} test images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out / "curve.png")
    print(f"wrote {out}/curve.csv and curve.png")
    return 0


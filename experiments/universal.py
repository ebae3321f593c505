"""Universal perturbations (Moosavi-Dezfooli et al. 2017): one image-agnostic v, |v| <= eps.

For each model (--models, shipped; or --checkpoint) and eps (--eps), v is fitted on the first
--train-images training images (attacks.universal.universal_perturbation) and reported on the
first --images test images, never seen while fitting: the fooling rate (the prediction on
x + v differs from the one on x, the paper's definition) and the error against the labels,
next to the same numbers for random signs of the same eps (the control). Transfer: v fitted on
a standard network trained on one half of the training set (train.py --train-half 1, --epochs)
is applied to the network of the other half. Writes universal.csv, universal.json and
universal.png (the perturbations).
"""
from pathlib import Path

import numpy as np

import models
from attacks.universal import universal_perturbation
from data.mnist import load_mnist
from nn import predict
from nn.backend import namespace_for
from training.cli import float_in, positive_int

from .common import (
    load_model,
    model_paths,
    out_dir,
    run_name,
    test_set,
    train_flags,
    train_model,
    write_csv,
    write_json,
)
from .figures import plt, save_figure

DEFAULTS = {"images": 1000}


def add_arguments(p):
    p.add_argument("--models", nargs="+", choices=list(models.MODELS), default=["standard", "pgd"],
                   help="the shipped models to attack (ignored with --checkpoint)")
    p.add_argument("--eps", type=float_in(0, 1, low_open=True), nargs="+",
                   default=[0.1, 0.2, 0.3], help="L-infinity sizes")
    p.add_argument("--steps", type=positive_int, default=500, help="fitting steps")
    p.add_argument("--train-images", type=positive_int, default=10000,
                   help="training images (the first N) v is fitted on")
    p.add_argument("--epochs", type=positive_int, default=3,
                   help="epochs of the two half networks of the transfer")
    p.add_argument("--runs", type=Path, help="folder of the half networks' run folders "
                                             "(default: the folder holding --out)")
    p.add_argument("--train-limit", type=positive_int,
                   help="train.py --train-limit of the half networks")
    p.add_argument("--test-limit", type=positive_int,
                   help="train.py --test-limit of the half networks")


def rates(model, x, t, v):
    """(fooling rate against the clean prediction, error against the labels) of x + v."""
    clean = predict(model, x)
    after = predict(model, np.clip(x + v, 0, 1).astype(x.dtype))
    return float(np.mean(after != clean)), float(np.mean(after != t))


def run(args):
    xp = namespace_for(args.device)
    paths = model_paths(args)
    out = out_dir(args.out)
    train_x, _ = load_mnist("train", args.data_dir, args.train_images)
    x, t = test_set(args)
    halves = [train_model(train_flags(args, "standard", h), xp)[0] for h in (1, 2)]
    rows, shown = [], {}
    nets = [(run_name(p), load_model(p, xp)[0], None) for p in paths] + [
        ("standard half 1", halves[0], halves[1])]
    for label, model, other in nets:
        for eps in args.eps:
            v = universal_perturbation(model, train_x, eps, args.steps,
                                       rng=np.random.default_rng([args.seed, int(1000 * eps)]))
            signs = eps * np.sign(np.random.default_rng(args.seed).standard_normal(v.shape))
            row = {"model": label, "eps": eps}
            row["fooling"], row["error"] = rates(model, x, t, v)
            row["noise_fooling"], row["noise_error"] = rates(model, x, t, signs)
            if other is not None:
                row["transfer_fooling"], row["transfer_error"] = rates(other, x, t, v)
            rows.append(row)
            shown[label, eps] = v[0, 0]
            print(f"{label}, eps {eps}: fooling {100 * row['fooling']:.1f}% (random signs "
                  f"{100 * row['noise_fooling']:.1f}%), error {100 * row['error']:.1f}%"
                  + (f"; on the other half's network: fooling "
                     f"{100 * row['transfer_fooling']:.1f}%" if other is not None else ""),
                  flush=True)
    write_csv(out / "universal.csv", [{"transfer_fooling": None, "transfer_error": None, **r}
                                      for r in rows])
    write_json(out / "universal.json", {"images": len(x), "train_images": len(train_x),
                                        "steps": args.steps, "rows": rows})
    fig, axes = plt.subplots(1, len(shown), figsize=(1.4 * len(shown), 1.9), squeeze=False)
    for ax, ((label, eps), v) in zip(axes[0], shown.items()):
        ax.imshow(v, cmap="RdBu_r", vmin=-max(args.eps), vmax=max(args.eps))
        ax.set_title(f"{label}\neps {eps}", fontsize=6)
        ax.axis("off")
    save_figure(fig, out / "universal.png")
    print(f"wrote {out}/universal.csv, universal.json and universal.png")
    return 0

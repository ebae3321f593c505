"""Paint over a stop sign: targeted adversarial patches (Brown et al. 2017) on MNIST.

For each model (--models, shipped; or --checkpoint), target class (--targets) and side
(--sides), a square patch is trained on the first --train-images training images
(attacks.universal.train_patch: random place, rotation up to 10 degrees and scale 0.9-1.1 each
step) and evaluated on the first --images test images whose label is not the target, pasted at
fresh random placements: the success rate is the share the model then calls the target. Two
controls of the same size and placements: a noise patch, and a natural one (a training digit of
the target class shrunk to the patch's side by area averaging), which a patch must beat to be
more than a small drawn digit. Writes patch.csv, patch.json, patch.png (success against the
patch's area) and patches.png (the trained patches of the first model at the largest side).
"""
import numpy as np

import models
from attacks.universal import paste, placements, train_patch
from data.mnist import load_mnist
from nn import predict
from nn.backend import namespace_for
from training.cli import int_at_least, positive_int

from .common import (
    load_model,
    model_paths,
    out_dir,
    progress,
    run_name,
    test_set,
    write_csv,
    write_json,
)
from .figures import plt, save_figure

DEFAULTS = {"images": 1000}


def add_arguments(p):
    p.add_argument("--models", nargs="+", choices=list(models.MODELS), default=["standard", "pgd"],
                   help="the shipped models to attack (ignored with --checkpoint)")
    p.add_argument("--sides", type=positive_int, nargs="+", default=[4, 6, 8, 10],
                   help="patch sides in pixels")
    p.add_argument("--targets", type=int_at_least(0), nargs="+", default=list(range(10)),
                   help="target classes")
    p.add_argument("--steps", type=positive_int, default=300, help="training steps per patch")
    p.add_argument("--train-images", type=positive_int, default=2000,
                   help="training images (the first N) the patches are trained on")


def shrink(image, side):
    """A (28, 28) host image averaged down to (side, side): each new pixel the mean over the
    area of the old ones it covers (R image R^T, R[a, j] the overlap of a's and j's spans)."""
    size = image.shape[0]
    edges = np.arange(side + 1) * size / side
    j = np.arange(size)
    R = np.clip(np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j), 0, None)
    R /= R.sum(axis=1, keepdims=True)
    return R @ image @ R.T


def success(model, x, patch, theta, target):
    return float(np.mean(predict(model, paste(x, patch, theta)[0]) == target))


def run(args):
    xp = namespace_for(args.device)
    paths = model_paths(args)
    out = out_dir(args.out)
    train_x, train_t = load_mnist("train", args.data_dir, args.train_images)
    test_x, test_t = test_set(args)
    rows, shown = [], {}
    for path in paths:
        model, _ = load_model(path, xp)
        label = run_name(path)
        with progress(len(args.targets) * len(args.sides), f"{label}: patches",
                      unit="patch") as bar:
            for target in args.targets:
                x = test_x[test_t != target]
                natural = train_x[np.flatnonzero(train_t == target)[0], 0]
                for side in args.sides:
                    rng = np.random.default_rng([args.seed, target, side])
                    patch = train_patch(model, train_x, target, side, args.steps, rng=rng)
                    theta = placements(np.random.default_rng([args.seed, 99, side]), len(x),
                                       side)
                    rows.append({"model": label, "target": target, "side": side,
                                 "area": side * side / 784,
                                 "patch": success(model, x, patch, theta, target),
                                 "noise": success(model, x, rng.uniform(0, 1, (side, side)),
                                                  theta, target),
                                 "natural": success(model, x, shrink(natural, side), theta,
                                                    target),
                                 "images": len(x)})
                    if path == paths[0] and side == max(args.sides):
                        shown[target] = patch
                    bar.update()
        mean = {k: np.mean([r[k] for r in rows if r["model"] == label
                            and r["side"] == max(args.sides)]) for k in ("patch", "noise",
                                                                        "natural")}
        print(f"{label}: side {max(args.sides)}, mean over targets: patch "
              f"{100 * mean['patch']:.1f}%, noise {100 * mean['noise']:.1f}%, natural digit "
              f"{100 * mean['natural']:.1f}%", flush=True)
        write_csv(out / "patch.csv", rows)
    write_json(out / "patch.json", {"images": args.images, "train_images": args.train_images,
                                    "steps": args.steps, "rows": rows})
    figure(out / "patch.png", rows)
    patches(out / "patches.png", shown)
    print(f"wrote {out}/patch.csv, patch.json, patch.png and patches.png")
    return 0


def figure(path, rows):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, label in enumerate(dict.fromkeys(r["model"] for r in rows)):
        mine = [r for r in rows if r["model"] == label]
        sides = sorted({r["side"] for r in mine})
        for kind, style in (("patch", "o-"), ("natural", "s--"), ("noise", "x:")):
            ax.plot([100 * s * s / 784 for s in sides],
                    [100 * np.mean([r[kind] for r in mine if r["side"] == s]) for s in sides],
                    style, color=f"C{i}", label=f"{label}: {kind}")
    ax.set(xlabel="patch area (% of the image)", ylabel="success: target predicted (%)",
           ylim=(0, 100), title="Targeted patches, mean over target classes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def patches(path, shown):
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(1.2 * len(shown), 1.5), squeeze=False)
    for ax, (target, patch) in zip(axes[0], shown.items()):
        ax.imshow(patch, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"-> {target}", fontsize=8)
        ax.axis("off")
    save_figure(fig, path)

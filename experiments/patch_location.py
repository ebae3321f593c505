"""Where a patch lands: success by location, the patch trained for the centre, and per image.

`attack.py patch` trains each patch at random places (with a small rotation and zoom) and
reports its mean success over random placements. Here, for each model (--models, shipped; or
--checkpoint) and target class (--targets), at one side (--side):
- "random": the patch of `attack.py patch` (the same training: `attacks.universal.train_patch`,
  --steps on the first --train-images training images, the same seed), pasted pixel-aligned at
  every place of the image (`paste_at`) on the first --images test images not of the target
  class: the success-by-location map (the share the model puts in the target);
- "centre": a patch trained only for the centre (`train_patch_at`, same steps and images), its
  map likewise;
- "per image": the upper bound, for each of the first --per-image of those test images a patch
  trained for that image alone at each place of a grid of stride --stride (`per_image_patches`,
  --per-image-steps signed steps), successful if any place succeeds.
Writes patch_location.json (the maps and a summary), patch_location.csv (one row per model,
target and patch) and patch_location.png (the maps).
"""
import numpy as np

import models
from attacks.universal import paste_at, per_image_patches, train_patch, train_patch_at
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

DEFAULTS = {"images": 500}


def add_arguments(p):
    p.add_argument("--models", nargs="+", choices=list(models.MODELS), default=["standard", "pgd"],
                   help="the shipped models to attack (ignored with --checkpoint)")
    p.add_argument("--targets", type=int_at_least(0), nargs="+", default=[8, 3],
                   help="target classes")
    p.add_argument("--side", type=positive_int, default=10, help="patch side in pixels")
    p.add_argument("--steps", type=positive_int, default=300, help="training steps per patch")
    p.add_argument("--train-images", type=positive_int, default=2000,
                   help="training images (the first N) the patches are trained on")
    p.add_argument("--per-image", type=int_at_least(0), default=100,
                   help="test images that get a patch of their own (the upper bound)")
    p.add_argument("--per-image-steps", type=positive_int, default=40)
    p.add_argument("--stride", type=positive_int, default=3,
                   help="grid of places for the per-image patches")


def location_map(model, x, patch, target):
    """(H - s + 1, W - s + 1) host: the share of host images x the model puts in `target` with
    the patch pasted with its top-left corner at each place."""
    n = x.shape[-1] - patch.shape[-1] + 1
    out = np.zeros((n, n))
    for r in range(n):
        for c in range(n):
            out[r, c] = np.mean(predict(model, np.asarray(paste_at(x, patch, r, c))) == target)
    return out


def run(args):
    xp = namespace_for(args.device)
    out = out_dir(args.out)
    train_x, _ = load_mnist("train", args.data_dir, args.train_images)
    test_x, test_t = test_set(args)
    side = args.side
    centre = (28 - side) // 2
    grid = [(r, c) for r in range(0, 28 - side + 1, args.stride)
            for c in range(0, 28 - side + 1, args.stride)]
    rows, maps = [], {}
    for path in model_paths(args):
        model, _ = load_model(path, xp)
        label = run_name(path)
        for target in args.targets:
            x = test_x[test_t != target]
            # attack.py patch's patch of this target and side: the same generator and steps
            rng = np.random.default_rng([args.seed, target, side])
            patches = {"random": train_patch(model, train_x, target, side, args.steps, rng=rng),
                       "centre": train_patch_at(model, train_x, target, side, centre, centre,
                                                args.steps,
                                                rng=np.random.default_rng([args.seed, target,
                                                                           side, 1]))}
            for kind, patch in patches.items():
                m = location_map(model, x, patch, target)
                maps[f"{label}, target {target}, {kind}"] = m
                corners = [m[0, 0], m[0, -1], m[-1, 0], m[-1, -1]]
                rows.append({"model": label, "target": target, "patch": kind, "side": side,
                             "images": len(x), "mean_over_places": float(m.mean()),
                             "centre": float(m[centre, centre]), "best_place": float(m.max()),
                             "corners_max": float(max(corners)),
                             "corners_min": float(min(corners))})
                print(f"{label}, target {target}, {kind}-trained patch: centre "
                      f"{100 * m[centre, centre]:.1f}%, best place {100 * m.max():.1f}%, mean "
                      f"over places {100 * m.mean():.1f}%, corners {100 * min(corners):.1f}-"
                      f"{100 * max(corners):.1f}%", flush=True)
            if args.per_image:
                wins, at_centre = [], []
                with progress(args.per_image, f"{label}, target {target}: per-image patches",
                              unit="image") as bar:
                    for i in range(min(args.per_image, len(x))):
                        ok, _ = per_image_patches(model, x[i], target, side, grid,
                                                  args.per_image_steps)
                        wins.append(bool(ok.any()))
                        at_centre.append(bool(ok[grid.index((centre // args.stride
                                                             * args.stride,) * 2)]))
                        bar.update()
                rows.append({"model": label, "target": target, "patch": "per image",
                             "side": side, "images": len(wins),
                             "mean_over_places": None, "centre": float(np.mean(at_centre)),
                             "best_place": float(np.mean(wins)), "corners_max": None,
                             "corners_min": None})
                print(f"{label}, target {target}, per-image patches: best place "
                      f"{100 * np.mean(wins):.1f}% of {len(wins)} images, at the grid's centre "
                      f"{100 * np.mean(at_centre):.1f}%", flush=True)
            write_csv(out / "patch_location.csv", rows)
    write_json(out / "patch_location.json", {
        "side": side, "steps": args.steps, "train_images": args.train_images, "seed": args.seed,
        "test_images": args.images, "per_image_steps": args.per_image_steps,
        "stride": args.stride, "rows": rows, "maps": {k: m.tolist() for k, m in maps.items()}})
    figure(out / "patch_location.png", maps)
    print(f"wrote {out}/patch_location.json, patch_location.csv and patch_location.png")
    return 0


def figure(path, maps):
    n = len(maps)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, m) in zip(axes.ravel(), maps.items()):
        im = ax.imshow(100 * m, cmap="viridis", vmin=0, vmax=100)
        ax.set_title(f"{name}\nmean {100 * m.mean():.0f}%, best {100 * m.max():.0f}%",
                     fontsize=7)
        ax.set_xlabel("patch's left column", fontsize=7)
        ax.set_ylabel("patch's top row", fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="target predicted (%)")
    save_figure(fig, path, tight=False)


def markdown(report):
    """The markdown table of results/patch_location/README.md from patch_location.json."""
    places = len(range(0, 28 - report["side"] + 1, report["stride"])) ** 2
    lines = ["| model | target | patch | at the centre | best place | mean over all places | "
             "corners |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if r["patch"] == "per image":
            lines.append(f"| {r['model']} | {r['target']} | per image, best of {places} places "
                         f"({r['images']} images) | {100 * r['centre']:.0f}% | "
                         f"**{100 * r['best_place']:.0f}%** | | |")
        else:
            lines.append(f"| {r['model']} | {r['target']} | {r['patch']}-trained | "
                         f"{100 * r['centre']:.1f}% | {100 * r['best_place']:.1f}% | "
                         f"{100 * r['mean_over_places']:.1f}% | {100 * r['corners_min']:.1f}-"
                         f"{100 * r['corners_max']:.1f}% |")
    return lines

"""The white-box L2 minimum, unmasked: DDN from the image and from random misclassified images.

For each model (--models, shipped; or --checkpoint), the correctly classified images among the
first --images test images (as `attack.py hopskipjump`), DDN (attacks/minimum_norm.py, --steps
per run, --loss) runs once from the image itself and --restarts times from a random misclassified
image (uniform noise), off the data point where a masked gradient misleads; per image the smallest
adversarial point over the runs is bisected toward the image on the segment between them. The
median L2 distortion (an image never made adversarial counts as infinite) is reported after the
run from the image alone and after all runs, beside the numbers of `attack.py hopskipjump` in
--decision/<model>/ if they are there: the old white-box minimum (targeted L2 PGD from the image,
bisected over the radius) and HopSkipJump's after its largest budget, per image too. Writes
minimum.csv (one row per image), minimum.json and minimum.png.
"""
import csv
import json
from pathlib import Path

import numpy as np

import models
from attacks.minimum_norm import bisect_segment, ddn_run, l2_norms, margin_loss, noise_start
from nn import predict
from nn.backend import namespace_for
from nn.losses import softmax_cross_entropy
from training.cli import int_at_least, positive_int

from .common import (
    host,
    load_model,
    model_paths,
    on_model,
    out_dir,
    progress,
    run_name,
    test_set,
    write_csv,
    write_json,
)
from .figures import plt, save_figure

DEFAULTS = {"images": 100}
LOSSES = {"ce": softmax_cross_entropy, "margin": margin_loss}


def add_arguments(p):
    p.add_argument("--models", nargs="+", choices=list(models.MODELS), default=["standard", "pgd"],
                   help="the shipped models to attack (ignored with --checkpoint)")
    p.add_argument("--steps", type=positive_int, default=1000, help="DDN steps per run")
    p.add_argument("--restarts", type=int_at_least(0), default=9,
                   help="DDN runs from random misclassified images, after the one from the image")
    p.add_argument("--loss", choices=list(LOSSES), default="ce",
                   help="the loss DDN climbs: cross-entropy (the paper's) or the logit margin")
    p.add_argument("--decision", type=Path, default=Path("results") / "decision",
                   help="folder of attack.py hopskipjump's runs, one subfolder per model, to "
                        "compare with (skipped where missing)")


def decision_numbers(folder, label):
    """(old white-box L2 median or None, {image: HopSkipJump's L2 at its largest budget})."""
    try:
        summary = json.loads((folder / label / "decision.json").read_text())
        with open(folder / label / "decision.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["norm"] == "l2"]
    except (OSError, ValueError):
        return None, {}
    top = max(int(r["budget"]) for r in rows)
    return summary["whitebox"]["l2"], {int(r["image"]): float(r["l2"]) for r in rows
                                       if int(r["budget"]) == top}


def median(values):
    """The median, or None where it is infinite (more than half the images never adversarial)."""
    m = float(np.median(np.asarray(values, dtype=float)))
    return m if np.isfinite(m) else None


def run(args):
    xp = namespace_for(args.device)
    out = out_dir(args.out)
    x_all, t_all = test_set(args)
    rows, summary = [], {}
    for path in model_paths(args):
        model, _ = load_model(path, xp)
        label = run_name(path)
        keep = np.flatnonzero(predict(model, x_all) == t_all)
        x, t = on_model(model, x_all[keep]), on_model(model, t_all[keep])
        rng = np.random.default_rng([args.seed, 7])
        loss_fn = LOSSES[args.loss]
        dists = []
        with progress(args.restarts + 1, f"{label}: DDN runs", unit="run") as bar:
            best, dist = ddn_run(model, x, t, args.steps, rng=rng, loss_fn=loss_fn)
            dists.append(host(dist))
            bar.update()
            for _ in range(args.restarts):
                adv, d = ddn_run(model, x, t, args.steps, start=noise_start(model, x, t, rng),
                                 rng=rng, loss_fn=loss_fn)
                closer = d < dist
                best = xp.where(xp.reshape(closer, (-1, 1, 1, 1)), adv, best)
                dist = xp.where(closer, d, dist)
                dists.append(host(dist))
                bar.update()
        best = bisect_segment(model, x, t, best, searches=10)
        final = host(l2_norms(best - x))
        fooled = predict(model, host(best)) != t_all[keep]
        final = np.where(fooled, final, np.inf)
        old, hsj = decision_numbers(args.decision, label)
        hsj_l2 = np.array([hsj.get(int(i), np.nan) for i in range(len(keep))])
        for j, i in enumerate(keep):
            rows.append({"model": label, "image": int(i), "label": int(t_all[i]),
                         "index": j, "from_image": float(dists[0][j]), "ddn": float(final[j]),
                         "hopskipjump": float(hsj_l2[j])})
        per_run = [median(d) for d in dists]
        summary[label] = {
            "images": len(keep), "adversarial": float(np.mean(fooled)),
            "median_from_image": per_run[0], "median_after_runs": per_run,
            "median_ddn": median(final), "old_whitebox_median": old,
            "hopskipjump_median": median(hsj_l2) if hsj else None,
            "ddn_below_hopskipjump": float(np.mean(final < hsj_l2)) if hsj else None,
            "median_min_ddn_hopskipjump": median(np.fmin(final, hsj_l2)) if hsj else None}
        s = summary[label]
        print(f"{label}: DDN median L2 {s['median_ddn']} (from the image alone "
              f"{s['median_from_image']}); old white-box {old}; HopSkipJump "
              f"{s['hopskipjump_median']}", flush=True)
        write_csv(out / "minimum.csv", rows)
    write_json(out / "minimum.json", {"steps": args.steps, "restarts": args.restarts,
                                      "loss": args.loss, "seed": args.seed,
                                      "first_images": args.images, "models": summary})
    figure(out / "minimum.png", rows)
    print(f"wrote {out}/minimum.csv, minimum.json and minimum.png")
    return 0


def figure(path, rows):
    labels = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(labels), figsize=(4.5 * len(labels), 4.2), squeeze=False)
    for ax, label in zip(axes[0], labels):
        mine = [r for r in rows if r["model"] == label]
        hsj = np.array([r["hopskipjump"] for r in mine])
        for key, marker, name in (("from_image", "x", "DDN from the image only"),
                                  ("ddn", "o", "DDN, best of all runs")):
            ax.scatter(hsj, [r[key] for r in mine], s=12, marker=marker, label=name)
        values = np.concatenate([hsj, [r["from_image"] for r in mine]])
        top = float(np.max(values[np.isfinite(values)], initial=4.0))
        ax.plot([0, top], [0, top], "k--", lw=0.8, label="equal")
        ax.set(xlabel="HopSkipJump L2 (20,000 label queries)", ylabel="white-box L2",
               title=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)

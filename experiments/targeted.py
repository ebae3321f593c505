"""Targeted attacks: each of the first --images test images pushed toward each wrong class.

Two questions, as in the lecture: does targeted PGD within eps reach the chosen class (success
per target class), and how close is the closest image the model gives the target class (a
bisection over the L-infinity radius; its L-infinity and L2 sizes)? Writes targeted.json,
targeted.csv (one row per image and target) and targeted-grid.png (each digit turned into
every other class, by its smallest successful perturbation).
"""
import numpy as np

from attacks import smallest_targeted, targeted_pgd
from nn import EVAL_BATCH, batch_slices
from training.cli import float_in, positive_int

from .common import (
    host,
    model_for,
    on_model,
    out_dir,
    pairs,
    predictions,
    progress,
    test_set,
    write_csv,
    write_json,
)
from .figures import grid

DEFAULTS = {"images": 100}


def add_arguments(p):
    p.add_argument("--eps", type=float_in(0, 1, low_open=True), default=0.2,
                   help="L-infinity radius of the fixed-size targeted attack")
    p.add_argument("--steps", type=positive_int, default=20, help="PGD steps per attack")
    p.add_argument("--searches", type=positive_int, default=7,
                   help="bisection steps of the smallest-perturbation search (resolution "
                        "1 / 2**searches)")




def run(args):
    model, ckpt = model_for(args)
    out = out_dir(args.out)
    images, labels = test_set(args)
    index, target = pairs(labels)
    rows, closest = [], np.empty((len(index), *images.shape[1:]), np.float32)
    print(f"targeted PGD (eps {args.eps}) and the smallest-perturbation search on "
          f"{len(images)} images x 9 targets = {len(index)} attacks", flush=True)
    with progress(len(index), "targeted", unit="attack") as bar:
        for s in batch_slices(len(index), EVAL_BATCH):
            x, tgt = on_model(model, images[index[s]]), on_model(model, target[s])
            fixed = predictions(model, targeted_pgd(model, x, tgt, args.eps, steps=args.steps))
            best, eps, ok = smallest_targeted(model, x, tgt, max_eps=1.0, steps=args.steps,
                                              searches=args.searches)
            closest[s] = host(best)
            best_pred = predictions(model, best)
            delta = (closest[s] - images[index[s]]).reshape(len(eps), -1)
            for j in range(len(eps)):
                rows.append({"image": int(index[s][j]), "label": int(labels[index[s][j]]),
                             "target": int(target[s][j]),
                             "hit_at_eps": bool(fixed[0][j] == target[s][j]),
                             "found": bool(ok[j]), "smallest_eps": float(eps[j]),
                             "linf": float(np.abs(delta[j]).max()) if ok[j] else float("nan"),
                             "l2": float(np.sqrt((delta[j] ** 2).sum())) if ok[j] else float("nan"),
                             "target_conf": float(best_pred[1][j, target[s][j]])})
            bar.update(len(eps))
    write_csv(out / "targeted.csv", rows)
    summary = summarize(rows, args)
    summary["checkpoint"] = str(ckpt)
    write_json(out / "targeted.json", summary)
    draw_grid(out / "targeted-grid.png", images, labels, index, target, closest, rows, args)
    print(f"success at eps {args.eps}: {100 * summary['success_at_eps']:.1f}%; closest images: "
          f"L-inf {summary['mean_linf']:.3f}, L2 {summary['mean_l2']:.2f} (means); "
          f"wrote {out}/targeted.json, targeted.csv, targeted-grid.png")
    return 0


def summarize(rows, args):
    """Overall and per-target success rates and mean sizes of the closest images."""
    def stats(rs):
        found = [r for r in rs if r["found"]]
        return {"attacks": len(rs), "success_at_eps": np.mean([r["hit_at_eps"] for r in rs]),
                "found_within_1": len(found) / len(rs),
                "mean_linf": float(np.mean([r["linf"] for r in found])) if found else None,
                "mean_l2": float(np.mean([r["l2"] for r in found])) if found else None}
    return {"eps": args.eps, "steps": args.steps, "searches": args.searches, **stats(rows),
            "per_target": {k: stats([r for r in rows if r["target"] == k]) for k in range(10)}}


def draw_grid(path, images, labels, index, target, closest, rows, args):
    """Row d: the first test image of digit d; column k: its closest image classified as k."""
    firsts = {d: int(np.flatnonzero(labels == d)[0]) for d in range(10) if np.any(labels == d)}
    cells = np.zeros((len(firsts), 10, 28 * 28), np.float32)
    titles = [["" for _ in range(10)] for _ in firsts]
    colours = [["black"] * 10 for _ in firsts]
    where = {(int(i), int(k)): j for j, (i, k) in enumerate(zip(index, target))}
    for r, (d, i) in enumerate(firsts.items()):
        for k in range(10):
            if k == d:
                cells[r, k], titles[r][k], colours[r][k] = images[i].ravel(), "original", "blue"
                continue
            j = where[(i, k)]
            cells[r, k] = closest[j].ravel()
            titles[r][k] = (f"eps {rows[j]['smallest_eps']:.2f} {100 * rows[j]['target_conf']:.0f}%"
                            if rows[j]["found"] else "not found")
    grid(path, cells, titles, title="Closest image classified as each target (L-infinity "
         f"bisection, {args.steps}-step targeted PGD); eps and target probability",
         row_labels=[f"digit {d}" for d in firsts], col_labels=[f"-> {k}" for k in range(10)],
         colours=colours)

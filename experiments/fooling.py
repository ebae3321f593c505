"""Fooling images: one signed gradient step from random noise toward each class.

--images noise images (uniform in [0, 1]) each take one step x - alpha sign(dJ_k/dx) down the
cross-entropy J_k of every class k. Writes fooling.json (how many land in their class with more
than 50% probability, per class and overall) and fooling.png (a grid with the probabilities).
"""
import numpy as np

from attacks import fooling_images
from nn import EVAL_BATCH, batch_slices
from training.cli import float_in, positive_int

from .common import host, model_for, on_model, out_dir, predictions, progress, write_json
from .figures import grid

DEFAULTS = {"images": 100}


def add_arguments(p):
    p.add_argument("--eps", "--alpha", dest="alpha", metavar="EPS", type=float_in(0, 1),
                   default=0.3,
                   help="size of the one step (--alpha: an alias)")
    p.add_argument("--show", type=positive_int, default=4,
                   help="noise images (rows) in the figure")


def run(args):
    model, ckpt = model_for(args)
    out = out_dir(args.out)
    rng = np.random.default_rng(args.seed)
    noise = rng.uniform(0.0, 1.0, size=(args.images, 1, 28, 28)).astype(np.float32)
    print(f"one step of {args.alpha} from {args.images} noise images toward each of 10 classes",
          flush=True)
    fooled = np.empty((10, *noise.shape), np.float32)
    prob = np.empty((10, args.images))
    pred = np.empty((10, args.images), np.int64)
    noise_pred = predictions(model, on_model(model, noise))
    with progress(args.images, "fooling") as bar:
        for s in batch_slices(args.images, EVAL_BATCH // 10):  # 10 images per noise image
            images, _, chosen = fooling_images(model, on_model(model, noise[s]), args.alpha)
            n = s.stop - s.start
            fooled[:, s] = host(images).reshape(10, n, *noise.shape[1:])
            prob[:, s] = host(chosen).reshape(10, n)
            pred[:, s] = predictions(model, images)[0].reshape(10, n)
            bar.update(n)
    hit = (prob > 0.5) & (pred == np.arange(10)[:, None])
    result = {"checkpoint": str(ckpt), "alpha": args.alpha, "noise_images": args.images,
              "fooling_rate": float(hit.mean()),
              "per_class_rate": hit.mean(axis=1), "mean_target_prob": float(prob.mean()),
              "per_class_mean_prob": prob.mean(axis=1),
              "noise_predicted_as": np.bincount(noise_pred[0], minlength=10),
              "noise_mean_max_prob": float(noise_pred[1].max(axis=1).mean())}
    write_json(out / "fooling.json", result)
    rows = min(args.show, args.images)
    cells = np.transpose(fooled[:, :rows], (1, 0, 2, 3, 4)).reshape(rows, 10, -1)
    cells = np.concatenate([noise[:rows].reshape(rows, 1, -1), cells], axis=1)
    titles = [[f"noise: {noise_pred[0][i]} {100 * noise_pred[1][i].max():.0f}%"] +
              [f"{pred[k, i]} ({100 * prob[k, i]:.0f}%)" for k in range(10)] for i in range(rows)]
    colours = [["black"] + ["green" if hit[k, i] else "red" for k in range(10)]
               for i in range(rows)]
    grid(out / "fooling.png", cells, titles, colours=colours,
         title=f"One step of {args.alpha} from noise toward each class: predicted class and the "
               f"target's probability (green: > 50%); {100 * hit.mean():.0f}% of "
               f"{hit.size} fooling images", col_labels=["start"] + [f"-> {k}" for k in range(10)])
    print(f"{100 * hit.mean():.1f}% of {hit.size} fooling images are classified as their target "
          f"with > 50% probability; wrote {out}/fooling.json and fooling.png")
    return 0

"""Looking inside: what the models' gradients, classes and units look like, measured.

On the shipped models (--models; or --checkpoint), backprop to the input shows:
- saliency |dz_y/dx| of the true class's logit for the first --images test digits;
- class visualisations: gradient ascent on z_c - lam ||x||^2 from grey and from noise, clipped
  to [0, 1], for every class c;
- optimal stimuli: the input that maximises the centre unit of each first-layer channel and of a
  sample of second-layer channels (before their ReLU), beside the first layer's filters;
- large-eps targeted PGD from test digits toward every other class (L2 eps 4, L-infinity 0.4).
Robust models' gradients are said to be perceptually aligned (Tsipras et al. 2019; Santurkar et
al. 2019); three numbers measure it. An independent judge, a standard CNN trained on the second
half of the training set only (never one of the models judged, never trained on a generated
image), reports the share of class visualisations and of large-eps targeted images it puts in
the intended class. A deletion curve: accuracy as the most salient pixels are set to 0 first,
against a random order. The sanity check of Adebayo et al. 2018: the rank correlation between
the trained model's saliency and that of the same network with random weights (near 1: the map
shows the input, not the model). Writes inside.json and saliency.png, classes.png, units.png,
targeted.png, deletion.png.
"""
from pathlib import Path

import numpy as np

import models
from attacks import targeted_pgd, targeted_pgd_l2
from nn import Sequential, eval_mode, first_param, predict, reference_cnn
from nn.backend import namespace_for, to_device
from nn.losses import one_hot
from training.cli import positive_int

from .common import (
    host,
    load_model,
    model_paths,
    on_model,
    out_dir,
    run_name,
    test_set,
    train_flags,
    train_model,
    write_json,
)
from .figures import plt, save_figure

DEFAULTS = {"images": 100}
FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
LARGE = {"l2": 4.0, "linf": 0.4}


def add_arguments(p):
    p.add_argument("--models", nargs="+", choices=list(models.MODELS),
                   default=["standard", "adversarial", "pgd"],
                   help="shipped models (ignored with --checkpoint)")
    p.add_argument("--steps", type=positive_int, default=200,
                   help="gradient-ascent steps of the visualisations and stimuli")
    p.add_argument("--epochs", type=positive_int, default=3, help="epochs of the judge")
    p.add_argument("--runs", type=Path, help="folder of the judge's run folder "
                                             "(default: the folder holding --out)")
    p.add_argument("--train-limit", type=positive_int, help="train.py --train-limit of the judge")
    p.add_argument("--test-limit", type=positive_int, help="train.py --test-limit of the judge")


def logit_gradient(model, x, classes):
    """d z_c / dx per image, c = classes (N,): one backward of dout = onehot(c)."""
    with eval_mode(model):
        logits = model.forward(x)
        dx, _ = model.backward(one_hot(classes, logits.shape[1], logits), param_grads=False)
    return dx


def saliency(model, x, t):
    """|dz_t/dx| (N, 1, 28, 28) host, the logit's (not the softmax's) gradient."""
    return np.abs(host(logit_gradient(model, on_model(model, x), on_model(model, t))))


def ascend(model, start, grad, steps, lr=0.05):
    """x <- clip(x + lr * g / max|g|, 0, 1) for `steps` steps, g = grad(x): host in and out."""
    x = start.copy()
    for _ in range(steps):
        g = host(grad(on_model(model, x)))
        x = np.clip(x + lr * g / np.maximum(np.abs(g).max(axis=(1, 2, 3), keepdims=True), 1e-12),
                    0.0, 1.0).astype(np.float32)
    return x


def class_images(model, start, steps, lam=0.01):
    """Images (10, 1, 28, 28) maximising z_c - lam ||x||^2 for c = 0..9 from `start`."""
    classes = on_model(model, np.arange(10))
    return ascend(model, np.repeat(start, 10, axis=0),
                  lambda x: logit_gradient(model, x, classes) - 2 * lam * x, steps)


def unit_stimuli(model, block, channels, steps):
    """Inputs maximising the centre unit of `channels` of conv block `block` (0 or 1), taken
    just before its ReLU (after the ReLU a unit that starts below 0 would have no gradient),
    from grey: (len(channels), 1, 28, 28) host."""
    relus = [i for i, layer in enumerate(model.layers) if type(layer).__name__ == "ReLU"]
    head = Sequential(*model.layers[:relus[block]])

    def grad(x):
        with eval_mode(head):
            out = head.forward(x)
            N, C, H, W = out.shape
            dout = np.zeros((N, C, H, W), dtype=np.float32)
            dout[np.arange(N), channels, H // 2, W // 2] = 1.0
            dx, _ = head.backward(to_device(dout, out), param_grads=False)
        return dx
    return ascend(model, np.full((len(channels), 1, 28, 28), 0.5, dtype=np.float32), grad,
                  steps)


def deletion(model, x, t, order):
    """Accuracy as the first FRACTIONS of each image's pixels in `order` (N, 784) are set to 0."""
    acc = []
    for f in FRACTIONS:
        k = int(round(f * 784))
        flat = x.reshape(len(x), -1).copy()
        np.put_along_axis(flat, order[:, :k], 0.0, axis=1)
        acc.append(float(np.mean(predict(model, flat.reshape(x.shape)) == t)))
    return acc


def spearman(a, b):
    """Mean over images of the rank correlation of two maps (N, ...) host."""
    ra = np.argsort(np.argsort(a.reshape(len(a), -1), axis=1), axis=1).astype(float)
    rb = np.argsort(np.argsort(b.reshape(len(b), -1), axis=1), axis=1).astype(float)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    return float(np.mean((ra * rb).sum(1) / np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))))


def run(args):
    xp = namespace_for(args.device)
    paths = model_paths(args)
    out = out_dir(args.out)
    x, t = test_set(args)
    judge = train_model(train_flags(args, "standard", 2), xp)[0]
    rng = np.random.default_rng(args.seed)
    grey = np.full((1, 1, 28, 28), 0.5, dtype=np.float32)
    noise = rng.uniform(0, 1, (1, 1, 28, 28)).astype(np.float32)
    source, target = np.repeat(x[:10], 9, axis=0), np.array(
        [c for y in t[:10] for c in range(10) if c != y])
    report, shown = [], {}
    for path in paths:
        model, settings = load_model(path, xp)
        label = run_name(path)
        sal = saliency(model, x, t)
        random_weights = reference_cnn(batch_norm=bool(settings.get("bn")),
                                       rng=np.random.default_rng(args.seed + 7)).to(xp)
        classes = {s: class_images(model, start, args.steps) for s, start in
                   (("grey", grey), ("noise", noise))}
        large = {"l2": host(targeted_pgd_l2(model, on_model(model, source),
                                            on_model(model, target), LARGE["l2"], steps=40)),
                 "linf": host(targeted_pgd(model, on_model(model, source),
                                           on_model(model, target), LARGE["linf"], steps=40))}
        salient = np.argsort(-sal.reshape(len(x), -1), axis=1)
        shuffled = np.argsort(rng.uniform(size=salient.shape), axis=1)
        row = {"model": label,
               "judge_class_images": {s: float(np.mean(predict(judge, v) == np.arange(10)))
                                      for s, v in classes.items()},
               "model_class_images": {s: float(np.mean(predict(model, v) == np.arange(10)))
                                      for s, v in classes.items()},
               "judge_targeted": {k: float(np.mean(predict(judge, v) == target))
                                  for k, v in large.items()},
               "model_targeted": {k: float(np.mean(predict(model, v) == target))
                                  for k, v in large.items()},
               "deletion_salient": deletion(model, x, t, salient),
               "deletion_random": deletion(model, x, t, shuffled),
               "sanity_rank_correlation": spearman(sal, saliency(random_weights, x, t))}
        report.append(row)
        print(f"{label}: the judge puts {100 * row['judge_class_images']['grey']:.0f}% of the "
              f"class visualisations (from grey) and {100 * row['judge_targeted']['l2']:.0f}% "
              f"of the L2-4 targeted images in the intended class; deletion of 10% of the "
              f"pixels leaves {100 * row['deletion_salient'][3]:.0f}% (salient first) against "
              f"{100 * row['deletion_random'][3]:.0f}% (random); saliency against random "
              f"weights: rank correlation {row['sanity_rank_correlation']:.2f}", flush=True)
        shown[label] = {"saliency": sal[:8], "classes": classes, "large": large,
                        "units": (unit_stimuli(model, 0, list(range(8)), args.steps),
                                  unit_stimuli(model, 1, list(range(0, 64, 8)), args.steps),
                                  host(first_param(model))[:8, 0])}
    write_json(out / "inside.json", {"images": len(x), "fractions": FRACTIONS,
                                     "large_eps": LARGE, "models": report})
    figures(out, shown, x[:8], target[:9], report)
    print(f"wrote {out}/inside.json, saliency.png, classes.png, units.png, targeted.png and "
          "deletion.png")
    return 0


def grid(path, rows, title, cmap="gray", normalise=False):
    """A figure of rows of images: [(row label, [(image, caption), ...]), ...]."""
    cols = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.1 * cols, 1.2 * len(rows) + 0.4),
                             squeeze=False)
    for ax_row, (label, images) in zip(axes, rows):
        for ax, (image, caption) in zip(ax_row, images):
            if normalise:  # one rule for every map: divide by its 99th percentile, clip at 1
                image = np.clip(image / max(np.percentile(image, 99), 1e-12), 0, 1)
            ax.imshow(image, cmap=cmap, vmin=None if cmap != "gray" else 0,
                      vmax=None if cmap != "gray" else 1)
            ax.set_title(caption, fontsize=6)
        ax_row[0].set_ylabel(label, fontsize=7)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def figures(out, shown, digits, targets, report):
    grid(out / "saliency.png", [("digits", [(d[0], "") for d in digits])] + [
        (label, [(s[0], "") for s in v["saliency"]]) for label, v in shown.items()],
        "|dz_y/dx| of the true class's logit", normalise=True)
    grid(out / "classes.png", [(f"{label}, {s}", [(img[0], str(c)) for c, img in
                                                  enumerate(v["classes"][s])])
                               for label, v in shown.items() for s in ("grey", "noise")],
         "Class visualisations: ascent on z_c - 0.01 ||x||^2")
    grid(out / "units.png", [(f"{label}, {kind}", [(img if img.ndim == 2 else img[0], "")
                                                   for img in images])
                             for label, v in shown.items() for kind, images in
                             zip(("conv1 stimuli", "conv2 stimuli", "conv1 filters"),
                                 v["units"])], "Optimal stimuli of units, and the filters")
    grid(out / "targeted.png", [(f"{label}, {k}", [(img[0], f"-> {c}") for img, c in
                                                   zip(v["large"][k][:9], targets)])
                                for label, v in shown.items() for k in LARGE],
         f"Large-eps targeted PGD from one digit toward every other class (L2 {LARGE['l2']}, "
         f"L-inf {LARGE['linf']})")
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(report):
        ax.plot([100 * f for f in FRACTIONS], [100 * a for a in r["deletion_salient"]], "o-",
                color=f"C{i}", label=f"{r['model']}: most salient first")
        ax.plot([100 * f for f in FRACTIONS], [100 * a for a in r["deletion_random"]], "x--",
                color=f"C{i}", label=f"{r['model']}: random order")
    ax.set(xlabel="pixels set to 0 (%)", ylabel="accuracy (%)", ylim=(0, 100),
           title="Deletion curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, out / "deletion.png")

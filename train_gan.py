"""Train a generative adversarial network on MNIST with the hand-written layers of nn/.

    python train_gan.py --gan-loss minimax          # or nonsaturating (the default)

A dense generator maps z ~ N(0, I) to 28x28 images in [0, 1]; a dense discriminator returns a
logit. Each epoch prints one line and updates the run folder: metrics.csv, gan.png, a 10x10 grid
of samples from a fixed z (samples_epochNNN.png and samples.png), and checkpoint.npz (from which
--resume continues); first_steps.csv holds the first 50 generator steps of epoch 1 one by one.
Sample quality is scored with the project's own MNIST classifier (--classifier, a train.py
checkpoint; by default one is trained once and cached in runs/classifier/): the Frechet distance
between its Flatten-layer features of generated and test images, and the spread of its predicted
classes over the generated images (class coverage).
"""
import argparse
import csv
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from attacks import standard_step
from attacks.evaluate import batch_slices
from data.mnist import load_mnist
from gan import GAN_LOSSES, discriminator, discriminator_step, generator, generator_step
from gan.fid import class_fractions, coverage, features_and_classes, frechet_distance
from nn import SGD, Adam, first_param, reference_cnn
from nn.backend import namespace_for, to_device, to_numpy
from nn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, section
from train import (HelpFormatter, TrainingError, _float_in, _int_at_least, load_for_resume,
                   run_cli, write_metrics)

import matplotlib  # noqa: E402  (train imports plot, which has chosen the Agg backend already)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

PROG = "train_gan.py"
# The flags that define a run: --resume refuses a checkpoint made with other values.
RUN_SETTINGS = ("gan_loss", "batch_size", "lr", "beta1", "d_steps", "z_dim", "seed",
                "train_limit", "fid_samples", "classifier", "classifier_bn")
DEFAULT_CLASSIFIER = Path("runs") / "classifier" / "checkpoint.npz"
FIRST_STEPS = 50   # generator steps of epoch 1 recorded one by one in first_steps.csv
GRID = 10          # the sample grid is GRID x GRID images
GEN_BATCH = 500    # images per generator forward when sampling for the score


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--gan-loss", choices=GAN_LOSSES, default="nonsaturating",
                   help="generator cost: minimax E[log(1 - D(G(z)))] or non-saturating "
                        "E[-log D(G(z))]")
    p.add_argument("--epochs", type=_int_at_least(1), default=20)
    p.add_argument("--batch-size", type=_int_at_least(1), default=64)
    p.add_argument("--lr", type=_float_in(0, math.inf, low_open=True, high_open=True),
                   default=2e-4, help="Adam learning rate of both networks")
    p.add_argument("--beta1", type=_float_in(0, 1, high_open=True), default=0.5,
                   help="Adam's first-moment decay (beta2 is 0.999)")
    p.add_argument("--d-steps", type=_int_at_least(1), default=1,
                   help="discriminator steps (each on its own real batch) per generator step")
    p.add_argument("--z-dim", type=_int_at_least(1), default=100, help="size of the noise z")
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--out", type=Path, help="run folder (default: runs/gan-<loss>-seed<seed>)")
    p.add_argument("--train-limit", type=_int_at_least(1), help="use the first N training images")
    p.add_argument("--fid-samples", type=_int_at_least(2), default=10000,
                   help="generated images (and test images, at most the 10,000 there are) "
                        "for the Frechet distance and class coverage")
    p.add_argument("--classifier", type=Path,
                   help="checkpoint.npz of a train.py run (reference CNN) to score samples with "
                        f"(default: {DEFAULT_CLASSIFIER}, trained once if missing)")
    p.add_argument("--classifier-bn", action="store_true",
                   help="the classifier has BatchNorm (default: read 'bn' from the settings.json "
                        "next to it)")
    p.add_argument("--data-dir", type=Path,
                   help="folder with the MNIST IDX files, plain or .gz (default: the embedded copy)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last completed epoch")
    args = p.parse_args(argv)
    if args.out is None:
        limit = f"-t{args.train_limit}" if args.train_limit else ""
        args.out = Path("runs") / f"gan-{args.gan_loss}-seed{args.seed}{limit}"
    return args


# --- the scoring classifier --------------------------------------------------------------------

def _classifier_bn(path, flag):
    """Whether the classifier at `path` has BatchNorm: the flag, else its run's settings.json."""
    if flag:
        return True
    try:
        return bool(json.loads((Path(path).parent / "settings.json").read_text()).get("bn", False))
    except (OSError, ValueError, AttributeError):
        return False


def load_classifier(path, bn, xp):
    """The reference CNN with the weights of train.py checkpoint `path`, on namespace xp."""
    try:
        arrays, _ = load_checkpoint(path)
    except CheckpointError as exc:
        raise TrainingError(f"--classifier: {exc}") from None
    model = reference_cnn(batch_norm=bn).to(xp)
    try:
        model.load_state_dict(section(arrays, "model"))
    except ValueError as exc:
        which = ("with BatchNorm (from --classifier-bn or its settings.json)" if bn else
                 "without BatchNorm (add --classifier-bn if it has BatchNorm)")
        raise TrainingError(f"--classifier: {path} does not hold the reference CNN {which}: "
                            f"{exc}") from None
    return model.eval()


def train_classifier(path, data_dir, xp):
    """Train the reference CNN for one epoch of standard training (seed 0, SGD 0.01 / 0.9,
    batches of 64) on the full training set, save it at `path` as train.py would, return it."""
    images, labels = load_mnist("train", data_dir)
    rng = np.random.default_rng(0)
    model = reference_cnn(rng=rng).to(xp)
    optimizer = SGD(0.01, momentum=0.9)
    like = first_param(model)
    order = rng.permutation(len(images))
    with tqdm(total=len(order), desc="classifier", unit="img", leave=False,
              disable=not sys.stderr.isatty()) as bar:
        for s in batch_slices(len(order), 64):
            idx = order[s]
            standard_step(model, optimizer, to_device(images[idx], like),
                          to_device(labels[idx], like))
            bar.update(len(idx))
    settings = {"mode": "standard", "bn": False, "epochs": 1, "batch_size": 64, "lr": 0.01,
                "momentum": 0.9, "seed": 0}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"cannot create the classifier folder {path.parent}: "
                            f"{exc.strerror}") from None
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()},
                    {"epoch": 1, "settings": settings, "history": []})
    (path.parent / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return model.eval()


def classifier_for(args, xp):
    """The classifier of --classifier, or the cached default one (trained first if missing)."""
    if args.classifier is not None:
        bn = _classifier_bn(args.classifier, args.classifier_bn)
        return load_classifier(args.classifier, bn, xp)
    if DEFAULT_CLASSIFIER.is_file():
        return load_classifier(DEFAULT_CLASSIFIER, _classifier_bn(DEFAULT_CLASSIFIER, False), xp)
    print(f"no --classifier: training the reference CNN for one epoch and caching it in "
          f"{DEFAULT_CLASSIFIER}", flush=True)
    return train_classifier(DEFAULT_CLASSIFIER, args.data_dir, xp)


# --- samples and scores ------------------------------------------------------------------------

def generate(G, z):
    """Host images (N, 1, 28, 28) float32 from host noise z (N, Z), in batches."""
    like = first_param(G)
    out = [to_numpy(G.forward(to_device(z[s], like))) for s in batch_slices(len(z), GEN_BATCH)]
    G.clear_caches()  # forward only: no backward will use them
    return np.reshape(np.concatenate(out), (len(z), 1, 28, 28))


def save_grid(images, path, title):
    """A GRID x GRID mosaic of images (GRID^2, 1, 28, 28) in [0, 1] as a grey-scale PNG."""
    tiles = np.reshape(images[:GRID * GRID], (GRID, GRID, 28, 28))
    mosaic = np.transpose(tiles, (0, 2, 1, 3)).reshape(GRID * 28, GRID * 28)
    fig = plt.figure(figsize=(5, 5.3))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96 * 5 / 5.3))  # fixed margins: no layout pass
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, fontsize=10, y=0.985)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def score(G, classifier, z_fid, test_features):
    """FID against the test features, the class fractions (10,) and the coverage of G(z_fid)."""
    features, classes = features_and_classes(classifier, generate(G, z_fid))
    fractions = class_fractions(classes)
    return frechet_distance(features, test_features), fractions, coverage(fractions)


def plot_gan(history, path, title):
    """gan.png: (a) D and G losses, (b) mean D(x) and D(G(z)), (c) generator output gradient
    norm (log scale), (d) FID, over epochs."""
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    (a, b), (c, d) = axes
    a.plot(epochs, [r["d_loss"] for r in history], marker=".", label="D loss")
    a.plot(epochs, [r["g_loss"] for r in history], marker=".", label="G loss")
    a.set(title="(a) losses", ylabel="loss")
    b.plot(epochs, [r["d_real"] for r in history], marker=".", label="D(x)")
    b.plot(epochs, [r["d_fake"] for r in history], marker=".", label="D(G(z)), D steps")
    b.plot(epochs, [r["g_d_fake"] for r in history], ":", marker=".", label="D(G(z)), G steps")
    b.set(title="(b) mean discriminator output", ylabel="probability", ylim=(0, 1))
    c.semilogy(epochs, [r["grad_norm"] for r in history], marker=".")
    c.set(title="(c) gradient reaching G's output", ylabel="mean ||dl_n / dG(z_n)||")
    d.plot(epochs, [r["fid"] for r in history], marker=".")
    d.set(title="(d) Frechet distance (classifier features)", ylabel="FID")
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in (a, b):
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.08, top=0.9, hspace=0.4, wspace=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_rows(path, rows):
    """Write a list of dicts (same keys) as a CSV file, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


# --- training ----------------------------------------------------------------------------------

def _noise(rng, n, z_dim):
    return rng.standard_normal((n, z_dim)).astype(np.float32)


def train_epoch(G, D, opt_g, opt_d, images, args, rng, desc, first_steps=None):
    """One pass over the shuffled training images: a D step per batch, a G step after every
    --d-steps of them. Returns the epoch's means; appends the first G steps to first_steps."""
    like = first_param(G)
    order = rng.permutation(len(images))
    sums = dict.fromkeys(("d_loss", "d_real", "d_fake", "g_loss", "g_d_fake", "grad_norm"), 0.0)
    n_d = n_g = 0
    with tqdm(total=len(order), desc=desc, unit="img", leave=False,
              disable=not sys.stderr.isatty()) as bar:
        for i, s in enumerate(batch_slices(len(order), args.batch_size)):
            idx = order[s]
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                d = discriminator_step(G, D, opt_d, to_device(images[idx], like),
                                       to_device(_noise(rng, len(idx), args.z_dim), like))
            if not math.isfinite(d.loss):
                raise TrainingError(f"the discriminator loss became {d.loss} in {desc}, batch "
                                    f"{i + 1}; try a smaller --lr")
            sums["d_loss"] += d.loss
            sums["d_real"] += d.d_real
            sums["d_fake"] += d.d_fake
            n_d += 1
            if (i + 1) % args.d_steps == 0:
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    g = generator_step(G, D, opt_g, to_device(
                        _noise(rng, args.batch_size, args.z_dim), like), args.gan_loss)
                if not math.isfinite(g.loss):
                    raise TrainingError(f"the generator loss became {g.loss} in {desc}, batch "
                                        f"{i + 1}; try a smaller --lr")
                sums["g_loss"] += g.loss
                sums["g_d_fake"] += g.d_fake
                sums["grad_norm"] += g.grad_norm
                n_g += 1
                if first_steps is not None and len(first_steps) < FIRST_STEPS:
                    first_steps.append({"g_step": n_g, "batch": i + 1, "g_loss": g.loss,
                                        "d_fake": g.d_fake, "grad_norm": g.grad_norm,
                                        "d_loss": d.loss, "d_real": d.d_real})
            bar.update(len(idx))
            bar.set_postfix(d=f"{sums['d_loss'] / n_d:.3f}",
                            g=f"{sums['g_loss'] / max(n_g, 1):.3f}")
    if n_g == 0:
        raise TrainingError(f"--d-steps {args.d_steps} is more than the {n_d} batches of an "
                            "epoch, so the generator never trains; lower it or add images")
    means = {k: v / (n_d if k.startswith("d_") else n_g) for k, v in sums.items()}
    means["g_steps"] = n_g
    return means


def checkpoint_state(G, D, opt_g, opt_d, rng, epoch, settings, history):
    arrays = {}
    for prefix, obj in (("G", G), ("D", D), ("opt_g", opt_g), ("opt_d", opt_d)):
        arrays.update({f"{prefix}.{k}": v for k, v in obj.state_dict().items()})
    meta = {"epoch": epoch, "settings": settings, "rng": rng.bit_generator.state,
            "history": history}
    return arrays, meta


def restore(path, settings, G, D, opt_g, opt_d, rng):
    """Load checkpoint `path` into both models, both optimizers and rng -> (epoch, history)."""
    arrays, meta = load_for_resume(path, settings, RUN_SETTINGS)
    G.load_state_dict(section(arrays, "G"))
    D.load_state_dict(section(arrays, "D"))
    opt_g.load_state_dict(section(arrays, "opt_g"), like=G.params)
    opt_d.load_state_dict(section(arrays, "opt_d"), like=D.params)
    rng.bit_generator.state = meta["rng"]
    return meta["epoch"], meta["history"]


def epoch_line(row, epochs):
    return (f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  D loss {row['d_loss']:.4f}  "
            f"G loss {row['g_loss']:.4f}  D(x) {row['d_real']:.3f}  D(G(z)) {row['d_fake']:.3f}  "
            f"grad {row['grad_norm']:.3g}  FID {row['fid']:.2f}  coverage {row['coverage']}/10  "
            f"{row['train_seconds']:.1f} s + eval {row['eval_seconds']:.1f} s")


def run(args):
    xp = namespace_for(args.device)
    classifier_path = args.classifier if args.classifier is not None else DEFAULT_CLASSIFIER
    settings = {k: getattr(args, k) for k in RUN_SETTINGS}
    settings["classifier"] = str(classifier_path)
    settings["classifier_bn"] = _classifier_bn(classifier_path, args.classifier_bn)
    ckpt = args.out / "checkpoint.npz"
    if not args.resume and ckpt.exists():
        raise TrainingError(f"{args.out} already holds a run: add --resume to continue it, "
                            "or choose another folder with --out")
    train_x, _ = load_mnist("train", args.data_dir, args.train_limit)
    test_x, _ = load_mnist("test", args.data_dir, args.fid_samples)

    rng = np.random.default_rng(args.seed)
    G = generator(args.z_dim, rng=rng).to(xp)
    D = discriminator(rng=rng).to(xp)
    opt_g = Adam(args.lr, betas=(args.beta1, 0.999))
    opt_d = Adam(args.lr, betas=(args.beta1, 0.999))
    start, history = restore(ckpt, settings, G, D, opt_g, opt_d, rng) if args.resume else (0, [])
    if start >= args.epochs:
        print(f"{args.out} already has {start} epochs; raise --epochs to train further")
        return 0
    classifier = classifier_for(args, xp)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"cannot create the run folder {args.out}: {exc.strerror}") from None
    (args.out / "settings.json").write_text(json.dumps(
        {**vars(args), "out": str(args.out), "data_dir": args.data_dir and str(args.data_dir),
         "classifier": settings["classifier"], "classifier_bn": settings["classifier_bn"]},
        indent=2) + "\n")

    test_features, _ = features_and_classes(classifier, test_x)
    # fixed noise, drawn apart from the training generator so that it never shifts its stream
    z_grid = _noise(np.random.default_rng([args.seed, 1]), GRID * GRID, args.z_dim)
    z_fid = _noise(np.random.default_rng([args.seed, 2]), args.fid_samples, args.z_dim)
    title = f"GAN, {args.gan_loss} generator cost"
    print(f"{title}: {len(train_x)} training images, score on {args.fid_samples} samples; "
          f"epochs {start + 1}..{args.epochs} on {args.device}; writing {args.out}/", flush=True)
    for epoch in range(start + 1, args.epochs + 1):
        t0 = time.perf_counter()
        first = [] if epoch == 1 else None
        means = train_epoch(G, D, opt_g, opt_d, train_x, args, rng,
                            desc=f"epoch {epoch}/{args.epochs}", first_steps=first)
        if not all(bool(xp.all(xp.isfinite(p))) for m in (G, D) for p in m.params.values()):
            raise TrainingError(f"the weights became infinite or NaN in epoch {epoch}; "
                                "try a smaller --lr")
        t1 = time.perf_counter()
        if first:
            write_rows(args.out / "first_steps.csv", first)
        grid = args.out / f"samples_epoch{epoch:03d}.png"
        save_grid(generate(G, z_grid), grid, f"{title}, epoch {epoch}")
        shutil.copyfile(grid, args.out / "samples.png")
        fid, fractions, cover = score(G, classifier, z_fid, test_features)
        history.append({"epoch": epoch, **means, "fid": fid, "coverage": cover,
                        **{f"class_{c}": float(f) for c, f in enumerate(fractions)},
                        "train_seconds": t1 - t0, "eval_seconds": time.perf_counter() - t1})
        save_checkpoint(ckpt, *checkpoint_state(G, D, opt_g, opt_d, rng, epoch, settings, history))
        write_metrics(args.out / "metrics.csv", history)
        plot_gan(history, args.out / "gan.png", title)
        print(epoch_line(history[-1], args.epochs), flush=True)
    return 0


def main(argv=None):
    return run_cli(PROG, run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

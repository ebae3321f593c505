"""A GAN run on MNIST: train_gan.py's flags, one epoch of alternating updates, the run itself.

Each epoch: a pass of D and G steps (steps.py), a sample grid from a fixed z, the Frechet
distance and class coverage of 10,000 samples (fid.py, with the classifier of classifier.py),
then the checkpoint, metrics.csv and gan.png through the run-folder code of training/.
"""
import argparse
import shutil
from pathlib import Path

import numpy as np

from data.mnist import load_mnist
from nn import Adam, batch_slices, on_model
from nn.backend import namespace_for
from nn.checkpoint import section
from training.cli import (
    HelpFormatter,
    TrainingError,
    add_data_flags,
    float_in,
    int_at_least,
    positive_float,
)
from training.loop import check_loss, check_weights, progress_bar, run_epochs
from training.run_folder import (
    locked,
    make_folder,
    refuse_to_overwrite,
    resume,
    save_state,
    write_csv,
    write_metrics,
    write_settings,
)

from .classifier import DEFAULT_CLASSIFIER, classifier_bn, classifier_for
from .fid import features_and_classes
from .losses import GAN_LOSSES
from .models import discriminator, generator
from .report import GRID, generate, plot_gan, save_grid, score
from .steps import discriminator_step, generator_step

DESCRIPTION = "Train a generative adversarial network on MNIST with the hand-written layers of nn/."
# The flags that define a run: --resume refuses a checkpoint made with other values.
RUN_SETTINGS = ("gan_loss", "batch_size", "lr", "beta1", "d_steps", "z_dim", "seed",
                "train_limit", "fid_samples", "classifier", "classifier_bn", "d_lr", "d_dropout",
                "real_label")
# what a checkpoint made before --d-lr, --d-dropout and --real-label existed was trained with
BEFORE_REMEDIES = {"d_lr": None, "d_dropout": 0.0, "real_label": 1.0}
FIRST_STEPS = 50   # generator steps of epoch 1 recorded one by one in first_steps.csv


def parse_args(argv=None, prog=None):
    """train_gan.py's flags -> argparse.Namespace."""
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--gan-loss", choices=GAN_LOSSES, default="nonsaturating",
                   help="generator cost: minimax E[log(1 - D(G(z)))] or non-saturating "
                        "E[-log D(G(z))]")
    p.add_argument("--epochs", type=int_at_least(1), default=20)
    p.add_argument("--batch-size", type=int_at_least(1), default=64)
    p.add_argument("--lr", type=positive_float, default=2e-4,
                   help="Adam learning rate of both networks")
    p.add_argument("--beta1", type=float_in(0, 1, high_open=True), default=0.5,
                   help="Adam's first-moment decay (beta2 is 0.999)")
    p.add_argument("--d-steps", type=int_at_least(1), default=1,
                   help="discriminator steps (each on its own real batch) per generator step")
    p.add_argument("--d-lr", type=positive_float,
                   help="Adam learning rate of the discriminator (default: --lr)")
    p.add_argument("--d-dropout", type=float_in(0, 1, high_open=True), default=0.3,
                   help="dropout probability after each LeakyReLU of the discriminator "
                        "(0: none, as before issue 15)")
    p.add_argument("--real-label", type=float_in(0, 1, low_open=True), default=0.9,
                   help="the discriminator's target for real images; below 1 is one-sided "
                        "label smoothing (1: none, as before issue 15)")
    p.add_argument("--z-dim", type=int_at_least(1), default=100, help="size of the noise z")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--out", type=Path, help="run folder (default: runs/gan-<loss>-seed<seed>)")
    p.add_argument("--train-limit", type=int_at_least(1), help="use the first N training images")
    p.add_argument("--fid-samples", type=int_at_least(2), default=10000,
                   help="generated images (and test images, at most the 10,000 there are) "
                        "for the Frechet distance and class coverage")
    p.add_argument("--classifier", type=Path,
                   help="checkpoint.npz of a train.py run (reference CNN) to score samples with "
                        f"(default: {DEFAULT_CLASSIFIER}, trained once if missing)")
    p.add_argument("--classifier-bn", action="store_true",
                   help="the classifier has BatchNorm (default: read 'bn' from the settings.json "
                        "next to it)")
    add_data_flags(p, data_dir="folder with the MNIST IDX files, plain or .gz (default: the "
                               "embedded copy)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last completed epoch")
    args = p.parse_args(argv)
    if args.out is None:
        limit = f"-t{args.train_limit}" if args.train_limit else ""
        args.out = Path("runs") / f"gan-{args.gan_loss}-seed{args.seed}{limit}"
    return args


def _noise(rng, n, z_dim):
    return rng.standard_normal((n, z_dim)).astype(np.float32)


def train_epoch(G, D, opt_g, opt_d, images, args, rng, desc, first_steps=None):
    """One pass over the shuffled training images: a D step per batch, a G step after every
    --d-steps of them. Returns the epoch's means; appends the first G steps to first_steps."""
    order = rng.permutation(len(images))
    sums = dict.fromkeys(("d_loss", "d_real", "d_fake", "g_loss", "g_d_fake", "grad_norm"), 0.0)
    n_d = n_g = 0
    with progress_bar(len(order), desc) as bar:
        for i, s in enumerate(batch_slices(len(order), args.batch_size)):
            idx = order[s]
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                d = discriminator_step(G, D, opt_d, on_model(G, images[idx]),
                                       on_model(G, _noise(rng, len(idx), args.z_dim)),
                                       args.real_label)
            check_loss(d.loss, "discriminator loss", desc, i + 1)
            sums["d_loss"] += d.loss
            sums["d_real"] += d.d_real
            sums["d_fake"] += d.d_fake
            n_d += 1
            if (i + 1) % args.d_steps == 0:
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    g = generator_step(G, D, opt_g, on_model(
                        G, _noise(rng, args.batch_size, args.z_dim)), args.gan_loss)
                check_loss(g.loss, "generator loss", desc, i + 1)
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


def epoch_line(row, epochs):
    return (f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  D loss {row['d_loss']:.4f}  "
            f"G loss {row['g_loss']:.4f}  D(x) {row['d_real']:.3f}  D(G(z)) {row['d_fake']:.3f}  "
            f"grad {row['grad_norm']:.3g}  FID {row['fid']:.2f}  coverage {row['coverage']}/10  "
            f"{row['train_seconds']:.1f} s + eval {row['eval_seconds']:.1f} s")


def run(args):
    """Train the GAN as the flags say, epoch by epoch, into the run folder args.out."""
    xp = namespace_for(args.device)
    classifier_path = args.classifier if args.classifier is not None else DEFAULT_CLASSIFIER
    settings = {k: getattr(args, k) for k in RUN_SETTINGS}
    settings["classifier"] = str(classifier_path)
    settings["classifier_bn"] = classifier_bn(classifier_path, args.classifier_bn)
    refuse_to_overwrite(args)
    train_x, _ = load_mnist("train", args.data_dir, args.train_limit)
    test_x, _ = load_mnist("test", args.data_dir, args.fid_samples)

    rng = np.random.default_rng(args.seed)
    G = generator(args.z_dim, rng=rng).to(xp)
    D = discriminator(rng=rng, dropout=args.d_dropout).to(xp)
    opt_g = Adam(args.lr, betas=(args.beta1, 0.999))
    opt_d = Adam(args.lr if args.d_lr is None else args.d_lr, betas=(args.beta1, 0.999))
    ckpt, history = args.out / "checkpoint.npz", []
    if args.resume:
        arrays, _, history = resume(ckpt, settings, RUN_SETTINGS, rng, older=BEFORE_REMEDIES)
        G.load_state_dict(section(arrays, "G"))
        D.load_state_dict(section(arrays, "D"))
        opt_g.load_state_dict(section(arrays, "opt_g"), like=G.params)
        opt_d.load_state_dict(section(arrays, "opt_d"), like=D.params)
    classifier = classifier_for(args, xp) if len(history) < args.epochs else None
    make_folder(args.out)
    title = f"GAN, {args.gan_loss} generator cost"

    def publish(history):
        """metrics.csv and the curves from the history (the checkpoint's, on a resume)."""
        write_metrics(args.out / "metrics.csv", history)
        plot_gan(history, args.out / "gan.png", title)

    with locked(args.out):
        if history:  # a kill between the checkpoint and metrics.csv left the CSV behind
            publish(history)
        if len(history) >= args.epochs:
            print(f"{args.out} already has {len(history)} epochs; raise --epochs to train further")
            return 0
        write_settings(args, classifier=settings["classifier"],
                       classifier_bn=settings["classifier_bn"])
        test_features, _ = features_and_classes(classifier, test_x)
        # fixed noise, drawn apart from the training generator so that it never shifts its stream
        z_grid = _noise(np.random.default_rng([args.seed, 1]), GRID * GRID, args.z_dim)
        z_fid = _noise(np.random.default_rng([args.seed, 2]), args.fid_samples, args.z_dim)
        print(f"{title}: {len(train_x)} training images, score on {args.fid_samples} samples; "
              f"epochs {len(history) + 1}..{args.epochs} on {args.device}; writing {args.out}/",
              flush=True)
        first = []  # the first generator steps of epoch 1, one by one

        def train(epoch):
            desc = f"epoch {epoch}/{args.epochs}"
            means = train_epoch(G, D, opt_g, opt_d, train_x, args, rng, desc,
                                first_steps=first if epoch == 1 else None)
            check_weights([G, D], f"epoch {epoch}")
            return means

        def evaluate(epoch):
            if epoch == 1 and first:
                write_csv(args.out / "first_steps.csv", first)
            grid = args.out / f"samples_epoch{epoch:03d}.png"
            save_grid(generate(G, z_grid), grid, f"{title}, epoch {epoch}")
            shutil.copyfile(grid, args.out / "samples.png")
            fid, fractions, cover = score(G, classifier, z_fid, test_features)
            return {"fid": fid, "coverage": cover,
                    **{f"class_{c}": float(f) for c, f in enumerate(fractions)}}

        def save(history):
            save_state(ckpt, {"G": G, "D": D, "opt_g": opt_g, "opt_d": opt_d}, rng, len(history),
                       settings, history)
            publish(history)
            print(epoch_line(history[-1], args.epochs), flush=True)

        run_epochs(history, args.epochs, train, evaluate, save)
    return 0

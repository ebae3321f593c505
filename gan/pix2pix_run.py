"""A pix2pix run on MNIST: train_pix2pix.py's flags, the measures of an epoch, the run itself.

Each epoch trains the U-Net against the PatchGAN on batches of the training set (train_step of
pix2pix.py), then measures on the first --eval-images test images: the judge's accuracy on the
generated digits, the L1 distance to the truth, the share of mid-grey pixels, the Frechet
distance in the judge's features (fid.py) and diversity under two dropout masks; the sample
figure and the ablation's report are pix2pix_report.py's. The checkpoint, metrics.csv and
settings.json go through the run-folder code of training/.
"""
import argparse
from pathlib import Path

import numpy as np

from data.mnist import load_mnist
from nn import Adam, Dropout, batch_slices, on_model
from nn.backend import namespace_for, to_numpy
from nn.checkpoint import section
from training.cli import HelpFormatter, float_in, int_at_least, positive_int
from training.loop import progress_bar, run_epochs
from training.run_folder import (
    locked,
    make_folder,
    refuse_to_overwrite,
    resume,
    save_state,
    write_metrics,
    write_settings,
)

from .fid import features_and_classes, frechet_distance
from .pix2pix import VARIANTS, UNet, inpainting_input, patch_discriminator, train_step
from .pix2pix_report import SHOWN, report, samples

DESCRIPTION = "pix2pix on MNIST: inpaint the bottom half of digits, and the ablation of the costs."
# The flags that define a run: --resume refuses a checkpoint made with other values.
RUN_SETTINGS = ("variant", "lam", "batch_size", "lr", "seed", "train_limit", "eval_images")


def parse_args(argv=None, prog=None):
    """train_pix2pix.py's flags (commands run and report) -> argparse.Namespace."""
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    r = sub.add_parser("run", help="train one variant", formatter_class=HelpFormatter)
    r.add_argument("--variant", choices=VARIANTS, default="l1+cgan")
    r.add_argument("--lam", type=float_in(0, 1e6), default=100.0, help="weight of the L1 term")
    r.add_argument("--epochs", type=positive_int, default=10)
    r.add_argument("--batch-size", type=positive_int, default=64)
    r.add_argument("--lr", type=float_in(0, 1, low_open=True), default=2e-4)
    r.add_argument("--seed", type=int_at_least(0), default=0)
    r.add_argument("--train-limit", type=positive_int, help="the first N training images")
    r.add_argument("--eval-images", type=positive_int, default=1000,
                   help="test images measured after each epoch")
    r.add_argument("--judge", default="standard",
                   help="the shipped model (models/) that reads the generated digits")
    r.add_argument("--out", type=Path, help="run folder (default: runs/pix2pix-<variant>"
                                            "[-lam<lam>]-seed<seed>)")
    r.add_argument("--data-dir", type=Path, help="folder with the MNIST IDX files (default: the "
                                                 "embedded copy)")
    r.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    r.add_argument("--resume", action="store_true")
    rep = sub.add_parser("report", help="the ablation's table and grid from run folders",
                         formatter_class=HelpFormatter)
    rep.add_argument("--runs", type=Path, default=Path("results") / "pix2pix")
    args = p.parse_args(argv)
    if args.command == "run" and args.out is None:
        lam = "" if args.lam == 100 or args.variant == "cgan" else f"-lam{args.lam:g}"
        args.out = Path("runs") / f"pix2pix-{args.variant}{lam}-seed{args.seed}"
    return args


def dropout_on(G, on):
    for layer in G.layers:
        if isinstance(layer, Dropout):
            layer.training = on


def generate(G, x, dropout=False):
    """G's outputs (N, 1, 28, 28) on the host, BatchNorm on its running statistics; dropout as
    the noise when asked (pix2pix keeps it at test time)."""
    G.eval()
    dropout_on(G, dropout)
    out = np.concatenate([to_numpy(G.forward(on_model(G.parts["enc1"], x[s])))
                          for s in batch_slices(len(x), 100)])
    G.train()
    return out


def mid_grey(images):
    """The share of pixels between 0.2 and 0.8: blur spreads grey where digits are black or
    white."""
    return float(np.mean((images > 0.2) & (images < 0.8)))


def measure(G, judge, x, y, t, real_features):
    fake = generate(G, x)
    features, classes = features_and_classes(judge, fake)
    other = generate(G, x, dropout=True)
    again = generate(G, x, dropout=True)
    return {"accuracy": float(np.mean(classes == t)), "l1": float(np.mean(np.abs(fake - y))),
            "mid_grey": mid_grey(fake), "mid_grey_real": mid_grey(y),
            "frechet": frechet_distance(features, real_features),
            "diversity": float(np.mean(np.abs(other - again)))}


def run(args, load_judge):
    """The command of args: train one variant into the run folder args.out, or write the
    ablation's report of the run folders in args.runs.

    load_judge(name) -> the classifier (host, eval mode) that reads the generated digits, or
    TrainingError in one sentence: the shipped models are the caller's (the root script's).
    """
    if args.command == "report":
        return report(args.runs)
    xp = namespace_for(args.device)
    refuse_to_overwrite(args)
    judge = load_judge(args.judge)
    train_y, _ = load_mnist("train", args.data_dir, args.train_limit)
    test_y, test_t = load_mnist("test", args.data_dir, args.eval_images)
    train_x, test_x = inpainting_input(train_y), inpainting_input(test_y)
    real_features, real_classes = features_and_classes(judge, test_y)
    rng = np.random.default_rng(args.seed)
    G = UNet(rng=rng).to(xp)
    D = patch_discriminator(args.variant != "l1+gan", rng).to(xp)
    opt_g, opt_d = Adam(args.lr, betas=(0.5, 0.999)), Adam(args.lr, betas=(0.5, 0.999))
    settings = {k: getattr(args, k) for k in RUN_SETTINGS}
    ckpt, history = args.out / "checkpoint.npz", []
    if args.resume:
        arrays, _, history = resume(ckpt, settings, RUN_SETTINGS, rng)
        G.load_state_dict(section(arrays, "G"))
        D.load_state_dict(section(arrays, "D"))
        opt_g.load_state_dict(section(arrays, "opt_g"), like=G.params)
        opt_d.load_state_dict(section(arrays, "opt_d"), like=D.params)
    make_folder(args.out)
    ceiling = float(np.mean(real_classes == test_t))

    def train(epoch):
        order, sums = rng.permutation(len(train_x)), {}
        with progress_bar(len(order), f"epoch {epoch}/{args.epochs}") as bar:
            for s in batch_slices(len(order), args.batch_size):
                idx, enc1 = order[s], G.parts["enc1"]
                stats = train_step(G, D, opt_g, opt_d, on_model(enc1, train_x[idx]),
                                   on_model(enc1, train_y[idx]), args.variant, args.lam)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
                bar.update(len(idx))
        return {f"train_{k}": v / len(order) for k, v in sums.items()}

    def evaluate(epoch):
        row = measure(G, judge, test_x, test_y, test_t, real_features)
        sample = generate(G, test_x[:SHOWN])
        np.save(args.out / "final.npy", sample)
        samples(args.out / f"samples_epoch{epoch:03d}.png", test_x[:SHOWN], sample,
                test_y[:SHOWN], f"{args.variant}, epoch {epoch}")
        return {**row, "accuracy_ceiling": ceiling}

    def save(history):
        save_state(ckpt, {"G": G, "D": D, "opt_g": opt_g, "opt_d": opt_d}, rng, len(history),
                   settings, history)
        write_metrics(args.out / "metrics.csv", history)
        r = history[-1]
        print(f"epoch {r['epoch']}/{args.epochs}  accuracy {100 * r['accuracy']:.1f}% "
              f"(truth {100 * ceiling:.1f}%)  L1 {r['l1']:.4f}  mid-grey "
              f"{100 * r['mid_grey']:.1f}% (truth {100 * r['mid_grey_real']:.1f}%)  "
              f"Frechet {r['frechet']:.1f}  diversity {r['diversity']:.4f}", flush=True)

    with locked(args.out):
        write_settings(args)
        if history:
            write_metrics(args.out / "metrics.csv", history)
        print(f"pix2pix {args.variant} on {len(train_x)} training images; epochs "
              f"{len(history) + 1}..{args.epochs}; writing {args.out}/", flush=True)
        run_epochs(history, args.epochs, train, evaluate, save)
    return 0

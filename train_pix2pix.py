"""pix2pix on MNIST: inpaint the bottom half of digits, and the ablation of the costs.

    python train_pix2pix.py run --variant l1+cgan --seed 0      # one run (gan/pix2pix.py)
    python train_pix2pix.py report --runs results/pix2pix       # the ablation's table and grid

Each epoch of `run` trains on the training set in batches (Adam 2e-4, beta1 0.5, as pix2pix)
and measures, on the first --eval-images test images: the classifier's accuracy on the
generated digits against the true labels (the shipped standard CNN, which never saw a generated
image; on the true digits it is the ceiling), the L1 distance to the truth, sharpness (the share
of mid-grey pixels, 0.2 to 0.8, against the true digits'), the Frechet distance in the
classifier's features, and diversity (mean L1 between two outputs for the same input under two
dropout masks). The run folder gets metrics.csv, samples_epochNNN.png, final.npy (the outputs
for 8 fixed test digits) and a checkpoint from which --resume continues.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

import models
from attacks.evaluation import batch_slices
from data.mnist import load_mnist
from experiments.figures import plt
from gan.fid import features_and_classes, frechet_distance
from gan.pix2pix import VARIANTS, UNet, inpainting_input, patch_discriminator, train_step
from nn import Adam, Dropout, first_param
from nn.backend import namespace_for, to_device, to_numpy
from nn.checkpoint import section
from training.cli import (
    HelpFormatter,
    RunError,
    TrainingError,
    float_in,
    int_at_least,
    positive_int,
    run_cli,
)
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

PROG = "train_pix2pix.py"
RUN_SETTINGS = ("variant", "lam", "batch_size", "lr", "seed", "train_limit", "eval_images")
SHOWN = 8


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
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
    like = first_param(G.parts["enc1"])
    out = np.concatenate([to_numpy(G.forward(to_device(x[s], like)))
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


def run(args):
    if args.command == "report":
        return report(args.runs)
    xp = namespace_for("cpu")
    refuse_to_overwrite(args)
    try:
        judge = models.load(args.judge)[0]
    except models.ModelError as exc:
        raise TrainingError(f"the judge is a shipped model: {exc}") from None
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
                idx, like = order[s], first_param(G.parts["enc1"])
                stats = train_step(G, D, opt_g, opt_d, to_device(train_x[idx], like),
                                   to_device(train_y[idx], like), args.variant, args.lam)
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


def samples(path, x, out, y, title):
    fig, axes = plt.subplots(3, len(x), figsize=(1.1 * len(x), 3.6), squeeze=False)
    for row, (images, name) in enumerate(((x, "input"), (out, "output"), (y, "truth"))):
        for ax, image in zip(axes[row], images):
            ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(runs):
    """results/pix2pix/README.md table (last epoch, mean ± std over seeds per variant) and
    grid.png (input | each variant | truth, seed 0)."""
    rows, shown = {}, {}
    for folder in sorted(Path(runs).glob("*")) if Path(runs).is_dir() else []:
        if not (folder / "metrics.csv").is_file():
            continue
        s = json.loads((folder / "settings.json").read_text())
        name = s["variant"] + ("" if s["lam"] == 100 or s["variant"] == "cgan"
                               else f" (lambda {s['lam']:g})")
        with open(folder / "metrics.csv", newline="") as f:
            last = list(csv.DictReader(f))[-1]
        rows.setdefault(name, []).append({k: float(v) for k, v in last.items()})
        if s["seed"] == 0 and (folder / "final.npy").is_file():
            shown[name] = np.load(folder / "final.npy")
    if not rows:
        raise RunError(f"{runs} holds no pix2pix runs")
    keys = ("accuracy", "l1", "mid_grey", "frechet", "diversity")
    lines = ["| variant | seeds | accuracy (%) | L1 | mid-grey (%) | Frechet | diversity |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, rs in rows.items():
        cells = []
        for k in keys:
            v = np.array([r[k] for r in rs]) * (100 if k in ("accuracy", "mid_grey") else 1)
            cells.append(f"{v.mean():.3g}" + (f" ± {v.std(ddof=1):.2g}" if len(v) > 1 else ""))
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    first = next(iter(rows.values()))[0]
    lines.append(f"| truth | | {100 * first['accuracy_ceiling']:.3g} | 0 | "
                 f"{100 * first['mid_grey_real']:.3g} | 0 | |")
    (Path(runs) / "README.md").write_text("\n".join(lines) + "\n")
    if shown:
        y, _ = load_mnist("test", limit=SHOWN)
        columns = [("input", inpainting_input(y))] + list(shown.items()) + [("truth", y)]
        fig, axes = plt.subplots(len(columns), SHOWN, figsize=(1.1 * SHOWN, 1.2 * len(columns)),
                                 squeeze=False)
        for row, (name, images) in enumerate(columns):
            for ax, image in zip(axes[row], images):
                ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[row, 0].set_ylabel(name, fontsize=7)
        fig.tight_layout()
        fig.savefig(Path(runs) / "grid.png", dpi=100)
        plt.close(fig)
    print("\n".join(lines))
    print(f"wrote {runs}/README.md and grid.png")
    return 0


def main(argv=None):
    args = parse_args(argv)
    return run_cli(PROG, run, args, errors=(RunError,))


if __name__ == "__main__":
    sys.exit(main())

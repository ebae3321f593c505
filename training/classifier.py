"""The exercise: train the CNN on MNIST and evaluate it against FGS and FGV after every epoch.

`run(args)` reads top to bottom as the exercise: load the data, build the model, pick the step
of the chosen training mode, then train and evaluate each epoch and save the run folder.
`parse_args` holds the flags of train.py; the experiments of attack.py train their models
through the same two functions.
"""
import argparse
import math
from functools import partial
from pathlib import Path

import numpy as np

from attacks import (
    adversarial_step,
    certify,
    default_attacks,
    evaluate,
    ibp_step,
    noise_step,
    pgd_attack,
    pgd_step,
    standard_step,
)
from data.mnist import load_mnist
from nn import SGD, reference_cnn
from nn.backend import blas_kernel_note, namespace_for
from nn.checkpoint import section

from .cli import (
    HelpFormatter,
    TrainingError,
    add_data_flags,
    float_in,
    int_at_least,
    positive_float,
    positive_int,
)
from .loop import run_epochs, train_epoch
from .plots import plot_runs
from .run_folder import (
    checkpoint_epochs,
    locked,
    make_folder,
    refuse_to_overwrite,
    resume,
    save_state,
    write_metrics,
    write_settings,
)

DESCRIPTION = ("Train the exercise's CNN on MNIST and evaluate it against FGS and FGV after every "
               "epoch.")
# The flags that define a run: --resume refuses a checkpoint made with other values.
RUN_SETTINGS = ("mode", "bn", "batch_size", "lr", "momentum", "alpha", "fgv_alpha",
                "noise_alpha", "seed", "train_limit", "test_limit", "train_half", "pgd_images",
                "pgd_steps", "pgd_train_steps", "pgd_warmup", "dataset", "ibp_eps", "ibp_warmup",
                "ibp_ramp")
# what a checkpoint made before a flag existed was made with
OLDER = {"dataset": "mnist", "ibp_eps": None, "ibp_warmup": None, "ibp_ramp": None}


def parse_args(argv=None, prog=None):
    """train.py's flags -> argparse.Namespace, with the defaults that depend on other flags."""
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--mode", choices=["standard", "noise", "adversarial", "pgd", "ibp"],
                   default="standard",
                   help="train on clean, sign-noise, clean + FGS batches (the exercise), on "
                        "PGD batches only (Madry et al.), or on interval bounds (IBP, Gowal et "
                        "al.: certified robustness, a certified_acc column per epoch)")
    p.add_argument("--bn", action="store_true", help="the reference CNN with BatchNorm")
    p.add_argument("--epochs", type=positive_int, default=50)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=0.01)
    p.add_argument("--momentum", type=float_in(0, 1, high_open=True), default=0.9)
    p.add_argument("--eps", "--alpha", dest="alpha", metavar="EPS", type=float_in(0, 1),
                   default=0.3,
                   help="the radius: FGS step for adversarial training and for evaluation, "
                        "PGD's and IBP's eps (--alpha, the exercise's name, is kept as an alias)")
    p.add_argument("--pgd-train-steps", type=positive_int,
                   help="PGD steps per batch in --mode pgd (default 7)")
    p.add_argument("--pgd-warmup", type=float_in(0, math.inf, high_open=True),
                   help="in --mode pgd, epochs over which PGD's eps grows linearly from 0 to "
                        "--alpha (default 1; at full eps from the start the CNN stays at chance)")
    p.add_argument("--ibp-eps", type=float_in(0, 1),
                   help="in --mode ibp, the radius of the training box (default --alpha; Gowal "
                        "et al. train MNIST's 0.3 at 0.4)")
    p.add_argument("--ibp-warmup", type=float_in(0, math.inf, high_open=True),
                   help="in --mode ibp, epochs of clean training first (default 1)")
    p.add_argument("--ibp-ramp", type=float_in(0, math.inf, high_open=True),
                   help="in --mode ibp, epochs over which the box grows from 0 to --ibp-eps and "
                        "the clean loss's weight falls from 1 to 0.5 (default 10)")
    p.add_argument("--fgv-alpha", type=float_in(0, 1), default=0.6, help="FGV step for evaluation")
    p.add_argument("--noise-alpha", type=float_in(0, 1), default=0.3,
                   help="size of the random sign noise in --mode noise")
    p.add_argument("--pgd-images", type=positive_int,
                   help="also attack the first N test images with PGD (eps --alpha, random "
                        "start) after each epoch: FGS accuracy that PGD does not confirm is "
                        "gradient masking, not robustness")
    p.add_argument("--pgd-steps", type=positive_int,
                   help="PGD steps (default 20 with --pgd-images)")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--out", type=Path, help="run folder (default: runs/<mode>[-bn]-seed<seed>)")
    p.add_argument("--train-limit", type=positive_int, help="use the first N training images")
    p.add_argument("--train-half", type=int, choices=[1, 2],
                   help="train on the first or the second half of the (limited) training set "
                        "only: two networks on disjoint data, for transfer experiments")
    p.add_argument("--test-limit", type=positive_int, help="use the first N test images")
    add_data_flags(p, dataset="fashion-mnist is read from --data-dir, else from Debian's "
                              "dataset-fashion-mnist",
                   data_dir="folder with the IDX files, plain or .gz (default: the embedded "
                            "MNIST, or Debian's Fashion-MNIST)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last completed epoch")
    args = p.parse_args(argv)
    if args.pgd_steps is not None and args.pgd_images is None:
        p.error("--pgd-steps needs --pgd-images")
    if args.pgd_images is not None and args.pgd_steps is None:
        args.pgd_steps = 20
    for mode, flag, default in (("pgd", "pgd_train_steps", 7), ("pgd", "pgd_warmup", 1.0),
                                ("ibp", "ibp_eps", args.alpha), ("ibp", "ibp_warmup", 1.0),
                                ("ibp", "ibp_ramp", 10.0)):
        if getattr(args, flag) is not None and args.mode != mode:
            p.error(f"--{flag.replace('_', '-')} needs --mode {mode}")
        if args.mode == mode and getattr(args, flag) is None:
            setattr(args, flag, default)
    if args.mode == "ibp" and args.bn:
        p.error("--mode ibp trains without --bn: interval bounds need BatchNorm's statistics "
                "fixed, and training keeps changing them")
    if args.out is None:
        args.out = Path("runs") / default_name(args)
    return args


def default_name(args):
    """The run folder's name: [fashion-]<mode>[-bn]-seed<seed>[-eps<alpha>][-t<train limit>]
    [-e<test limit>][-half<h>]; eps only where --alpha is not the exercise's 0.3."""
    limits = "".join(f"-{k}{v}" for k, v in (("eps", f"{args.alpha:g}" if args.alpha != 0.3
                                               else None), ("t", args.train_limit),
                                              ("e", args.test_limit), ("half", args.train_half))
                     if v)
    dataset = "" if args.dataset == "mnist" else "fashion-"
    return f"{dataset}{args.mode}{'-bn' if args.bn else ''}-seed{args.seed}{limits}"


def load_data(args):
    """(train images, train labels, test images, test labels) on the host, as the flags ask."""
    train_x, train_t = load_mnist("train", args.data_dir, args.train_limit, args.dataset)
    if args.train_half:
        middle = len(train_x) // 2
        half = slice(0, middle) if args.train_half == 1 else slice(middle, None)
        train_x, train_t = train_x[half], train_t[half]
    return (train_x, train_t, *load_mnist("test", args.data_dir, args.test_limit, args.dataset))


def make_step(args, rng):
    """The optimizer step of the chosen mode, as step(model, optimizer, x, t, progress) -> loss.

    progress: the epochs completed so far, counted in fractions (0.5 is half the first epoch);
    only --mode pgd and --mode ibp use it, for their eps schedules.
    """
    if args.mode == "ibp":
        def step(model, optimizer, x, t, progress):
            ramp = min(1.0, max(0.0, (progress - args.ibp_warmup) / args.ibp_ramp)) \
                if args.ibp_ramp else float(progress >= args.ibp_warmup)
            return ibp_step(model, optimizer, x, t, eps=args.ibp_eps * ramp,
                            kappa=1 - 0.5 * ramp)
        return step
    if args.mode == "pgd":
        def step(model, optimizer, x, t, progress):
            ramp = min(1.0, progress / args.pgd_warmup) if args.pgd_warmup else 1.0
            return pgd_step(model, optimizer, x, t, eps=args.alpha * ramp,
                            steps=args.pgd_train_steps, rng=rng)
        return step
    if args.mode == "noise":
        step = partial(noise_step, alpha=args.noise_alpha, rng=rng)
    elif args.mode == "adversarial":
        step = partial(adversarial_step, alpha=args.alpha)
    else:
        step = standard_step
    return lambda model, optimizer, x, t, progress: step(model, optimizer, x, t)


def evaluate_pgd(model, images, labels, args, epoch):
    """PGD accuracy of the first --pgd-images test images, as pgd_* columns of metrics.csv.

    The random starts come from their own generator (seed, epoch), so that adding PGD leaves
    training, which draws from the run's generator, unchanged.
    """
    rng = np.random.default_rng([args.seed, epoch])
    n = args.pgd_images
    attack = pgd_attack(args.alpha, args.pgd_steps, rng)
    r = evaluate(model, images[:n], labels[:n], {"pgd": attack})
    return {"pgd_n_correct": r["n_correct"], "pgd_acc": r["pgd_acc"],
            "pgd_robust_acc": r["pgd_robust_acc"], "pgd_l2": r["pgd_l2"]}


def epoch_line(row, epochs):
    pgd = (f"  PGD {100 * row['pgd_acc']:.2f}% (of {row['pgd_n_correct']})"
           if "pgd_acc" in row else "")
    pgd += f"  certified {100 * row['certified_acc']:.2f}%" if "certified_acc" in row else ""
    return (f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  loss {row['train_loss']:.4f}  "
            f"clean {100 * row['clean_acc']:.2f}%  FGS {100 * row['fgs_acc']:.2f}%  "
            f"FGV {100 * row['fgv_acc']:.2f}% (of {row['n_correct']} correct){pgd}  "
            f"{row['train_seconds']:.1f} s + eval {row['eval_seconds']:.1f} s")


def run(args):
    """Train and evaluate as the flags say, epoch by epoch, into the run folder args.out."""
    xp = namespace_for(args.device)
    refuse_to_overwrite(args)
    train_x, train_t, test_x, test_t = load_data(args)

    rng = np.random.default_rng(args.seed)
    model = reference_cnn(batch_norm=args.bn, rng=rng).to(xp)
    optimizer = SGD(args.lr, momentum=args.momentum)
    settings = {k: getattr(args, k) for k in RUN_SETTINGS}
    ckpt, history = args.out / "checkpoint.npz", []
    if args.resume:
        arrays, _, history = resume(ckpt, settings, RUN_SETTINGS, rng, older=OLDER)
        model.load_state_dict(section(arrays, "model"))
        optimizer.load_state_dict(section(arrays, "optim"), like=model.params)
    start = len(history)
    make_folder(args.out)
    step, attacks = make_step(args, rng), default_attacks(args.alpha, args.fgv_alpha)
    name = (f"{args.mode} training{' with BatchNorm' if args.bn else ''}"
            f"{' (Fashion-MNIST)' if args.dataset == 'fashion-mnist' else ''}")

    def train(epoch):
        return {"train_loss": train_epoch(model, optimizer, step, train_x, train_t,
                                          args.batch_size, rng, f"epoch {epoch}/{args.epochs}",
                                          done=epoch - 1)}

    def evaluate_epoch(epoch):
        metrics = evaluate(model, test_x, test_t, attacks)
        if args.pgd_images:
            metrics.update(evaluate_pgd(model, test_x, test_t, args, epoch))
        if args.mode == "ibp":
            metrics["certified_acc"] = float(certify(model, test_x, test_t, args.alpha).mean())
        return metrics

    def publish(history):
        """metrics.csv and the figure from the history (the checkpoint's, on a resume)."""
        write_metrics(args.out / "metrics.csv", history)
        plot_runs([args.out], args.out / "accuracy.png", title=name)

    def save(history):
        save_state(ckpt, {"model": model, "optim": optimizer}, rng, len(history), settings,
                   history)
        publish(history)
        print(epoch_line(history[-1], args.epochs), flush=True)

    with locked(args.out):
        if checkpoint_epochs(args.out) != start and args.resume:
            raise TrainingError(f"{args.out} changed while this run started: run it again")
        write_settings(args)
        if history:  # a kill between the checkpoint and metrics.csv left the CSV behind
            publish(history)
        print(f"{name} on {len(train_x)} images, tested on {len(test_x)}; epochs "
              f"{start + 1}..{args.epochs} on {args.device}; writing {args.out}/", flush=True)
        if args.device == "cpu" and (note := blas_kernel_note()):
            print(f"note: {note}", flush=True)
        run_epochs(history, args.epochs, train, evaluate_epoch, save)
    if start >= args.epochs:
        print(f"{args.out} already has {start} epochs; raise --epochs to train further")
    return 0

"""Train the exercise's CNN on MNIST and evaluate it against FGS and FGV after every epoch.

    python train.py --mode adversarial            # or standard, noise, pgd; --bn adds BatchNorm

Each epoch prints one line and updates the run folder: metrics.csv, accuracy.png and
checkpoint.npz (from which --resume continues). settings.json records the run's flags.
--pgd-images N adds PGD accuracy on the first N test images to every epoch's evaluation.
"""
import argparse
import csv
import json
import math
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from attacks import (adversarial_step, default_attacks, evaluate, noise_step, pgd_attack,
                     pgd_step, standard_step)
from attacks.evaluate import batch_slices
from data.mnist import MNISTError, load_mnist
from nn import SGD, first_param, reference_cnn
from nn.backend import DeviceError, namespace_for, reuse_host_memory, to_device, xp_of
from nn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, section
from plot import RunError, plot_runs

# The flags that define a run: --resume refuses a checkpoint made with other values.
RUN_SETTINGS = ("mode", "bn", "batch_size", "lr", "momentum", "alpha", "fgv_alpha",
                "noise_alpha", "seed", "train_limit", "test_limit", "train_half", "pgd_images",
                "pgd_steps", "pgd_train_steps", "pgd_warmup")


def _int_at_least(minimum):
    wanted = "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}"

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1)


def _float_in(low, high, low_open=False, high_open=False):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (low < value if low_open else low <= value) or \
                not (value < high if high_open else value <= high):
            bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"expected a number in {bounds}, got {value}")
        return value
    return parse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except None: those flags' help says what their absence means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--mode", choices=["standard", "noise", "adversarial", "pgd"],
                   default="standard",
                   help="train on clean, sign-noise, clean + FGS batches (the exercise), or on "
                        "PGD batches only (Madry et al.)")
    p.add_argument("--bn", action="store_true", help="the reference CNN with BatchNorm")
    p.add_argument("--epochs", type=_positive_int, default=50)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--lr", type=_float_in(0, math.inf, low_open=True, high_open=True), default=0.01)
    p.add_argument("--momentum", type=_float_in(0, 1, high_open=True), default=0.9)
    p.add_argument("--alpha", type=_float_in(0, 1), default=0.3,
                   help="FGS step for adversarial training and for evaluation; PGD's eps")
    p.add_argument("--pgd-train-steps", type=_positive_int,
                   help="PGD steps per batch in --mode pgd (default 7)")
    p.add_argument("--pgd-warmup", type=_float_in(0, math.inf, high_open=True),
                   help="in --mode pgd, epochs over which PGD's eps grows linearly from 0 to "
                        "--alpha (default 1; at full eps from the start the CNN stays at chance)")
    p.add_argument("--fgv-alpha", type=_float_in(0, 1), default=0.6, help="FGV step for evaluation")
    p.add_argument("--noise-alpha", type=_float_in(0, 1), default=0.3,
                   help="size of the random sign noise in --mode noise")
    p.add_argument("--pgd-images", type=_positive_int,
                   help="also attack the first N test images with PGD (eps --alpha, random "
                        "start) after each epoch: FGS accuracy that PGD does not confirm is "
                        "gradient masking, not robustness")
    p.add_argument("--pgd-steps", type=_positive_int,
                   help="PGD steps (default 20 with --pgd-images)")
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--out", type=Path, help="run folder (default: runs/<mode>[-bn]-seed<seed>)")
    p.add_argument("--train-limit", type=_positive_int, help="use the first N training images")
    p.add_argument("--train-half", type=int, choices=[1, 2],
                   help="train on the first or the second half of the (limited) training set "
                        "only: two networks on disjoint data, for transfer experiments")
    p.add_argument("--test-limit", type=_positive_int, help="use the first N test images")
    p.add_argument("--data-dir", type=Path,
                   help="folder with the MNIST IDX files, plain or .gz (default: the embedded copy)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last completed epoch")
    args = p.parse_args(argv)
    if args.pgd_steps is not None and args.pgd_images is None:
        p.error("--pgd-steps needs --pgd-images")
    if args.pgd_images is not None and args.pgd_steps is None:
        args.pgd_steps = 20
    for flag, default in (("pgd_train_steps", 7), ("pgd_warmup", 1.0)):
        if getattr(args, flag) is not None and args.mode != "pgd":
            p.error(f"--{flag.replace('_', '-')} needs --mode pgd")
        if args.mode == "pgd" and getattr(args, flag) is None:
            setattr(args, flag, default)
    if args.out is None:
        limits = "".join(f"-{k}{v}" for k, v in (("t", args.train_limit), ("e", args.test_limit),
                                                  ("half", args.train_half)) if v)
        args.out = Path("runs") / f"{args.mode}{'-bn' if args.bn else ''}-seed{args.seed}{limits}"
    return args


class TrainingError(Exception):
    """The run cannot go on (one sentence for the user)."""


def make_step(args, rng):
    """The optimizer step of the chosen mode, as step(model, optimizer, x, t, progress) -> loss.

    progress: the epochs completed so far, counted in fractions (0.5 is half the first epoch);
    only --mode pgd uses it, for its eps warm-up.
    """
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


def train_epoch(model, optimizer, step, images, labels, batch_size, rng, desc, done=0):
    """One pass over the shuffled training set after `done` epochs; returns its mean batch loss."""
    like = first_param(model)
    order = rng.permutation(len(images))
    model.train()
    total, seen = 0.0, 0
    with tqdm(total=len(order), desc=desc, unit="img", leave=False,
              disable=not sys.stderr.isatty()) as bar:
        for s in batch_slices(len(order), batch_size):
            idx = order[s]
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                # a diverging step overflows inside the model: the check below says so once
                loss = float(step(model, optimizer, to_device(images[idx], like),
                                  to_device(labels[idx], like), done + s.start / len(order)))
            if not math.isfinite(loss):
                raise TrainingError(f"the training loss became {loss} in {desc}, batch "
                                    f"{s.start // batch_size + 1}; try a smaller --lr")
            total, seen = total + loss * len(idx), seen + len(idx)
            bar.update(len(idx))
            bar.set_postfix(loss=f"{total / seen:.4f}")
    xp = xp_of(like)  # the loss is checked before each update: check the last update too
    if not all(bool(xp.all(xp.isfinite(p))) for p in model.params.values()):
        raise TrainingError(f"the weights became infinite or NaN in {desc}; try a smaller --lr")
    return total / seen


def checkpoint_state(model, optimizer, rng, epoch, settings, history):
    arrays = {f"model.{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim.{k}": v for k, v in optimizer.state_dict().items()})
    meta = {"epoch": epoch, "settings": settings, "rng": rng.bit_generator.state,
            "history": history}
    return arrays, meta


def load_for_resume(path, settings, names=RUN_SETTINGS):
    """(arrays, meta) of checkpoint `path`; a TrainingError if it is unreadable or was made
    with other values of the flags `names` than `settings` holds."""
    try:
        arrays, meta = load_checkpoint(path)
    except CheckpointError as exc:
        raise TrainingError(f"--resume: {exc}") from None
    changed = [f"--{k.replace('_', '-')} {meta['settings'].get(k)} (now {settings[k]})"
               for k in names if meta["settings"].get(k) != settings[k]]
    if changed:
        raise TrainingError(f"--resume: the checkpoint {path} was made with other settings: "
                            + ", ".join(changed))
    return arrays, meta


def restore(path, settings, model, optimizer, rng):
    """Load checkpoint `path` into model, optimizer and rng; returns (epoch, history)."""
    arrays, meta = load_for_resume(path, settings)
    model.load_state_dict(section(arrays, "model"))
    optimizer.load_state_dict(section(arrays, "optim"), like=model.params)
    rng.bit_generator.state = meta["rng"]
    return meta["epoch"], meta["history"]


def write_metrics(path, history):
    """Rewrite metrics.csv from the full history (one row per completed epoch)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows({k: repr(v) for k, v in row.items()} for row in history)
    tmp.replace(path)


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
    return (f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  loss {row['train_loss']:.4f}  "
            f"clean {100 * row['clean_acc']:.2f}%  FGS {100 * row['fgs_acc']:.2f}%  "
            f"FGV {100 * row['fgv_acc']:.2f}% (of {row['n_correct']} correct){pgd}  "
            f"{row['train_seconds']:.1f} s + eval {row['eval_seconds']:.1f} s")


def run(args):
    xp = namespace_for(args.device)
    settings = {k: getattr(args, k) for k in RUN_SETTINGS}
    ckpt = args.out / "checkpoint.npz"
    if not args.resume and ckpt.exists():
        raise TrainingError(f"{args.out} already holds a run: add --resume to continue it, "
                            "or choose another folder with --out")
    train_x, train_t = load_mnist("train", args.data_dir, args.train_limit)
    if args.train_half:
        middle = len(train_x) // 2
        half = slice(0, middle) if args.train_half == 1 else slice(middle, None)
        train_x, train_t = train_x[half], train_t[half]
    test_x, test_t = load_mnist("test", args.data_dir, args.test_limit)

    rng = np.random.default_rng(args.seed)
    model = reference_cnn(batch_norm=args.bn, rng=rng).to(xp)
    optimizer = SGD(args.lr, momentum=args.momentum)
    start, history = restore(ckpt, settings, model, optimizer, rng) if args.resume else (0, [])
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"cannot create the run folder {args.out}: {exc.strerror}") from None
    (args.out / "settings.json").write_text(json.dumps(
        {**vars(args), "out": str(args.out), "data_dir": args.data_dir and str(args.data_dir)},
        indent=2) + "\n")
    step, attacks = make_step(args, rng), default_attacks(args.alpha, args.fgv_alpha)
    print(f"{args.mode} training{' with BatchNorm' if args.bn else ''} on {len(train_x)} images, "
          f"tested on {len(test_x)}; epochs {start + 1}..{args.epochs} on {args.device}; "
          f"writing {args.out}/", flush=True)
    for epoch in range(start + 1, args.epochs + 1):
        t0 = time.perf_counter()
        loss = train_epoch(model, optimizer, step, train_x, train_t, args.batch_size, rng,
                           desc=f"epoch {epoch}/{args.epochs}", done=epoch - 1)
        t1 = time.perf_counter()
        metrics = evaluate(model, test_x, test_t, attacks)
        if args.pgd_images:
            metrics.update(evaluate_pgd(model, test_x, test_t, args, epoch))
        history.append({"epoch": epoch, "train_loss": loss, **metrics,
                        "train_seconds": t1 - t0, "eval_seconds": time.perf_counter() - t1})
        save_checkpoint(ckpt, *checkpoint_state(model, optimizer, rng, epoch, settings, history))
        write_metrics(args.out / "metrics.csv", history)
        plot_runs([args.out], args.out / "accuracy.png",
                  title=f"{args.mode} training{' with BatchNorm' if args.bn else ''}")
        print(epoch_line(history[-1], args.epochs), flush=True)
    if start >= args.epochs:
        print(f"{args.out} already has {start} epochs; raise --epochs to train further")
    return 0


def run_cli(prog, run, args, errors=(), interrupted=None):
    """Run an entry point's run(args): one sentence and exit 1 on a known error, 130 on Ctrl-C.

    errors: further exception classes whose message is for the user; interrupted: what to say
    on Ctrl-C (default: the run folder keeps its last epoch).
    """
    reuse_host_memory()
    try:
        return run(args)
    except (TrainingError, MNISTError, DeviceError, RunError, *errors) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n" + (interrupted or f"interrupted: {args.out} keeps its last completed epoch; "
                      "continue with --resume"), file=sys.stderr)
        return 130


def main(argv=None):
    return run_cli("train.py", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

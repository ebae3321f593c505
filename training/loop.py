"""The training loop every model of the project goes through: batches, progress, NaN guard.

`train_epoch` runs one shuffled pass of any optimizer step (the exercise's steps in
attacks/adversarial_training.py, or the classifier that scores the GAN); `run_epochs` times the
training and the evaluation of each epoch and hands the growing history to the caller to save.
"""
import math
import signal
import sys
import time
from contextlib import contextmanager

import numpy as np
from tqdm import tqdm

from nn import batch_slices, first_param, on_model
from nn.backend import xp_of

from .cli import TrainingError


def progress_bar(total, desc, unit="img"):
    """A tqdm bar on a terminal; silent in logs (the runs print a line per epoch instead)."""
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not sys.stderr.isatty())


def check_loss(loss, what, desc, batch):
    """TrainingError if `loss` (a float) is not finite: training diverged at `batch`."""
    if not math.isfinite(loss):
        raise TrainingError(f"the {what} became {loss} in {desc}, batch {batch}; "
                            "try a smaller --lr")


def check_weights(models, desc):
    """TrainingError if any parameter of `models` is infinite or NaN (the last update too)."""
    for model in models:
        xp = xp_of(first_param(model))
        if not all(bool(xp.all(xp.isfinite(p))) for p in model.params.values()):
            raise TrainingError(f"the weights became infinite or NaN in {desc}; "
                                "try a smaller --lr")


def train_epoch(model, optimizer, step, images, labels, batch_size, rng, desc, done=0):
    """One pass over the shuffled training set after `done` epochs; returns its mean batch loss.

    images (N, 1, 28, 28), labels (N,) on the host; step(model, optimizer, x, t, progress) -> loss
    with progress the epochs completed so far in fractions (0.5 is half the first epoch).
    """
    order = rng.permutation(len(images))
    model.train()
    total, seen = 0.0, 0
    with progress_bar(len(order), desc) as bar:
        for s in batch_slices(len(order), batch_size):
            idx = order[s]
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                # a diverging step overflows inside the model: the check below says so once
                loss = float(step(model, optimizer, on_model(model, images[idx]),
                                  on_model(model, labels[idx]), done + s.start / len(order)))
            check_loss(loss, "training loss", desc, s.start // batch_size + 1)
            total, seen = total + loss * len(idx), seen + len(idx)
            bar.update(len(idx))
            bar.set_postfix(loss=f"{total / seen:.4f}")
    check_weights([model], desc)
    return total / seen


def run_epochs(history, epochs, train, evaluate, finish):
    """Epochs len(history) + 1 .. epochs: each appends a row to `history` and calls finish.

    train(epoch) -> dict and evaluate(epoch) -> dict give the row's columns after "epoch"; the
    row ends with train_seconds and eval_seconds. finish(history) saves the run (checkpoint
    first, so that an interrupted epoch is simply done again).
    """
    for epoch in range(len(history) + 1, epochs + 1):
        t0 = time.perf_counter()
        trained = train(epoch)
        t1 = time.perf_counter()
        evaluated = evaluate(epoch)
        history.append({"epoch": epoch, **trained, **evaluated, "train_seconds": t1 - t0,
                        "eval_seconds": time.perf_counter() - t1})
        with interrupts_deferred():  # the checkpoint and metrics.csv, both or neither
            finish(history)
    return history


@contextmanager
def interrupts_deferred():
    """Ctrl-C (SIGINT) and kill (SIGTERM) held while the body runs, then delivered as they would
    have been; in the main thread only (elsewhere Python runs no signal handler: nothing held)."""
    held = []
    try:
        previous = {s: signal.signal(s, lambda signum, frame: held.append(signum))
                    for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        previous = {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in held[:1]:
            signal.raise_signal(signum)

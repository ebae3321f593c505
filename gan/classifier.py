"""The MNIST classifier that scores the GAN's samples: a train.py checkpoint, or a cached default.

The default is the reference CNN after one epoch of standard training (seed 0, SGD 0.01 / 0.9,
batches of 64) on the full training set, trained through the project's one training loop
(training/loop.py) and cached in runs/classifier/ as train.py would save it.
"""
import json
from pathlib import Path

import numpy as np

from attacks import standard_step
from data.mnist import load_mnist
from nn import SGD, reference_cnn
from nn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, section
from training.cli import TrainingError
from training.loop import train_epoch
from training.run_folder import make_folder

DEFAULT_CLASSIFIER = Path("runs") / "classifier" / "checkpoint.npz"


def classifier_bn(path, flag):
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
    """Train the default classifier (see the module docstring), save it at `path`, return it."""
    images, labels = load_mnist("train", data_dir)
    rng = np.random.default_rng(0)
    model = reference_cnn(rng=rng).to(xp)
    optimizer = SGD(0.01, momentum=0.9)
    train_epoch(model, optimizer, lambda m, o, x, t, progress: standard_step(m, o, x, t),
                images, labels, 64, rng, desc="classifier")
    settings = {"mode": "standard", "bn": False, "epochs": 1, "batch_size": 64, "lr": 0.01,
                "momentum": 0.9, "seed": 0}
    make_folder(path.parent, "classifier folder")
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()},
                    {"epoch": 1, "settings": settings, "history": []})
    (path.parent / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return model.eval()


def classifier_for(args, xp):
    """The classifier of --classifier, or the cached default one (trained first if missing)."""
    if args.classifier is not None:
        return load_classifier(args.classifier, classifier_bn(args.classifier, args.classifier_bn),
                               xp)
    if DEFAULT_CLASSIFIER.is_file():
        return load_classifier(DEFAULT_CLASSIFIER, classifier_bn(DEFAULT_CLASSIFIER, False), xp)
    print(f"no --classifier: training the reference CNN for one epoch and caching it in "
          f"{DEFAULT_CLASSIFIER}", flush=True)
    return train_classifier(DEFAULT_CLASSIFIER, args.data_dir, xp)

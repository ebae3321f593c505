"""Train the exercise's CNN on MNIST and evaluate it against FGS and FGV after every epoch.

    python train.py --mode adversarial            # or standard, noise, pgd; --bn adds BatchNorm

Each epoch prints one line and updates the run folder: metrics.csv, accuracy.png and
checkpoint.npz (from which --resume continues). settings.json records the run's flags.
--pgd-images N adds PGD accuracy on the first N test images to every epoch's evaluation.

Where to read on: training/classifier.py, `run`, is the exercise top to bottom (load the data,
build the model, pick the step, train and evaluate each epoch, save); the steps of each mode
are in attacks/adversarial_training.py, the evaluation in attacks/evaluation.py, the layers in nn/.
"""
import sys

from training.classifier import parse_args, run
from training.cli import run_cli


def main(argv=None):
    return run_cli("train.py", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

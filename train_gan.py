"""Train a generative adversarial network on MNIST with the hand-written layers of nn/.

    python train_gan.py --gan-loss minimax          # or nonsaturating (the default)

A dense generator maps z ~ N(0, I) to 28x28 images in [0, 1]; a dense discriminator returns a
logit. By default the discriminator has dropout 0.3 after each hidden layer and targets 0.9 for
real images (one-sided label smoothing): without them (--d-dropout 0 --real-label 1) it
overpowers the generator and the non-saturating cost drifts (README, issue 15). Each epoch prints one line and updates the run folder: metrics.csv, gan.png, a 10x10 grid
of samples from a fixed z (samples_epochNNN.png and samples.png), and checkpoint.npz (from which
--resume continues); first_steps.csv holds the first 50 generator steps of epoch 1 one by one.
Sample quality is scored with the project's own MNIST classifier (--classifier, a train.py
checkpoint; by default one is trained once and cached in runs/classifier/): the Frechet distance
between its Flatten-layer features of generated and test images, and the spread of its predicted
classes over the generated images (class coverage).

Where to read on: gan/run.py (the run), gan/steps.py (one alternating update of each
network), gan/losses.py (the two generator costs), gan/fid.py (the scores).
"""
import sys

from gan.run import parse_args, run
from training.cli import run_cli

PROG = "train_gan.py"


def main(argv=None):
    return run_cli(PROG, run, parse_args(argv, prog=PROG))


if __name__ == "__main__":
    sys.exit(main())

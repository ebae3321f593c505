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
for 8 fixed test digits) and a checkpoint from which --resume continues. --device gpu trains on
CuPy (the judge stays on the host).

Where to read on: gan/pix2pix_run.py (the flags and the run), gan/pix2pix.py (the U-Net, the
PatchGAN and one training step of each variant), gan/pix2pix_report.py (the figures, the report).
"""
import sys

import models
from gan.pix2pix_run import parse_args, run
from training.cli import TrainingError, run_cli

PROG = "train_pix2pix.py"


def load_judge(name):
    """The shipped model `name` (models/, on the host) that reads the generated digits."""
    try:
        return models.load(name)[0]
    except models.ModelError as exc:
        raise TrainingError(f"the judge is a shipped model: {exc}") from None


def main(argv=None):
    return run_cli(PROG, lambda args: run(args, load_judge), parse_args(argv, prog=PROG))


if __name__ == "__main__":
    sys.exit(main())

"""What every command line shares: argparse value parsers, the data flags, the help formatter, the
error wrapper.

Each entry point (train.py, train_gan.py, attack.py, grid.py) parses its flags with these and
runs through `run_cli`, so a known error is one sentence and exit 1, and Ctrl-C is exit 130.
"""
import argparse
import math
import sys
from pathlib import Path

from data.mnist import DATASETS, MNISTError
from nn import parallel
from nn.backend import DeviceError, reuse_host_memory


class TrainingError(Exception):
    """The run cannot go on (one sentence for the user)."""


class RunError(Exception):
    """A folder is not a readable run (one sentence naming it)."""


def int_at_least(minimum):
    """argparse type: a whole number >= minimum."""
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


positive_int = int_at_least(1)


def float_in(low, high, low_open=False, high_open=False):
    """argparse type: a number in [low, high] (either end open on request)."""
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


positive_float = float_in(0, math.inf, low_open=True, high_open=True)


def add_data_flags(parser, data_dir=None, dataset=None, device=True):
    """Add the flags that say where the images come from and where the work runs, in this order,
    each with the calling command's help: --dataset (MNIST by default; only when its help
    `dataset` is given), --data-dir (a folder; only when its help `data_dir` is given) and
    --device cpu|gpu (cpu by default; unless device=False)."""
    if dataset is not None:
        parser.add_argument("--dataset", choices=DATASETS, default="mnist", help=dataset)
    if data_dir is not None:
        parser.add_argument("--data-dir", type=Path, help=data_dir)
    if device:
        parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except None: those flags' help says what their absence means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def run_cli(prog, run, args, errors=(), interrupted=None):
    """Run an entry point's run(args): one sentence and exit 1 on a known error, 130 on Ctrl-C.

    errors: further exception classes whose message is for the user; interrupted: what to say
    on Ctrl-C (default: the run folder keeps its last epoch).
    """
    reuse_host_memory()
    import matplotlib
    matplotlib.use("Agg")  # the commands only write figures to files: no window, any thread
    try:
        with parallel.host_threads():  # large batches split over the cores (nn/parallel.py)
            return run(args)
    except (TrainingError, MNISTError, DeviceError, RunError, *errors) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n" + (interrupted or f"interrupted: {args.out} keeps its last completed epoch; "
                      "continue with --resume"), file=sys.stderr)
        return 130

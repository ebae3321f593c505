"""Accuracy-over-epochs plots of one or several runs.

    python plot.py runs/standard runs/adversarial-bn --out figures --name comparison.png

Each run folder holds the metrics.csv and settings.json that train.py writes. Colour tells the
runs apart; line style tells clean (solid), FGS (dashed), FGV (dotted) and, when the run measured
it, PGD (dash-dot) accuracy apart (training/plots.py draws them).
"""
import argparse
import sys
from pathlib import Path

from training.cli import HelpFormatter, run_cli
from training.plots import plot_runs


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="plot.py", formatter_class=HelpFormatter,
                                description="Overlay the accuracy curves of train.py runs.")
    p.add_argument("runs", nargs="+", help="run folders written by train.py")
    p.add_argument("-o", "--out", type=Path, default=Path("."),
                   help="folder for the figure (deprecated: a path ending in .png is the "
                        "figure itself, as before)")
    p.add_argument("--name", default="comparison.png", help="the figure's file name in --out")
    return p.parse_args(argv)


def plot(args):
    path = args.out if args.out.suffix == ".png" else args.out / args.name
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_runs(args.runs, path)
    print(f"wrote {path}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    return run_cli("plot.py", plot, args, interrupted="interrupted: nothing written")


if __name__ == "__main__":
    sys.exit(main())

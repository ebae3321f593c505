"""Accuracy-over-epochs plots of one or several runs.

    python plot.py runs/standard runs/adversarial-bn -o comparison.png

Each run folder holds the metrics.csv and settings.json that train.py writes. Colour tells the
runs apart; line style tells clean (solid), FGS (dashed), FGV (dotted) and, when the run measured
it, PGD (dash-dot) accuracy apart (training/plots.py draws them).
"""
import argparse
import sys

from training.cli import RunError
from training.plots import plot_runs


def main(argv=None):
    parser = argparse.ArgumentParser(description="Overlay the accuracy curves of train.py runs.")
    parser.add_argument("runs", nargs="+", help="run folders written by train.py")
    parser.add_argument("-o", "--out", default="comparison.png", help="output PNG file")
    args = parser.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")  # a file, never a window
    try:
        plot_runs(args.runs, args.out)
    except RunError as exc:
        parser.exit(1, f"plot.py: error: {exc}\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())

"""Run the exercise's grid of train.py runs, and report on it.

    python grid.py run                  # 6 variants x seeds 0 1 2 x 50 epochs, + PGD training
    python grid.py run --seeds 0 --jobs 2 -- --train-limit 6000   # flags after -- go to train.py
    python grid.py report --readme README.md docs/exercise.md   # results/grid -> results/README.md,
                                    # and the last-epoch rows in the README and the docs page
    python grid.py compare --readme docs/fashion-mnist.md   # results/grid against
                                    # results/grid-fashion-mnist -> results/datasets

`run` trains every (mode, BatchNorm, seed) of the grid as its own train.py process with one BLAS
thread, --jobs at a time, into <runs>/<mode>[-bn]-seed<seed>; finished runs are skipped and
interrupted ones resumed, so the same command continues after Ctrl-C or `kill`. The default grid
is the exercise's (standard, noise, adversarial; with and without BatchNorm; seeds 0, 1, 2; 50
epochs; PGD accuracy of the first 1,000 test images every epoch), plus PGD training with and
without BatchNorm (seed 0, 20 epochs) as the reference of real robustness.
`report` reads a folder of runs (no training) and writes README.md, accuracy.png and robust.png;
`compare` puts several grid folders (one dataset each) side by side, with the worst cases of
`attack.py robust`.
"""
import argparse
import signal
import sys
from pathlib import Path

from training.cli import (
    HelpFormatter,
    RunError,
    TrainingError,
    add_data_flags,
    float_in,
    int_at_least,
    positive_int,
    run_cli,
)
from training.compare import BLOCK as COMPARE_BLOCK
from training.compare import write_comparison
from training.grid import execute, plan, refuse_to_lose_epochs
from training.readme import BLOCK, update_readme
from training.report import write_report

PROG = "grid.py"


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    r = sub.add_parser("run", help="train the grid (train.py flags after --)",
                       formatter_class=HelpFormatter)
    r.add_argument("--modes", nargs="+",
                   choices=["standard", "noise", "adversarial", "pgd", "ibp"],
                   default=["standard", "noise", "adversarial"],
                   help="train.py --mode values (ibp runs without BatchNorm only)")
    r.add_argument("--bn", choices=["both", "no", "yes"], default="both",
                   help="the CNN without BatchNorm, with it, or both")
    r.add_argument("--seeds", type=int_at_least(0), nargs="+", default=[0, 1, 2],
                   help="train.py --seed values; every variant of the first seed runs first")
    r.add_argument("--epochs", type=positive_int, default=50, help="epochs of every grid run")
    r.add_argument("--pgd-images", type=int_at_least(0), default=1000,
                   help="train.py --pgd-images for every run (0: no PGD column)")
    r.add_argument("--reference-epochs", type=int_at_least(0), default=20,
                   help="epochs of the PGD-training reference runs, with and without BatchNorm, "
                        "seed 0, after the first seed's grid (0: none)")
    r.add_argument("--jobs", type=positive_int, default=2,
                   help="runs at the same time: the local Dask cluster's single-threaded "
                        "workers (not with --scheduler)")
    r.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the Dask cluster of this scheduler (e.g. tcp://10.0.0.5:8786) "
                        "instead of a local one; the run folders must be on a filesystem "
                        "every worker sees")
    r.add_argument("--runs", type=Path,
                   help="folder of the run folders (default: results/grid, or "
                        "results/grid-fashion-mnist)")
    add_data_flags(r, dataset="train.py --dataset")
    r.add_argument("--eps", type=float_in(0, 1, low_open=True),
                   help="train.py --alpha (FGS step, PGD eps) of every run, with --noise-alpha "
                        "the same and --fgv-alpha twice it (default: 0.3 on MNIST, the "
                        "exercise's; 0.1 on Fashion-MNIST, the field's)")
    r.add_argument("--retrain", action="store_true",
                   help="train runs that have epochs but no checkpoint again from epoch 1 "
                        "(their metrics are replaced); without it the grid refuses")
    rep = sub.add_parser("report", help="write the report of a folder of runs",
                         formatter_class=HelpFormatter)
    rep.add_argument("--runs", type=Path, default=Path("results") / "grid",
                     help="folder of the run folders")
    rep.add_argument("--out", type=Path, default=Path("results"),
                     help="folder for README.md, accuracy.png and robust.png")
    rep.add_argument("--epochs", type=positive_int, nargs="+", default=[1, 5, 10, 25, 50],
                     help="epochs of the table (the last epoch is always added)")
    rep.add_argument("--readme", type=Path, nargs="+", default=[],
                     help="also write the accuracy figure and every variant's last-epoch row "
                          f"into these files, between their lines {BLOCK[0]} and {BLOCK[1]}")
    c = sub.add_parser("compare", help="grids of several datasets side by side",
                       formatter_class=HelpFormatter)
    c.add_argument("--runs", type=Path, nargs="+",
                   default=[Path("results") / "grid", Path("results") / "grid-fashion-mnist"],
                   help="grid folders, one dataset each")
    c.add_argument("--robust", type=Path, nargs="*",
                   default=[Path("results") / "robust", Path("results") / "robust-fashion-mnist"],
                   help="folders searched for attack.py robust's results.json (worst cases)")
    c.add_argument("--out", type=Path, default=Path("results") / "datasets",
                   help="folder for README.md and datasets.png")
    c.add_argument("--readme", type=Path,
                   help="also write the table into this file, between its lines "
                        f"{COMPARE_BLOCK[0]} and {COMPARE_BLOCK[1]}")
    args = p.parse_args(argv)
    if args.command != "run" and extra:
        p.error(f"{args.command} takes no train.py flags")
    args.extra = extra
    return args


def run_flags(args):
    """The train.py flags that `grid.py run`'s own flags give every run of the grid."""
    eps = args.eps if args.eps is not None else 0.3 if args.dataset == "mnist" else 0.1
    return args.extra + (["--pgd-images", str(args.pgd_images)] if args.pgd_images else []) + \
        ["--dataset", args.dataset] * (args.dataset != "mnist") + \
        ["--device", args.device] * (args.device != "cpu") + \
        ["--alpha", f"{eps:g}", "--fgv-alpha", f"{2 * eps:g}", "--noise-alpha", f"{eps:g}"] * \
        (eps != 0.3)


def run(args):
    if args.command == "compare":
        print(f"wrote {write_comparison(args.runs, args.robust, args.out, args.readme)}")
        if args.readme:
            print(f"wrote the table into {args.readme}")
        return 0
    if args.command == "report":
        print(f"wrote {write_report(args.runs, args.out, args.epochs)}")
        for readme in args.readme:
            update_readme(readme, args.runs, args.out)
            print(f"wrote the last-epoch rows into {readme}")
        return 0
    bn = {"both": [False, True], "no": [False], "yes": [True]}[args.bn]
    if args.runs is None:
        args.runs = Path("results") / ("grid" if args.dataset == "mnist" else
                                       f"grid-{args.dataset}")
    extra = run_flags(args)
    reference = [("pgd", b, 0, args.reference_epochs) for b in (False, True)
                 if args.reference_epochs and "pgd" not in args.modes]
    grid = plan(args.modes, bn, args.seeds, args.epochs, extra, args.runs, reference)
    if not args.retrain:
        refuse_to_lose_epochs(grid)
    runs = f"{len(grid)} run{'s' * (len(grid) > 1)}"
    where = f"on the Dask cluster at {args.scheduler}" if args.scheduler else \
        f"{args.jobs} at a time"
    print(f"grid of {runs} in {args.runs}/, {where}", flush=True)
    # `kill` (SIGTERM) stops a background grid as Ctrl-C does: its children too, not only itself
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        failed = execute(grid, args.jobs, log=lambda line: print(line, flush=True),
                         scheduler=args.scheduler)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed:
        raise TrainingError(f"{len(failed)} run(s) did not finish: {', '.join(failed)}")
    print(f"{runs} complete; python grid.py report --runs {args.runs}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    return run_cli(PROG, run, args, errors=(RunError,),
                   interrupted="interrupted: every run keeps its last completed epoch; the same "
                               "command continues")


if __name__ == "__main__":
    sys.exit(main())

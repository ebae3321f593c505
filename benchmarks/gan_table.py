"""Markdown table of GAN runs: Frechet distance and class coverage at chosen epochs, over seeds.

    .venv/bin/python benchmarks/gan_table.py results/gan            # or any folders of runs
    .venv/bin/python benchmarks/gan_table.py /root/gan-runs --epochs 1 5 10 20 30

A run is a folder with metrics.csv (train_gan.py's or benchmarks/gan_twin.py's). Runs are
grouped by their name less its "-seed<S>" part (e.g. ours-nonsaturating-seed0 ->
ours-nonsaturating); each cell gives the mean over seeds and the min-max, for FID, for the number
of classes with at least 1% of the samples, and, at the last epoch asked for, for the share of
the samples in the most frequent class (0.10 for a uniform spread; mode collapse raises it). A run that has not reached
an epoch yet leaves that cell to the others (the seed count says how many).
"""
import argparse
import csv
import re
from collections import defaultdict
from pathlib import Path


def read_runs(folders):
    """{group: {seed: [rows of metrics.csv as dicts of floats]}} of every run under folders."""
    groups = defaultdict(dict)
    for folder in folders:
        for metrics in sorted(Path(folder).glob("**/metrics.csv")):
            name = metrics.parent.name
            m = re.fullmatch(r"(.+)-seed(\d+)", name)
            group, seed = (m.group(1), int(m.group(2))) if m else (name, 0)
            with open(metrics, newline="") as f:
                rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
            if rows:
                groups[group][seed] = rows
    return groups


def cell(values, fmt):
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return format(mean, fmt)
    return f"{mean:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def table(groups, epochs):
    """Markdown lines: one row per group, FID and coverage at each epoch."""
    last = epochs[-1]
    head = (["run", "seeds"] + [f"FID ep {e}" for e in epochs] + [f"classes ep {e}" for e in epochs]
            + [f"largest class ep {last}"])
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (2 * len(epochs) + 1)]
    for group in sorted(groups):
        runs = groups[group]
        at = {e: [rows[e - 1] for rows in runs.values() if len(rows) >= e] for e in epochs}
        fid = [cell([r["fid"] for r in at[e]], ".0f") for e in epochs]
        cov = [cell([r["coverage"] for r in at[e]], ".3g") for e in epochs]
        top = [cell([max(r[f"class_{c}"] for c in range(10)) for r in at[last]], ".2f")]
        seeds = ",".join(str(s) for s in sorted(runs))
        lines.append("| " + " | ".join([group, seeds] + fid + cov + top) + " |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="folders searched for */metrics.csv")
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 5, 10, 20, 30])
    args = p.parse_args(argv)
    groups = read_runs(args.folders)
    if not groups:
        raise SystemExit(f"no metrics.csv under {', '.join(map(str, args.folders))}")
    print("\n".join(table(groups, args.epochs)))
    return 0


if __name__ == "__main__":
    main()

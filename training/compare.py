"""Datasets side by side, the exercise's warning ("Results might not transfer to other
datasets!") answered with numbers: every training's last epoch in each grid folder, clean and
under FGS, FGV and PGD-20 over all test images, and the worst case of `attack.py robust` where
one was measured. Reads run folders (`grid.py run`) and robust results; trains nothing.

A grid folder holds one dataset (load_runs checks it); its main eps is the one most of its
variants use, and a variant at another eps (Fashion-MNIST's FGS training at 0.3) gets a row of
its own.
"""
import json
from collections import Counter
from pathlib import Path

import numpy as np

from .cli import RunError
from .plots import plt, save_figure
from .readme import write_block
from .report import ORDER, dataset_of, fmt, label, load_runs

COLUMNS = (("clean_acc", "clean"), ("fgs_robust_acc", "FGS"), ("fgv_robust_acc", "FGV"),
           ("pgd_robust_acc", "PGD-20"))
NEEDED = {"apgd-ce", "apgd-t", "square"}  # a worst case has at least these attacks
BLOCK = ("<!-- grid.py compare --readme writes from here -->",
         "<!-- grid.py compare --readme writes up to here -->")


def summary(values):
    """(mean, sample std, values as an array); nan where there are too few values."""
    v = np.array(values, dtype=float)
    return (v.mean() if len(v) else np.nan, v.std(ddof=1) if len(v) > 1 else np.nan, v)


class Grid:
    """One grid folder: its dataset, main eps, and {(mode, bn, eps or None): {seed: columns}}
    (eps None: the main eps), with the epochs each run reached and asked for."""

    def __init__(self, runs):
        variants, settings = load_runs(runs)
        self.folder = Path(runs).resolve()
        self.dataset = dataset_of(settings)
        self.eps = Counter(s["alpha"] for s in settings).most_common(1)[0][0]
        self.variants = {(m, b, None if e in (None, self.eps) else e): seeds
                         for (m, b, e), seeds in variants.items()}
        self.epochs = {}
        for s in settings:
            e = None if s["alpha"] == self.eps else s["alpha"]
            self.epochs.setdefault((s["mode"], bool(s["bn"]), e), []).append(
                (s["done"], s["epochs"]))

    def last(self, key, column):
        """(mean, std, each seed's value at its last epoch) of `column`."""
        return summary([c[column][-1] for c in self.variants[key].values() if column in c])

    def epochs_cell(self, key):
        """'25', or '12-25 of 25' while some of the variant's runs are short of their epochs."""
        done, asked = zip(*self.epochs[key])
        if min(done) == max(asked):
            return str(max(asked))
        return f"{min(done)}{'-' + str(max(done)) if max(done) > min(done) else ''} of {max(asked)}"


def worst_cases(folders):
    """{(grid folder, mode, bn, eps, seed): robust accuracy} from every results.json of
    `attack.py robust` under `folders` whose attacks include APGD-CE, APGD-T and Square, for the
    models whose checkpoint sits in a run folder (settings.json beside it)."""
    found = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("results.json")):
            try:
                results = json.loads(path.read_text())
            except ValueError as exc:
                raise RunError(f"{path} is damaged: {exc}") from None
            if not NEEDED <= set(results.get("settings", {}).get("attacks", [])):
                continue
            for m in results.get("models", []):
                run = Path(m["checkpoint"]).parent
                if (run / "settings.json").is_file():
                    s = json.loads((run / "settings.json").read_text())
                    found[run.parent.resolve(), s["mode"], bool(s["bn"]), m["eps"],
                          int(s["seed"])] = m["robust_acc"]
    return found


def worst(grid, key, cases):
    """(mean, std, values, seeds) of the worst cases measured for a variant of `grid`."""
    eps = key[2] if key[2] is not None else grid.eps
    hits = sorted((seed, acc) for (folder, m, b, e, seed), acc in cases.items()
                  if (folder, m, b) == (grid.folder, key[0], key[1]) and np.isclose(e, eps))
    return (*summary([acc for _, acc in hits]), [seed for seed, _ in hits])


def order(grids):
    keys = {k for g in grids for k in g.variants}
    return sorted(keys, key=lambda k: (k[2] is not None, ORDER.index(k[0]), k[1], k[2] or 0))


def table(grids, cases):
    """Markdown rows: one per training and dataset."""
    head = ["training", "dataset, eps", "seeds", "epochs", *(n for _, n in COLUMNS),
            "worst case"]
    rows = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|" + "---:|" * (len(head) - 4)]
    for key in order(grids):
        for g in grids:
            if key not in g.variants:
                continue
            cells = [fmt(*g.last(key, col)) for col, _ in COLUMNS]
            m, s, v, seeds = worst(g, key, cases)
            w = "" if not len(v) else fmt(m, s, v) + (f" (seed {seeds[0]})" if len(v) == 1
                                                        else "")
            rows.append(f"| {label(key[:2])} | {g.dataset}, {key[2] or g.eps:g} | "
                        f"{len(g.variants[key])} | {g.epochs_cell(key)} | "
                        + " | ".join(cells + [w]) + " |")
    return rows


def figure(grids, cases, path):
    """One panel per measure; per training a bar for each dataset (mean, with the seeds' range)."""
    keys = order(grids)
    measures = [(col, name) for col, name in COLUMNS if col != "fgv_robust_acc"] + \
        [("worst", "worst case (attack.py robust)")]
    fig, axes = plt.subplots(1, len(measures), figsize=(4.6 * len(measures), 4.6), sharey=True)
    width = 0.8 / len(grids)
    for ax, (col, name) in zip(axes, measures):
        for i, g in enumerate(grids):
            x, y, low, high = [], [], [], []
            for j, key in enumerate(keys):
                if key not in g.variants:
                    continue
                m, _, v, *_ = worst(g, key, cases) if col == "worst" else g.last(key, col)
                if len(v):
                    x.append(j + (i - (len(grids) - 1) / 2) * width)
                    y.append(100 * m)
                    low.append(100 * (m - v.min()))
                    high.append(100 * (v.max() - m))
            ax.bar(x, y, width, yerr=[low, high], capsize=2, color=f"C{i}",
                   label=f"{g.dataset} (eps {g.eps:g})" if col == "clean_acc" else None)
            if col == "worst":  # a measured 0 would look like a missing bar
                for xi, yi in zip(x, y):
                    ax.text(xi, yi + 1, f"{yi:.0f}", ha="center", fontsize=7)
        ax.set_xticks(range(len(keys)), [label(k) for k in keys], rotation=60, ha="right",
                      fontsize=8)
        ax.set(title=name, ylim=(0, 100))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy over all test images (%)")
    fig.legend(loc="upper center", ncol=len(grids))
    save_figure(fig, path, dpi=100, rect=(0, 0, 1, 0.93))


def write_comparison(runs, robust, out, readme=None):
    """out/README.md and out/datasets.png for the grid folders `runs`, and the table between the
    BLOCK markers of file `readme` if given; returns out/README.md."""
    grids = [Grid(r) for r in runs]
    names = [g.dataset for g in grids]
    if len(set(names)) < len(names):
        raise RunError(f"two of the folders hold the same dataset ({', '.join(names)}): "
                       "compare one grid per dataset")
    cases = worst_cases(robust)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure(grids, cases, out / "datasets.png")
    rows = table(grids, cases)
    lines = [f"# {' against '.join(names)}: every training at its last epoch", "",
             "Made by `python grid.py compare` from "
             + ", ".join(f"`{r}` ({g.dataset}, eps {g.eps:g})" for r, g in zip(runs, grids))
             + " and the worst cases of `attack.py robust` found in "
             + (", ".join(f"`{r}`" for r in robust) or "no folder") + ". Accuracy over all "
             "test images in % (an image counts if it is correct before and after the attack), "
             "each run at its last epoch: mean ± standard deviation over seeds (each seed's "
             "value too where they lie 10 points or more apart); PGD-20 on the first 1,000 test "
             "images as train.py evaluates it; the worst case of `attack.py robust` (APGD-CE, "
             "APGD-T and Square at least) on the first 1,000, for the seeds where it was "
             "measured.", "",
             "![the datasets side by side](datasets.png)", "", *rows, ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    if readme is not None:  # after results/datasets, which stays whole if `readme` is refused
        write_block(readme, BLOCK, rows)
    return path

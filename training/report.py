"""The report over a folder of train.py runs: every variant's accuracy over the epochs, mean and
spread over seeds, a table, the best epochs, and where FGS and PGD accuracy part ways.

Runs are grouped into variants by the (mode, bn) of their settings.json; a variant's value at an
epoch is the mean over the seeds that reached it. No training happens here.
"""
import json
from collections import Counter
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from .cli import RunError
from .plots import plt, read_metrics, save_figure
from .run_folder import has_checkpoint

MEASURES = (("clean_acc", "clean"), ("fgs_acc", "FGS"), ("fgv_acc", "FGV"), ("pgd_acc", "PGD"))
ROBUST = (("fgs_robust_acc", "FGS"), ("fgv_robust_acc", "FGV"), ("pgd_robust_acc", "PGD"))
ORDER = ("standard", "noise", "adversarial", "pgd")
GAP = 0.40    # FGS minus PGD accuracy, above which the two have parted ways
DROP = 0.10   # PGD accuracy lost after its best epoch that counts as catastrophic overfitting
WIDE = 0.10   # seeds this far apart (max - min) get their values listed in the table
REFERENCES = {"MNIST": """\
Published reference points (other networks, so only the direction compares):
- Goodfellow et al. 2015, MNIST, maxout network, FGSM eps 0.25: error 89.4% after standard
  training (10.6% accuracy), 17.9% after adversarial training (82.1%), 86.2% after training on
  +-eps noise (13.8%).
- Madry et al. 2018, MNIST, PGD training at eps 0.3: 89-93% accuracy under PGD.""",
              "Fashion-MNIST": """\
Published reference points (other networks, so only the direction compares):
- Xiao et al. 2017, the benchmark in Zalando's repository: CNNs of two convolution and pooling
  blocks reach 87.6-91.6% clean accuracy.
- Wong and Kolter 2018 (their Table 2), Fashion-MNIST, eps 0.1, a small CNN: trained normally,
  9.4% clean error and 81.9% under PGD (18.1% accuracy); trained to be provably robust, 21.7%
  clean error (78.3% accuracy), 31.6% under PGD (68.4%), 34.5% certified (65.5%)."""}


def load_runs(folder):
    """({(mode, bn, eps): {seed: columns}}, [settings of each run]) of the run folders directly
    inside `folder`; eps (the runs' --alpha) is None where every run has the same. RunError if
    the folder mixes datasets: a report is about one."""
    variants, settings = {}, []
    for run in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if not (run / "settings.json").is_file() or not (run / "metrics.csv").is_file():
            continue
        try:
            s = json.loads((run / "settings.json").read_text())
            key, seed = (s["mode"], bool(s["bn"]), s.get("alpha")), int(s["seed"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RunError(f"{run}/settings.json is damaged: {exc}") from None
        variants.setdefault(key, {})[seed] = read_metrics(run)
        s["done"] = len(variants[key][seed]["epoch"])
        s["resumable"] = has_checkpoint(run)
        settings.append(s)
    if not variants:
        raise RunError(f"{folder} holds no run folders (settings.json and metrics.csv)")
    datasets = sorted({s.get("dataset", "mnist") for s in settings})
    if len(datasets) > 1:
        raise RunError(f"{folder} mixes datasets ({', '.join(datasets)}): a report covers one; "
                       "keep each dataset's runs in a folder of its own")
    if len({k[2] for k in variants}) == 1:
        variants = {(m, b, None): v for (m, b, _), v in variants.items()}
    order = sorted(variants.items(), key=lambda kv: (ORDER.index(kv[0][0]), kv[0][1],
                                                     kv[0][2] or 0))
    return dict(order), settings


def dataset_of(settings):
    """'MNIST' or 'Fashion-MNIST': the dataset of the runs (one, as load_runs checked)."""
    return {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}[settings[0].get("dataset",
                                                                                  "mnist")]


def evaluation(settings):
    """One sentence on the attacks' settings of the runs (every distinct value named)."""
    def values(key, scale=1):
        found = sorted({s.get(key) for s in settings if s.get(key) is not None})
        return " or ".join(f"{v * scale:g}" for v in found) or "none"
    data = {"train_limit": "training images", "test_limit": "test images"}
    limits = [f"the first {values(k)} {name}" for k, name in data.items()
              if any(s.get(k) for s in settings)]
    return (f"FGS alpha {values('alpha')}, FGV alpha {values('fgv_alpha')}; PGD eps "
            f"{values('alpha')} with {values('pgd_steps')} steps on the first "
            f"{values('pgd_images')} test images, as train.py evaluates after each epoch"
            + (f"; runs limited to {' and '.join(limits)}" if limits else "") + ".")


def label(key):
    """'adversarial, BN' (', eps 0.3' too where the folder's runs differ in eps)."""
    eps = f", eps {key[2]:g}" if len(key) > 2 and key[2] is not None else ""
    return f"{key[0]}{', BN' if key[1] else ''}{eps}"


def stack(seeds, column):
    """(epochs (E,), values (S, E) with NaN where a seed has not reached an epoch)."""
    last = max(len(c["epoch"]) for c in seeds.values())
    values = np.full((len(seeds), last), np.nan)
    for i, c in enumerate(seeds.values()):
        if column in c:
            values[i, :len(c[column])] = c[column]
    return np.arange(1, last + 1), values


def at(seeds, column, epoch):
    """(mean, sample std or nan, count, the values (count,)) over the seeds that reached
    `epoch`, the values in seed order."""
    v = stack(seeds, column)[1][:, epoch - 1:epoch].ravel()  # empty past the last epoch
    v = v[~np.isnan(v)]
    return (float(v.mean()) if len(v) else np.nan,
            float(v.std(ddof=1)) if len(v) > 1 else np.nan, len(v), v)


def mean_curve(seeds, column):
    epochs, v = stack(seeds, column)
    with np.errstate(invalid="ignore"):
        return epochs, np.nanmean(v, axis=0)


def table_epochs(seeds, wanted):
    """The epochs of `wanted` that a variant reached, and its last one."""
    last = max(len(c["epoch"]) for c in seeds.values())
    return sorted({e for e in wanted if e <= last} | {last})


def fmt(mean, std, values=()):
    """"mean ± std" in %, and each seed's value where they lie WIDE or more apart (a mean and
    a standard deviation hide that some seeds are robust and others not)."""
    if np.isnan(mean):
        return ""
    apart = len(values) > 1 and np.ptp(values) >= WIDE
    return (f"{100 * mean:.2f}" + ("" if np.isnan(std) else f" ± {100 * std:.2f}")
            + (f" (seeds: {', '.join(f'{100 * v:.1f}' for v in values)})" if apart else ""))


def table(variants, wanted):
    """Markdown rows: variant, epoch, seeds, then the exercise's measures and all-image ones."""
    head = ["training", "epoch", "seeds"] + [n for _, n in MEASURES] + \
        [f"{n} (all images)" for _, n in ROBUST]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for key, seeds in variants.items():
        for e in table_epochs(seeds, wanted):
            cells = [at(seeds, col, e) for col, _ in MEASURES + ROBUST]
            n = max(c[2] for c in cells)
            if n:
                rows.append(f"| {label(key)} | {e} | {n} | "
                            + " | ".join(fmt(m, s, v) for m, s, _, v in cells) + " |")
    return rows


def findings(key, seeds):
    """Sentences on the best epochs and on FGS and PGD accuracy parting ways (mean curves)."""
    epochs, clean = mean_curve(seeds, "clean_acc")
    shortest = min(len(c["epoch"]) for c in seeds.values())
    fewer = f"; after epoch {shortest} the mean is over fewer seeds" * (shortest < len(epochs))
    text = [f"**{label(key)}** ({len(seeds)} seed{'s' * (len(seeds) > 1)}, "
            f"{len(epochs)} epochs{fewer}): best clean accuracy {100 * np.nanmax(clean):.2f}% "
            f"at epoch {int(epochs[np.nanargmax(clean)])}"]
    if not all("pgd_acc" in c for c in seeds.values()):
        return text[0] + "; no PGD column."
    _, fgs = mean_curve(seeds, "fgs_acc")
    _, pgd = mean_curve(seeds, "pgd_acc")
    best = int(np.nanargmax(pgd))
    text.append(f"best PGD accuracy {100 * pgd[best]:.2f}% at epoch {best + 1}")
    gap = fgs - pgd
    apart = [e for e in range(len(gap)) if np.all(gap[e:] >= GAP)]
    if apart:
        text.append(f"FGS and PGD part ways from epoch {apart[0] + 1} on (FGS {100 * fgs[-1]:.1f}%"
                    f" against PGD {100 * pgd[-1]:.1f}% at the last epoch): gradient masking, "
                    "robustness that only the one-step attack sees")
    k = sum(overfits(c["fgs_acc"], c["pgd_acc"]) for c in seeds.values())
    of = f" in {k} of {len(seeds)} seeds" * (len(seeds) > 1)
    if overfits(fgs, pgd):
        text.append(f"PGD accuracy falls from {100 * pgd[best]:.1f}% (epoch {best + 1}) to "
                    f"{100 * pgd[-1]:.1f}% while FGS accuracy holds: catastrophic overfitting{of}")
    elif k:
        text.append(f"catastrophic overfitting{of} (not in their mean)")
    return "; ".join(text) + "."


def overfits(fgs, pgd):
    """Catastrophic overfitting of one run's or the mean's curves (E,): PGD accuracy ends DROP
    or more below its best while FGS accuracy holds."""
    best = int(np.nanargmax(pgd))
    return bool(pgd[best] - pgd[-1] >= DROP and fgs[-1] >= fgs[best] - 0.02)


def figure(variants, path, measures, title):
    """One panel per measure: the mean over seeds per variant, with the min-max band."""
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 4.2), squeeze=False)
    main = Counter(k[2] for k in variants).most_common(1)[0][0]
    for ax, (col, name) in zip(axes[0], measures):
        for i, (key, seeds) in enumerate(variants.items()):
            # a variant at another eps than most (FGS training at 0.3 beside 0.1) gets its own hue
            color = f"C{(ORDER.index(key[0]) + 4 * (key[2] != main)) % 10}"
            epochs, v = stack(seeds, col)
            if np.all(np.isnan(v)):
                continue
            with np.errstate(invalid="ignore"):
                mean, low, high = (f(v, axis=0) for f in (np.nanmean, np.nanmin, np.nanmax))
            style = "--" if key[1] else "-"
            ax.plot(epochs, 100 * mean, style, color=color, label=label(key))
            ax.fill_between(epochs, 100 * low, 100 * high, color=color, alpha=0.15, linewidth=0)
        ax.set(title=name, xlabel="epoch", ylim=(0, 100))
        if col == "clean_acc":  # clean accuracy lives near the top: zoom in on it
            ax.set_ylim(max(0.0, np.floor(min(line.get_ydata().min()
                                              for line in ax.lines)) - 1), 100)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path, dpi=100)


def write_report(runs, out, wanted=(1, 5, 10, 25, 50)):
    """out/README.md, out/accuracy.png (the exercise's measure) and out/robust.png (all
    images) from the runs in folder `runs`; returns the README's path."""
    variants, settings = load_runs(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure(variants, out / "accuracy.png", MEASURES,
           "Accuracy over epochs (attacks: over the correctly classified test images)")
    figure(variants, out / "robust.png", (MEASURES[0],) + ROBUST,
           "Accuracy over epochs over all test images (correct before and after the attack)")
    mixed = len({s["alpha"] for s in settings}) > 1
    short = [f"{label((s['mode'], s['bn'], s['alpha'] if mixed else None))} seed {s['seed']} "
             f"({s['done']} of {s['epochs']}"
             f"{', resumes from its checkpoint' if s['resumable'] else ', starts again'})"
             for s in settings if s["done"] < s.get("epochs", 0)]
    lines = [f"# The exercise's results on {dataset_of(settings)}: every variant, several seeds",
             "",
             *([f"**In progress**: runs still short of their epochs: {', '.join(short)}.", ""]
               if short else []),
             f"Made by `python grid.py report` from the runs in `{runs}` "
             f"({seed_list(variants)}). {evaluation(settings)} Mean ± standard deviation over "
             "seeds, in % (each seed's value too where they lie 10 points or more apart); the "
             "first four measures are the exercise's (over the correctly "
             "classified test images), the last three count "
             "an image only if it is correct before and after the attack. The band in the "
             "figures spans the lowest to the highest seed.", "",
             "![accuracy over epochs](accuracy.png)", "",
             "![accuracy over all images](robust.png)", "", *table(variants, wanted), "",
             "## Best epochs, and where FGS and PGD part ways", "",
             *[f"- {findings(k, v)}" for k, v in variants.items()], "",
             REFERENCES[dataset_of(settings)], ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def seed_list(variants):
    """'seed 0' or 'seeds 0, 1, 2': the seeds of any variant."""
    seeds = sorted({s for v in variants.values() for s in v})
    return f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"

"""Which adversarial images survive a camera: early stopping, Kurakin's own schedule, the margin.

`attack.py physical` crafts PGD and least-likely PGD that return their *first* fooling iterate,
a point just past the decision boundary. Kurakin et al. (2016) run all their iterations. Here,
for each model (--models, shipped; or --checkpoint) and eps (--eps), on the first --images test
images: FGS; PGD and least-likely PGD (20 steps of 2.5 eps / 20) both ways, "first" (the first
fooling iterate) and "end" (the last iterate); Kurakin's basic iterative method and iterative
least-likely class method, steps of one grey level (1/255) for min(255 eps + 4, 1.25 * 255 eps)
iterations, the last iterate; and EOT-PGD (20 steps, --eot-samples draws of the composite per
step, the last iterate). Every adversarial image goes through --draws fresh draws of the
print-and-photograph composite (nn/transforms.py) at strength 1 and at the shifted 1.5, from a
generator the crafting never used; the destruction rate is Kurakin's (common.destruction_rate).
Its predictor: the adversarial margin, the logit of the adversarial class (the one predicted)
minus the largest other logit, of each successful adversarial image before the transformation.
Writes survival.csv (one row per model, eps and attack), survival_images.csv (one row per
successful adversarial image: its margin and how many draws turned it back), survival.json and
survival.png (destruction against the margin, and per attack against eps).
"""
from itertools import pairwise

import numpy as np

import models
from attacks import eot_pgd, fgs, signed_steps
from nn import EVAL_BATCH, batch_slices, predict
from nn.backend import namespace_for
from nn.transforms import print_and_photograph
from training.cli import float_in, positive_int

from .common import (
    SHIFTED,
    destruction_rate,
    host,
    load_model,
    model_paths,
    on_model,
    out_dir,
    progress,
    run_name,
    test_set,
    transformed_correct,
    write_csv,
    write_json,
)
from .figures import plt, save_figure

DEFAULTS = {"images": 500}
ATTACKS = ("fgs", "pgd-first", "pgd-end", "ll-first", "ll-end", "bim", "illc", "eot-pgd")
MARGIN_EDGES = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, np.inf)


def add_arguments(p):
    p.add_argument("--models", nargs="+", choices=list(models.MODELS), default=["standard", "pgd"],
                   help="the shipped models to attack (ignored with --checkpoint)")
    p.add_argument("--eps", type=float_in(0, 1, low_open=True), nargs="+",
                   default=[0.1, 0.2, 0.3], help="L-infinity sizes of the attacks")
    p.add_argument("--eot-samples", type=positive_int, default=10,
                   help="fresh transformations per EOT step")
    p.add_argument("--draws", type=positive_int, default=5,
                   help="fresh transformations per image in every evaluation")


def kurakin_iterations(eps):
    """Kurakin et al.'s number of iterations, min(eps + 4, 1.25 eps) with eps in grey levels."""
    return int(min(255 * eps + 4, 1.25 * 255 * eps))


def craft(model, x, t, name, eps, eot_samples, rng):
    """Host adversarial images of attack `name` at eps, in batches."""
    out = []
    for s in batch_slices(len(x), EVAL_BATCH):
        xb, tb = on_model(model, x[s]), on_model(model, t[s])
        if name == "fgs":
            adv = fgs(model, xb, tb, eps)
        elif name == "eot-pgd":
            adv = eot_pgd(model, xb, tb, print_and_photograph(1.0), eps, steps=20,
                          samples=eot_samples, rng=rng)
        else:
            kurakin = name in ("bim", "illc")
            steps = kurakin_iterations(eps) if kurakin else 20
            step = 1 / 255 if kurakin else 2.5 * eps / 20
            if name.startswith("ll") or name == "illc":
                least = np.argmin(host(model.forward(xb)), axis=1)
                model.clear_caches()
                labels, direction = on_model(model, least), -1.0
            else:
                labels, direction = tb, 1.0
            adv = signed_steps(model, xb, labels, eps, step, steps, direction=direction,
                               keep_first=name.endswith("first"))
        out.append(host(adv))
    return np.concatenate(out)


def margins(model, x):
    """(N,) host: the largest logit minus the second largest, of host images x."""
    out = []
    for s in batch_slices(len(x), EVAL_BATCH):
        z = np.sort(host(model.forward(on_model(model, x[s]))), axis=1)
        model.clear_caches()
        out.append(z[:, -1] - z[:, -2])
    return np.concatenate(out)


def binned(margin, destroyed, draws, edges=MARGIN_EDGES):
    """[(low, high, images, destruction rate or None)] of the images whose margin lies in each
    [low, high): destroyed (M,) counts of the `draws` draws that turned each image back."""
    out = []
    for low, high in pairwise(edges):
        inside = (margin >= low) & (margin < high)
        n = int(inside.sum())
        out.append((low, high, n, float(destroyed[inside].sum() / (n * draws)) if n else None))
    return out


def run(args):
    xp = namespace_for(args.device)
    out = out_dir(args.out)
    x, t = test_set(args)
    rows, images = [], []
    for path in model_paths(args):
        model, _ = load_model(path, xp)
        label = run_name(path)
        clean_ok = predict(model, x) == t
        evaluation = np.random.default_rng([args.seed, 1])  # never used while crafting
        for eps in args.eps:
            with progress(len(ATTACKS), f"{label}, eps {eps}: attacks", unit="attack") as bar:
                for name in ATTACKS:
                    adv = craft(model, x, t, name, eps, args.eot_samples,
                                np.random.default_rng(args.seed))
                    adv_ok = predict(model, adv) == t
                    success = clean_ok & ~adv_ok
                    margin = margins(model, adv)
                    row = {"model": label, "eps": eps, "attack": name,
                           "iterations": (kurakin_iterations(eps) if name in ("bim", "illc")
                                          else 1 if name == "fgs" else 20),
                           "successful": int(success.sum()),
                           "median_margin": float(np.median(margin[success]))
                           if success.any() else None}
                    for strength, key in ((1.0, "photo"), (SHIFTED, "shifted")):
                        ok = transformed_correct(model, adv, t, print_and_photograph(strength),
                                                 args.draws, evaluation)
                        row[key] = destruction_rate(clean_ok, adv_ok, ok)[0]
                        if strength == 1.0:
                            back = ok[:, success].sum(axis=0)
                    rows.append(row)
                    images += [{"model": label, "eps": eps, "attack": name, "image": int(i),
                                "margin": float(m), "destroyed": int(b), "draws": args.draws}
                               for i, m, b in zip(np.flatnonzero(success), margin[success],
                                                  back)]
                    bar.update()
            print(f"{label}, eps {eps}: destruction by the composite " + ", ".join(
                f"{r['attack']} {100 * r['photo']:.0f}% (of {r['successful']}, margin "
                f"{r['median_margin'] or 0:.1f})" for r in rows
                if r["model"] == label and r["eps"] == eps), flush=True)
            write_csv(out / "survival.csv", rows)
            write_csv(out / "survival_images.csv", images)
    by_margin = {}
    for label in dict.fromkeys(r["model"] for r in images):
        mine = [r for r in images if r["model"] == label]
        by_margin[label] = {
            "all attacks": binned(np.array([r["margin"] for r in mine]),
                                  np.array([r["destroyed"] for r in mine]), args.draws)}
        for name in ATTACKS:
            sub = [r for r in mine if r["attack"] == name]
            by_margin[label][name] = binned(np.array([r["margin"] for r in sub]),
                                            np.array([r["destroyed"] for r in sub]), args.draws)
    write_json(out / "survival.json", {"images": len(x), "draws": args.draws,
                                       "eot_samples": args.eot_samples, "eps": args.eps,
                                       "seed": args.seed, "shifted_strength": SHIFTED,
                                       "margin_edges": [float(e) for e in MARGIN_EDGES],
                                       "rows": rows, "by_margin": by_margin})
    figure(out / "survival.png", rows, by_margin, args.eps)
    print(f"wrote {out}/survival.csv, survival_images.csv, survival.json and survival.png")
    return 0


def figure(path, rows, by_margin, eps_list):
    labels = list(by_margin)
    fig, axes = plt.subplots(2, len(labels), figsize=(6 * len(labels), 8), squeeze=False)
    for col, label in enumerate(labels):
        ax = axes[0, col]
        for k, (name, bins) in enumerate(by_margin[label].items()):
            keep = [(i, d) for i, (_, _, n, d) in enumerate(bins) if n >= 5]
            ax.plot([i for i, _ in keep], [100 * d for _, d in keep], "o-",
                    color="k" if name == "all attacks" else f"C{k - 1}", label=name,
                    lw=2.5 if name == "all attacks" else 1)
        edges = MARGIN_EDGES
        ax.set_xticks(range(len(edges) - 1))
        ax.set_xticklabels([f"{lo:g}-{hi:g}" for lo, hi in pairwise(edges)],
                           fontsize=7)
        ax.set(xlabel="adversarial margin: logit of the adversarial class minus the best other",
               ylabel="destruction rate by the composite (%)", ylim=(0, 102),
               title=f"{label}: destruction against the margin (bins of 5+ images)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax = axes[1, col]
        for k, name in enumerate(ATTACKS):
            mine = [r for r in rows if r["model"] == label and r["attack"] == name]
            ax.plot([r["eps"] for r in mine], [100 * r["photo"] for r in mine], "o-",
                    color=f"C{k}", label=name)
        ax.set(xlabel="eps", ylabel="destruction rate by the composite (%)", ylim=(0, 102),
               xticks=eps_list, title=f"{label}: destruction against eps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


NAMES = {"fgs": "FGS", "pgd-first": "PGD first hit", "pgd-end": "PGD to the end",
         "ll-first": "least-likely first hit", "ll-end": "least-likely to the end",
         "bim": "Kurakin BIM", "illc": "Kurakin ILLC", "eot-pgd": "EOT-PGD"}


def markdown(report):
    """The markdown tables of results/survival/README.md from one survival.json: per attack and
    eps the destruction (fresh / shifted, successful images, median margin), then per margin
    bin."""
    eps = report["eps"]
    lines = ["| attack | iterations | " + " | ".join(f"eps {e}" for e in eps) + " |",
             "|---|---|" + "---:|" * len(eps)]
    for name, shown in NAMES.items():
        mine = {r["eps"]: r for r in report["rows"] if r["attack"] == name}
        cells = ["- (0)" if mine[e]["successful"] == 0 else
                 f"{100 * mine[e]['photo']:.0f}% / {100 * mine[e]['shifted']:.0f}% "
                 f"({mine[e]['successful']}; {mine[e]['median_margin']:.1f})" for e in eps]
        lines.append(f"| {shown} | {'/'.join(str(mine[e]['iterations']) for e in eps)} | "
                     + " | ".join(cells) + " |")
    (bins,) = report["by_margin"].values()
    lines += ["", "| attack | " + " | ".join(f"{lo:g}-{hi:g}" for lo, hi, *_ in
                                             bins["all attacks"]) + " |",
              "|---|" + "---:|" * len(bins["all attacks"])]
    for name, b in bins.items():
        lines.append(f"| {NAMES.get(name, name)} | " + " | ".join(
            "-" if n < 5 else f"{100 * d:.0f}% ({n})" for _, _, n, d in b) + " |")
    return lines

"""Robust accuracy as AutoAttack measures it: per image, the worst case over five attacks.

FGS, PGD, APGD-CE, APGD-T and Square; it writes results.json, robust.csv and robust.png.

The attacks run in that order, each only on the images that every attack before it left
classified correctly (as AutoAttack runs APGD-CE, APGD-T, FAB-T and Square), so an image counts
as robust only if no attack breaks it, and the report names the attack that broke it first.
Four of them follow the gradient; Square sees nothing but the model's scores, so a model that
hides its gradient (gradient masking) still falls to it. PGD alone is measured too, on every
correctly classified image: the gap between it and the worst case shows how much a 20-step PGD
evaluation overstates robustness.

eps is the checkpoint's training --alpha (0.3 for the exercise's models) unless --eps is given.
"""
import time
from pathlib import Path

import numpy as np

from attacks import ScoreOracle, apgd, apgd_targeted, eval_mode, fgs, pgd, predict, square
from attacks.evaluate import EVAL_BATCH, batch_slices
from nn.backend import namespace_for, xp_of
from training.cli import float_in, int_at_least, positive_int
from training.plots import run_label

from .common import (ExperimentError, host, load_model, model_for, on_model, out_dir, progress,
                     test_set, write_csv, write_json)
from .figures import plt

DEFAULTS = {"images": 1000}
ATTACKS = ("fgs", "pgd", "apgd-ce", "apgd-t", "square")
NAMES = {"clean": "clean", "fgs": "FGS", "pgd": "PGD", "apgd-ce": "APGD-CE", "apgd-t": "APGD-T",
         "square": "Square"}
RESTARTED = ("apgd-ce", "apgd-t")  # --restarts applies to these, as AutoAttack's n_restarts


def add_arguments(p):
    p.add_argument("--eps", type=float_in(0, 1),
                   help="L-infinity size of every attack (default: the checkpoint's --alpha)")
    p.add_argument("--compare", type=Path, nargs="+", default=[], metavar="CHECKPOINT",
                   help="more train.py checkpoints to evaluate and draw in the same figure")
    p.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS),
                   help="which attacks to run (always in the order fgs, pgd, apgd-ce, apgd-t, "
                        "square)")
    p.add_argument("--pgd-steps", type=positive_int, default=20,
                   help="PGD steps of 2.5 eps / steps, from a random start")
    p.add_argument("--apgd-steps", type=positive_int, default=100,
                   help="steps of each APGD-CE and APGD-T run")
    p.add_argument("--restarts", type=positive_int, default=1,
                   help="APGD-CE and APGD-T runs (new random starts) on the images still robust")
    p.add_argument("--targets", type=int_at_least(1), default=9,
                   help="APGD-T's target classes: the top wrong classes of the clean logits")
    p.add_argument("--square-queries", type=positive_int, default=5000,
                   help="Square's queries per image")
    p.add_argument("--square-p-init", type=float_in(0, 1, low_open=True), default=0.8,
                   help="share of the pixels Square's first squares cover")


def make_attacks(args, eps, oracle):
    """name -> attack(model, x, t, rng, ids) -> x_adv on the model's device."""
    return {
        "fgs": lambda m, x, t, rng, ids: fgs(m, x, t, eps),
        "pgd": lambda m, x, t, rng, ids: pgd(m, x, t, eps, steps=args.pgd_steps,
                                             random_start=True, rng=rng),
        "apgd-ce": lambda m, x, t, rng, ids: apgd(m, x, t, eps, args.apgd_steps, "ce", rng=rng),
        "apgd-t": lambda m, x, t, rng, ids: apgd_targeted(m, x, t, eps, args.apgd_steps,
                                                          args.targets, rng),
        "square": lambda m, x, t, rng, ids: square(oracle, x, t, eps, args.square_queries,
                                                   args.square_p_init, rng, ids),
    }


def broken_by_attack(model, attack, images, labels, todo, rng, bar):
    """Which of the images `todo` (host indices) the attack makes the model misclassify: host
    bool (len(todo),), and the largest L-infinity size of its perturbations."""
    broken, linf = np.zeros(len(todo), dtype=bool), 0.0
    for s in batch_slices(len(todo), EVAL_BATCH):
        idx = todo[s]
        x, t = on_model(model, images[idx]), on_model(model, labels[idx])
        x_adv = attack(model, x, t, rng, idx)
        xp = xp_of(x_adv)
        with eval_mode(model):
            broken[s] = host(xp.argmax(model.forward(x_adv), axis=1)) != labels[idx]
        model.clear_caches()
        linf = max(linf, float(xp.max(xp.abs(x_adv - x))))
        bar.update(len(idx))
    return broken, linf


def worst_case(model, label, images, labels, eps, args, rng):
    """Run the attacks in turn on the images still robust: (report dict, clean predictions (N,),
    broken_by (N,): "clean" (misclassified already), the first attack that broke it, or "none")."""
    oracle = ScoreOracle(model)
    attacks = make_attacks(args, eps, oracle)
    prediction = predict(model, images)
    correct = prediction == labels
    n, n_correct = len(labels), int(correct.sum())
    robust = correct.copy()
    broken_by = np.where(correct, "none", "clean").astype(object)
    stages, pgd_broken, pgd_seconds = [], np.zeros(n, dtype=bool), 0.0
    for name in (a for a in ATTACKS if a in args.attacks):
        runs = args.restarts if name in RESTARTED else 1
        attacked, linf, t0 = int(robust.sum()), 0.0, time.perf_counter()
        with progress(attacked * runs, f"{label}: {NAMES[name]}") as bar:
            for _ in range(runs):
                todo = np.flatnonzero(robust)
                hit, size = broken_by_attack(model, attacks[name], images, labels, todo, rng, bar)
                robust[todo[hit]], broken_by[todo[hit]] = False, name
                linf = max(linf, size)
        seconds = time.perf_counter() - t0
        first = int(np.sum(broken_by == name))
        stages.append({"attack": name, "attacked": attacked, "broke_first": first,
                       "robust_acc": robust.sum() / n,
                       "robust_acc_of_correct": robust.sum() / n_correct if n_correct else None,
                       "seconds": seconds, "max_linf": linf})
        if name == "pgd":
            pgd_broken, pgd_seconds = broken_by == "pgd", seconds
        print(f"  {NAMES[name]:8s} broke {first} of {attacked} images; robust "
              f"{100 * robust.sum() / n:.1f}% of all, "
              f"{100 * robust.sum() / max(n_correct, 1):.1f}% of the {n_correct} correct "
              f"({seconds:.1f} s)", flush=True)
    report = {"n": n, "n_correct": n_correct, "clean_acc": n_correct / n,
              "robust_acc": robust.sum() / n,
              "robust_acc_of_correct": robust.sum() / n_correct if n_correct else None,
              "attacks": stages}
    if "pgd" in args.attacks:
        report["pgd_alone"] = pgd_alone(model, label, images, labels, broken_by, pgd_broken,
                                        pgd_seconds, attacks["pgd"], rng)
    if "square" in args.attacks:
        report["square_queries"] = oracle.queries
    return report, prediction, broken_by


def pgd_alone(model, label, images, labels, broken_by, pgd_broken, seconds, attack, rng):
    """PGD's robust accuracy on every correctly classified image: the images the attacks before
    PGD broke are attacked with PGD too (the others PGD saw in its turn)."""
    before = np.flatnonzero(broken_by == "fgs")
    t0 = time.perf_counter()
    with progress(len(before), f"{label}: PGD alone") as bar:
        hit, _ = broken_by_attack(model, attack, images, labels, before, rng, bar)
    broken = pgd_broken.copy()
    broken[before[hit]] = True
    still = int(np.sum((broken_by != "clean") & ~broken))
    n_correct = int(np.sum(broken_by != "clean"))
    return {"robust_acc": still / len(labels),
            "robust_acc_of_correct": still / n_correct if n_correct else None,
            "seconds": seconds + time.perf_counter() - t0}


def draw(path, reports, n):
    """Grouped bars: robust accuracy (%) after each attack in turn (and PGD alone), per model."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(reports)
    for i, r in enumerate(reports):
        names = ["clean"] + [s["attack"] for s in r["attacks"]]
        values = [r["clean_acc"]] + [s["robust_acc"] for s in r["attacks"]]
        if "pgd_alone" in r:
            names, values = names + ["PGD alone"], values + [r["pgd_alone"]["robust_acc"]]
        xs = np.arange(len(values)) + (i - (len(reports) - 1) / 2) * width
        bars = ax.bar(xs, [100 * v for v in values], width, color=f"C{i}",
                      label=f"{r['label']} (eps {r['eps']:g})")
        if "pgd_alone" in r:
            bars[-1].set_hatch("//")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    labels = ["clean"] + [("" if k == 0 else "+") + NAMES[s["attack"]]
                          for k, s in enumerate(reports[0]["attacks"])]
    if "pgd_alone" in reports[0]:
        labels.append("PGD alone")
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set(ylabel="accuracy (%)", ylim=(0, 105),
           title=f"Robust accuracy, attacks in turn on the images still robust ({n} test images)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args):
    _, first = model_for(args)
    xp = namespace_for(args.device)
    out = out_dir(args.out)
    images, labels = test_set(args)
    reports, rows = [], []
    for path in [first, *args.compare]:
        model, settings = load_model(path, xp)
        eps = args.eps if args.eps is not None else settings.get("alpha")
        if eps is None:
            raise ExperimentError(f"{path} has no --alpha in its settings: give --eps")
        label = run_label(Path(path).parent)
        print(f"{label} ({path}): {', '.join(NAMES[a] for a in ATTACKS if a in args.attacks)} "
              f"at eps {eps:g} on {len(images)} test images", flush=True)
        report, prediction, broken_by = worst_case(model, label, images, labels, eps, args,
                                                   np.random.default_rng(args.seed))
        reports.append({"checkpoint": str(path), "label": label, "eps": eps, **report})
        rows += [{"model": label, "checkpoint": str(path), "index": i, "label": int(labels[i]),
                  "clean_prediction": int(prediction[i]), "broken_by": broken_by[i]}
                 for i in range(len(labels))]
        # after each model: an interruption keeps the rest
        write_json(out / "results.json", {"images": len(images), "seed": args.seed,
                                          "settings": settings_of(args), "models": reports})
        write_csv(out / "robust.csv", rows)
    draw(out / "robust.png", reports, len(images))
    print(f"wrote {out}/results.json, robust.csv and robust.png")
    return 0


def settings_of(args):
    return {"attacks": [a for a in ATTACKS if a in args.attacks], "eps": args.eps,
            "pgd_steps": args.pgd_steps, "apgd_steps": args.apgd_steps,
            "restarts": args.restarts, "targets": args.targets,
            "square_queries": args.square_queries, "square_p_init": args.square_p_init}

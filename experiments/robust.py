"""Robust accuracy as AutoAttack's standard version measures it: per image, the worst case over
APGD-CE, APGD-T, FAB-T and Square, attack for attack and with AutoAttack's settings.

By default it runs exactly the attacks of AutoAttack's standard version (Croce and Hein 2020) in
its order and with its settings: APGD-CE (100 steps, 1 run), APGD-T (100 steps, 9 target
classes), FAB-T (100 steps, 9 target classes) and Square (5,000 queries, p_init 0.8, the size
schedule not rescaled), each only on the images that every attack before it left classified
correctly, so an image counts as robust only if no attack breaks it, and the report names the
attack that broke it first. FGS and PGD can be put in front (--attacks); the rescaled Square
schedule and the paper's rule for halving APGD's step are flags; every such choice is named as a
deviation from the standard version in the output and in results.json. Three of the attacks
follow the gradient; Square sees nothing but the model's scores, so a model that hides its
gradient (gradient masking) still falls to it. PGD alone (20 steps, random start) is measured
too, on every correctly classified image: the gap between it and the worst case shows how much a
PGD evaluation overstates robustness. It writes results.json, robust.csv and robust.png; every
accuracy comes with its standard error over the images used, sqrt(p (1 - p) / n).

eps is the checkpoint's training --alpha (0.3 for the exercise's models) unless --eps is given.
"""
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from attacks import (
    ScoreOracle,
    apgd,
    apgd_targeted,
    fab_targeted,
    fgs,
    pgd,
    square,
)
from nn import EVAL_BATCH, batch_slices, eval_mode, no_grad, predict
from nn.backend import namespace_for, xp_of
from training.cli import float_in, int_at_least, positive_int

from .common import (
    ExperimentError,
    host,
    load_model,
    model_for,
    on_model,
    out_dir,
    progress,
    run_name,
    test_set,
    write_csv,
    write_json,
)
from .figures import plt, save_figure

DEFAULTS = {"images": 1000}
ATTACKS = ("fgs", "pgd", "apgd-ce", "apgd-t", "fab-t", "square")
STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")  # AutoAttack's standard version
NAMES = {"clean": "clean", "fgs": "FGS", "pgd": "PGD", "apgd-ce": "APGD-CE", "apgd-t": "APGD-T",
         "fab-t": "FAB-T", "square": "Square"}
RESTARTED = ("apgd-ce", "apgd-t")  # runs --restarts times here; FAB-T restarts inside itself
# AutoAttack's standard settings of the flags, against which deviations are named
STANDARD_SETTINGS = {"apgd_steps": 100, "fab_steps": 100, "restarts": 1, "targets": 9,
                     "square_queries": 5000, "square_p_init": 0.8,
                     "square_schedule": "autoattack", "apgd_halving": "autoattack"}


def add_arguments(p):
    p.add_argument("--eps", type=float_in(0, 1),
                   help="L-infinity size of every attack (default: the checkpoint's --alpha)")
    p.add_argument("--compare", type=Path, nargs="+", default=[], metavar="CHECKPOINT",
                   help="more train.py checkpoints to evaluate and draw in the same figure")
    p.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(STANDARD),
                   help="which attacks to run (always in the order fgs, pgd, apgd-ce, apgd-t, "
                        "fab-t, square); the default is AutoAttack's standard version")
    p.add_argument("--pgd-steps", type=positive_int, default=20,
                   help="PGD steps of 2.5 eps / steps, from a random start")
    p.add_argument("--apgd-steps", type=positive_int, default=100,
                   help="steps of each APGD-CE and APGD-T run")
    p.add_argument("--apgd-halving", choices=["autoattack", "paper"], default="autoattack",
                   help="APGD halves its step where the loss rose in at most 75%% of the steps, "
                        "the first compared with 0 (AutoAttack's code), or in fewer (the paper)")
    p.add_argument("--fab-steps", type=positive_int, default=100,
                   help="iterations of each FAB-T run")
    p.add_argument("--restarts", type=positive_int, default=1,
                   help="APGD-CE, APGD-T and FAB-T runs on the images still robust (new random "
                        "starts; FAB-T's first run starts at the image, as AutoAttack's)")
    p.add_argument("--targets", type=int_at_least(1), default=9,
                   help="APGD-T's and FAB-T's target classes: the top wrong classes of the clean "
                        "logits")
    p.add_argument("--square-queries", type=positive_int, default=5000,
                   help="Square's queries per image")
    p.add_argument("--square-p-init", type=float_in(0, 1, low_open=True), default=0.8,
                   help="share of the pixels Square's first squares cover")
    p.add_argument("--square-schedule", choices=["autoattack", "rescaled"], default="autoattack",
                   help="Square's square sizes: AutoAttack's standard schedule, or stretched "
                        "over --square-queries (torchattacks)")


@dataclass(frozen=True)
class Settings:
    """The evaluation's settings; the defaults are AutoAttack's standard version. attack.py
    robust fills them from its flags (Settings.of), models.build takes them as they are."""
    attacks: tuple = STANDARD
    pgd_steps: int = 20
    apgd_steps: int = 100
    apgd_halving: str = "autoattack"
    restarts: int = 1
    targets: int = 9
    fab_steps: int = 100
    square_queries: int = 5000
    square_p_init: float = 0.8
    square_schedule: str = "autoattack"

    @classmethod
    def of(cls, args):
        """The settings of attack.py robust's flags."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)} |
                   {"attacks": tuple(a for a in ATTACKS if a in args.attacks)})


def deviations(args):
    """How the run differs from AutoAttack's standard version, one phrase each ([] if not)."""
    found = []
    if tuple(a for a in ATTACKS if a in args.attacks) != STANDARD:
        found.append("attacks " + ", ".join(NAMES[a] for a in ATTACKS if a in args.attacks))
    found += [f"--{k.replace('_', '-')} {getattr(args, k)} (AutoAttack: {v})"
              for k, v in STANDARD_SETTINGS.items() if getattr(args, k) != v]
    return found


def standard_error(p, n):
    """The standard error of an accuracy p measured on n images, sqrt(p (1 - p) / n)."""
    return math.sqrt(p * (1 - p) / n) if n else None


def make_attacks(settings, eps, oracle):
    """name -> attack(model, x, t, rng, ids) -> x_adv on the model's device."""
    return {
        "fgs": lambda m, x, t, rng, ids: fgs(m, x, t, eps),
        "pgd": lambda m, x, t, rng, ids: pgd(m, x, t, eps, steps=settings.pgd_steps,
                                             random_start=True, rng=rng),
        "apgd-ce": lambda m, x, t, rng, ids: apgd(m, x, t, eps, settings.apgd_steps, "ce", rng=rng,
                                                  halving=settings.apgd_halving),
        "apgd-t": lambda m, x, t, rng, ids: apgd_targeted(m, x, t, eps, settings.apgd_steps,
                                                          settings.targets, rng, settings.apgd_halving),
        "fab-t": lambda m, x, t, rng, ids: fab_targeted(m, x, t, eps, settings.fab_steps,
                                                        settings.targets, settings.restarts, rng),
        "square": lambda m, x, t, rng, ids: square(oracle, x, t, eps, settings.square_queries,
                                                   settings.square_p_init, rng, ids,
                                                   rescale=settings.square_schedule == "rescaled"),
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
        with eval_mode(model), no_grad():
            broken[s] = host(xp.argmax(model.forward(x_adv), axis=1)) != labels[idx]
        linf = max(linf, float(xp.max(xp.abs(x_adv - x))))
        bar.update(len(idx))
    return broken, linf


def worst_case(model, label, images, labels, eps, settings, rng):
    """Run the attacks in turn on the images still robust: (report dict, clean predictions (N,),
    broken_by (N,): "clean" (misclassified already), the first attack that broke it, or "none")."""
    oracle = ScoreOracle(model)
    attacks = make_attacks(settings, eps, oracle)
    prediction = predict(model, images)
    correct = prediction == labels
    n, n_correct = len(labels), int(correct.sum())
    robust = correct.copy()
    broken_by = np.where(correct, "none", "clean").astype(object)
    stages = []
    for name in (a for a in ATTACKS if a in settings.attacks):
        runs = settings.restarts if name in RESTARTED else 1
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
                       **accuracies(int(robust.sum()), n, n_correct),
                       "seconds": seconds, "max_linf": linf})
        print(f"  {NAMES[name]:8s} broke {first} of {attacked} images; robust "
              f"{100 * robust.sum() / n:.1f}% of all, "
              f"{100 * robust.sum() / max(n_correct, 1):.1f}% of the {n_correct} correct "
              f"({seconds:.1f} s)", flush=True)
    report = {"n": n, "n_correct": n_correct, "clean_acc": n_correct / n,
              **accuracies(int(robust.sum()), n, n_correct), "attacks": stages,
              "square_queries": oracle.queries,
              "pgd_alone": pgd_alone(model, label, images, labels, correct, attacks["pgd"], rng)}
    return report, prediction, broken_by


def accuracies(robust, n, n_correct):
    """robust of n images: robust_acc with its standard error, and the share of the correct."""
    return {"robust_acc": robust / n, "robust_acc_se": standard_error(robust / n, n),
            "robust_acc_of_correct": robust / n_correct if n_correct else None}


def pgd_alone(model, label, images, labels, correct, attack, rng):
    """PGD's robust accuracy when it alone attacks every correctly classified image."""
    todo = np.flatnonzero(correct)
    t0 = time.perf_counter()
    with progress(len(todo), f"{label}: PGD alone") as bar:
        hit, _ = broken_by_attack(model, attack, images, labels, todo, rng, bar)
    still = int(len(todo) - hit.sum())
    return {**accuracies(still, len(labels), len(todo)), "seconds": time.perf_counter() - t0}


def draw(path, reports, n):
    """Grouped bars: robust accuracy (%) after each attack in turn (and PGD alone), per model."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(reports)
    for i, r in enumerate(reports):
        values = ([r["clean_acc"]] + [s["robust_acc"] for s in r["attacks"]]
                  + [r["pgd_alone"]["robust_acc"]])
        xs = np.arange(len(values)) + (i - (len(reports) - 1) / 2) * width
        bars = ax.bar(xs, [100 * v for v in values], width, color=f"C{i}",
                      label=f"{r['label']} (eps {r['eps']:g})")
        bars[-1].set_hatch("//")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    labels = ["clean"] + [("" if k == 0 else "+") + NAMES[s["attack"]]
                          for k, s in enumerate(reports[0]["attacks"])] + ["PGD alone"]
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set(ylabel="accuracy (%)", ylim=(0, 105),
           title=f"Robust accuracy, attacks in turn on the images still robust ({n} test images)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def run(args):
    _, first = model_for(args)
    xp = namespace_for(args.device)
    out = out_dir(args.out)
    images, labels = test_set(args)
    reports, rows = [], []
    changed = deviations(args)
    print("AutoAttack's standard version" + (f", with these deviations: {'; '.join(changed)}"
                                              if changed else ""), flush=True)
    for path in [first, *args.compare]:
        model, settings = load_model(path, xp)
        eps = args.eps if args.eps is not None else settings.get("alpha")
        if eps is None:
            raise ExperimentError(f"{path} has no --alpha in its settings: give --eps")
        label = run_name(path)
        print(f"{label} ({path}): {', '.join(NAMES[a] for a in ATTACKS if a in args.attacks)} "
              f"at eps {eps:g} on {len(images)} test images", flush=True)
        report, prediction, broken_by = worst_case(model, label, images, labels, eps,
                                                   Settings.of(args),
                                                   np.random.default_rng(args.seed))
        reports.append({"checkpoint": str(path), "label": label, "eps": eps, **report})
        print(f"  worst case {100 * report['robust_acc']:.1f}% +- "
              f"{100 * report['robust_acc_se']:.1f} of {len(images)} images; PGD alone "
              f"{100 * report['pgd_alone']['robust_acc']:.1f}%", flush=True)
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
    """The flags of the evaluation, and its deviations from AutoAttack's standard version."""
    return {"attacks": [a for a in ATTACKS if a in args.attacks], "eps": args.eps,
            "pgd_steps": args.pgd_steps, **{k: getattr(args, k) for k in STANDARD_SETTINGS},
            "deviations": deviations(args)}

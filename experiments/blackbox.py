"""Black-box attack through a substitute: the victim answers only labels, each image counted.

The victim (--checkpoint, or the shipped model of --model) is a LabelOracle. For each method and
query budget (--budgets), the attacker trains a substitute CNN from scratch (the reference CNN,
Adam) on the oracle's labels alone, crafts FGS (alpha) and PGD (eps alpha, --steps steps) on the
substitute for --images held-out test images, labelled by their clean oracle answers, and counts
the success rate: the fraction of the held-out images the oracle classified correctly that it
misclassifies after the attack. Methods (Papernot et al. 2017):
  jacobian  the first --budgets[0] test images as seeds, then one round of Jacobian-based dataset
            augmentation per further budget, chosen by the previous round's substitute, with
            step lam_r = -lam (-1)^floor(r / tau) in round r = 0, 1, ... (`augmentation_step`);
  random    the first <budget> test images, labelled.
Query images are the first max(--budgets) test images; held-out images the next --images.
Evaluation queries (held-out images, clean and attacked) are counted separately. Writes
blackbox.csv, blackbox.json and blackbox.png (success rate and agreement against queries).
"""
import time

import numpy as np

from attacks import fgs, pgd, standard_step
from attacks.blackbox import LabelOracle, QueryBudgetExceeded, jacobian_augmentation
from nn import Adam, batch_slices, predict, reference_cnn
from nn.backend import namespace_for
from training.cli import float_in, positive_int

from .common import (
    ExperimentError,
    add_api_arguments,
    craft,
    label_oracle,
    model_for,
    on_model,
    out_dir,
    progress,
    test_set,
    write_csv,
    write_json,
)
from .figures import plt, save_figure

DEFAULTS = {"images": 1000}


def add_arguments(p):
    p.add_argument("--budgets", type=positive_int, nargs="+", default=[100, 200, 400, 800, 1600],
                   help="query budgets: images labelled by the oracle to train a substitute")
    p.add_argument("--methods", nargs="+", choices=["jacobian", "random"],
                   default=["jacobian", "random"], help="how the queried images are chosen")
    p.add_argument("--lam", type=float_in(0, 1, low_open=True), default=0.1,
                   help="step of Jacobian-based dataset augmentation")
    p.add_argument("--tau", type=positive_int, default=3,
                   help="augmentation rounds between flips of the step's sign")
    p.add_argument("--eps", "--alpha", dest="alpha", metavar="EPS", type=float_in(0, 1),
                   default=0.3,
                   help="FGS step and PGD eps (--alpha: an alias)")
    p.add_argument("--steps", type=positive_int, default=20, help="PGD steps")
    p.add_argument("--substitute-steps", type=positive_int, default=600,
                   help="Adam steps that train each substitute, whatever its number of images")
    p.add_argument("--batch-size", type=positive_int, default=32, help="substitute batch size")
    p.add_argument("--lr", type=float_in(0, 1, low_open=True), default=1e-3, help="Adam step")
    add_api_arguments(p)


def fit_substitute(images, labels, args, xp, desc):
    """A reference CNN trained from scratch on host images and the oracle's labels; eval mode."""
    rng = np.random.default_rng(args.seed)
    model, optimizer = reference_cnn(rng=rng).to(xp).train(), Adam(args.lr)
    done = 0
    with progress(args.substitute_steps, desc, unit="step") as bar:
        while done < args.substitute_steps:
            order = rng.permutation(len(images))
            for s in batch_slices(len(order), args.batch_size)[:args.substitute_steps - done]:
                standard_step(model, optimizer, on_model(model, images[order[s]]),
                              on_model(model, labels[order[s]]))
                done += 1
                bar.update(1)
    return model.eval()


def augmentation_step(rnd, lam, tau):
    """The step of augmentation round rnd (0, 1, ...): -lam for tau rounds, then +lam, ...

    Papernot et al. flip the sign every tau rounds, lam (-1)^floor(rnd / tau), so that the
    synthetic points do not drift ever further from the data; as in CleverHans' MNIST tutorial
    the first rounds step *down* the label's logit, toward the substitute's decision boundary,
    where the oracle's labels teach the substitute the most. (Stepping up it, deeper into the
    label's region, gave points the oracle labels like their parents: on MNIST the substitute's
    agreement then stayed at 79% from 100 to 1,600 queries.)
    """
    return -lam * (-1) ** (rnd // tau)


def substitutes(method, oracle, pool, args, xp):
    """Yield (queries so far, substitute) per budget; the oracle labels every training image."""
    x = pool[:args.budgets[0]]
    y = oracle(x)
    rng, substitute, rnd = np.random.default_rng([args.seed, 1]), None, 0
    for budget in args.budgets:
        if substitute is not None:
            if method == "random":
                new = pool[len(x):budget]
            else:  # augment budget - len(x) of the labelled images (all of them when doubling)
                pick = rng.choice(len(x), budget - len(x), replace=False)
                lam = augmentation_step(rnd, args.lam, args.tau)
                new = craft(substitute, x[pick], y[pick],
                            lambda m, xs, ys: jacobian_augmentation(m, xs, ys, lam),
                            f"augmenting {len(pick)} images, step {lam:+g}")
                rnd += 1
            x, y = np.concatenate([x, new]), np.concatenate([y, oracle(new)])
        substitute = fit_substitute(x, y, args, xp, f"{method} substitute, {len(x)} images")
        yield oracle.queries, substitute


def success(predicted, labels, correct):
    """Fraction of the `correct` (mask) images whose predicted label is no longer the true one."""
    return float(np.mean(predicted[correct] != labels[correct])) if correct.any() else float("nan")


def check_budgets(args, available):
    args.budgets = sorted(set(args.budgets))
    if "jacobian" in args.methods:
        for low, high in zip(args.budgets, args.budgets[1:]):
            if high > 2 * low:
                raise ExperimentError(f"--budgets: a round of Jacobian augmentation at most "
                                      f"doubles the queried set, so {high} cannot follow {low}")
    if args.budgets[-1] + args.images > available:
        raise ExperimentError(f"--budgets up to {args.budgets[-1]} plus --images {args.images} "
                              f"need more test images than the {available} there are")


def figure(path, rows, whitebox, args, n):
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.3))
    for i, attack in enumerate(("fgs", "pgd")):
        for method, style, marker in (("jacobian", "-", "o"), ("random", "--", "s")):
            part = [r for r in rows if r["method"] == method]
            if part:
                ax.plot([r["queries"] for r in part], [100 * r[f"{attack}_success"] for r in part],
                        style, marker=marker, color=f"C{i}", label=f"{attack.upper()}, {method}")
        ax.axhline(100 * whitebox[attack], color=f"C{i}", ls=":", lw=1,
                   label=f"{attack.upper()} white-box on the victim")
    for method, style, marker in (("jacobian", "-", "o"), ("random", "--", "s")):
        part = [r for r in rows if r["method"] == method]
        if part:
            ax2.plot([r["queries"] for r in part], [100 * r["agreement"] for r in part], style,
                     marker=marker, color="C2", label=method)
    for a, ylabel in ((ax, "attack success on the victim (%)"),
                      (ax2, "substitute agrees with the victim (%)")):
        a.set_xscale("log", base=2)
        a.set_xticks(args.budgets, [str(b) for b in args.budgets])
        a.set(xlabel="oracle queries to train the substitute", ylabel=ylabel, ylim=(0, 102))
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    ax.set_title(f"Black-box success, eps {args.alpha}, {n} held-out images", fontsize=10)
    ax2.set_title("Agreement on the held-out images", fontsize=10)
    save_figure(fig, path)


def run(args):
    model, ckpt = model_for(args)
    out, xp = out_dir(args.out), namespace_for(args.device)
    images, labels = test_set(args, limit=max(args.budgets) + args.images)
    check_budgets(args, len(images))
    top = args.budgets[-1]
    pool, held, truth = images[:top], images[top:], labels[top:]
    answers = LabelOracle(model)  # evaluation queries, counted apart from the attacker's
    clean = answers(held)
    correct = clean == truth
    print(f"victim {ckpt}: {100 * correct.mean():.2f}% of {len(held)} held-out images correct",
          flush=True)
    rng = np.random.default_rng(args.seed)
    attacks = {"fgs": lambda m, x, t: fgs(m, x, t, args.alpha),
               # the last iterate: the first one that fools the source model sits just past
               # its boundary and transfers worst
               "pgd": lambda m, x, t: pgd(m, x, t, args.alpha, steps=args.steps,
                                          random_start=True, rng=rng, keep_first=False)}
    whitebox = {a: success(predict(model, craft(model, held, truth, fn, f"{a} on the victim")),
                           truth, correct) for a, fn in attacks.items()}
    print("white-box on the victim (for reference): " + ", ".join(
        f"{a.upper()} {100 * v:.1f}%" for a, v in whitebox.items()), flush=True)
    rows = []
    for method in args.methods:
        oracle, counted = label_oracle(args, model, budget=args.budgets[-1])
        try:
            for _, sub in substitutes(method, oracle, pool, args, xp):
                t0 = time.perf_counter()
                row = {"method": method, "queries": counted(),  # the server's count over --api
                       "agreement": float(np.mean(predict(sub, held) == clean))}
                for a, fn in attacks.items():
                    x_adv = craft(sub, held, clean, fn, f"{a} on the substitute")
                    row[f"{a}_success"] = success(answers(x_adv), truth, correct)
                    row[f"{a}_success_on_substitute"] = success(predict(sub, x_adv), truth, correct)
                row.update(eval_queries=len(held) * len(attacks), seconds=time.perf_counter() - t0)
                rows.append(row)
                write_csv(out / "blackbox.csv", rows)
                print(f"{method}, {row['queries']} queries: agreement "
                      f"{100 * row['agreement']:.1f}%, "
                      f"success on the victim FGS {100 * row['fgs_success']:.1f}%, PGD "
                      f"{100 * row['pgd_success']:.1f}% (on the substitute "
                      f"{100 * row['fgs_success_on_substitute']:.0f}%, "
                      f"{100 * row['pgd_success_on_substitute']:.0f}%)", flush=True)
        except QueryBudgetExceeded as exc:
            raise ExperimentError(f"{method}: {exc}") from None
    write_json(out / "blackbox.json", {
        "checkpoint": str(ckpt), "held_out": len(held), "victim_correct": int(correct.sum()),
        "alpha": args.alpha, "pgd_steps": args.steps, "lam": args.lam, "tau": args.tau,
        "budgets": args.budgets,
        "whitebox_success": whitebox, "eval_queries": answers.queries, "rows": rows})
    figure(out / "blackbox.png", rows, whitebox, args, len(held))
    print(f"wrote {out}/blackbox.csv, blackbox.json and blackbox.png ({answers.queries} "
          "evaluation queries)", flush=True)
    return 0

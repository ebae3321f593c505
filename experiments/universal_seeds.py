"""Universal perturbations over seeds: a schedule that converges, the spread, and targets.

`attack.py universal` fits one perturbation per eps with one seed (500 signed steps of eps / 20
on random batches). Here, for each model (--models, shipped; or --checkpoint), eps (--eps) and
seed (--seeds), v is fitted by `attacks.universal.universal_passes`: passes over the first
--train-images training images, one step per batch of 100 along the batch's gradient over its
largest entry (--update scaled; the first pass's step --step times eps, falling as 1 / pass;
signed steps of eps / 20, the old fit's, reached 11% where these reach 19% at eps 0.2), until a
pass raises the rate on the next --check-images training images by less than half a point (the
passes it needed are reported); the old fit (`universal_perturbation`, the seed's own batches,
--old-steps on the first --old-train-images) runs beside it for comparison. Targeted: the same
schedule down the cross-entropy of each class of --targets, for --target-models at --target-eps.
Reported on the first --images test images, never seen while fitting: the fooling rate
(prediction changed), the error against the labels, and for a target the share of the images of
other classes that the model puts in it. Writes
universal_seeds.csv (one row per fit), universal_seeds.json (mean, standard deviation, smallest
and largest over the seeds) and universal_seeds.png.
"""
import numpy as np

import models
from attacks.universal import universal_passes, universal_perturbation
from data.mnist import load_mnist
from nn import predict
from nn.backend import namespace_for
from training.cli import float_in, int_at_least, positive_int

from .common import load_model, model_paths, out_dir, run_name, test_set, write_csv, write_json
from .figures import plt, save_figure

DEFAULTS = {"images": 1000}


def add_arguments(p):
    p.add_argument("--models", nargs="+", choices=list(models.MODELS), default=["standard", "pgd"],
                   help="the shipped models to attack (ignored with --checkpoint)")
    p.add_argument("--eps", type=float_in(0, 1, low_open=True), nargs="+",
                   default=[0.1, 0.2, 0.3], help="L-infinity sizes")
    p.add_argument("--seeds", type=int_at_least(0), nargs="+", default=[0, 1, 2])
    p.add_argument("--passes", type=positive_int, default=10,
                   help="the most passes over the training images")
    p.add_argument("--tol", type=float, default=0.005,
                   help="stop after a pass (from the third) that raises the rate on the check "
                        "images by less than this (negative: run all --passes)")
    p.add_argument("--step", type=float_in(0, 10, low_open=True), default=2.0,
                   help="the first pass's step, as a multiple of eps")
    p.add_argument("--update", choices=["sign", "scaled"], default="scaled",
                   help="each step along the sign of the batch's gradient, or the gradient over "
                        "its largest absolute value")
    p.add_argument("--train-images", type=positive_int, default=5000,
                   help="training images (the first N) v is fitted on")
    p.add_argument("--check-images", type=positive_int, default=2000,
                   help="training images after those that judge convergence")
    p.add_argument("--targets", type=int_at_least(0), nargs="*", default=list(range(10)),
                   help="target classes of the targeted fits (none: no targeted fits)")
    p.add_argument("--target-models", nargs="*", choices=list(models.MODELS),
                   default=["standard"], help="the shipped models of the targeted fits")
    p.add_argument("--target-eps", type=float_in(0, 1, low_open=True), nargs="*",
                   default=[0.2], help="eps of the targeted fits")
    p.add_argument("--old-train-images", type=positive_int, default=10000,
                   help="training images (the first N) of the old fit, as attack.py universal")
    p.add_argument("--old-steps", type=int_at_least(0), default=500,
                   help="steps of the old fit (attack.py universal's) beside the new one; 0: "
                        "no old fit")


def spread(values):
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "values": v.tolist()}


def run(args):
    xp = namespace_for(args.device)
    out = out_dir(args.out)
    train_x, _ = load_mnist("train", args.data_dir, max(args.train_images + args.check_images,
                                                      args.old_train_images))
    fit_x = train_x[:args.train_images]
    check_x = train_x[args.train_images:args.train_images + args.check_images]
    old_x = train_x[:args.old_train_images]
    x, t = test_set(args)
    rows = []
    targeted_labels = {run_name(models.path_of(m)) for m in args.target_models}
    for path in model_paths(args):
        model, _ = load_model(path, xp)
        label = run_name(path)
        clean = predict(model, x)
        jobs = [(eps, seed, None) for eps in args.eps for seed in args.seeds]
        if args.checkpoint is None and label in targeted_labels:
            jobs += [(eps, seed, c) for eps in args.target_eps for c in args.targets
                     for seed in args.seeds]
        for eps, seed, target in jobs:
            v, history = universal_passes(model, fit_x, eps, args.passes, step=args.step * eps,
                                          target=target, check=check_x, tol=args.tol,
                                          update=args.update,
                                          rng=np.random.default_rng([seed, int(1000 * eps)]))
            fits = [("passes", v, len(history), history[-1][1])]
            if target is None and args.old_steps:
                old = universal_perturbation(model, old_x, eps, args.old_steps,
                                             rng=np.random.default_rng([seed, int(1000 * eps)]))
                fits.append(("old", old, None, None))
            for method, v, passes, check_rate in fits:
                after = predict(model, np.clip(x + v, 0, 1).astype(x.dtype))
                other = t != (target if target is not None else -1)
                rows.append({"model": label, "eps": eps, "seed": seed, "method": method,
                             "target": target, "passes": passes, "check_rate": check_rate,
                             "check_history": ([r for _, r in history] if method == "passes"
                                               else None),
                             "fooling": float(np.mean(after != clean)),
                             "error": float(np.mean(after != t)),
                             "target_success": (float(np.mean(after[other] == target))
                                                if target is not None else None)})
                r = rows[-1]
                print(f"{label}, eps {eps}, seed {seed}, {method}"
                      + (f", target {target}: success {100 * r['target_success']:.1f}%"
                         if target is not None else f": fooling {100 * r['fooling']:.1f}%")
                      + (f" after {passes} passes" if passes else ""), flush=True)
            write_csv(out / "universal_seeds.csv", rows)
    summary = {}
    for r in rows:
        key = (f"{r['model']}, eps {r['eps']}, {r['method']}"
               + (f", target {r['target']}" if r["target"] is not None else ""))
        summary.setdefault(key, []).append(r)
    summary = {k: {"seeds": [r["seed"] for r in rs],
                   "fooling": spread([r["fooling"] for r in rs]),
                   "error": spread([r["error"] for r in rs]),
                   **({"target_success": spread([r["target_success"] for r in rs])}
                      if rs[0]["target"] is not None else {}),
                   **({"passes": spread([r["passes"] for r in rs])}
                      if rs[0]["passes"] is not None else {})}
               for k, rs in summary.items()}
    write_json(out / "universal_seeds.json", {
        "images": len(x), "train_images": args.train_images, "check_images": args.check_images,
        "max_passes": args.passes, "step": args.step, "update": args.update, "seeds": args.seeds,
        "summary": summary, "rows": rows})
    figure(out / "universal_seeds.png", rows)
    print(f"wrote {out}/universal_seeds.csv, universal_seeds.json and universal_seeds.png")
    return 0


def figure(path, rows):
    labels = list(dict.fromkeys(r["model"] for r in rows))
    targeted = [r for r in rows if r["target"] is not None]
    cols = len(labels) + bool(targeted)
    fig, axes = plt.subplots(1, cols, figsize=(5 * cols, 4.2), squeeze=False)
    for ax, label in zip(axes[0], labels):
        for k, method in enumerate(("passes", "old")):
            mine = [r for r in rows if r["model"] == label and r["method"] == method
                    and r["target"] is None]
            if not mine:
                continue
            eps = sorted({r["eps"] for r in mine})
            shift = 0.004 * (1 if k else -1)
            ax.scatter([r["eps"] + shift for r in mine], [100 * r["fooling"] for r in mine],
                       color=f"C{k}", s=18, alpha=0.7)
            means = [100 * np.mean([r["fooling"] for r in mine if r["eps"] == e]) for e in eps]
            ax.plot(eps, means, "-", color=f"C{k}",
                    label={"passes": "passes until converged", "old": "old: 500 signed steps"}
                    [method] + " (dots: seeds, line: mean)")
        ax.set(xlabel="eps", ylabel="fooling rate on test images (%)", ylim=(0, 100),
               title=f"{label}: universal perturbation")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if targeted:
        ax = axes[0, -1]
        for k, eps in enumerate(sorted({r["eps"] for r in targeted})):
            mine = [r for r in targeted if r["eps"] == eps]
            ax.scatter([r["target"] + 0.15 * (k - 0.5) for r in mine],
                       [100 * r["target_success"] for r in mine], color=f"C{k + 2}", s=18,
                       label=f"{mine[0]['model']}, eps {eps} (dots: seeds)")
        ax.set(xlabel="target class", ylabel="test images of other classes put in it (%)",
               ylim=(0, 100), xticks=range(10), title="targeted universal perturbations")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def markdown(report, label):
    """The markdown tables of results/universal_seeds/README.md from one universal_seeds.json:
    per eps the fooling rate over seeds of both fits and the passes needed; per target class
    the targeted success over seeds."""
    s = report["summary"]

    def spread_cell(x):
        return (f"{100 * x['mean']:.1f} ± {100 * x['std']:.1f} ({100 * x['min']:.1f}-"
                f"{100 * x['max']:.1f})")
    lines = ["| eps | passes until converged: fooling | passes needed | old fit (500 signed "
             "steps): fooling |", "|---:|---|---|---|"]
    for eps in sorted({r["eps"] for r in report["rows"]}):
        new, old = s.get(f"{label}, eps {eps}, passes"), s.get(f"{label}, eps {eps}, old")
        if new is None:
            continue
        lines.append(f"| {eps} | {spread_cell(new['fooling'])} | "
                     f"{', '.join(str(int(p)) for p in new['passes']['values'])} | "
                     f"{spread_cell(old['fooling']) if old else ''} |")
    keys = [k for k in s if ", target " in k]
    if keys:
        lines += ["", "| target | " + " | ".join(k.split("target ")[1] for k in keys) + " |",
                  "|---|" + "---:|" * len(keys),
                  "| mean (min-max) | " + " | ".join(
                      f"{100 * s[k]['target_success']['mean']:.1f} "
                      f"({100 * s[k]['target_success']['min']:.0f}-"
                      f"{100 * s[k]['target_success']['max']:.0f})" for k in keys) + " |",
                  "| passes | " + " | ".join("/".join(str(int(p)) for p in s[k]["passes"]["values"])
                                            for k in keys) + " |"]
    return lines

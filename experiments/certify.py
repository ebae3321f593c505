"""Certified accuracy by interval bounds: the share of test images *proven* robust at each eps,
beside clean and PGD accuracy on the same images: certify.csv, table.md, verdicts.csv and
certify.png.

An image is certified when the interval bounds (nn/interval.py) prove that no perturbation of
L-infinity norm <= eps inside [0, 1] changes the model's correct answer. Every attack can only
fail on such an image, so the certified share is a lower bound of robust accuracy, as PGD's (or
`attack.py robust`'s worst case) is an upper bound: certified <= robust <= clean. The run checks
the first inequality image by image against PGD and stops with an error if an attack ever
breaks a certified image (a bug in the bounds). Models trained without IBP certify almost
nothing at eps 0.1: their bounds, loose by construction, prove only what IBP training made
provable.
"""
import numpy as np

import models
from attacks import certify, evaluate, pgd_attack
from nn.backend import namespace_for
from training.cli import float_in, positive_int

from .common import ExperimentError, load_model, model_paths, out_dir, run_name, test_set, write_csv
from .figures import plt, save_figure

DEFAULTS = {"images": 1000}


def add_arguments(p):
    p.add_argument("--eps", type=float_in(0, 1), nargs="+", default=[0.1, 0.3],
                   help="L-infinity radii to certify at")
    p.add_argument("--models", nargs="+", choices=list(models.MODELS),
                   default=list(models.MODELS),
                   help="shipped models to certify when no --checkpoint is given")
    p.add_argument("--pgd-steps", type=positive_int, default=20,
                   help="steps of the PGD run that checks the certificates")


def certify_model(model, images, labels, eps, steps, rng):
    """(row of clean, PGD and certified accuracy over all images, per-image verdicts (N,));
    ExperimentError if PGD breaks a certified image."""
    proven = certify(model, images, labels, eps)
    r = evaluate(model, images, labels, {"pgd": pgd_attack(eps, steps, rng)})
    if proven.any():  # every certified image, attacked again on its own: none may fall
        check = evaluate(model, images[proven], labels[proven],
                         {"pgd": pgd_attack(eps, steps, rng)})
        if check["pgd_robust_acc"] < 1:
            raise ExperimentError(f"PGD broke an image the bounds certified at eps {eps:g}: "
                                  "the interval bounds are wrong (a bug)")
    return {"eps": eps, "n": len(images), "clean_acc": r["clean_acc"],
            "pgd_acc": r["pgd_robust_acc"], "certified_acc": float(proven.mean())}, proven


def table(rows):
    """The rows as a Markdown table (docs/certified.md includes it)."""
    lines = ["| model | eps | images | clean | PGD (upper bound) | certified (lower bound) |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['eps']:g} | {r['n']} | {100 * r['clean_acc']:.1f}% | "
              f"{100 * r['pgd_acc']:.1f}% | {100 * r['certified_acc']:.1f}% |" for r in rows]
    return "\n".join(lines) + "\n"


def run(args):
    xp = namespace_for(args.device)
    out = out_dir(args.out)
    images, labels = test_set(args)
    paths = model_paths(args)
    rows, verdicts = [], {}
    for path in paths:
        model, _ = load_model(path, xp)
        label = run_name(path)
        for eps in args.eps:
            row, proven = certify_model(model, images, labels, eps, args.pgd_steps,
                                        np.random.default_rng(args.seed))
            rows.append({"model": label, "checkpoint": str(path), **row})
            verdicts[f"{label} eps {eps:g}"] = proven.astype(int)
            print(f"{label}, eps {eps:g}: clean {100 * row['clean_acc']:.1f}%  PGD-"
                  f"{args.pgd_steps} {100 * row['pgd_acc']:.1f}%  certified "
                  f"{100 * row['certified_acc']:.1f}% of {len(images)} images", flush=True)
        write_csv(out / "certify.csv", rows)
    (out / "table.md").write_text(table(rows))
    write_csv(out / "verdicts.csv", [{"index": i, "label": int(labels[i]),
                                      **{k: int(v[i]) for k, v in verdicts.items()}}
                                     for i in range(len(images))])
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(dict.fromkeys(r["model"] for r in rows))
    width = 0.8 / max(1, len(args.eps))
    for j, eps in enumerate(args.eps):
        part = {r["model"]: r for r in rows if r["eps"] == eps}
        x = np.arange(len(names)) + j * width
        ax.bar(x, [100 * part[n]["pgd_acc"] for n in names], width, color=f"C{j}", alpha=0.35,
               label=f"PGD-{args.pgd_steps}, eps {eps:g} (upper bound)")
        ax.bar(x, [100 * part[n]["certified_acc"] for n in names], width, color=f"C{j}",
               label=f"certified, eps {eps:g} (lower bound)")
    ax.set_xticks(np.arange(len(names)) + width * (len(args.eps) - 1) / 2, names)
    ax.set(ylabel="accuracy (%)", ylim=(0, 100),
           title=f"Proven and not-yet-broken robustness, {len(images)} test images")
    ax.legend(fontsize=8)
    save_figure(fig, out / "certify.png")
    print(f"wrote {out}/certify.csv, verdicts.csv and certify.png")
    return 0

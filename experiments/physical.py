"""In the physical world: do adversarial examples survive a camera (Kurakin et al. 2016)?

For each model (--models, shipped; or --checkpoint) and eps (--eps), four attacks on the first
--images test images: FGS, PGD (20 steps), targeted least-likely PGD (toward the class of the
lowest clean logit, 20 steps) and EOT-PGD (20 steps, each following the mean gradient over
--eot-samples fresh draws of the print-and-photograph composite, nn/transforms.py). Each
adversarial image then goes through every transformation family (rotation, translation, scale,
blur, light, noise, quantise, and the composite "photo"), --draws times with fresh parameters
from a generator never used while crafting, at strength 1 (the family EOT optimised over, for
the composite) and at strength 1.5 ("shifted": wider ranges than any EOT saw). The destruction
rate (Kurakin et al.) is the share of the successful adversarial images that the transformation
turns back to correct,
    d = sum C(x) !C(x_adv) C(T(x_adv)) / sum C(x) !C(x_adv),
with C(.) "classified correctly"; its denominator is reported with it. The control row is clean
accuracy under the same transformations. Writes physical.json, physical.csv, physical.png
(destruction against the strength of the rotation, per attack) and transformations.png (one
digit under 8 transformations).
"""
import numpy as np

import models
from attacks import eot_pgd, fgs, pgd, targeted_pgd
from nn import EVAL_BATCH, batch_slices, predict
from nn.backend import namespace_for
from nn.transforms import FAMILIES, print_and_photograph
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
ATTACKS = ("fgs", "pgd", "ll-pgd", "eot-pgd")


def add_arguments(p):
    p.add_argument("--models", nargs="+", choices=list(models.MODELS), default=["standard", "pgd"],
                   help="the shipped models to attack (ignored with --checkpoint)")
    p.add_argument("--eps", type=float_in(0, 1, low_open=True), nargs="+",
                   default=[0.1, 0.2, 0.3], help="L-infinity sizes of the attacks")
    p.add_argument("--eot-samples", type=positive_int, default=10,
                   help="fresh transformations per EOT step")
    p.add_argument("--draws", type=positive_int, default=5,
                   help="fresh transformations per image in every evaluation")
    p.add_argument("--strengths", type=float_in(0, 3), nargs="+",
                   default=[0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5],
                   help="strengths of the rotation for the figure (1: up to 30 degrees)")


def craft(model, x, t, name, eps, args, rng):
    """Host adversarial images of attack `name` at eps, in batches."""
    out = []
    for s in batch_slices(len(x), EVAL_BATCH):
        xb, tb = on_model(model, x[s]), on_model(model, t[s])
        if name == "fgs":
            adv = fgs(model, xb, tb, eps)
        elif name == "pgd":
            adv = pgd(model, xb, tb, eps, steps=20)
        elif name == "ll-pgd":
            least = np.argmin(host(model.forward(xb)), axis=1)
            model.clear_caches()
            adv = targeted_pgd(model, xb, on_model(model, least), eps, steps=20)
        else:
            adv = eot_pgd(model, xb, tb, print_and_photograph(1.0), eps, steps=20,
                          samples=args.eot_samples, rng=rng)
        out.append(host(adv))
    return np.concatenate(out)


def run(args):
    xp = namespace_for(args.device)
    paths = model_paths(args)
    out = out_dir(args.out)
    x, t = test_set(args)
    rows, curves = [], {}
    for path in paths:
        model, _ = load_model(path, xp)
        label = run_name(path)
        clean_ok = predict(model, x) == t
        evaluation = np.random.default_rng([args.seed, 1])  # never used while crafting
        for family_name, make in FAMILIES.items():
            for strength in (1.0, SHIFTED):
                ok = transformed_correct(model, x, t, make(strength), args.draws, evaluation)
                rows.append({"model": label, "eps": 0, "attack": "clean", "family": family_name,
                             "strength": strength, "destruction": None, "destroyed": None,
                             "successful": None, "accuracy": float(ok.mean())})
        for eps in args.eps:
            with progress(len(ATTACKS), f"{label}, eps {eps}: attacks", unit="attack") as bar:
                for name in ATTACKS:
                    adv = craft(model, x, t, name, eps, args, np.random.default_rng(args.seed))
                    adv_ok = predict(model, adv) == t
                    for family_name, make in FAMILIES.items():
                        for strength in (1.0, SHIFTED):
                            ok = transformed_correct(model, adv, t, make(strength), args.draws,
                                                     evaluation)
                            d, destroyed, total = destruction_rate(clean_ok, adv_ok, ok)
                            rows.append({"model": label, "eps": eps, "attack": name,
                                         "family": family_name, "strength": strength,
                                         "destruction": d, "destroyed": destroyed,
                                         "successful": total, "accuracy": float(ok.mean())})
                    if eps == max(args.eps):
                        curves[label, name] = [destruction_rate(clean_ok, adv_ok,
                                                                transformed_correct(
                                                                    model, adv, t,
                                                                    FAMILIES["rotation"](s),
                                                                    args.draws, evaluation))[0]
                                               for s in args.strengths]
                    bar.update()
            photo = [r for r in rows if r["eps"] == eps and r["family"] == "photo"
                     and r["strength"] == 1.0 and r["model"] == label]
            print(f"{label}, eps {eps}: destruction by the photo composite " + ", ".join(
                f"{r['attack']} {100 * r['destruction']:.0f}% (of {r['successful']})"
                for r in photo), flush=True)
        write_csv(out / "physical.csv", rows)
    write_json(out / "physical.json", {"images": len(x), "draws": args.draws,
                                       "eot_samples": args.eot_samples, "eps": args.eps,
                                       "shifted_strength": SHIFTED, "rows": rows,
                                       "rotation_curves": {f"{m}, {a}": c for (m, a), c in
                                                           curves.items()},
                                       "strengths": args.strengths})
    figure(out / "physical.png", curves, args)
    digit_grid(out / "transformations.png", x[0], np.random.default_rng(args.seed))
    print(f"wrote {out}/physical.json, physical.csv, physical.png and transformations.png")
    return 0


def figure(path, curves, args):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, ((label, name), curve) in enumerate(curves.items()):
        ax.plot([30 * s for s in args.strengths], [100 * v for v in curve], marker="o",
                color=f"C{ATTACKS.index(name)}", ls="-" if k < len(ATTACKS) else "--",
                label=f"{label}: {name}")
    ax.set(xlabel="largest rotation (degrees)", ylabel="destruction rate (%)", ylim=(0, 102),
           title=f"Adversarial images turned back to correct by rotation (eps {max(args.eps)})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def digit_grid(path, image, rng):
    fig, axes = plt.subplots(1, len(FAMILIES) + 1, figsize=(1.3 * (len(FAMILIES) + 1), 1.6))
    axes[0].imshow(image[0], cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("original", fontsize=7)
    for ax, (name, make) in zip(axes[1:], FAMILIES.items()):
        family = make(1.0)
        out, _ = family.forward(image[None], family.sample(rng, (1, *image.shape)))
        ax.imshow(out[0, 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=7)
    for ax in axes:
        ax.axis("off")
    save_figure(fig, path)

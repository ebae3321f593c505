"""What the attacks do to single images: original, perturbation x10 and adversarial image.

For FGS (alpha), FGV (fgv-alpha), PGD (eps alpha) and targeted PGD (toward (label + 1) mod 10),
on the first --images correctly classified test images: one figure per attack,
gallery-<attack>.png, and gallery.json with every prediction and confidence.
"""

import numpy as np

from attacks import fgs, fgv, pgd, targeted_pgd
from training.cli import float_in, positive_int

from .common import host, model_for, on_model, out_dir, predictions, run_name, test_set, write_json
from .figures import triplets

DEFAULTS = {"images": 8}


def add_arguments(p):
    p.add_argument("--eps", "--alpha", dest="alpha", metavar="EPS", type=float_in(0, 1),
                   default=0.3,
                   help="FGS step, and the L-infinity radius of PGD and targeted PGD (--alpha: "
                        "an alias)")
    p.add_argument("--fgv-alpha", type=float_in(0, 1), default=0.6, help="FGV step")
    p.add_argument("--steps", type=positive_int, default=20, help="PGD steps")


def run(args):
    model, ckpt = model_for(args)
    out = out_dir(args.out)
    images, labels = test_set(args, limit=max(10 * args.images, 100))
    chosen = np.flatnonzero(predictions(model, on_model(model, images))[0] == labels)
    x_host, t_host = images[chosen[:args.images]], labels[chosen[:args.images]]
    x, t = on_model(model, x_host), on_model(model, t_host)
    rng = np.random.default_rng(args.seed)
    target_host = (t_host + 1) % 10
    attacks = {
        "fgs": ("FGS", f"alpha {args.alpha}", lambda: fgs(model, x, t, args.alpha)),
        "fgv": ("FGV", f"alpha {args.fgv_alpha}", lambda: fgv(model, x, t, args.fgv_alpha)),
        "pgd": ("PGD", f"eps {args.alpha}, {args.steps} steps, random start",
                lambda: pgd(model, x, t, args.alpha, steps=args.steps, random_start=True,
                            rng=rng)),
        "targeted": ("Targeted PGD toward (label + 1) mod 10", f"eps {args.alpha}, "
                     f"{args.steps} steps", lambda: targeted_pgd(
                         model, x, on_model(model, target_host), args.alpha, steps=args.steps)),
    }
    before = predictions(model, x)
    report = {"checkpoint": str(ckpt), "labels": t_host, "clean_pred": before[0],
              "clean_conf": before[1].max(axis=1), "attacks": {}}
    for name, (title, setting, attack) in attacks.items():
        print(f"{title} ({setting}) on {len(x_host)} images", flush=True)
        x_adv = attack()
        after = predictions(model, x_adv)
        x_adv_host = host(x_adv)
        triplets(out / f"gallery-{name}.png", x_host, x_adv_host, before, after,
                 title=f"{title}, {setting}",
                 note=f"model: {run_name(ckpt)} training ({ckpt})")
        delta = (x_adv_host - x_host).reshape(len(x_host), -1)
        report["attacks"][name] = {
            "setting": setting, "pred": after[0], "conf": after[1].max(axis=1),
            "fooled": float(np.mean(after[0] != t_host)),
            "linf": np.abs(delta).max(axis=1), "l2": np.sqrt((delta ** 2).sum(axis=1))}
        if name == "targeted":
            report["attacks"][name]["target"] = target_host
            report["attacks"][name]["hit"] = float(np.mean(after[0] == target_host))
    write_json(out / "gallery.json", report)
    print(f"wrote {out}/gallery-{{fgs,fgv,pgd,targeted}}.png and gallery.json")
    return 0

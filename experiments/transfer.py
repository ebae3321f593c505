"""Transfer: adversarial images crafted on one network, tested on networks trained on other data.

For each --modes entry, two networks: train.py --train-half 1 (seed --seed) and --train-half 2
(seed --seed + 1), trained for --epochs into run folders under --runs (default: next to
--out), or reused from there. FGS (alpha) and PGD (eps alpha, --steps steps, random start) are
crafted on each network for the first --images test images, and every network is tested on
every network's adversarial images: transfer.csv and transfer.json (rows: source network,
columns: target; the diagonal is the white-box attack) and transfer.png. --checkpoint adds one
more network (any train.py run).
"""
from pathlib import Path

import numpy as np

from attacks import fgs, pgd
from nn import predict
from nn.backend import namespace_for
from nn.checkpoint import load_checkpoint
from training.cli import float_in, positive_int

from .common import (
    craft,
    load_model,
    out_dir,
    test_set,
    train_flags,
    train_model,
    write_csv,
    write_json,
)
from .figures import plt, save_figure

DEFAULTS = {"images": 1000, "checkpoint_help": "a train.py checkpoint.npz to add to the "
            "matrix as one more network (default: none)"}


def add_arguments(p):
    p.add_argument("--modes", nargs="+", choices=["standard", "noise", "adversarial", "pgd"],
                   default=["standard", "adversarial"],
                   help="train.py --mode of the networks; two networks (one per half) each")
    p.add_argument("--epochs", type=positive_int, default=3, help="train.py --epochs")
    p.add_argument("--runs", type=Path,
                   help="folder for the networks' run folders, named as train.py names them "
                        "(default: the folder holding --out)")
    p.add_argument("--train-limit", type=positive_int,
                   help="train.py --train-limit: split only the first N training images")
    p.add_argument("--test-limit", type=positive_int,
                   help="train.py --test-limit: test images evaluated after each epoch")
    p.add_argument("--alpha", type=float_in(0, 1), default=0.3, help="FGS step and PGD eps")
    p.add_argument("--steps", type=positive_int, default=20, help="PGD steps")




def networks(args):
    """[(name, model, checkpoint, epochs trained)]: one per mode and half, then --checkpoint."""
    xp = namespace_for(args.device)
    extra = [] if args.checkpoint is None else [  # loaded first: a bad path fails before training
        (Path(args.checkpoint).parent.name, load_model(args.checkpoint, xp)[0], args.checkpoint)]
    nets = []
    for mode in args.modes:
        for half in (1, 2):
            model, _, ckpt = train_model(train_flags(args, mode, half), xp)
            nets.append((f"{mode} half {half}", model, ckpt))
    nets += extra
    return [(name, model, ckpt, load_checkpoint(ckpt)[1]["epoch"]) for name, model, ckpt in nets]




def heatmaps(path, names, clean, matrices, titles, n):
    """One panel per attack: accuracy (%) of each target (column) on each source's images (row)."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(5.2 * len(matrices), 4.8), squeeze=False)
    columns = [f"{name}\n(clean {100 * c:.1f}%)" for name, c in zip(names, clean)]
    for ax, (attack, matrix) in zip(axes[0], matrices.items()):
        values = 100 * np.asarray(matrix)
        ax.imshow(values, cmap="viridis", vmin=0, vmax=100)
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, f"{v:.1f}%", ha="center", va="center", fontsize=9,
                    color="black" if v > 60 else "white", weight="bold" if i == j else None)
        ax.set_xticks(range(len(names)), columns, fontsize=7, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(xlabel="target network (tested)", ylabel="source network (attacked)",
               title=titles[attack])
    fig.suptitle(f"Accuracy of each target on adversarial images crafted on each source, "
                 f"{n} test images (diagonal: white-box)", fontsize=10)
    save_figure(fig, path)


def run(args):
    out = out_dir(args.out)
    nets = networks(args)
    images, labels = test_set(args)
    names = [name for name, *_ in nets]
    clean_pred = {name: predict(model, images) for name, model, *_ in nets}
    clean = [float(np.mean(clean_pred[name] == labels)) for name in names]
    print("clean accuracy: " + ", ".join(f"{n} {100 * c:.2f}%" for n, c in zip(names, clean)),
          flush=True)
    rng = np.random.default_rng(args.seed)
    attacks = {"fgs": lambda m, x, t: fgs(m, x, t, args.alpha),
               # the last iterate: the first one that fools the source model sits just past
               # its boundary and transfers worst
               "pgd": lambda m, x, t: pgd(m, x, t, args.alpha, steps=args.steps,
                                          random_start=True, rng=rng, keep_first=False)}
    titles = {"fgs": f"FGS, alpha {args.alpha}",
              "pgd": f"PGD, eps {args.alpha}, {args.steps} steps, random start"}
    matrices = {a: [[None] * len(nets) for _ in nets] for a in attacks}
    rows = []
    for i, (source, model, *_) in enumerate(nets):
        for attack, fn in attacks.items():
            x_adv = craft(model, images, labels, fn, f"{attack} on {source}")
            line = []
            for j, (target, target_model, *_) in enumerate(nets):
                right = predict(target_model, x_adv) == labels
                was_right = clean_pred[target] == labels
                acc = float(np.mean(right))
                matrices[attack][i][j] = acc
                rows.append({"attack": attack, "source": source, "target": target,
                             "white_box": i == j, "acc": acc, "clean_acc": clean[j],
                             "acc_of_correct": float(np.mean(right[was_right]))
                             if was_right.any() else float("nan")})
                line.append(f"{target} {100 * acc:.1f}%")
            print(f"{titles[attack]} crafted on {source}: " + ", ".join(line), flush=True)
        write_csv(out / "transfer.csv", rows)  # after each source: an interruption keeps the rest
    write_json(out / "transfer.json", {
        "images": len(images), "alpha": args.alpha, "pgd_steps": args.steps,
        "networks": [{"name": name, "checkpoint": str(ckpt), "epochs": epochs,
                      "clean_acc": c} for (name, _, ckpt, epochs), c in zip(nets, clean)],
        "accuracy": {"rows": "source", "columns": "target", **matrices}})
    heatmaps(out / "transfer.png", names, clean, matrices, titles, len(images))
    print(f"wrote {out}/transfer.csv, transfer.json and transfer.png", flush=True)
    return 0

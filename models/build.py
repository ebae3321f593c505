"""Make the shipped models from scratch: train, export, measure, write models/manifest.json.

    python -m models.build                      # all four; about 6 CPU-hours on 2 cores
    python -m models.build --names standard     # one of them

Each model is a train.py run at the grid's settings, seed 0 unless its flags name one, in
results/models/<name>-seed<seed> (a run there is resumed, a finished one reused, so an
interrupted build continues). Its weights go
to models/<name>.safetensors; it is measured on the test set: clean, FGS and FGV accuracy of its
last epoch over all 10,000 images (from metrics.csv), 20-step PGD over the first --images, and
the worst case of `attack.py robust` (AutoAttack's standard version) over the same images. The
manifest is written after each model. A measurement already made for the same file (same
SHA-256) is reused.
"""
import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

import models
from attacks import certify, evaluate, pgd_attack
from data.mnist import load_mnist
from experiments import robust
from experiments.common import ExperimentError, train_model, write_json
from nn.backend import namespace_for
from nn.checkpoint import CheckpointError
from nn.export import export_checkpoint
from training.cli import HelpFormatter, positive_int, run_cli

RUNS = Path("results") / "models"


def train(name, device="cpu"):
    """Train (or finish, or reuse) the run of model `name`; returns (its folder, the command)."""
    flags = models.MODELS[name][1]
    seed = flags[flags.index("--seed") + 1] if "--seed" in flags else "0"
    run = RUNS / f"{name}-seed{seed}"
    flags = [*flags, *(["--seed", seed] if "--seed" not in flags else []), "--out", str(run)]
    train_model([*flags, "--device", device], namespace_for(device))
    return run, "python train.py " + " ".join(flags)


def measure(name, run, images):
    """The manifest's accuracies of shipped model `name` (its file already written)."""
    with open(run / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    model, settings, _ = models.load(name)
    x, t = load_mnist("test", limit=images)
    t0 = time.perf_counter()
    pgd = evaluate(model, x, t, {"pgd": pgd_attack(settings["alpha"], 20,
                                                   np.random.default_rng(0))})
    print(f"[{name}] PGD-20 on {images} test images: {100 * pgd['pgd_robust_acc']:.1f}% "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    entry = {"certified": certified_share(name, model, x, t, settings["alpha"])}
    report, _, _ = robust.worst_case(model, name, x, t, settings["alpha"], robust.Settings(),
                                     np.random.default_rng(0))
    write_json(run / "robust.json", {"sha256": models.sha256(models.path_of(name)),
                                     "report": report})
    return {**entry, "epochs": int(last["epoch"]), "eps": settings["alpha"],
            "clean": float(last["clean_acc"]), "fgs": float(last["fgs_robust_acc"]),
            "fgv": float(last["fgv_robust_acc"]), "test_images": int(last["n"]),
            "attack_images": images, "pgd20": pgd["pgd_robust_acc"],
            "robust": report["robust_acc"], "robust_se": report["robust_acc_se"],
            "robust_attacks": {s["attack"]: s["robust_acc"] for s in report["attacks"]}}


def certified_share(name, model, x, t, eps):
    """The share of test images x, t that interval bounds prove robust at eps (nn/interval.py):
    a lower bound of the model's robust accuracy, cheap to compute."""
    share = float(certify(model, x, t, eps).mean())
    print(f"[{name}] certified at eps {eps:g} on {len(x)} test images: {100 * share:.1f}%",
          flush=True)
    return share


def build(name, images, device="cpu"):
    """Train, export and measure model `name`; returns its manifest entry."""
    run, command = train(name, device)
    path = models.path_of(name)
    export_checkpoint(run / "checkpoint.npz", path)
    digest, old = models.sha256(path), models.manifest().get(name, {})
    entry = {"file": path.name, "sha256": digest, "bytes": path.stat().st_size,
             "what": models.MODELS[name][0], "command": command, "run": str(run)}
    write_manifest({**models.manifest(), name: {**old, **entry}})
    if old.get("sha256") == digest and old.get("attack_images") == images:
        print(f"[{name}] unchanged since its last measurement: kept", flush=True)
        if "certified" not in old:  # measured before the manifest had it
            model, settings, _ = models.load(name)
            x, t = load_mnist("test", limit=images)
            old = {**old, "certified": certified_share(name, model, x, t, settings["alpha"])}
        return {**old, **entry}
    return {**entry, **measure(name, run, images)}


def table(entries):
    """The manifest as a Markdown table (the README's), in %: clean, FGS and FGV over all test
    images; PGD-20, after each of AutoAttack's attacks in turn, and certified (proven by
    interval bounds) over the first N."""
    head = ["model", "epochs", "clean", "FGS", "FGV", "PGD-20", "APGD-CE", "+ APGD-T", "+ FAB-T",
            "+ Square: worst case", "certified"]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, e in entries.items():
        steps = [e["robust_attacks"][a] for a in ("apgd-ce", "apgd-t", "fab-t", "square")]
        cells = [f"{100 * v:.1f}" for v in (e["clean"], e["fgs"], e["fgv"], e["pgd20"],
                                            *steps[:-1])]
        rows.append(f"| {name} | {e['epochs']} | " + " | ".join(cells)
                    + f" | **{100 * steps[-1]:.1f}** ± {100 * e['robust_se']:.1f} | "
                    + (f"{100 * e['certified']:.1f} |" if "certified" in e else "- |"))
    return "\n".join(rows)


def write_manifest(entries):
    write_json(models.MANIFEST, {"made_by": "python -m models.build", "models": entries})


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.build", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--names", nargs="+", choices=list(models.MODELS),
                   default=list(models.MODELS), help="which models to make")
    p.add_argument("--images", type=positive_int, default=1000,
                   help="test images (the first N) for PGD-20 and attack.py robust")
    p.add_argument("--table", action="store_true",
                   help="only print the manifest as the README's Markdown table")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                   help="where to train (the measurements run on the CPU)")
    args = p.parse_args(argv)
    if args.table:
        print(table(models.manifest()))
        return 0
    return run_cli("python -m models.build", make, args,
                   errors=(ExperimentError, CheckpointError, models.ModelError),
                   interrupted="interrupted: the runs keep their last epoch; the same command "
                               "continues")


def make(args):
    for name in args.names:
        entry = build(name, args.images, args.device)
        write_manifest({**models.manifest(), name: entry})
        print(f"[{name}] {models.path_of(name)}: {entry['bytes']} bytes, clean "
              f"{100 * entry['clean']:.2f}%, PGD-20 {100 * entry['pgd20']:.1f}%, worst case "
              f"{100 * entry['robust']:.1f}%", flush=True)
    print(f"wrote {models.MANIFEST}\n\n{table(models.manifest())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

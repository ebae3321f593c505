"""Claims of the README checked against their evidence: pix2pix's ranking, the looking-inside
numbers, the PGD-trained model's single-pixel filters and the VAE attack over seeds.

Reads what other experiments wrote under --results (nothing is trained here) and the shipped
models' first-layer filters: for pix2pix (results/pix2pix/<variant>-seed<k>/metrics.csv), per
epoch, the mean over seeds of each variant and Welch's t-test of each pair of variants with
three seeds (two-sided p from Student's t, integrated numerically), and the range of a
single-seed variant over the epochs; for `attack.py visualise` (results/inside/inside.json) the
deletion numbers the README quotes; per shipped model the first-layer 5x5 filters with at least
99% of their squared norm in one weight; for the VAE (results/vae and results/vae-seed<k>/
vae.json, `attack.py autoencoder --vae --seed k`) each attack's success at each L2 budget over
the seeds. Writes claims.json.
"""
import csv
import json
import math
from itertools import combinations
from pathlib import Path

import numpy as np

import models
from nn.backend import namespace_for

from .common import out_dir, write_json

PIX2PIX_VARIANTS = ("l1", "l1+cgan", "l1+gan", "cgan")


def add_arguments(p):
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="the folder the other experiments wrote into")
    p.add_argument("--pixel-share", type=float, default=0.99,
                   help="share of a filter's squared norm in one weight that makes it a "
                        "single-pixel filter")


def t_pvalue(t, df):
    """Two-sided p of Student's t with df degrees of freedom: 1 - 2 int_0^|t| pdf."""
    t = abs(float(t))
    if not np.isfinite(t):
        return 0.0
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    u = np.linspace(0.0, t, 20001)
    pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(u * u / df))
    return float(max(0.0, 1.0 - 2.0 * np.sum((pdf[1:] + pdf[:-1]) / 2 * np.diff(u))))


def welch(a, b):
    """(t, Welch-Satterthwaite df, two-sided p) of mean(a) - mean(b)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return (math.inf if a.mean() != b.mean() else 0.0), float("nan"), (
            0.0 if a.mean() != b.mean() else 1.0)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(t), float(df), t_pvalue(t, df)


def better(a, b, metric, paired):
    """"a" or "b": the variant better (higher accuracy, lower Frechet distance) than the other
    at every seed of both (paired=False) or at each seed against the same seed (paired=True);
    None where neither is."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if metric == "frechet":
        a, b = -a, -b
    if paired:
        return "a" if np.all(a > b) else "b" if np.all(b > a) else None
    return "a" if a.min() > b.max() else "b" if b.min() > a.max() else None


def pix2pix(folder):
    runs = {}
    for path in sorted(folder.glob("*-seed*/metrics.csv")):
        variant, seed = path.parent.name.rsplit("-seed", 1)
        with open(path, newline="") as f:
            runs.setdefault(variant, {})[int(seed)] = list(csv.DictReader(f))
    if not runs:
        return None
    out = {"variants": {}, "comparisons": []}
    for variant, seeds in runs.items():
        epochs = min(len(r) for r in seeds.values())
        out["variants"][variant] = {
            "seeds": sorted(seeds), "epochs": epochs,
            **{m: [[float(seeds[s][e][m]) for s in sorted(seeds)] for e in range(epochs)]
               for m in ("accuracy", "frechet")}}
        if len(seeds) == 1:
            acc = [float(r["accuracy"]) for r in next(iter(seeds.values()))]
            out["variants"][variant]["accuracy_range_over_epochs"] = [min(acc), max(acc)]
    three = [v for v in PIX2PIX_VARIANTS if len(runs.get(v, {})) >= 3]
    for a, b in combinations(three, 2):
        for metric in ("accuracy", "frechet"):
            va, vb = out["variants"][a], out["variants"][b]
            for e in range(min(va["epochs"], vb["epochs"])):
                t, df, p = welch(va[metric][e], vb[metric][e])
                out["comparisons"].append({
                    "a": a, "b": b, "metric": metric, "epoch": e + 1,
                    "mean_a": float(np.mean(va[metric][e])),
                    "mean_b": float(np.mean(vb[metric][e])),
                    "better_everywhere": better(va[metric][e], vb[metric][e], metric,
                                                paired=False),
                    "better_seed_by_seed": better(va[metric][e], vb[metric][e], metric,
                                                  paired=True),
                    "t": t, "df": df, "p": p})
    return out


def inside(path):
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    fractions = data["fractions"]
    out = {}
    for m in data["models"]:
        salient, random = m["deletion_salient"], m["deletion_random"]
        holds = [f for f, a in zip(fractions, salient) if a >= 0.9]
        out[m["model"]] = {"random_10": random[fractions.index(0.1)],
                           "random_20": random[fractions.index(0.2)],
                           "salient_10": salient[fractions.index(0.1)],
                           "salient_20": salient[fractions.index(0.2)],
                           "salient_holds_90_until": max(holds) if holds else None}
    return out


def filters(share):
    out = {}
    for name in models.MODELS:
        try:
            model = models.load(name, namespace_for("cpu"))[0]
        except models.ModelError:
            continue
        w = np.asarray(model.layers[0].params["W"], dtype=float).reshape(
            model.layers[0].params["W"].shape[0], -1)
        top = np.max(w * w, axis=1) / np.sum(w * w, axis=1)
        out[name] = {"filters": len(w), "single_pixel": int(np.sum(top >= share)),
                     "top_weight_share": np.sort(top).tolist()}
    return out


def vae(folder):
    found = {}
    for path in [folder / "vae" / "vae.json", *sorted(folder.glob("vae-seed*/vae.json"))]:
        try:
            found[path.parent.name] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    if not found:
        return None
    out = {"runs": sorted(found), "attacks": {}}
    for data in found.values():
        for a in data["attacks"]:
            key = f"{a['model']} {a['kind']}"
            for b in a["at_budget"]:
                cell = out["attacks"].setdefault(key, {}).setdefault(
                    str(b["budget"]), {"to_target": [], "away_from_source": []})
                cell["to_target"].append(b["to_target"])
                cell["away_from_source"].append(b["away_from_source"])
    return out


def run(args):
    out = out_dir(args.out)
    report = {"pix2pix": pix2pix(args.results / "pix2pix"),
              "inside": inside(args.results / "inside" / "inside.json"),
              "filters": {"share": args.pixel_share, "models": filters(args.pixel_share)},
              "vae": vae(args.results)}
    write_json(out / "claims.json", report)
    for name, f in report["filters"]["models"].items():
        print(f"{name}: {f['single_pixel']} of {f['filters']} first-layer filters hold "
              f">= {100 * args.pixel_share:.0f}% of their squared norm in one weight")
    if report["pix2pix"]:
        last = [c for c in report["pix2pix"]["comparisons"] if c["metric"] == "accuracy"
                and c["epoch"] == max(c["epoch"] for c in report["pix2pix"]["comparisons"])]
        for c in last:
            print(f"pix2pix, epoch {c['epoch']}: {c['a']} {100 * c['mean_a']:.1f}% against "
                  f"{c['b']} {100 * c['mean_b']:.1f}%: t {c['t']:.2f}, p {c['p']:.3f}")
    print(f"wrote {out}/claims.json")
    return 0


def markdown(report):
    """The markdown tables of results/claims/README.md from claims.json: pix2pix's tests at the
    last epoch and per epoch, the looking-inside numbers, the filters, the VAE over seeds."""
    cs = report["pix2pix"]["comparisons"]
    last = max(c["epoch"] for c in cs)
    lines = [f"| comparison (epoch {last}) | accuracy: means | t | p | Frechet: means | t | p | "
             "better at every seed (accuracy / Frechet) |", "|---|---|---:|---:|---|---:|---:|---|"]
    for a in cs:
        if a["metric"] != "accuracy" or a["epoch"] != last:
            continue
        f = next(c for c in cs if c["metric"] == "frechet" and c["epoch"] == last
                 and c["a"] == a["a"] and c["b"] == a["b"])
        names = {"a": a["a"], "b": a["b"], None: "neither"}
        lines.append(f"| {a['a']} vs {a['b']} | {100 * a['mean_a']:.1f}% vs "
                     f"{100 * a['mean_b']:.1f}% | {a['t']:.2f} | {a['p']:.3f} | "
                     f"{f['mean_a']:.0f} vs {f['mean_b']:.0f} | {f['t']:.2f} | {f['p']:.3f} | "
                     f"{names[a['better_everywhere']]} / {names[f['better_everywhere']]} |")
    pair = [c for c in cs if c["metric"] == "accuracy" and c["a"] == "l1" and c["b"] == "l1+cgan"]
    lines += ["", "| l1+cgan vs l1, accuracy | " + " | ".join(f"epoch {c['epoch']}" for c in pair)
              + " |", "|---|" + "---:|" * len(pair),
              "| p (Welch, 3 seeds each) | " + " | ".join(f"{c['p']:.3f}" for c in pair) + " |",
              "| l1+cgan above l1 at every seed | " + " | ".join(
                  "yes" if c["better_everywhere"] == "b" else "no" for c in pair) + " |"]
    lines += ["", "| model | random 10% deleted | random 20% | salient 10% | salient 20% | "
              "salient deletion keeps >= 90% up to |", "|---|---:|---:|---:|---:|---:|"]
    for m, r in report["inside"].items():
        lines.append(f"| {m} | {100 * r['random_10']:.0f}% | {100 * r['random_20']:.0f}% | "
                     f"{100 * r['salient_10']:.0f}% | {100 * r['salient_20']:.0f}% | "
                     f"{100 * r['salient_holds_90_until']:.0f}% |")
    lines.append("")
    for m, f in report["filters"]["models"].items():
        lines.append(f"- {m}: {f['single_pixel']} of {f['filters']} first-layer filters have >= "
                     f"{100 * report['filters']['share']:.0f}% of their squared norm in one "
                     "weight")
    if report["vae"]:
        attacks = report["vae"]["attacks"]
        budgets = sorted({float(b) for a in attacks.values() for b in a})
        lines += ["", "| attack (read as the target; mean over 3 seeds, min-max) | "
                  + " | ".join(f"L2 {b:g}" for b in budgets) + " |",
                  "|---|" + "---:|" * len(budgets)]
        for k, a in attacks.items():
            cells = []
            for b in budgets:
                v = a[str(b)]["to_target"]
                cells.append(f"{100 * sum(v) / len(v):.0f}% ({100 * min(v):.0f}-"
                             f"{100 * max(v):.0f})")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines

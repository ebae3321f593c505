"""Decision-based attack over the wire: HopSkipJump from labels alone, distortion against queries.

For each of the first --images test images that the model classifies correctly, HopSkipJump
(attacks/decision_based.py) in L2 and in L-infinity, with at most max(--budgets) queries
per image and norm, asks the model for labels only: in-process (a LabelOracle), or through
serve.py's API with --api URL, where the server's count of the key's queries is the count
reported. The best distortion found within each budget is read off each run's trace; its
median over the images is set beside the white-box minimum of the same images in the same norm
(targeted PGD toward every wrong class, bisected over the radius of the L-infinity or the L2
ball: attacks.smallest_targeted).
Writes decision.json, decision.csv (one row per image, norm and budget) and decision.png;
decision.csv and progress.json are written after every image, and the same command continues
an interrupted run (same model and budgets) from there.
"""
import csv
import json
import time

import numpy as np

from attacks import QueryBudgetExceeded, hopskipjump, smallest_targeted
from attacks.decision_based import budget_curve
from nn import predict
from training.cli import positive_int

from .common import (
    ExperimentError,
    add_api_arguments,
    label_oracle,
    model_for,
    on_model,
    out_dir,
    pairs,
    progress,
    run_name,
    test_set,
    write_csv,
    write_json,
)
from .figures import plt, save_figure

DEFAULTS = {"images": 100}
EPS = 0.3  # the exercise's L-infinity size
NORMS = ("l2", "linf")


def add_arguments(p):
    p.add_argument("--budgets", type=positive_int, nargs="+",
                   default=[100, 1000, 5000, 10000, 20000],
                   help="query budgets per image and norm at which the distortion is read")
    p.add_argument("--norms", nargs="+", choices=NORMS, default=list(NORMS))
    add_api_arguments(p)


def whitebox_minimum(model, x, t):
    """Per image, the smallest radius at which targeted PGD reaches some wrong class, bisected
    over the L-infinity ball (resolution 1/256) and over the L2 ball (20 steps of targeted L2
    PGD, radius up to 8, resolution 1/128): ((N,) L-infinity, (N,) L2)."""
    index, target = pairs(t)
    xs, ts = on_model(model, x[index]), on_model(model, target)
    smallest = {"linf": smallest_targeted(model, xs, ts, searches=8)[1],
                "l2": smallest_targeted(model, xs, ts, max_eps=8.0, searches=10, norm="l2")[1]}
    out = {}
    for norm, eps in smallest.items():
        out[norm] = np.full(len(x), np.inf)
        np.minimum.at(out[norm], index, np.where(np.isnan(eps), np.inf, eps))
    return out["linf"], out["l2"]


def earlier(out, label, args):
    """(rows of an earlier, interrupted run of the same model and budgets in `out`, its
    {"queries", "seconds"}); ([], zeros) if there is none."""
    try:
        with open(out / "decision.csv", newline="") as f:
            rows = [{**r, "image": int(r["image"]), "budget": int(r["budget"]),
                     "l2": float(r["l2"]), "linf": float(r["linf"])} for r in csv.DictReader(f)]
        before = json.loads((out / "progress.json").read_text())
    except (OSError, ValueError, KeyError):
        return [], {"queries": 0, "seconds": 0.0}
    runs = {(r["image"], r["norm"]): [] for r in rows}
    for r in rows:
        runs[r["image"], r["norm"]].append(r["budget"])
    if {r["model"] for r in rows} != {label} or any(b != args.budgets for b in runs.values()):
        return [], {"queries": 0, "seconds": 0.0}
    return rows, before


def figure(path, summary, budgets, label):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, norm in zip(axes, NORMS):
        if norm not in summary["hopskipjump"]:
            continue
        ax.plot(budgets, summary["hopskipjump"][norm], "o-", label="HopSkipJump (labels only)")
        ax.axhline(summary["whitebox"][norm], color="k", ls="--",
                   label="white-box minimum, bisected PGD (median)")
        ax.set(xscale="log", xlabel="queries per image", ylabel=f"median {norm} distortion",
               title=f"{label}: {norm.replace('linf', 'L-infinity').replace('l2', 'L2')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def attack_one(oracle, x, t, norm, args, label, i):
    """The decision.csv rows of HopSkipJump on image i (x (1, 28, 28), label t) in `norm`."""
    _, trace = hopskipjump(oracle, x, t, norm, max(args.budgets),
                           np.random.default_rng([args.seed, i]))
    return [{"model": label, "image": i, "norm": norm, "budget": b, "l2": c[0], "linf": c[1]}
            for b, c in zip(args.budgets, budget_curve(trace, args.budgets))]


def run(args):
    model, path = model_for(args)
    out = out_dir(args.out)
    x, t = test_set(args)
    keep = predict(model, x) == t
    x, t = x[keep], t[keep]
    label = run_name(path)
    oracle, counted = label_oracle(args, model)
    where = args.api or "in-process"
    print(f"{label}: HopSkipJump ({', '.join(args.norms)}) on {len(x)} correctly classified test "
          f"images, up to {max(args.budgets)} label queries each, {where}", flush=True)
    rows, before = earlier(out, label, args)
    if rows:
        print(f"  continuing: {len(rows) // len(args.budgets)} runs of {before['queries']} "
              f"queries are in {out / 'decision.csv'} already", flush=True)
    t0 = time.perf_counter()

    def keep():  # an interruption keeps what was measured; the same command continues from it
        write_csv(out / "decision.csv", rows)
        write_json(out / "progress.json", {"queries": before["queries"] + counted(),
                                           "seconds": before["seconds"]
                                           + time.perf_counter() - t0})
    try:
        with progress(len(x) * len(args.norms), "HopSkipJump", unit="run") as bar:
            for i in range(len(x)):
                for norm in args.norms:
                    if not any(r["image"] == i and r["norm"] == norm for r in rows):
                        rows += attack_one(oracle, x[i], int(t[i]), norm, args, label, i)
                    bar.update()
                keep()
    except QueryBudgetExceeded as exc:  # the server's budget for the key is spent
        keep()
        runs = len(rows) // len(args.budgets)
        raise ExperimentError(f"{exc}; {out / 'decision.csv'} keeps the {runs} "
                              f"run{'s' * (runs != 1)} finished (image and norm), and the same "
                              "command with a key that has queries left goes on from there") \
            from None
    seconds, queries = before["seconds"] + time.perf_counter() - t0, before["queries"] + counted()
    curves = {n: [[r["l2" if n == "l2" else "linf"] for r in rows
                   if r["image"] == i and r["norm"] == n] for i in range(len(x))]
              for n in args.norms}
    linf_min, l2_min = whitebox_minimum(model, x, t)
    summary = {"hopskipjump": {n: np.median(np.array(c), axis=0).tolist()
                               for n, c in curves.items()},
               "whitebox": {"linf": float(np.median(linf_min)), "l2": float(np.median(l2_min))}}
    if "linf" in curves:  # the share of images adversarial within the exercise's eps
        summary["within_eps"] = {"eps": EPS, "hopskipjump": np.mean(
            np.array(curves["linf"]) <= EPS, axis=0).tolist(),
            "whitebox": float(np.mean(linf_min <= EPS))}
    for norm in args.norms:
        print(f"  {norm}: median distortion " + ", ".join(
            f"{v:.3f} at {b}" for b, v in zip(args.budgets, summary["hopskipjump"][norm]))
            + f" queries; white-box minimum {summary['whitebox'][norm]:.3f}", flush=True)
    if "within_eps" in summary:
        print(f"  adversarial within L-infinity {EPS}: " + ", ".join(
            f"{100 * v:.0f}% at {b}" for b, v in zip(args.budgets,
                                                     summary["within_eps"]["hopskipjump"]))
            + f" queries; white-box {100 * summary['within_eps']['whitebox']:.0f}%", flush=True)
    print(f"  {queries} queries counted by {'the server' if args.api else 'the oracle'} "
          f"({seconds:.0f} s)", flush=True)
    write_json(out / "decision.json", {"model": str(path), "label": label, "api": args.api,
                                       "images": len(x), "budgets": args.budgets,
                                       "queries_counted": queries, "seconds": seconds, **summary})
    figure(out / "decision.png", summary, args.budgets, label)
    print(f"wrote {out}/decision.json, decision.csv and decision.png")
    return 0

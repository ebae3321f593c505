"""Autoencoder attack: a small input change that makes an autoencoder reconstruct another digit.

Trains a dense autoencoder on MNIST's training set with Adam (or reuses the one in --out, and
continues it if it has fewer than --ae-epochs epochs), pairs each of the first --images test
images with a random test image of another digit, and runs `attacks.autoencoder` toward that
image's reconstruction for every --eps. The CNN of --checkpoint then reads the reconstructions.
Writes autoencoder.npz, results.json and autoencoder.png into --out.

With --vae: the plain autoencoder against a variational one, attacked in their latent space
(Tabacof et al. 2016) and at their output (Kos et al. 2017). Pairs: the first test image of each
class as source and as target, every ordered pair of different classes (90). Each attack
minimises f(x + d) + lam ||d||^2 over d (x + d in [0, 1]), f the latent distance (the KL between
q(z | x + d) and q(z | x_t) for the VAE, the squared code distance for the plain one) or the
output distance ||AE(x + d) - AE(x_t)||^2, swept over --lambdas. Judged as the papers judge it:
Tabacof's normalised axes, ||d|| / ||x_t - x|| against ||AE(x + d) - AE(x_t)|| / ||AE(x) -
AE(x_t)||; and, with the classifier (--checkpoint or the shipped --model) reading the
reconstruction, success toward the target and away from the source at fixed L2 budgets
(--budgets; per pair the closest result whose ||d|| fits). The baseline every attack must beat is
the linear blend x + a (x_t - x) with the same ||d||. Writes vae.json, vae.png (both figures) and
the VAE's checkpoint vae.npz beside the plain autoencoder's.
"""
import numpy as np

from attacks.autoencoder import (
    ae_latent_objective,
    ae_output_objective,
    autoencoder_attack,
    penalty_attack,
    reconstruct,
    vae_latent_objective,
    vae_output_objective,
)
from data.mnist import load_mnist
from nn import EVAL_BATCH, Sequential, batch_slices
from nn.backend import namespace_for
from training.autoencoder import train_autoencoder, train_vae
from training.cli import float_in, positive_int

from . import common, figures

DEFAULTS = {"images": 100}


def add_arguments(parser):
    parser.add_argument("--ae-epochs", type=positive_int, default=10,
                        help="training epochs of the autoencoder")
    parser.add_argument("--code", type=positive_int, default=32,
                        help="size of the autoencoder's code (its bottleneck)")
    parser.add_argument("--train-limit", type=positive_int,
                        help="train the autoencoder on the first N training images only")
    parser.add_argument("--test-limit", type=positive_int,
                        help="use the first N test images (all 10,000 if not given) for the "
                             "reconstruction error and the targets")
    parser.add_argument("--eps", type=float_in(0, 1), nargs="+", default=[0.1, 0.2, 0.3],
                        help="L-infinity sizes of the perturbation")
    parser.add_argument("--steps", type=positive_int, default=100,
                        help="signed-gradient steps of the attack")
    parser.add_argument("--rows", type=positive_int, default=8,
                        help="pairs shown in the figure")
    parser.add_argument("--vae", action="store_true",
                        help="instead: the plain autoencoder against a VAE, latent and output "
                             "attacks with an L2 penalty, judged at --budgets")
    parser.add_argument("--lambdas", type=float_in(0, 1e6), nargs="+",
                        default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0],
                        help="with --vae: the penalty weights of ||d||^2")
    parser.add_argument("--budgets", type=float_in(0, 28, low_open=True), nargs="+",
                        default=[1.0, 2.0, 3.0, 4.0, 6.0], help="with --vae: L2 budgets")


def training_settings(args):
    """train_autoencoder's and train_vae's settings from the flags (their checkpoints in --out)."""
    return {"code": args.code, "epochs": args.ae_epochs, "seed": args.seed,
            "train_limit": args.train_limit, "data_dir": args.data_dir}


def in_batches(fn, model, *arrays):
    """fn(*batch) over batches of EVAL_BATCH host images moved to the model; host results joined."""
    parts = [common.host(fn(*(common.on_model(model, a[s]) for a in arrays)))
             for s in batch_slices(len(arrays[0]), EVAL_BATCH)]
    return np.concatenate(parts)


def classify(model, flat):
    """Digits (N,) the CNN reads in flat images (N, 784)."""
    images = flat.reshape(-1, 1, 28, 28)
    return np.concatenate([common.predictions(model, common.on_model(model, images[s]))[0]
                           for s in batch_slices(len(images), EVAL_BATCH)])


def pick_targets(labels, n, rng):
    """For each of the first n test images, the index of a random test image of another digit."""
    targets = []
    for label in labels[:n]:
        digits = [d for d in np.unique(labels) if d != label]
        if not digits:
            raise common.ExperimentError("the test images hold only one digit: raise --test-limit.")
        targets.append(rng.choice(np.flatnonzero(labels == rng.choice(digits))))
    return np.array(targets)


def squared(a, b):
    """Per-row squared distances of host arrays (N, ...) -> (N,)."""
    return np.sum((a.reshape(len(a), -1) - b.reshape(len(b), -1)) ** 2, axis=1)


def run(args):
    """Train or reuse the autoencoder, attack --images pairs per --eps, write numbers and figure
    (with --vae: run_vae)."""
    if args.vae:
        return run_vae(args)
    common.out_dir(args.out)
    xp = namespace_for(args.device)
    images, labels = load_mnist("test", args.data_dir, args.test_limit)
    n = args.images
    if n > len(images):
        raise common.ExperimentError(f"--images {n} is more than the {len(images)} test images "
                                     "loaded: lower --images or raise --test-limit.")
    ae = train_autoencoder(args.out / "autoencoder.npz", xp, **training_settings(args))
    classifier, checkpoint = common.model_for(args)
    print(f"reconstructing {len(images)} test images", flush=True)
    recon = in_batches(lambda x: reconstruct(ae, x), ae, images)
    test_mse = float(np.mean(squared(recon, images)))
    src, tgt = np.arange(n), pick_targets(labels, n, np.random.default_rng(args.seed))
    x, goal = images[src], recon[tgt]
    before = squared(recon[src], goal)
    results = {"autoencoder": {"code": args.code, "epochs": args.ae_epochs,
                               "test_images": len(images), "test_mse_per_image": test_mse},
               "classifier": str(checkpoint), "pairs": n, "steps": args.steps,
               "clean": {"distance_to_target": float(before.mean()),
                         "source_read_as_source": float(np.mean(classify(classifier, recon[src])
                                                                == labels[src])),
                         "target_read_as_target": float(np.mean(classify(classifier, goal)
                                                                == labels[tgt]))},
               "attacks": []}
    shown = []
    for eps in args.eps:
        print(f"attacking {n} pairs with eps {eps} ({args.steps} steps)", flush=True)
        with common.progress(n, f"eps {eps}") as bar:
            def attack(xb, gb):
                out = autoencoder_attack(ae, xb, gb, eps=eps, steps=args.steps)
                bar.update(xb.shape[0])
                return out
            adv = in_batches(attack, ae, x, goal)
        adv_recon = in_batches(lambda xb: reconstruct(ae, xb), ae, adv)
        read = classify(classifier, adv_recon)
        delta = (adv - x).reshape(n, -1)
        results["attacks"].append({
            "eps": eps, "distance_to_target": float(squared(adv_recon, goal).mean()),
            "distance_before": float(before.mean()),
            "linf": float(np.abs(delta).max(axis=1).mean()),
            "l2": float(np.sqrt((delta ** 2).sum(axis=1)).mean()),
            "read_as_target": float(np.mean(read == labels[tgt])),
            "read_as_source": float(np.mean(read == labels[src]))})
        shown.append((eps, adv, adv_recon, read))
        print("  " + ", ".join(f"{k} {v:.3f}" for k, v in results["attacks"][-1].items()),
              flush=True)
    common.write_json(args.out / "results.json", results)
    plot(args.out / "autoencoder.png", classifier, images, labels, recon, src, tgt, shown,
         min(args.rows, n))
    print(f"AE test MSE {test_mse:.2f} per image; wrote {args.out / 'results.json'} and "
          f"{args.out / 'autoencoder.png'}", flush=True)
    return 0


def plot(path, classifier, images, labels, recon, src, tgt, shown, rows):
    """Rows of pairs: original, AE(original), per eps x + d and AE(x + d), target, AE(target)."""
    src, tgt = src[:rows], tgt[:rows]
    read_src, read_tgt = classify(classifier, recon[src]), classify(classifier, recon[tgt])
    cols, titles, colours = [images[src], recon[src]], [], []
    names = ["original", "AE(original)"]
    for eps, adv, adv_recon, _ in shown:
        cols += [adv[:rows], adv_recon[:rows]]
        names += [f"input, eps {eps:g}", f"AE(input), eps {eps:g}"]
    cols += [images[tgt], recon[tgt]]
    names += ["target", "AE(target)"]
    for r in range(rows):
        s, t = labels[src[r]], labels[tgt[r]]
        row = [f"digit {s}", f"CNN: {read_src[r]}"]
        colour = ["black", "black"]
        for eps, adv, _, read in shown:
            row += [f"|d|max {np.abs(adv[r] - images[src[r]]).max():.2f}", f"CNN: {read[r]}"]
            colour += ["black", "red" if read[r] == t else "black"]
        titles.append(row + [f"digit {t}", f"CNN: {read_tgt[r]}"])
        colours.append(colour + ["black", "black"])
    titles[0] = [f"{name}\n{title}" for name, title in zip(names, titles[0])]
    grid = np.stack([c.reshape(rows, -1) for c in cols], axis=1)
    figures.grid(path, grid, titles, "Autoencoder attack: x + d within eps of x, AE(x + d) "
                 "aimed at AE(target); red: the CNN reads the target digit", colours=colours)


# --- with --vae: the plain autoencoder against the VAE -------------------------------------------

def pairs(labels):
    """(source index (90,), target index (90,)): the first test image of each class, every
    ordered pair of different classes."""
    first = np.array([np.flatnonzero(labels == c)[0] for c in range(10)])
    s, t = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")
    keep = s != t
    return first[s[keep]], first[t[keep]]


def norm(a):
    return np.sqrt(np.sum(a.reshape(len(a), -1) ** 2, axis=1))


def run_vae(args):
    xp = namespace_for(args.device)
    common.out_dir(args.out)
    images, labels = load_mnist("test", args.data_dir, args.test_limit)
    ae = train_autoencoder(args.out / "autoencoder.npz", xp, **training_settings(args))
    vae = train_vae(args.out / "vae.npz", xp, **training_settings(args))
    classifier, checkpoint = common.model_for(args)
    src, tgt = pairs(labels)
    x, x_t = images[src], images[tgt]
    def on(a):
        return common.on_model(ae, a)
    recons = {"AE": lambda v: common.host(reconstruct(ae, on(v))),
              "VAE": lambda v: common.host(vae.reconstruct(on(v)))}
    codes = Sequential(*ae.layers[:4])
    objectives = {
        ("AE", "latent"): ae_latent_objective(ae, codes.forward(on(x_t))),
        ("AE", "output"): ae_output_objective(ae, on(recons["AE"](x_t))),
        ("VAE", "latent"): vae_latent_objective(vae, *vae.encode(on(x_t))),
        ("VAE", "output"): vae_output_objective(vae, on(recons["VAE"](x_t)))}
    gap = norm(x_t - x)
    results, curves = {}, {}
    for (model, kind), objective in objectives.items():
        runs = []
        with common.progress(len(args.lambdas), f"{model}, {kind}", unit="lambda") as bar:
            for lam in args.lambdas:
                adv = common.host(penalty_attack(objective, on(x), lam, args.steps))
                runs.append(adv)
                bar.update()
        results[model, kind] = runs
    for model in recons:  # the blend, at the attacks' own distortions and at the budgets
        results[model, "blend"] = [x + np.minimum(1.0, b / gap)[:, None, None, None] * (x_t - x)
                                   for b in args.budgets]
    report = {"pairs": len(src), "lambdas": args.lambdas, "budgets": args.budgets,
              "classifier": str(checkpoint), "attacks": []}
    for (model, kind), runs in results.items():
        r_x, r_t = recons[model](x), recons[model](x_t)
        base = norm(r_x - r_t)
        dist = np.stack([norm(a - x) for a in runs])                 # (runs, pairs)
        close = np.stack([norm(recons[model](a) - r_t) for a in runs])
        read = np.stack([classify(classifier, recons[model](a)) for a in runs])
        curves[model, kind] = ((dist / gap).mean(axis=1).tolist(),
                               (close / base).mean(axis=1).tolist())
        at_budget = []
        for b in args.budgets:
            # per pair, of the runs that fit the budget the one closest to the target; a pair
            # with none keeps its source (read as the source's reconstruction is)
            fits = dist <= b + 1e-6
            best = np.argmin(np.where(fits, close, np.inf), axis=0)
            reading = np.where(fits.any(axis=0), read[best, np.arange(len(src))],
                               classify(classifier, r_x))
            at_budget.append({"budget": b, "to_target": float(np.mean(reading == labels[tgt])),
                              "away_from_source": float(np.mean(reading != labels[src]))})
        report["attacks"].append({"model": model, "kind": kind, "curve": curves[model, kind],
                                  "at_budget": at_budget})
        print(f"{model}, {kind}: read as the target at L2 " + ", ".join(
            f"{a['budget']:g}: {100 * a['to_target']:.0f}%" for a in at_budget), flush=True)
    common.write_json(args.out / "vae.json", report)
    vae_figure(args.out / "vae.png", report)
    print(f"wrote {args.out / 'vae.json'} and {args.out / 'vae.png'}")
    return 0


def vae_figure(path, report):
    fig, (ax, ax2) = figures.plt.subplots(1, 2, figsize=(11, 4.2))
    for i, a in enumerate(report["attacks"]):
        style = {"latent": "o-", "output": "s-", "blend": "x--"}[a["kind"]]
        colour = "C0" if a["model"] == "AE" else "C1"
        label = f"{a['model']}, {a['kind']}"
        ax.plot(*a["curve"], style, color=colour, label=label)
        ax2.plot(report["budgets"], [100 * b["to_target"] for b in a["at_budget"]], style,
                 color=colour, label=label)
    ax.set(xlabel="||d|| / ||x_t - x||", ylabel="||AE(x + d) - AE(x_t)|| / ||AE(x) - AE(x_t)||",
           title="Tabacof et al.'s axes (mean over 90 pairs)")
    ax2.set(xlabel="L2 budget ||d||", ylabel="reconstruction read as the target (%)",
            ylim=(0, 100), title="Judged by the classifier")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    figures.save_figure(fig, path)

"""`attack.py autoencoder --vae`: the plain autoencoder against a variational one, attacked in
their latent space (Tabacof et al. 2016) and at their output (Kos et al. 2017).

Pairs: the first test image of each class as source and as target, every ordered pair of
different classes (90). Each attack minimises f(x + d) + lam ||d||^2 over d (x + d in [0, 1]),
f the latent distance (the KL between q(z | x + d) and q(z | x_t) for the VAE, the squared
code distance for the plain one) or the output distance ||AE(x + d) - AE(x_t)||^2, swept over
--lambdas. Judged as the papers judge it: Tabacof's normalised axes, ||d|| / ||x_t - x|| against
||AE(x + d) - AE(x_t)|| / ||AE(x) - AE(x_t)||; and, with the classifier (--checkpoint or the
shipped --model) reading the reconstruction, success toward the target and away from the source
at fixed L2 budgets (--budgets; per pair the closest result whose ||d|| fits). The baseline every
attack must beat is the linear blend x + a (x_t - x) with the same ||d||. Writes vae.json,
vae.png (both figures) and the VAE's checkpoint vae.npz beside the plain autoencoder's.
"""
import numpy as np

from attacks.autoencoder import (
    ae_latent_objective,
    ae_output_objective,
    penalty_attack,
    reconstruct,
    vae_latent_objective,
    vae_output_objective,
)
from data.mnist import load_mnist
from nn import Adam, Sequential
from nn.backend import namespace_for
from nn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nn.vae import VAE

from . import common
from .autoencoder import autoencoder_for, classify
from .figures import plt

BATCH, LR = 128, 1e-3


def vae_for(args, xp):
    """The VAE of --out/vae.npz, trained (further) up to --ae-epochs first."""
    path = args.out / "vae.npz"
    settings = {"code": args.code, "train_limit": args.train_limit, "seed": args.seed}
    vae, opt = VAE(code=args.code, rng=np.random.default_rng(args.seed)).to(xp), Adam(LR)
    done = 0
    if path.exists():
        try:
            arrays, meta = load_checkpoint(path)
        except CheckpointError as exc:
            raise common.ExperimentError(str(exc)) from None
        if meta["settings"] != settings:
            raise common.ExperimentError(f"{path} holds a VAE trained with other settings "
                                         f"({meta['settings']}): delete it or choose another "
                                         "--out.")
        vae.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
        opt.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim.")},
                            like=vae.params)
        done = meta["epochs"]
    images, _ = load_mnist("train", args.data_dir, args.train_limit)
    for epoch in range(done + 1, args.ae_epochs + 1):
        rng, total = np.random.default_rng([args.seed, epoch, 1]), 0.0
        order = rng.permutation(len(images))
        with common.progress(len(images), f"VAE epoch {epoch}") as bar:
            for start in range(0, len(images), BATCH):
                x = common.on_model(vae.encoder, images[order[start:start + BATCH]])
                loss, grads = vae.loss_and_gradients(x, rng.normal(size=(len(x), args.code)))
                opt.step(vae.params, grads)
                total += float(common.host(loss)) * len(x)
                bar.update(len(x))
        save_checkpoint(path, {**{f"model.{k}": v for k, v in vae.state_dict().items()},
                               **{f"optim.{k}": v for k, v in opt.state_dict().items()}},
                        {"settings": settings, "epochs": epoch})
        print(f"VAE epoch {epoch}/{args.ae_epochs}: negative ELBO {total / len(images):.1f} "
              f"per image, saved {path}", flush=True)
    return vae


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
    ae, vae = autoencoder_for(args, xp), vae_for(args, xp)
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
    figure(args.out / "vae.png", report)
    print(f"wrote {args.out / 'vae.json'} and {args.out / 'vae.png'}")
    return 0


def figure(path, report):
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

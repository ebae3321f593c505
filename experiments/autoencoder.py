"""Autoencoder attack: a small input change that makes an autoencoder reconstruct another digit.

Trains a dense autoencoder on MNIST's training set with Adam (or reuses the one in --out, and
continues it if it has fewer than --ae-epochs epochs), pairs each of the first --images test
images with a random test image of another digit, and runs `attacks.autoencoder` toward that
image's reconstruction for every --eps. The CNN of --checkpoint then reads the reconstructions.
Writes autoencoder.npz, results.json and autoencoder.png into --out.
"""
import time

import numpy as np

from attacks.autoencoder import autoencoder_attack, reconstruct
from attacks.evaluation import EVAL_BATCH, batch_slices
from data.mnist import load_mnist
from nn import Adam, dense_autoencoder, first_param, mse_loss
from nn.backend import namespace_for, xp_of
from nn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.cli import float_in, positive_int

from . import common, figures

DEFAULTS = {"images": 100}
BATCH, LR = 128, 1e-3  # autoencoder training: Adam's usual learning rate


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
                             "attacks with an L2 penalty, judged at --budgets "
                             "(experiments/vae_attack.py)")
    parser.add_argument("--lambdas", type=float_in(0, 1e6), nargs="+",
                        default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0],
                        help="with --vae: the penalty weights of ||d||^2")
    parser.add_argument("--budgets", type=float_in(0, 28, low_open=True), nargs="+",
                        default=[1.0, 2.0, 3.0, 4.0, 6.0], help="with --vae: L2 budgets")


def _prefixed(arrays, prefix):
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _resume(path, settings, ae, opt):
    """Load `path` into ae and opt if it exists; the number of epochs it holds (0 if none)."""
    if not path.exists():
        return 0
    try:
        arrays, meta = load_checkpoint(path)
    except CheckpointError as exc:
        raise common.ExperimentError(str(exc)) from None
    if meta.get("settings") != settings:
        raise common.ExperimentError(
            f"{path} holds an autoencoder trained with other settings ({meta.get('settings')}, "
            f"now {settings}): delete it or choose another --out.")
    ae.load_state_dict(_prefixed(arrays, "model."))
    opt.load_state_dict(_prefixed(arrays, "optim."), like=ae.params)
    return int(meta["epochs"])


def train_epoch(ae, opt, images, rng, bar=None):
    """One epoch of Adam on mse_loss(AE(x), x) over host images (N, 1, 28, 28) in batches of
    BATCH, shuffled by host generator rng; returns the mean training loss (per image)."""
    xp, total = xp_of(first_param(ae)), 0.0
    order = rng.permutation(len(images))
    ae.train()
    for s in batch_slices(len(images), BATCH):
        x = common.on_model(ae, images[order[s]])
        loss, dout = mse_loss(ae.forward(x), xp.reshape(x, (x.shape[0], -1)))
        _, grads = ae.backward(dout, input_grad=False)
        opt.step(ae.params, grads)
        total += float(common.host(loss)) * x.shape[0]
        if bar is not None:
            bar.update(x.shape[0])
    return total / len(images)


def autoencoder_for(args, xp):
    """The autoencoder of --out/autoencoder.npz, trained (further) up to --ae-epochs first."""
    path = args.out / "autoencoder.npz"
    settings = {"code": args.code, "train_limit": args.train_limit, "seed": args.seed,
                "batch_size": BATCH, "lr": LR}
    ae = dense_autoencoder(code=args.code, rng=np.random.default_rng(args.seed)).to(xp)
    opt = Adam(lr=LR)
    done = _resume(path, settings, ae, opt)
    if done >= args.ae_epochs:
        print(f"autoencoder: reusing {path} ({done} epochs)", flush=True)
        return ae.eval()
    images, _ = load_mnist("train", args.data_dir, args.train_limit)
    n = len(images)
    for epoch in range(done + 1, args.ae_epochs + 1):
        start = time.perf_counter()
        with common.progress(n, f"autoencoder epoch {epoch}") as bar:
            loss = train_epoch(ae, opt, images, np.random.default_rng([args.seed, epoch]), bar)
        arrays = {**{f"model.{k}": v for k, v in ae.state_dict().items()},
                  **{f"optim.{k}": v for k, v in opt.state_dict().items()}}
        save_checkpoint(path, arrays, {"settings": settings, "epochs": epoch})
        print(f"autoencoder epoch {epoch}/{args.ae_epochs}: training MSE {loss:.2f} per "
              f"image ({time.perf_counter() - start:.0f} s), saved {path}", flush=True)
    return ae.eval()


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
    (with --vae: experiments/vae_attack.py)."""
    if args.vae:
        from .vae_attack import run_vae
        return run_vae(args)
    common.out_dir(args.out)
    xp = namespace_for(args.device)
    images, labels = load_mnist("test", args.data_dir, args.test_limit)
    n = args.images
    if n > len(images):
        raise common.ExperimentError(f"--images {n} is more than the {len(images)} test images "
                                     "loaded: lower --images or raise --test-limit.")
    ae = autoencoder_for(args, xp)
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

"""A PyTorch twin of train_gan.py's GAN, to tell the settings from a defect of our layers.

    .venv/bin/python benchmarks/gan_twin.py --gan-loss nonsaturating --seed 0 --epochs 30 \\
        --out /root/gan-runs/twin-nonsaturating-seed0           # needs torch (optional)

Everything but the arithmetic is shared with train_gan.py (gan/run.py), so that only the
implementation differs:
  networks   gan/models.py's layers in torch.nn (Linear, LeakyReLU(0.2), Sigmoid; D returns a
             logit), starting from *our* initial weights for the same seed (copied, W transposed),
             so both implementations start identical;
  updates    torch.optim.Adam with the same lr, betas (beta1, 0.999) and eps 1e-8; a D step per
             batch (BCE with logits on real and on G(z), the two mean gradients summed), a G step
             after every --d-steps of them on a fresh batch of --batch-size noise vectors;
             the generator cost minimax = -BCE(D(G(z)), 0) = E[log(1 - D(G(z)))] or
             non-saturating = BCE(D(G(z)), 1) = E[-log D(G(z))];
  randomness one numpy Generator(seed) draws the initial weights, each epoch's shuffle and every
             noise batch in the order gan/run.py draws them, so with equal arithmetic the two
             runs would see the same batches and the same z (with --d-dropout > 0 the masks
             come from torch's generator, seeded too, so from there on the streams differ);
  remedies   --d-dropout, --real-label and --d-lr as train_gan.py's, with its defaults;
  scores     gan/fid.py on 10,000 samples from the same fixed z (Generator([seed, 2])) against
             the 10,000 test images, with the same classifier (runs/classifier/checkpoint.npz,
             made by train_gan.py when missing).
The run folder gets metrics.csv (the columns of train_gan.py's), settings.json, samples.png and
checkpoint.pt (--resume continues from it). One thread (--threads) unless told otherwise.
tests/test_gan_twin.py checks that a few steps of both agree to float32 rounding.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.mnist import load_mnist  # noqa: E402
from gan.classifier import DEFAULT_CLASSIFIER, classifier_bn  # noqa: E402
from gan.fid import class_fractions, coverage, features_and_classes, frechet_distance  # noqa: E402
from gan.losses import GAN_LOSSES  # noqa: E402
from gan.models import IMAGE_SIZE, discriminator, generator  # noqa: E402
from nn import batch_slices, reference_cnn  # noqa: E402
from nn.checkpoint import load_checkpoint, section  # noqa: E402
from training.run_folder import write_metrics  # noqa: E402

GEN_BATCH = 500  # images per generator forward when sampling for the score, as gan/report.py


def torch_generator(z_dim=100):
    """gan.models.generator in torch.nn (same layer indices, so the same parameter names)."""
    return nn.Sequential(nn.Linear(z_dim, 256), nn.LeakyReLU(0.2), nn.Linear(256, 512),
                         nn.LeakyReLU(0.2), nn.Linear(512, IMAGE_SIZE), nn.Sigmoid())


def torch_discriminator(dropout=0.0):
    """gan.models.discriminator in torch.nn: Flatten, three Linear layers, a logit (N, 1);
    dropout > 0 puts a Dropout(dropout) after each LeakyReLU."""
    drop = [nn.Dropout(dropout)] if dropout > 0 else []
    return nn.Sequential(nn.Flatten(), nn.Linear(IMAGE_SIZE, 512), nn.LeakyReLU(0.2), *drop,
                         nn.Linear(512, 256), nn.LeakyReLU(0.2), *drop, nn.Linear(256, 1))


def copy_weights(ours, twin):
    """Copy our Sequential's parameters into the torch twin: "i.W" (in, out) -> "i.weight"
    (out, in), "i.b" -> "i.bias"."""
    state = {}
    for name, p in ours.params.items():
        i, key = name.split(".")
        value = torch.from_numpy(np.array(p, dtype=np.float32))
        state[f"{i}.weight" if key == "W" else f"{i}.bias"] = value.T if key == "W" else value
    twin.load_state_dict(state)
    return twin


def twin_networks(z_dim, rng, dropout=0.0):
    """(G, D) in torch with the initial weights ours would draw from `rng` (consumed as ours)."""
    G = copy_weights(generator(z_dim, rng=rng), torch_generator(z_dim))
    ours_d, twin_d = discriminator(rng=rng), torch_discriminator(dropout)
    dense = [m for m in twin_d if isinstance(m, nn.Linear)]
    with torch.no_grad():  # by position: dropout shifts the layer indices
        for lin, layer in zip(dense, [l for l in ours_d.layers if "W" in l.params]):
            lin.weight.copy_(torch.from_numpy(np.array(layer.params["W"]).T))
            lin.bias.copy_(torch.from_numpy(np.array(layer.params["b"])))
    return G, twin_d


def adam(params, lr, beta1):
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), eps=1e-8)


def discriminator_step(G, D, opt_d, x_real, z, real_label=1.0):
    """One Adam step of D on real images (N, ...) and G(z) -> (loss, mean D(x), mean D(G(z)));
    real_label is the target of the real images (< 1: one-sided label smoothing)."""
    bce = nn.functional.binary_cross_entropy_with_logits
    with torch.no_grad():
        fake = G(z)
    opt_d.zero_grad(set_to_none=True)
    real_logits, fake_logits = D(x_real), D(fake)
    loss = (bce(real_logits, torch.full_like(real_logits, real_label))
            + bce(fake_logits, torch.zeros_like(fake_logits)))
    loss.backward()
    opt_d.step()
    with torch.no_grad():
        return (float(loss), float(torch.sigmoid(real_logits).mean()),
                float(torch.sigmoid(fake_logits).mean()))


def generator_loss(logits, kind):
    """minimax E[log(1 - D)] = -BCE(logits, 0); non-saturating E[-log D] = BCE(logits, 1)."""
    bce = nn.functional.binary_cross_entropy_with_logits
    if kind == "minimax":
        return -bce(logits, torch.zeros_like(logits))
    if kind == "nonsaturating":
        return bce(logits, torch.ones_like(logits))
    raise ValueError(f"unknown generator loss {kind!r}")


def generator_step(G, D, opt_g, z, kind):
    """One Adam step of G (D untouched) -> (loss, mean D(G(z)), grad_norm) as gan.steps's:
    grad_norm is the batch mean of ||N dL/dG(z)_n||_2, the per-sample cost's gradient norm."""
    opt_g.zero_grad(set_to_none=True)
    fake = G(z)
    fake.retain_grad()
    logits = D(fake)
    loss = generator_loss(logits, kind)
    loss.backward(inputs=[fake, *G.parameters()])
    opt_g.step()
    with torch.no_grad():
        per_sample = fake.grad.reshape(len(fake), -1) * len(fake)
        return (float(loss), float(torch.sigmoid(logits).mean()),
                float(per_sample.norm(dim=1).mean()))


def noise(rng, n, z_dim):
    """As gan/run.py: standard normal (n, z_dim) float32 from the host Generator."""
    return rng.standard_normal((n, z_dim)).astype(np.float32)


def train_epoch(G, D, opt_g, opt_d, images, args, rng):
    """gan.run.train_epoch's pass in torch, drawing the same shuffle and noise from rng."""
    order = rng.permutation(len(images))
    sums = dict.fromkeys(("d_loss", "d_real", "d_fake", "g_loss", "g_d_fake", "grad_norm"), 0.0)
    n_d = n_g = 0
    for i, s in enumerate(batch_slices(len(order), args.batch_size)):
        idx = order[s]
        d_loss, d_real, d_fake = discriminator_step(
            G, D, opt_d, torch.from_numpy(images[idx]),
            torch.from_numpy(noise(rng, len(idx), args.z_dim)), args.real_label)
        sums["d_loss"] += d_loss
        sums["d_real"] += d_real
        sums["d_fake"] += d_fake
        n_d += 1
        if (i + 1) % args.d_steps == 0:
            g_loss, g_d_fake, grad_norm = generator_step(
                G, D, opt_g, torch.from_numpy(noise(rng, args.batch_size, args.z_dim)),
                args.gan_loss)
            sums["g_loss"] += g_loss
            sums["g_d_fake"] += g_d_fake
            sums["grad_norm"] += grad_norm
            n_g += 1
    if not all(np.isfinite(v) for v in sums.values()):
        raise RuntimeError(f"training diverged: {sums}")
    means = {k: v / (n_d if k.startswith("d_") else n_g) for k, v in sums.items()}
    means["g_steps"] = n_g
    return means


def generate(G, z):
    """Host images (N, 1, 28, 28) float32 from host noise z (N, Z)."""
    with torch.no_grad():
        out = [G(torch.from_numpy(z[s])).numpy() for s in batch_slices(len(z), GEN_BATCH)]
    return np.reshape(np.concatenate(out), (len(z), 1, 28, 28))


def load_classifier(path):
    """Our reference CNN (no BatchNorm) with the weights of a train.py checkpoint, eval mode."""
    if classifier_bn(path, False):
        raise SystemExit(f"{path}: the twin scores with a classifier without BatchNorm")
    arrays, _ = load_checkpoint(path)
    model = reference_cnn()
    model.load_state_dict(section(arrays, "model"))
    return model.eval()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--gan-loss", choices=GAN_LOSSES, default="nonsaturating")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--beta1", type=float, default=0.5)
    p.add_argument("--d-lr", type=float, help="D's learning rate (default: --lr)")
    p.add_argument("--d-dropout", type=float, default=0.3,
                   help="dropout after each LeakyReLU of D (train_gan.py's default)")
    p.add_argument("--real-label", type=float, default=0.9,
                   help="D's target for real images; < 1 is one-sided label smoothing "
                        "(train_gan.py's default)")
    p.add_argument("--d-steps", type=int, default=1)
    p.add_argument("--z-dim", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int)
    p.add_argument("--fid-samples", type=int, default=10000)
    p.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the twin's dropout masks (ours come from the numpy Generator)
    train_x, _ = load_mnist("train", None, args.train_limit)
    test_x, _ = load_mnist("test", None, args.fid_samples)
    classifier = load_classifier(args.classifier)
    test_features, _ = features_and_classes(classifier, test_x)

    rng = np.random.default_rng(args.seed)
    G, D = twin_networks(args.z_dim, rng, args.d_dropout)
    opt_g = adam(G.parameters(), args.lr, args.beta1)
    opt_d = adam(D.parameters(), args.d_lr or args.lr, args.beta1)
    z_fid = noise(np.random.default_rng([args.seed, 2]), args.fid_samples, args.z_dim)
    z_grid = noise(np.random.default_rng([args.seed, 1]), 100, args.z_dim)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(implementation="pytorch twin (benchmarks/gan_twin.py)",
                    torch=torch.__version__)
    ckpt, history = args.out / "checkpoint.pt", []
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        for obj, key in ((G, "G"), (D, "D"), (opt_g, "opt_g"), (opt_d, "opt_d")):
            obj.load_state_dict(state[key])
        rng.bit_generator.state, history = state["rng"], state["history"]
    elif ckpt.exists():
        raise SystemExit(f"{args.out} already holds a run: add --resume")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")

    from gan.report import save_grid  # matplotlib only here
    for epoch in range(len(history) + 1, args.epochs + 1):
        t0 = time.perf_counter()
        means = train_epoch(G, D, opt_g, opt_d, train_x, args, rng)
        t1 = time.perf_counter()
        features, classes = features_and_classes(classifier, generate(G, z_fid))
        fractions = class_fractions(classes)
        row = {"epoch": epoch, **means, "fid": frechet_distance(features, test_features),
               "coverage": coverage(fractions),
               **{f"class_{c}": float(f) for c, f in enumerate(fractions)},
               "train_seconds": t1 - t0, "eval_seconds": time.perf_counter() - t1}
        history.append(row)
        save_grid(generate(G, z_grid), args.out / "samples.png",
                  f"PyTorch twin, {args.gan_loss}, epoch {epoch}")
        torch.save({"G": G.state_dict(), "D": D.state_dict(), "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(), "rng": rng.bit_generator.state,
                    "history": history}, ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)
        write_metrics(args.out / "metrics.csv", history)
        print(f"epoch {epoch}/{args.epochs}  D loss {row['d_loss']:.4f}  G loss {row['g_loss']:.4f}"
              f"  D(x) {row['d_real']:.3f}  D(G(z)) {row['d_fake']:.3f}  grad "
              f"{row['grad_norm']:.3g}  FID {row['fid']:.2f}  coverage {row['coverage']}/10  "
              f"{row['train_seconds']:.1f} s + eval {row['eval_seconds']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

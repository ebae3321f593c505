"""The exercise's evaluation: clean accuracy, and accuracy under attack of the correctly
classified test images only, plus the robust accuracy over all images that papers report."""
import numpy as np

from nn.backend import to_numpy, xp_of
from nn.interval import certified
from nn.layers import no_grad
from nn.model import EVAL_BATCH, batch_slices, eval_mode, first_param, on_model

from .gradient import fgs_step, fgv_step, loss_and_gradients
from .iterative import pgd


def default_attacks(fgs_alpha=0.3, fgv_alpha=0.6):
    """name -> attack(model, x, t, dx) -> x_adv for the exercise's two attacks.

    Every attack `evaluate` runs has this form; dx = dJ/dx at the clean batch, computed once per
    batch, is all that the one-step attacks need.
    """
    return {"fgs": lambda model, x, t, dx: fgs_step(x, dx, fgs_alpha),
            "fgv": lambda model, x, t, dx: fgv_step(x, dx, fgv_alpha)}


def pgd_attack(eps=0.3, steps=20, rng=None):
    """PGD from a random start (if rng is given, else from x) as an `evaluate` attack."""
    return lambda model, x, t, dx: pgd(model, x, t, eps=eps, steps=steps,
                                       random_start=rng is not None, rng=rng)


def certify(model, images, labels, eps, batch_size=EVAL_BATCH):
    """Whether each host image (N, C, H, W) is *proven* to keep its host label (N,) against any
    perturbation of L-infinity norm <= eps (interval bounds, nn/interval.py): (N,) booleans on
    the host, in eval mode. An image the model gets wrong is never certified."""
    with eval_mode(model):
        out = [to_numpy(certified(model, on_model(model, images[s]), on_model(model, labels[s]),
                                  eps)) for s in batch_slices(len(images), batch_size)]
        model.clear_caches()
    return np.concatenate(out)


def evaluate(model, images, labels, attacks=None, batch_size=EVAL_BATCH):
    """Accuracy on clean images and under each attack, in eval mode; host images and labels in.

    images (N, C, H, W) float32 in [0, 1], labels (N,) int; attacks: name -> attack(model, x, t,
    dx) (see default_attacks), by default FGS (alpha 0.3) and FGV (alpha 0.6). Returns a dict of
    floats:
      clean_acc, clean_loss, n (= N), n_correct;
      <name>_acc        fraction of the n_correct clean-correct images still correct after attack
                        (the exercise's measure), <name>_robust_acc the same count over all N,
      <name>_linf, <name>_l2   mean size of the perturbations of those n_correct images.
    One forward and one backward per batch serve every one-step attack. Attacking every image
    and then counting only the clean-correct ones equals attacking those alone: in eval mode each
    image's gradient depends on that image only, up to the 1/N of the mean, which neither sign
    nor FGV's per-image scaling sees.
    """
    attacks = default_attacks() if attacks is None else attacks
    xp = xp_of(first_param(model))
    totals = {"clean_loss": 0.0, "n_correct": 0}
    for name in attacks:
        totals.update({f"{name}_still": 0, f"{name}_linf": 0.0, f"{name}_l2": 0.0})
    with eval_mode(model):
        for s in batch_slices(len(images), batch_size):
            x, t = on_model(model, images[s]), on_model(model, labels[s])
            p = loss_and_gradients(model, x, t, param_grads=False)
            correct = xp.argmax(p.logits, axis=1) == t
            totals["clean_loss"] += float(p.loss) * t.shape[0]
            totals["n_correct"] += int(xp.sum(xp.astype(correct, xp.int64)))
            for name, attack in attacks.items():
                x_adv = attack(model, x, t, p.dx)
                with no_grad():
                    still = correct & (xp.argmax(model.forward(x_adv), axis=1) == t)
                delta = xp.reshape(x_adv - x, (x.shape[0], -1))
                mask = xp.astype(correct, x.dtype)
                totals[f"{name}_still"] += int(xp.sum(xp.astype(still, xp.int64)))
                totals[f"{name}_linf"] += float(xp.sum(xp.max(xp.abs(delta), axis=1) * mask))
                totals[f"{name}_l2"] += float(xp.sum(xp.sqrt(xp.sum(delta * delta, axis=1)) * mask))
    n, k = len(images), totals["n_correct"]
    result = {"n": n, "n_correct": k, "clean_acc": k / n, "clean_loss": totals["clean_loss"] / n}
    for name in attacks:
        result[f"{name}_acc"] = totals[f"{name}_still"] / k if k else float("nan")
        result[f"{name}_robust_acc"] = totals[f"{name}_still"] / n
        result[f"{name}_linf"] = totals[f"{name}_linf"] / k if k else float("nan")
        result[f"{name}_l2"] = totals[f"{name}_l2"] / k if k else float("nan")
    return result

"""The shipped models as the page serves them, and the page's ready digits."""
import numpy as np

import models
from attacks import default_attacks, evaluate
from data.mnist import load_mnist
from nn import predict


def served_models(names, images=1000):
    """{name: Served} of the shipped models, each with its accuracy on the first `images` test
    images (clean and under FGS at its eps, measured now; PGD-20, the worst case of attack.py
    robust and the certified share from the manifest), and the page's seed digits."""
    from web.api import Served  # Starlette: the [web] extra

    x, t = load_mnist("test", limit=images)
    served, seeds = {}, []
    for name in names:
        model, settings, entry = models.load(name)
        r = evaluate(model, x, t, {"fgs": default_attacks(settings["alpha"], 0.6)["fgs"]})
        served[name] = Served(model, {
            "what": entry["what"], "eps": settings["alpha"], "images": images,
            "clean": r["clean_acc"], "fgs": r["fgs_robust_acc"], "pgd20": entry["pgd20"],
            "robust": entry["robust"], "attack_images": entry["attack_images"],
            "certified": entry.get("certified")})
        seeds = seeds or seed_digits(model, x, t)
    return served, seeds


def seed_digits(model, x, t, n=8):
    """The page's ready digits: the first n test images (x (N, 1, 28, 28), t (N,)) that `model`
    classifies correctly, then the first one it gets wrong; each with its index, true label,
    what `model` reads and the image (28 x 28 numbers)."""
    read = predict(model, x)
    right = read == t
    picks = [*np.flatnonzero(right)[:n], *np.flatnonzero(~right)[:1]]
    return [{"index": int(i), "label": int(t[i]), "read": int(read[i]),
             "image": x[i, 0].round(4).tolist()} for i in picks]

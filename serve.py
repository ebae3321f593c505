"""Serve the shipped models: a prediction API with per-key query budgets, and the page.

    python serve.py                       # http://127.0.0.1:8000/ : the page; /api/v1/...: the API
    python serve.py --budget 20000 --keys alice bob

The page (web/static/) attacks one digit at a time through POST /api/v1/attack; attackers who
see only the API use POST /api/v1/predict (web/api.py has every route). It binds 127.0.0.1
unless --host says otherwise. Needs the [web] extra: pip install -e '.[web]'.
"""
import argparse
import sys

import numpy as np

import models
from training.cli import HelpFormatter, int_at_least, positive_int

PROG = "serve.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
    p.add_argument("--port", type=int_at_least(0), default=8000, help="port (0: any free one)")
    p.add_argument("--models", nargs="+", choices=list(models.MODELS),
                   default=list(models.MODELS), help="the shipped models to serve")
    p.add_argument("--keys", nargs="+", default=["demo"], help="the API keys (the page uses "
                                                               "the first)")
    p.add_argument("--budget", type=int_at_least(0),
                   help="queries (images sent to /api/v1/predict) per key (default: no limit)")
    p.add_argument("--max-batch", type=positive_int, default=1000, help="images per request")
    p.add_argument("--max-body", type=positive_int, default=4_000_000,
                   help="largest request body in bytes")
    return p.parse_args(argv)


def served_models(names, images=1000):
    """{name: Served} of the shipped models, each with its accuracy on the first `images` test
    images (clean and under FGS at its eps, measured now; PGD-20 and the worst case of attack.py
    robust from the manifest), and the page's seed digits."""
    from attacks import default_attacks, evaluate
    from data.mnist import load_mnist
    from web.api import Served

    x, t = load_mnist("test", limit=images)
    served, seeds = {}, []
    for name in names:
        model, settings, entry = models.load(name)
        r = evaluate(model, x, t, {"fgs": default_attacks(settings["alpha"], 0.6)["fgs"]})
        served[name] = Served(model, {
            "what": entry["what"], "eps": settings["alpha"], "images": images,
            "clean": r["clean_acc"], "fgs": r["fgs_robust_acc"], "pgd20": entry["pgd20"],
            "robust": entry["robust"], "attack_images": entry["attack_images"]})
        seeds = seeds or seed_digits(model, x, t)
    return served, seeds


def seed_digits(model, x, t, n=8):
    """The page's ready digits: the first n test images (x (N, 1, 28, 28), t (N,)) that `model`
    classifies correctly, then the first one it gets wrong."""
    from attacks import predict
    right = predict(model, x) == t
    picks = [*np.flatnonzero(right)[:n], *np.flatnonzero(~right)[:1]]
    return [{"index": int(i), "label": int(t[i]), "image": x[i, 0].round(4).tolist()}
            for i in picks]


def main(argv=None):
    args = parse_args(argv)
    try:
        import uvicorn

        from web.api import make_app
    except ImportError:
        print(f"{PROG}: error: the server needs Starlette and uvicorn: pip install -e '.[web]'",
              file=sys.stderr)
        return 1
    try:
        served, seeds = served_models(args.models)
    except models.ModelError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    app = make_app(served, keys=args.keys, budget=args.budget, max_body=args.max_body,
                   max_batch=args.max_batch, seeds=seeds)
    print(f"serving {', '.join(served)} on http://{args.host}:{args.port}/ (keys: "
          f"{', '.join(args.keys)}; budget {args.budget or 'none'}); Ctrl-C stops", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())

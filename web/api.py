"""The prediction API and the page: a Starlette app over trained models.

    POST /api/v1/predict   {"model": "standard", "output": "label" | "scores" | "scores2",
                            "images": [N x 28 x 28 numbers in [0, 1]]  or  "png": [base64 PNG]}
    GET  /api/v1/usage     the caller's queries and budget
    GET  /api/v1/models    the models, with their accuracy on the first 1,000 test images, and
                           the key the page uses (the first)
    GET  /api/v1/seeds     ready test digits for the page (one the standard model gets wrong)
    POST /api/v1/attack    {"model", "attack": "fgs" | "fgv" | "pgd" | "targeted_pgd", "eps",
                            "target", "image"}: the adversarial image, the perturbation and
                            both probability vectors (for the page; white-box, not counted)
    GET  /                 the page (web/static/)

Every call names its API key in the X-API-Key header. Every image sent to /predict counts as one
query against the key, whatever the answer; with a budget, a request that would pass it is
refused whole (429) before the model runs, so the counts are exact under concurrent requests.
"scores" are the softmax probabilities (computed in float64, so that they reach 0 only where
the margin passes about 745 logits), "scores2" the same rounded to 2 decimals (the coarse
answers some prediction APIs give). Every malformed request gets a 4xx and one sentence in JSON,
{"error": "..."}; the server goes on serving.
"""
import base64
import binascii
import io
import json
import math
import threading
from itertools import chain
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from attacks import eval_mode, fgs, fgv, pgd, predict, targeted_pgd
from nn import softmax

STATIC = Path(__file__).resolve().parent / "static"
OUTPUTS = ("label", "scores", "scores2")
ATTACKS = ("fgs", "fgv", "pgd", "targeted_pgd")
SIDE = 28


class ApiError(Exception):
    """A request the API refuses: an HTTP status and one sentence for the caller."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


class Budgets:
    """Queries per API key, and a budget per key (None: no limit); thread-safe."""

    def __init__(self, keys, budget=None):
        self.budget, self.used, self._lock = budget, {k: 0 for k in keys}, threading.Lock()

    def check_key(self, key):
        if key is None:
            raise ApiError(401, "name your API key in the X-API-Key header")
        if key not in self.used:
            raise ApiError(403, f"unknown API key {key[:40]!r}")

    def take(self, key, n):
        """Count n queries against `key`, or refuse all n (429) if they would pass its budget."""
        self.check_key(key)
        with self._lock:
            if self.budget is not None and self.used[key] + n > self.budget:
                raise ApiError(429, f"the key's budget of {self.budget} queries is spent: "
                                    f"{self.used[key]} used, {n} more asked")
            self.used[key] += n

    def usage(self, key):
        self.check_key(key)
        with self._lock:
            used = self.used[key]
        return {"queries": used, "budget": self.budget,
                "remaining": None if self.budget is None else self.budget - used}


class Served:
    """One model behind the API: the model, a lock (its layers keep caches, so one request at a
    time uses it) and what the page shows about it."""

    def __init__(self, model, info):
        self.model, self.info, self.lock = model, info, threading.Lock()

    def probs(self, x):
        """Float64 probabilities (N, 10) of host images x (N, 1, 28, 28)."""
        with self.lock, eval_mode(self.model):
            logits = np.asarray(self.model.forward(x), dtype=np.float64)
            self.model.clear_caches()
        return softmax(logits)


async def read_json(request, max_body):
    """The request's JSON object; 413 past max_body bytes, 400 if it is not a JSON object."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > max_body):
        raise ApiError(413, f"the body is larger than {max_body} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body:
            raise ApiError(413, f"the body is larger than {max_body} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def decode_png(text, i):
    """A 28x28 grey image in [0, 1] from base64 PNG text (image i of the request)."""
    try:
        if not isinstance(text, str):
            raise ValueError
        image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
        if image.format != "PNG" or image.size != (SIDE, SIDE):
            raise ValueError
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except (ValueError, binascii.Error, UnidentifiedImageError, OSError,
            Image.DecompressionBombError):
        raise ApiError(400, f"png[{i}] is not a base64 28x28 PNG image") from None


def images_from(data, max_batch, single=False):
    """Host images (N, 1, 28, 28) float32 from data["images"] (nested lists) or data["png"];
    with single, data["image"]: one 28x28 image (lists or PNG text)."""
    if single:
        if "image" not in data:
            raise ApiError(400, "give the image as \"image\": 28x28 numbers or base64 PNG text")
        value = data["image"]
        if isinstance(value, str):
            return decode_png(value, 0)[None, None]
        return check_pixels(value, (SIDE, SIDE), "image")[None, None]
    if ("images" in data) == ("png" in data):
        raise ApiError(400, "give the images as exactly one of \"images\" (N x 28 x 28 numbers "
                            "in [0, 1]) or \"png\" (a list of base64 PNG images)")
    if "png" in data:
        if not isinstance(data["png"], list) or not data["png"]:
            raise ApiError(400, "\"png\" must be a non-empty list of base64 PNG images")
        check_batch(len(data["png"]), max_batch)
        return np.stack([decode_png(t, i) for i, t in enumerate(data["png"])])[:, None]
    value = data["images"]
    if isinstance(value, list) and value:
        check_batch(len(value), max_batch)
    return check_pixels(value, None, "images")


def check_batch(n, max_batch):
    if n > max_batch:
        raise ApiError(413, f"at most {max_batch} images a request, {n} sent")


def check_pixels(value, shape, name):
    """value as float32, of shape (N, 28, 28), (N, 1, 28, 28) or `shape`, finite, in [0, 1]."""
    try:
        x = np.array(value, dtype=np.float32)
        if x.dtype != np.float32 or _has_non_numbers(value, x.ndim):
            raise ValueError
    except (ValueError, TypeError, OverflowError):
        raise ApiError(400, f"\"{name}\" must hold numbers only, in nested lists of equal "
                            "lengths") from None
    if shape is not None:
        ok = x.shape == shape
    else:
        ok = (x.ndim == 3 and x.shape[1:] == (SIDE, SIDE) and x.shape[0] > 0) or \
             (x.ndim == 4 and x.shape[1:] == (1, SIDE, SIDE) and x.shape[0] > 0)
    if not ok:
        want = "28 x 28" if shape is not None else "N x 28 x 28 (or N x 1 x 28 x 28)"
        raise ApiError(400, f"\"{name}\" must be {want}, not {' x '.join(map(str, x.shape))}")
    if not np.all(np.isfinite(x)):
        raise ApiError(400, f"\"{name}\" holds NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        raise ApiError(400, f"\"{name}\" must lie in [0, 1]; it spans "
                            f"[{x.min():g}, {x.max():g}]")
    return x if shape is not None else x.reshape(-1, 1, SIDE, SIDE)


def _has_non_numbers(value, depth):
    """Whether the leaves of regular nested lists `depth` deep hold anything but ints and floats
    (NumPy reads True and "0.5"). Chaining the levels and mapping type() keeps the walk in C:
    a batch of 250 images takes 8 ms instead of 55 ms with a Python loop."""
    leaves = [value]
    for _ in range(depth):
        leaves = chain.from_iterable(leaves)
    return not set(map(type, leaves)) <= {int, float}


def choose(data, field, options, default=None):
    value = data.get(field, default)
    if value not in options:
        raise ApiError(400, f"\"{field}\" must be one of {', '.join(map(str, options))}, "
                            f"not {str(value)[:40]!r}")
    return value


def number(data, field, low, high, default=None):
    value = data.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ApiError(400, f"\"{field}\" must be a number in [{low}, {high}]")
    return float(value)


def run_attack(served, x, name, eps, target):
    """(adversarial image (28, 28), clean label) of one attack on one host image (1, 1, 28, 28);
    the attacks push the model's own clean prediction away (toward `target` if targeted)."""
    with served.lock:
        model = served.model
        label = predict(model, x)
        if name == "fgs":
            adv = fgs(model, x, label, eps)
        elif name == "fgv":
            adv = fgv(model, x, label, eps)
        elif name == "pgd":
            adv = pgd(model, x, label, eps, steps=20)
        else:
            adv = targeted_pgd(model, x, np.array([target]), eps, steps=20)
        model.clear_caches()
    return np.asarray(adv, dtype=np.float32)[0, 0]


def make_app(served, keys=("demo",), budget=None, max_body=4_000_000, max_batch=1000,
             seeds=None):
    """The Starlette app over `served` ({name: Served}); keys: the API keys, each with `budget`
    queries (None: no limit); seeds: the page's ready digits (a list of dicts)."""
    budgets = Budgets(keys, budget)

    def served_model(data):
        name = data.get("model", "standard")
        if name not in served:
            raise ApiError(404, f"no model {str(name)[:40]!r}; the models are "
                                f"{', '.join(served)}")
        return served[name]

    async def predict_(request):
        data = await read_json(request, max_body)
        key = request.headers.get("x-api-key")
        budgets.check_key(key)
        model = served_model(data)
        output = choose(data, "output", OUTPUTS, "label")
        x = images_from(data, max_batch)
        budgets.take(key, len(x))
        probs = await run_in_threadpool(model.probs, x)
        if output == "label":
            return JSONResponse({"labels": probs.argmax(axis=1).tolist()})
        scores = np.round(probs, 2) if output == "scores2" else probs
        return JSONResponse({"labels": probs.argmax(axis=1).tolist(), "scores": scores.tolist()})

    async def usage(request):
        key = request.headers.get("x-api-key")
        return JSONResponse({"key": key, **budgets.usage(key)})

    async def models_(request):
        return JSONResponse({"models": [{"name": n, **s.info} for n, s in served.items()],
                             "page_key": keys[0]})

    async def seeds_(request):
        return JSONResponse({"seeds": seeds or []})

    async def attack(request):
        data = await read_json(request, max_body)
        budgets.check_key(request.headers.get("x-api-key"))
        model = served_model(data)
        name = choose(data, "attack", ATTACKS, "fgs")
        eps = number(data, "eps", 0, 1, 0.3)
        target = choose(data, "target", list(range(10)), 0) if name == "targeted_pgd" else None
        x = images_from(data, 1, single=True)
        adv = await run_in_threadpool(run_attack, model, x, name, eps, target)
        before, after = await run_in_threadpool(model.probs, np.stack([x[0], adv[None]]))
        return JSONResponse({"adversarial": adv.tolist(), "perturbation": (adv - x[0, 0]).tolist(),
                             "probs_before": before.tolist(), "probs_after": after.tolist(),
                             "label_before": int(before.argmax()),
                             "label_after": int(after.argmax())})

    async def page(request):
        return RedirectResponse("/static/index.html")

    async def refused(request, exc):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def http_error(request, exc):
        return JSONResponse({"error": f"{exc.detail} ({request.method} {request.url.path})"},
                            status_code=exc.status_code)

    routes = [Route("/api/v1/predict", predict_, methods=["POST"]),
              Route("/api/v1/usage", usage, methods=["GET"]),
              Route("/api/v1/models", models_, methods=["GET"]),
              Route("/api/v1/seeds", seeds_, methods=["GET"]),
              Route("/api/v1/attack", attack, methods=["POST"]),
              Route("/", page, methods=["GET"]),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes, exception_handlers={ApiError: refused,
                                                       HTTPException: http_error})
    app.state.budgets = budgets
    return app


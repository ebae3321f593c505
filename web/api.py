"""The prediction API and the page: a Starlette app over trained models.

Two roles, kept apart:
- The metered API, the attacker's black box. Every call names an API key in the X-API-Key
  header, checked before the body is read.
    POST /api/v1/predict  {"model": "standard", "output": "label" | "scores" | "scores2",
                           "images": [N x 28 x 28 numbers in [0, 1]]  or  "png": [base64 PNG]}
    GET  /api/v1/usage    the caller's queries and budget
  Every image sent to /predict is charged to the key in the usage ledger (web/ledger.py) before
  the model runs, in the one step that checks the budget: a request that would pass it is
  refused whole (429), so counts are exact across threads, worker processes and restarts.
  "scores" are the softmax probabilities (float64, so that they reach 0 only where the margin
  passes about 745 logits), "scores2" the same rounded to 2 decimals.
- The page, a white-box demonstration on the server's own models, for anyone who can reach it:
  no key, a rate limit per client address instead of a budget.
    GET  /                 the page (web/static/)
    GET  /api/v1/seeds     ready test digits (one the first model gets wrong)
    POST /api/v1/attack    {"model", "attack": "fgs" | "fgv" | "pgd" | "targeted_pgd", "eps",
                            "target", "image"}: the adversarial image, the perturbation and
                            both probability vectors
  A server with a budget is a black box: the page and /attack are off (404), since /attack
  answers scores and gradient signs that no metered key may have for free.
    GET  /api/v1/models    (both) the models with their measured accuracy, and the limits

One client cannot stall the rest: the body is read under a deadline and a size limit, parsed in
a worker thread, at most `Limits.inflight` requests hold a body at once and at most
`Limits.queue` wait for or run on one model (503 with Retry-After past either), and waiting for
a model holds no thread. Every refusal is a 4xx (or that 503) with one sentence of JSON,
{"error": "..."}; the server goes on serving.
"""
import contextlib
import hmac
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from attacks import certify, fgs, fgv, pgd, targeted_pgd
from nn import eval_mode, no_grad, predict, softmax
from web.guard import Guard, RateLimit
from web.inputs import ApiError, parse_attack, parse_predict, read_body
from web.ledger import BudgetSpent, MemoryLedger, key_id

STATIC = Path(__file__).resolve().parent / "static"
MIN_KEY_LENGTH = 16
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class Limits:
    """What one server process holds at most (serve.py's flags)."""
    max_body: int = 4_000_000    # bytes in a request body
    max_batch: int = 1000        # images in a /predict request
    body_seconds: float = 10.0   # for a body to arrive (408 after)
    inflight: int = 64           # requests holding a body at once (503 past it)
    per_client: int = 4          # of them from one key (or, for the page, one address)
    queue: int = 32              # requests waiting for or running on one model (503 past it)
    parsers: int = 2             # large bodies parsed at once, each in a worker thread
    inline: int = 65_536         # bytes of a body small enough to parse on the event loop
    page_rate: float = 20.0      # /attack calls a second per client address (429 past it)
    page_burst: int = 40


class Keys:
    """The API keys, held only as their ledger ids (SHA-256, web/ledger.key_id): Keys.of(keys)
    checks and hashes plain keys. check() hashes the presented key and compares it with every
    known id by hmac.compare_digest."""

    def __init__(self, ids=()):
        self.ids = list(ids)

    @classmethod
    def of(cls, keys):
        short = [k for k in keys if len(k) < MIN_KEY_LENGTH]
        if short:
            raise ValueError(f"an API key must have at least {MIN_KEY_LENGTH} characters; "
                             f"{len(short)} of the {len(keys)} given are shorter")
        return cls(key_id(k) for k in keys)

    def check(self, key):
        """The ledger id of the header's key; 401 without one, 403 for an unknown one."""
        if key is None:
            raise ApiError(401, "name your API key in the X-API-Key header")
        presented, found = key_id(key), None
        for known in self.ids:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(presented, known):
                found = known
        if found is None:
            raise ApiError(403, "unknown API key" if self.ids else
                           "this server has no API keys (serve.py --keys-file, or API_KEYS)")
        return found


class Gate:
    """One request at a time on a model, and at most `depth` requests holding a place in its
    line (running included). The line is an asyncio lock: a waiting request holds no thread."""

    def __init__(self, depth):
        self.depth, self.places, self.turn = depth, 0, None

    @contextlib.asynccontextmanager
    async def place(self):
        if self.places >= self.depth:
            raise ApiError(503, "the model is busy; try again shortly", {"Retry-After": "1"})
        self.turn = self.turn or anyio.Lock()
        self.places += 1
        try:
            yield self.turn
        finally:
            self.places -= 1


class Served:
    """One model behind the API: the model, a lock (its layers keep caches, so one call at a
    time uses it; make_app's Gate lines the requests up in front of it) and what the page shows
    about it."""

    def __init__(self, model, info):
        self.model, self.info, self.lock = model, info, threading.Lock()

    def probs(self, x):
        """Float64 probabilities (N, 10) of host images x (N, 1, 28, 28)."""
        with self.lock, eval_mode(self.model), no_grad():
            logits = np.asarray(self.model.forward(x), dtype=np.float64)
        return softmax(logits)

    def attack(self, x, name, eps, target):
        """(adversarial image (28, 28), probabilities before (10,), after (10,), certified) of
        one attack on one host image (1, 1, 28, 28): it pushes the model's own clean prediction
        away (toward `target` if targeted); certified: interval bounds prove that no image
        within eps of x (inside [0, 1]) changes that prediction, so no attack at eps can."""
        with self.lock:
            model = self.model
            label = predict(model, x)
            proven = bool(certify(model, x, label, eps)[0])
            if name == "fgs":
                adv = fgs(model, x, label, eps)
            elif name == "fgv":
                adv = fgv(model, x, label, eps)
            elif name == "pgd":
                adv = pgd(model, x, label, eps, steps=20)
            else:
                adv = targeted_pgd(model, x, np.array([target]), eps, steps=20)
            model.clear_caches()
        adv = np.asarray(adv, dtype=np.float32)
        before, after = self.probs(np.concatenate([x, adv]))
        return adv[0, 0], before, after, proven


def make_app(served, keys=None, budget=None, ledger=None, limits=Limits(), seeds=None,
             page=True, hosts=LOCAL_HOSTS):
    """The Starlette app over `served` ({name: Served}). keys: Keys (None: none); budget:
    images per key (None: no limit); ledger: where usage is kept (default: in memory); page:
    serve the page and /attack (refused with a budget); hosts: the Host names answered ("*":
    any); seeds: the page's ready digits (a list of dicts)."""
    if page and budget is not None:
        raise ValueError("a metered server (a budget) cannot serve the page: its /attack would "
                         "answer scores and gradients for free")
    keys, ledger, names = keys or Keys(), ledger or MemoryLedger(), list(served)
    gates = {name: Gate(limits.queue) for name in served}
    state = {"parsers": None, "clients": {}}
    page_limit = RateLimit(limits.page_rate, limits.page_burst)

    @contextlib.asynccontextmanager
    async def holding_a_body(client):
        """A place for one more request body (503 when the server, or `client`, has its
        limit of them): one client's flood cannot take every place."""
        clients = state["clients"]  # client -> its requests holding a body (at most inflight)
        if sum(clients.values()) >= limits.inflight or \
                clients.get(client, 0) >= limits.per_client:
            raise ApiError(503, "the server is busy; try again shortly", {"Retry-After": "1"})
        clients[client] = clients.get(client, 0) + 1
        try:
            yield
        finally:
            clients[client] -= 1
            if not clients[client]:
                del clients[client]

    async def parsed(request, parse, *args):
        """parse(body, *args) of the request's body: a small body at once, a large one in a
        worker thread, at most limits.parsers at a time (a 1-image request never waits behind
        another client's 4 MB)."""
        body = await read_body(request, limits.max_body, limits.body_seconds)
        request.state.body_read = True
        if len(body) <= limits.inline:
            return parse(body, *args)
        state["parsers"] = state["parsers"] or anyio.CapacityLimiter(limits.parsers)
        return await anyio.to_thread.run_sync(parse, body, *args, limiter=state["parsers"])

    def charge(kid, n):
        try:
            ledger.charge(kid, n, budget)
        except BudgetSpent as spent:
            raise ApiError(429, f"the key's budget of {budget} queries is spent: "
                                f"{spent}") from None

    async def predict_(request):
        kid = keys.check(request.headers.get("x-api-key"))
        async with holding_a_body(kid):
            name, output, x = await parsed(request, parse_predict, names, limits.max_batch)
            model = served[name]
            async with gates[name].place() as turn:
                await run_in_threadpool(charge, kid, len(x))
                async with turn:
                    probs = await run_in_threadpool(model.probs, x)
        labels = probs.argmax(axis=1).tolist()
        if output == "label":
            return JSONResponse({"labels": labels})
        scores = np.round(probs, 2) if output == "scores2" else probs
        return JSONResponse({"labels": labels, "scores": scores.tolist()})

    async def usage(request):
        kid = keys.check(request.headers.get("x-api-key"))
        used = await run_in_threadpool(ledger.used, kid)
        return JSONResponse({"queries": used, "budget": budget,
                             "remaining": None if budget is None else budget - used})

    async def models_(request):
        return JSONResponse({"models": [{"name": n, **s.info} for n, s in served.items()],
                             "limits": {"max_body": limits.max_body,
                                        "max_batch": limits.max_batch},
                             "metered": budget is not None, "page": page})

    def page_only(handler):
        async def route(request):
            if not page:
                raise ApiError(404, "the page and /api/v1/attack are off on a metered server "
                                    "(serve.py --budget)")
            return await handler(request)
        return route

    async def seeds_(request):
        return JSONResponse({"seeds": seeds or []})

    async def attack(request):
        address = request.client.host if request.client else ""
        wait = page_limit.wait(address)
        if wait:
            raise ApiError(429, "too many attacks from this address; slow down",
                           {"Retry-After": str(math.ceil(wait))})
        async with holding_a_body(address):
            name, attack_, eps, target, x = await parsed(request, parse_attack, names)
            model = served[name]
            async with gates[name].place() as turn, turn:
                adv, before, after, proven = await run_in_threadpool(model.attack, x, attack_,
                                                                     eps, target)
        return JSONResponse({"adversarial": adv.tolist(), "perturbation": (adv - x[0, 0]).tolist(),
                             "probs_before": before.tolist(), "probs_after": after.tolist(),
                             "label_before": int(before.argmax()),
                             "label_after": int(after.argmax()), "certified": proven})

    async def drain(request):
        with contextlib.suppress(Exception), anyio.move_on_after(limits.body_seconds):
            async for _ in request.stream():
                pass

    async def index(request):
        return RedirectResponse("/static/index.html")

    async def refused(request, exc):
        headers = dict(exc.headers)
        if request.method == "POST" and not getattr(request.state, "body_read", False):
            if exc.status in (401, 403, 408, 413, 415):
                headers["Connection"] = "close"  # a body not worth reading: don't wait for it
            else:  # 429, 503: a client that may send again must get to read the Retry-After,
                await drain(request)  # so its body is read (and dropped) first
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    async def http_error(request, exc):
        return JSONResponse({"error": f"{exc.detail} ({request.method} {request.url.path})"},
                            status_code=exc.status_code)

    async def crashed(request, exc):  # a bug: the traceback goes to the log
        return JSONResponse({"error": "the server failed on this request (a bug)"},
                            status_code=500)

    routes = [Route("/api/v1/predict", predict_, methods=["POST"]),
              Route("/api/v1/usage", usage, methods=["GET"]),
              Route("/api/v1/models", models_, methods=["GET"]),
              Route("/api/v1/seeds", page_only(seeds_), methods=["GET"]),
              Route("/api/v1/attack", page_only(attack), methods=["POST"]),
              Route("/", page_only(index), methods=["GET"])]
    if page:
        routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    app = Starlette(routes=routes, exception_handlers={ApiError: refused,
                                                       HTTPException: http_error,
                                                       Exception: crashed})
    return Guard(app, hosts)

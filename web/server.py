"""serve.py's server: the app of web/api.py on a socket bound beforehand, in one process or in
uvicorn's worker processes that share the socket and the usage ledger.

Workers are started by uvicorn (spawned, not forked): each builds its own app through
`worker_app`, from the Settings that the parent put, as JSON, in the environment variable
SERVE_SETTINGS (nothing left on disk however the server ends). Settings carry the keys' SHA-256
ids, never the keys: 35 bytes a key, so a few thousand keys fit an environment variable.
"""
import json
import os
import resource
import socket
from dataclasses import asdict, dataclass, field

import uvicorn
from uvicorn.supervisors import Multiprocess

import models
from data.mnist import load_mnist
from web.api import LOCAL_HOSTS, Keys, Limits, Served, make_app
from web.guard import GuardedH11
from web.ledger import open_ledger
from web.shipped import seed_digits


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs to build the same app as the parent."""
    models: list                 # the shipped models' names
    info: dict                   # name -> what the page shows about it (measured once)
    key_ids: list = field(default_factory=list)
    budget: int | None = None
    ledger: str = "memory"
    limits: dict = field(default_factory=lambda: asdict(Limits()))
    page: bool = True
    hosts: list = field(default_factory=lambda: list(LOCAL_HOSTS))


def build_app(settings, served=None, seeds=None):
    """The app of `settings`, over `served` ({name: Served}) and the page's `seeds`, or the
    shipped models loaded now and their seeds picked again."""
    if served is None:
        served = {name: Served(models.load(name)[0], settings.info[name])
                  for name in settings.models}
        if settings.page:
            x, t = load_mnist("test", limit=1000)
            seeds = seed_digits(next(iter(served.values())).model, x, t)
    return make_app(served, keys=Keys(settings.key_ids), budget=settings.budget,
                    ledger=open_ledger(settings.ledger), limits=Limits(**settings.limits),
                    seeds=seeds, page=settings.page, hosts=settings.hosts)


def worker_app():
    """uvicorn's app factory in a worker process (web.server:worker_app)."""
    return build_app(Settings(**json.loads(os.environ["SERVE_SETTINGS"])))


def bind(host, port):
    """A listening TCP socket on host:port (port 0: any free one); OSError if it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def open_files_for(connections):
    """Raise this process's limit on open files toward `connections` + 64 (as far as the hard
    limit allows); the connections a server can keep open within it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 64 if hard == resource.RLIM_INFINITY else min(hard, connections + 64)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return max(1, min(connections, soft - 64))


def uvicorn_config(app, workers=1, max_connections=1000, deadline=10.0):
    """uvicorn's Config for `app` (an app, or an import string for workers > 1) with
    GuardedH11: each process keeps at most `max_connections` connections open, and closes one
    that has no request in progress `deadline` seconds after it opened or after its last
    answer."""
    config = uvicorn.Config(app, factory=workers > 1, workers=workers, http=GuardedH11,
                            log_level="warning", access_log=False, timeout_keep_alive=5,
                            timeout_graceful_shutdown=5)
    # read by GuardedH11 in every process (the Config is pickled to spawned workers)
    config.max_connections, config.deadline = open_files_for(max_connections), deadline
    return config


def run(sock, settings, workers=1, max_connections=1000, deadline=10.0, served=None,
        seeds=None):
    """Serve on `sock` until Ctrl-C: one process (the app built over `served` and `seeds`), or
    `workers` uvicorn worker processes (each loads the models)."""
    app = build_app(settings, served, seeds) if workers == 1 else "web.server:worker_app"
    config = uvicorn_config(app, workers, max_connections, deadline)
    if workers == 1:
        uvicorn.Server(config).run(sockets=[sock])
        return
    os.environ["SERVE_SETTINGS"] = json.dumps(asdict(settings))
    Multiprocess(config, sockets=[sock]).run()

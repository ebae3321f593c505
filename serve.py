"""Serve the shipped models: the page (a white-box demonstration) or a metered prediction API.

    python serve.py                          # the page at http://127.0.0.1:8000/
    API_KEYS="$(cat keys.txt)" python serve.py --budget 20000 --port 8123   # a black box
    python serve.py --keys-file keys.txt --budget 20000 --workers 4 --ledger redis://127.0.0.1:6379/0

Without --budget, anyone who reaches the server may use the page (rate-limited) and keyholders
/api/v1/predict without a limit. With --budget, the server is the lecture's black box: the page
and its white-box /api/v1/attack are off, and every image a key sends to /api/v1/predict is
charged to it in the usage ledger (--ledger: an SQLite file by default, kept across restarts
and shared by --workers; or Redis, shared by several machines). Keys (one a line, at least 16
characters) come from --keys-file or the API_KEYS environment variable, never the command line.
It binds 127.0.0.1 unless --host says otherwise. Needs the [web] extra: pip install -e '.[web]'.
"""
import argparse
import os
import sys

import models
from training.cli import HelpFormatter, float_in, int_at_least, positive_int, run_cli

PROG = "serve.py"


def port(text):
    value = int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in [0, 65535], got {value}")
    return value


def parse_args(argv=None):
    from web.api import Limits
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
    p.add_argument("--port", type=port, default=8000, help="port (0: any free one)")
    p.add_argument("--models", nargs="+", choices=list(models.MODELS),
                   default=list(models.MODELS), help="the shipped models to serve")
    p.add_argument("--keys-file", help="the API keys, one a line (default: the API_KEYS "
                                       "environment variable, keys separated by white space)")
    p.add_argument("--budget", type=positive_int,
                   help="images per key on /api/v1/predict; turns the page off (default: no "
                        "limit, and the page on)")
    p.add_argument("--ledger", default="runs/serve/usage.sqlite3",
                   help="where usage is kept: an SQLite file, redis://HOST:PORT/DB, or memory")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a further Host name to answer to, besides the bound address and "
                        "localhost (repeatable; '*': any)")
    p.add_argument("--max-batch", type=positive_int, default=Limits.max_batch,
                   help="images per request")
    p.add_argument("--max-body", type=positive_int, default=Limits.max_body,
                   help="largest request body in bytes")
    p.add_argument("--deadline", type=float_in(0, 3600, low_open=True), default=10.0,
                   help="seconds for a request to arrive whole; idle connections close after it")
    p.add_argument("--max-connections", type=positive_int, default=1000,
                   help="open connections per process (503 past it)")
    p.add_argument("--inflight", type=positive_int, default=Limits.inflight,
                   help="requests holding a body at once, per process (503 past it)")
    p.add_argument("--queue", type=positive_int, default=Limits.queue,
                   help="requests waiting for one model, per process (503 past it)")
    return p.parse_args(argv)


def read_keys(keys_file):
    """The API keys from `keys_file` (one a line; blank lines and # comments skipped), else from
    the API_KEYS environment variable; ValueError in one sentence."""
    if keys_file:
        try:
            with open(keys_file) as f:
                lines = [line.split("#")[0].strip() for line in f]
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the keys file {keys_file}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        return [k for k in lines if k]
    return os.environ.get("API_KEYS", "").split()


class ServeError(Exception):
    """The server cannot start (one sentence for the user)."""


def serve(args):
    try:
        from web.api import Keys, Limits
        from web.ledger import LedgerError, open_ledger
        from web.server import Settings, bind, run
    except ImportError:
        raise ServeError("the server needs Starlette and uvicorn: pip install -e '.[web]'") \
            from None
    try:
        keys = Keys.of(read_keys(args.keys_file))
    except ValueError as exc:
        raise ServeError(exc) from None
    if args.budget is not None and not keys.ids:
        raise ServeError("--budget meters API keys, and none were given: name a --keys-file, "
                         "or set API_KEYS")
    if args.ledger == "memory" and args.workers > 1:
        raise ServeError("--ledger memory keeps each worker's own counts: with --workers, keep "
                         "usage in an SQLite file or on Redis")
    try:
        open_ledger(args.ledger)
    except LedgerError as exc:
        raise ServeError(exc) from None
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise ServeError(f"cannot listen on {args.host} port {args.port}: "
                         f"{exc.strerror or exc} (another server there? choose one with --port)"
                         ) from None
    from web.shipped import served_models
    try:
        served, seeds = served_models(args.models)
    except BaseException:
        sock.close()
        raise
    limits = Limits(max_body=args.max_body, max_batch=args.max_batch,
                    body_seconds=args.deadline, inflight=args.inflight, queue=args.queue)
    host, bound = sock.getsockname()[:2]
    hosts = sorted({host, "127.0.0.1", "localhost", "[::1]", *args.allow_host})
    settings = Settings(models=list(served), info={n: s.info for n, s in served.items()},
                        key_ids=keys.ids, budget=args.budget, ledger=args.ledger,
                        limits=vars(limits), page=args.budget is None, hosts=hosts)
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound}/"
    what = (f"the page at {url}" if settings.page else
            f"a black box: {args.budget} images per key, the page off")
    print(f"serving {', '.join(served)} on {url} ({what}; {len(keys.ids)} API keys; usage in "
          f"{args.ledger}; {args.workers} worker{'s' * (args.workers > 1)}); Ctrl-C stops",
          flush=True)
    run(sock, settings, workers=args.workers, max_connections=args.max_connections,
        deadline=args.deadline, served=served, seeds=seeds)
    return 0


def main(argv=None):
    return run_cli(PROG, serve, parse_args(argv), errors=(ServeError, models.ModelError),
                   interrupted="stopped")


if __name__ == "__main__":
    sys.exit(main())

"""Load benchmark of serve.py's prediction API: clients x workers x ledgers, on loopback.

    python benchmarks/load_api.py                               # the whole table (~6 minutes)
    python benchmarks/load_api.py --clients 8 --workers 1 --ledgers sqlite --seconds 10

For each combination it starts `python serve.py --budget ...` (the shipped standard model) on a
free loopback port as its own process group, with one key per client, runs the clients (threads
sending /api/v1/predict requests of --batch test images through urllib, a new connection per
request, as a naive client does; a 503 is sent again after its Retry-After) for --seconds, and
prints a Markdown row: requests/s, images/s, p50/p99 latency, 503s, errors (anything else),
and whether the server's count (the sum of the keys' usage) equals the clients' sum. The Redis
ledger needs `redis-server` on the PATH (started here on a free port). A script, not a test:
the numbers depend on the machine, and on what else it runs.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.mnist import load_mnist  # noqa: E402


def post(url, key, body):
    request = urllib.request.Request(url + "/api/v1/predict", data=json.dumps(body).encode(),
                                     headers={"X-API-Key": key,
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def usage(url, key):
    request = urllib.request.Request(url + "/api/v1/usage", headers={"X-API-Key": key})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["queries"]


def client(url, key, images, batch, until, seed, results):
    rng = np.random.default_rng(seed)
    latencies, sent, busy, errors = [], 0, 0, 0
    while time.perf_counter() < until:
        x = images[rng.integers(0, len(images), batch)]
        t0 = time.perf_counter()
        try:
            post(url, key, {"images": x.round(4).tolist()})
            sent += batch
            latencies.append(time.perf_counter() - t0)
        except urllib.error.HTTPError as err:
            busy += err.code == 503
            errors += err.code != 503
            time.sleep(float(err.headers.get("Retry-After") or 0) if err.code == 503 else 0)
        except (urllib.error.URLError, OSError):
            errors += 1
    results.append((latencies, sent, busy, errors))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(folder):
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                "--dir", folder, "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return f"redis://127.0.0.1:{port}/0", process


def measure(clients, workers, ledger, batch, seconds, images, folder):
    """One row: serve.py with `workers` and `ledger`, `clients` threads for `seconds`."""
    keys = [f"bench-key-{i:04d}-{os.getpid()}-{time.time_ns()}" for i in range(clients)]
    (Path(folder) / "keys.txt").write_text("\n".join(keys) + "\n")
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "serve.py"), "--port", "0", "--models", "standard",
         "--keys-file", str(Path(folder) / "keys.txt"), "--budget", str(10 ** 9),
         "--ledger", ledger, "--workers", str(workers)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    try:
        url = server.stdout.readline().split(" on ", 1)[1].split("/ ", 1)[0]
        for _ in range(600):  # until every worker answers
            try:
                usage(url, keys[0])
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        time.sleep(2.0 * (workers > 1))
        results, until = [], time.perf_counter() + seconds
        threads = [threading.Thread(target=client, args=(url, keys[i], images, batch, until,
                                                         i, results)) for i in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        counted = sum(usage(url, k) for k in keys)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    latencies = np.concatenate([r[0] for r in results] + [[np.nan]]) * 1000
    sent = sum(r[1] for r in results)
    busy, errors = sum(r[2] for r in results), sum(r[3] for r in results)
    kind = ledger.split(":")[0] if ledger.startswith("redis") else \
        "memory" if ledger == "memory" else "sqlite"
    print(f"| {clients} | {workers} | {kind} | {(len(latencies) - 1) / elapsed:.0f} | "
          f"{sent / elapsed:.0f} | {np.nanpercentile(latencies, 50):.1f} | "
          f"{np.nanpercentile(latencies, 99):.1f} | {busy} | {errors} | "
          f"{'=' if counted == sent else f'{counted} vs {sent}'} |", flush=True)
    return errors == 0 and counted == sent


def charge_cost(where, n=5000):
    """Microseconds per ledger charge, on its own (no HTTP): what the ledger adds to a
    request."""
    from web.ledger import key_id, open_ledger
    ledger, kid = open_ledger(where), key_id(f"charge-cost-{time.time_ns()}")
    start = time.perf_counter()
    for _ in range(n):
        ledger.charge(kid, 1, 10 ** 9)
    return 1e6 * (time.perf_counter() - start) / n


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    p.add_argument("--ledgers", nargs="+", default=["memory", "sqlite", "redis"],
                   choices=["memory", "sqlite", "redis"])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--batch", type=int, default=1, help="images per request")
    args = p.parse_args()
    images = load_mnist("test", limit=1000)[0][:, 0]
    print(f"{args.batch} image(s) a request, {args.seconds:g} s a row, {os.cpu_count()} cores\n")
    print("| clients | workers | ledger | requests/s | images/s | p50 ms | p99 ms | 503s | "
          "errors | server count |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    ok, redis, costs = True, None, []
    with tempfile.TemporaryDirectory() as folder:
        try:
            for ledger in args.ledgers:
                if ledger == "redis":
                    if shutil.which("redis-server") is None:
                        print("(no redis-server: the Redis rows are skipped)")
                        continue
                    url, redis = start_redis(folder)

                def where(name):  # a fresh SQLite file per row; one Redis, keys apart
                    return {"memory": "memory", "redis": url if ledger == "redis" else None,
                            "sqlite": str(Path(folder) / f"{name}.sqlite3")}[ledger]
                costs.append(f"{ledger} {charge_cost(where('cost')):.0f}")
                for workers in args.workers:
                    if ledger == "memory" and workers > 1:
                        continue  # serve.py refuses it: each worker would count apart
                    for clients in args.clients:
                        ok &= measure(clients, workers, where(f"usage-{workers}-{clients}"),
                                      args.batch, args.seconds, images, folder)
        finally:
            if redis is not None:
                redis.terminate()
    print(f"\none charge alone, microseconds: {', '.join(costs)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

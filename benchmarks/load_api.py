"""Load benchmark of serve.py's prediction API: K concurrent clients on loopback, bounded time.

    python benchmarks/load_api.py --clients 8 --seconds 20 --batch 1

Starts `python serve.py` (the shipped standard model) on a free loopback port as a separate
process, runs --clients threads that each send /api/v1/predict requests of --batch test images
(urllib, one connection per request, as a naive client would) for --seconds, then prints
requests per second, images per second, p50/p99 latency, the errors (any non-200) and whether
the server's count for the key equals the sum of the clients' counts. Also times /api/v1/attack
(FGS, one image) alone, the page's call. A script, not a test: the numbers depend on the machine.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.mnist import load_mnist  # noqa: E402

KEY = "bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, path, body):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"X-API-Key": KEY,
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def get(url, path):
    request = urllib.request.Request(url + path, headers={"X-API-Key": KEY})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def client(url, images, batch, until, seed, results):
    rng = np.random.default_rng(seed)
    latencies, sent, errors = [], 0, 0
    while time.perf_counter() < until:
        x = images[rng.integers(0, len(images), batch)]
        t0 = time.perf_counter()
        try:
            status, _ = post(url, "/api/v1/predict", {"images": x.round(4).tolist()})
        except (urllib.error.URLError, OSError):
            status = None
        latencies.append(time.perf_counter() - t0)
        if status == 200:
            sent += batch
        else:
            errors += 1
    results.append((latencies, sent, errors))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--batch", type=int, default=1, help="images per request")
    args = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "serve.py", "--port", str(port), "--models",
                               "standard", "--keys", KEY], cwd=ROOT,
                              env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    try:
        for _ in range(600):
            try:
                get(url, "/api/v1/models")
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        images = load_mnist("test", limit=1000)[0][:, 0]
        attack = []
        for i in range(50):
            t0 = time.perf_counter()
            post(url, "/api/v1/attack", {"image": images[i].tolist(), "attack": "fgs",
                                         "eps": 0.1, "model": "standard"})
            attack.append(time.perf_counter() - t0)
        results, until = [], time.perf_counter() + args.seconds
        threads = [threading.Thread(target=client, args=(url, images, args.batch, until, s,
                                                         results)) for s in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        counted = get(url, "/api/v1/usage")["queries"]
    finally:
        server.terminate()
        server.wait(10)
    latencies = np.concatenate([r[0] for r in results]) * 1000
    sent, errors = sum(r[1] for r in results), sum(r[2] for r in results)
    print(f"{args.clients} clients, {args.batch} image(s) a request, {elapsed:.1f} s on "
          f"{os.cpu_count()} cores: {len(latencies) / elapsed:.0f} requests/s, "
          f"{sent / elapsed:.0f} images/s; latency p50 {np.percentile(latencies, 50):.1f} ms, "
          f"p99 {np.percentile(latencies, 99):.1f} ms; errors {errors}; server count {counted}, "
          f"clients' sum {sent}: {'equal' if counted == sent else 'DIFFERENT'}")
    print(f"/api/v1/attack FGS on one image, alone: p50 {1000 * np.median(attack):.1f} ms, "
          f"p99 {1000 * np.percentile(attack, 99):.1f} ms")
    return 0 if errors == 0 and counted == sent else 1


if __name__ == "__main__":
    sys.exit(main())

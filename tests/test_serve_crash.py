"""kill -9 under load: serve.py as its own process group, 8 concurrent clients of one metered key,
killed at a random moment and restarted on the same ledger, 10 times over (and on, up to 40,
until the key's budget is reached: a loaded machine answers fewer images a round); with 1 worker
and with 4 (uvicorn's worker processes sharing the SQLite file), and on a real redis-server.

The ledger charges before the model runs, so after every crash its count is at least the images
the clients were answered (no accepted query lost) and at most that plus the images of the
requests that died with the server (charged, never answered); and the key never passes its
budget, which the load reaches, so that later rounds start refused.
"""
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from redis_server import redis_url
from test_serve import GOOD, KEY, serve_main
from web.ledger import key_id, open_ledger

pytestmark = pytest.mark.slow
BUDGET, ROUNDS, MAX_ROUNDS, CLIENTS = 600, 10, 40, 8


def client(url, seed, stop, tally, lock):
    """Send 1-3 images a request until `stop`, a 429 or a dead server; add to tally the
    images answered, and those of requests that got no answer."""
    rng = np.random.default_rng(seed)
    while not stop.is_set():
        n = int(rng.integers(1, 4))
        request = urllib.request.Request(url + "/api/v1/predict",
                                         data=json.dumps({"images": GOOD * n}).encode(),
                                         headers={"X-API-Key": KEY,
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answered = len(json.loads(response.read())["labels"])
            with lock:
                tally["answered"] += answered
        except urllib.error.HTTPError as err:
            if err.code == 429:
                with lock:
                    tally["refused"] += 1
                return
            assert err.code == 503, err.code  # busy: send again
        except (OSError, ValueError):  # the server died mid-request: charged or not
            with lock:
                tally["unknown"] += n
            return


def crash_rounds(tmp_path, ledger, workers):
    keys = tmp_path / "keys.txt"
    keys.write_text(KEY + "\n")
    rng, tally, lock = np.random.default_rng(workers), {"answered": 0, "unknown": 0,
                                                        "refused": 0}, threading.Lock()
    for round_ in range(MAX_ROUNDS):
        if round_ >= ROUNDS and tally["refused"] > 0:
            break
        process = serve_main("--port", 0, "--models", "standard", "--keys-file", keys,
                             "--budget", BUDGET, "--ledger", ledger, "--workers", workers,
                             wait=False, start_new_session=True)
        try:
            url = process.stdout.readline().split(" on ", 1)[1].split("/ ", 1)[0]
            stop = threading.Event()
            threads = [threading.Thread(target=client, args=(url, 100 * round_ + c, stop, tally,
                                                             lock)) for c in range(CLIENTS)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(1.0, 3.0) + 2.0 * (workers > 1))  # workers start slower
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
            stop.set()
        for t in threads:
            t.join(60)
    return tally, open_ledger(ledger).used(key_id(KEY))


@pytest.mark.parametrize("workers", [1, 4])
def test_kill_9_under_load_loses_no_accepted_query_sqlite(tmp_path, workers):
    tally, used = crash_rounds(tmp_path, str(tmp_path / "usage.sqlite3"), workers)
    assert tally["answered"] > 0 and tally["refused"] > 0, tally  # the budget was reached
    assert tally["answered"] <= used <= tally["answered"] + tally["unknown"], (tally, used)
    assert used <= BUDGET


def test_kill_9_under_load_loses_no_accepted_query_redis(tmp_path):
    url, redis = redis_url(tmp_path)
    try:
        tally, used = crash_rounds(tmp_path, url, 1)
    finally:
        redis.terminate()
        redis.wait(10)
    assert tally["answered"] > 0 and tally["refused"] > 0, tally
    assert tally["answered"] <= used <= tally["answered"] + tally["unknown"], (tally, used)
    assert used <= BUDGET

"""Tests for the usage ledger (web/ledger.py) on its three stores: in memory, SQLite and a real
redis-server. A charge is all or nothing; under concurrent charges from threads and from
separate processes the accepted images add up exactly to the count, which never passes the
budget; SQLite and Redis keep the count across a new ledger object (a restart)."""
import multiprocessing

import numpy as np
import pytest

from redis_server import redis_url
from web.ledger import BudgetSpent, LedgerError, MemoryLedger, SQLiteLedger, key_id, open_ledger


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    url, process = redis_url(tmp_path_factory.mktemp("redis"))
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def where(request, tmp_path):
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return str(tmp_path / "usage.sqlite3")
    return request.getfixturevalue("redis")


def test_a_charge_is_all_or_nothing(where, request):
    ledger = open_ledger(where)
    kid = key_id(f"key of {request.node.name}")
    assert ledger.used(kid) == 0
    assert ledger.charge(kid, 3, 5) == 3 and ledger.charge(kid, 2, 5) == 5
    with pytest.raises(BudgetSpent, match="5 used, 1 more asked"):
        ledger.charge(kid, 1, 5)
    assert ledger.used(kid) == 5
    other = key_id(f"other key of {request.node.name}")
    with pytest.raises(BudgetSpent, match="0 used, 6 more asked"):
        ledger.charge(other, 6, 5)  # a first charge past the budget creates no count either
    assert ledger.used(other) == 0 and ledger.charge(other, 6, None) == 6


def charge_until_refused(where, kid, budget, seed, start, accepted):
    """One process: from `start`, charge 1-3 images at a time until refused; put the images
    accepted."""
    ledger, rng, mine = open_ledger(where), np.random.default_rng(seed), 0
    start.wait(60)
    while True:
        n = int(rng.integers(1, 4))
        try:
            ledger.charge(kid, n, budget)
        except BudgetSpent:
            break
        mine += n
    accepted.put(mine)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_budgets_are_exact_across_processes(store, tmp_path, request):
    """4 processes charge one key until refused: what they were granted is the ledger's count,
    within the budget and short of it by less than the last refused charge."""
    where = (str(tmp_path / "usage.sqlite3") if store == "sqlite"
             else request.getfixturevalue("redis"))
    kid, budget = key_id(f"shared key {store} {tmp_path.name}"), 6000
    context = multiprocessing.get_context("spawn")
    start, accepted = context.Event(), context.Queue()
    workers = [context.Process(target=charge_until_refused, args=(where, kid, budget, s, start,
                                                                  accepted)) for s in range(4)]
    for w in workers:
        w.start()
    start.set()
    granted = [accepted.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(30)
    used = open_ledger(where).used(kid)
    assert sum(granted) == used and budget - 2 <= used <= budget


def test_sqlite_and_redis_keep_counts_across_restarts(tmp_path, redis):
    for where in (str(tmp_path / "usage.sqlite3"), redis):
        kid = key_id(f"restart {tmp_path.name}")
        open_ledger(where).charge(kid, 7, None)
        assert open_ledger(where).used(kid) == 7  # a new ledger object: a new process


def test_memory_is_memory():
    assert isinstance(open_ledger("memory"), MemoryLedger)
    assert MemoryLedger().used(key_id("anything-at-all-123")) == 0


def test_an_unusable_ledger_is_one_sentence(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(LedgerError, match="cannot open the usage ledger"):
        SQLiteLedger(tmp_path / "a-file" / "usage.sqlite3")
    pytest.importorskip("redis")
    with pytest.raises(LedgerError, match="cannot reach the Redis ledger"):
        open_ledger("redis://127.0.0.1:1/0")


def test_the_ledger_stores_no_key():
    assert key_id("alice-0123456789abcdef") == key_id("alice-0123456789abcdef")
    assert len(key_id("alice-0123456789abcdef")) == 32
    assert "alice" not in key_id("alice-0123456789abcdef")

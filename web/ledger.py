"""The API's usage ledger: how many images each key has been answered, kept where a restart,
a crash or several worker processes cannot lose or double-spend a query.

    open_ledger("runs/serve/usage.sqlite3")   SQLite in WAL mode (the default): one machine,
                                              any number of worker processes
    open_ledger("redis://127.0.0.1:6379/0")   Redis: several machines behind one proxy
    open_ledger("memory")                     a dict in this process (lost on restart; tests
                                              and the load benchmark's baseline)

`charge(key_id, n, budget)` checks and records in one step (one SQLite statement in its own
transaction, one Redis Lua script): either all n images are counted and the new total
returned, or none is and BudgetSpent says how many were used. The server charges before the
model runs, so a crash between the charge and the answer can only count an image that was never
answered, never answer one that was not counted. Keys are stored as `key_id` (the first 32 hex
digits of their SHA-256), never as the keys themselves.
"""
import hashlib
import sqlite3
import threading
from pathlib import Path


class BudgetSpent(Exception):
    """A charge refused: the key has `used` queries, and `asked` more would pass its budget."""

    def __init__(self, used, asked):
        super().__init__(f"{used} used, {asked} more asked")
        self.used, self.asked = used, asked


class LedgerError(Exception):
    """The ledger cannot be opened (one sentence for the user)."""


def key_id(key):
    """What the ledger stores for an API key: 32 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class MemoryLedger:
    """Counts in a dict, guarded by a lock: exact across threads, lost with the process."""

    def __init__(self):
        self.counts, self.lock = {}, threading.Lock()

    def charge(self, kid, n, budget):
        with self.lock:
            used = self.counts.get(kid, 0)
            if budget is not None and used + n > budget:
                raise BudgetSpent(used, n)
            self.counts[kid] = used + n
            return used + n

    def used(self, kid):
        with self.lock:
            return self.counts.get(kid, 0)


class SQLiteLedger:
    """Counts in an SQLite file in WAL mode, one connection per thread. synchronous=NORMAL:
    a committed charge survives the server's crash or kill -9 (WAL is written before the
    commit returns); only a power cut may lose the last commits."""

    def __init__(self, path):
        self.path, self.local = Path(path), threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._db()
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS usage (key TEXT PRIMARY KEY, "
                       "used INTEGER NOT NULL)")
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open the usage ledger {self.path}: {exc}") from None

    def _db(self):
        db = getattr(self.local, "db", None)
        if db is None:
            # isolation_level=None: each statement is its own transaction; timeout: how long
            # a writer waits for another process's write lock before it fails
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            db.execute("PRAGMA synchronous=NORMAL")
            self.local.db = db
        return db

    def charge(self, kid, n, budget):
        # one statement: the row is created, checked and counted under SQLite's write lock
        row = self._db().execute(
            "INSERT INTO usage (key, used) SELECT ?1, ?2 WHERE ?3 IS NULL OR ?2 <= ?3 "
            "ON CONFLICT (key) DO UPDATE SET used = used + ?2 "
            "WHERE ?3 IS NULL OR used + ?2 <= ?3 RETURNING used",
            (kid, n, budget)).fetchone()
        if row is None:
            raise BudgetSpent(self.used(kid), n)
        return row[0]

    def used(self, kid):
        row = self._db().execute("SELECT used FROM usage WHERE key = ?", (kid,)).fetchone()
        return 0 if row is None else row[0]


# KEYS[1]: the key's counter; ARGV: n, budget (-1: none). Redis runs a script atomically.
CHARGE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local n, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
if budget >= 0 and used + n > budget then return {0, used} end
return {1, redis.call('INCRBY', KEYS[1], n)}
"""


class RedisLedger:
    """Counts on a Redis server (redis://HOST:PORT/DB), one counter per key, charged by a Lua
    script. What survives a crash of Redis itself is Redis's persistence setting (appendonly
    yes with appendfsync always loses nothing)."""

    def __init__(self, url, prefix="adversarial:usage:"):
        try:
            import redis
        except ImportError:
            raise LedgerError("a redis:// ledger needs the redis client: pip install "
                              "redis") from None
        self.redis, self.prefix = redis.Redis.from_url(url), prefix
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise LedgerError(f"cannot reach the Redis ledger at {url}: {exc}") from None
        self.script = self.redis.register_script(CHARGE)

    def charge(self, kid, n, budget):
        ok, used = self.script(keys=[self.prefix + kid], args=[n, -1 if budget is None
                                                               else budget])
        if not ok:
            raise BudgetSpent(int(used), n)
        return int(used)

    def used(self, kid):
        return int(self.redis.get(self.prefix + kid) or 0)


def open_ledger(where):
    """The ledger named by `where`: "memory", a redis:// URL, or an SQLite file's path."""
    if where == "memory":
        return MemoryLedger()
    if where.startswith(("redis://", "rediss://", "unix://")):
        return RedisLedger(where)
    return SQLiteLedger(where)

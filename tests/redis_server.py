"""A real redis-server on a free loopback port, for the tests of the Redis ledger (Debian's
`redis-server`, which .ci/run installs); the tests that need it skip, saying why, without it."""
import shutil
import socket
import subprocess
import time

import pytest


def redis_url(tmp_path):
    """Start redis-server in `tmp_path` (appendonly, fsync always: a counter it acknowledged
    survives its own crash too); returns (URL, the process to stop)."""
    pytest.importorskip("redis", reason="the Redis ledger needs the redis client (pip)")
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server: apt-get install redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                "--dir", str(tmp_path), "--save", "", "--appendonly", "yes",
                                "--appendfsync", "always"], stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0", process

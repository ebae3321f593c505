"""Tests for the API's client (web/client.py): every way a server can fail it is one ApiError
sentence, a POST that the server may have counted is never sent again, what cannot have been
counted (a refused connection, a 503) is, and a batch over the server's advertised body limit
is split until each request fits.

The failing servers are raw sockets that misbehave on purpose; the splitting runs against a
real server (test_serve's)."""
import json
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette")

from nn import reference_cnn  # noqa: E402
from test_serve import INFO, KEY, Server  # noqa: E402
from web.api import Keys, Limits, Served, make_app  # noqa: E402
from web.client import ApiError, ApiOracle  # noqa: E402

LIMITS = b'{"models": [], "limits": {"max_body": 4000000, "max_batch": 1000}}'
IMAGES = np.full((3, 1, 28, 28), 0.5, dtype=np.float32)


def answer(status, body=b"", headers=""):
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class FakeServer:
    """A loopback socket that answers GET /api/v1/models with the limits and each POST with
    `behave(n)` (n: the POSTs so far): bytes to send, "freeze" or "reset"."""

    def __init__(self, behave):
        self.behave, self.posts = behave, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn):
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), 0))
        while len(body) < length:
            body += conn.recv(65536)
        if head.startswith(b"GET"):
            conn.sendall(answer("200 OK", LIMITS))
        else:
            self.posts += 1
            what = self.behave(self.posts)
            if what == "freeze":
                time.sleep(5)
            elif what == "reset":  # SO_LINGER 0: close with a reset
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
            else:
                conn.sendall(what)
        conn.close()

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("behave, fragment", [
    (lambda n: "freeze", "did not answer within 1 s"),
    (lambda n: "reset", "broke"),
    (lambda n: answer("200 OK", b"<html>oops</html>"), "not JSON"),
    (lambda n: answer("200 OK", b'{"labels": [1, 2, 3]}')[:-10], "truncated"),
    (lambda n: answer("500 Internal Server Error", b"Internal Server Error"), "answered 500"),
    (lambda n: answer("400 Bad Request", b'{"error": "no"}'), "answered 400: no"),
], ids=["frozen", "reset", "not-json", "truncated", "500", "400"])
def test_every_failure_is_one_sentence_and_a_counted_post_is_not_resent(behave, fragment):
    server = FakeServer(behave)
    oracle = ApiOracle(server.url, KEY, timeout=1, retries=5)
    start = time.perf_counter()
    with pytest.raises(ApiError) as err:
        oracle(IMAGES)
    server.close()
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert server.posts == 1 and time.perf_counter() - start < 3  # sent once, one timeout


def test_a_refused_connection_and_a_503_are_sent_again():
    server = FakeServer(lambda n: answer("503 Service Unavailable", b'{"error": "busy"}',
                                         "Retry-After: 0\r\n") if n < 3
                        else answer("200 OK", b'{"labels": [4, 5, 6]}'))
    assert ApiOracle(server.url, KEY)(IMAGES).tolist() == [4, 5, 6] and server.posts == 3
    server.close()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(ApiError, match="connection refused"):
        ApiOracle(f"http://127.0.0.1:{port}", KEY, retries=2)(IMAGES)


def test_a_batch_over_the_body_limit_is_split_until_it_fits():
    """100 images in one call, a server that takes 200 kB bodies (about 30 images as JSON):
    the client splits, the server counts all 100 (the old client sent 250 images a request and
    took a 413 for 'cannot reach', after resending it five times)."""
    model = reference_cnn(rng=np.random.default_rng(3)).eval()
    server = Server(make_app({"standard": Served(model, INFO)}, keys=Keys.of([KEY]),
                             limits=Limits(max_body=200_000)))
    try:
        x = np.random.default_rng(0).uniform(0, 1, (100, 1, 28, 28)).astype(np.float32)
        oracle = ApiOracle(server.url, KEY, batch=1000)
        labels = oracle(x)
        assert labels.shape == (100,) and oracle.queries == 100 and oracle.usage() == 100
        assert json.dumps(oracle.limits) == json.dumps({"max_body": 200000, "max_batch": 1000})
    finally:
        server.stop()

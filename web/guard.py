"""What keeps one client from stalling the rest, below the routes of web/api.py.

- GuardedH11: uvicorn's HTTP/1.1 protocol with the two bounds it lacks. A connection past
  `max_connections` is answered 503 at once and closed (before the process runs out of file
  descriptors), and a connection that has no request in progress `deadline` seconds after it
  opened or after its last answer (headers sent a byte at a time, an idle keep-alive, a body
  still dribbling in after its refusal) is closed. Once a request's headers are in, the app
  bounds the rest (the body's deadline, the queues).
- Guard: ASGI middleware that refuses a Host header the server does not answer to (DNS
  rebinding: a page on another site that resolves its own name to 127.0.0.1) and adds the
  security headers to every answer.
- RateLimit: a token bucket per client address, for the page's unmetered white-box route.

uvicorn builds one protocol object per connection from its Config; the two bounds travel as
the Config's attributes `max_connections` and `deadline` (set by serve.py), so that they reach
worker processes with the pickled Config.
"""
import json
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def json_error(status, message, retry_after=None):
    """(ASGI headers, body) of a refusal: one sentence of JSON."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    return headers, body


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol, with a cap on open connections and a deadline per request."""

    def connection_made(self, transport):
        super().connection_made(transport)
        self.expiry = None
        if len(self.connections) > getattr(self.config, "max_connections", 1000):
            headers, body = json_error(503, "the server has too many open connections; try "
                                            "again shortly", retry_after=1)
            head = b"".join(k + b": " + v + b"\r\n" for k, v in headers)
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\n" + head +
                            b"connection: close\r\n\r\n" + body)
            transport.close()
            return
        self.arm()

    def arm(self):
        if self.expiry is not None:
            self.expiry.cancel()
        self.expiry = self.loop.call_later(getattr(self.config, "deadline", 10.0), self.expire)

    def expire(self):
        busy = self.cycle is not None and not self.cycle.response_complete
        if busy:  # the app runs this request and bounds it itself: look again later
            self.arm()
        elif not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self):
        super().on_response_complete()
        if not self.transport.is_closing():
            self.arm()

    def connection_lost(self, exc):
        if getattr(self, "expiry", None) is not None:
            self.expiry.cancel()
        super().connection_lost(exc)


class Guard:
    """ASGI middleware: a 400 for a Host header outside `hosts` ("*": any), and the security
    headers on every answer."""

    def __init__(self, app, hosts):
        self.app, self.hosts = app, {h.lower() for h in hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if "*" not in self.hosts and name not in self.hosts:
            headers, body = json_error(400, f"this server does not answer to the host "
                                            f"{host[:60]!r}; use {sorted(self.hosts)[0]}")
            await send({"type": "http.response.start", "status": 400,
                        "headers": headers + SECURITY_HEADERS})
            return await send({"type": "http.response.body", "body": body})

        async def secured(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)
        await self.app(scope, receive, secured)


class RateLimit:
    """A token bucket per client address: `rate` requests a second, bursts of `burst`.
    `wait(address)` takes a token and returns 0, or the seconds until one is free."""

    def __init__(self, rate, burst, clients=10_000):
        self.rate, self.burst, self.clients, self.buckets = rate, burst, clients, {}

    def wait(self, address, now=None):
        now = time.monotonic() if now is None else now
        tokens, then = self.buckets.pop(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if len(self.buckets) >= self.clients:  # forget the longest-unseen client (dicts keep
            del self.buckets[next(iter(self.buckets))]  # insertion order; pop re-inserts)
        if tokens < 1:
            self.buckets[address] = (tokens, now)
            return (1 - tokens) / self.rate
        self.buckets[address] = (tokens - 1, now)
        return 0.0

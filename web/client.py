"""A client of serve.py's prediction API, on the standard library alone (urllib).

`ApiOracle` is a model behind the API seen as a LabelOracle (output="label": host images in,
labels out) or as a ScoreOracle (output="scores": probabilities), so that the attacks of
attacks/ run over HTTP unchanged. It counts every image in `queries` and turns the server's 429
into QueryBudgetExceeded; `usage()` is the server's own count, the one an attack reports.

Each request stays within the limits the server advertises (GET /api/v1/models): at most
`max_batch` images, and a body under `max_body` bytes (a batch whose JSON would pass it is
split in two until it fits; pixels are rounded to 6 decimals to keep the JSON small). Only what
cannot have been counted is sent again: a connection refused before anything was sent, and a
503 (the server refuses before it charges), after its Retry-After. A POST that timed out or
whose connection broke is never resent, since the server may have charged it. Every failure is
an ApiError of one sentence.
"""
import http.client
import json
import time
import urllib.error
import urllib.request

import numpy as np

from attacks.blackbox import QueryBudgetExceeded


def pixels(images):
    """Host images (N, 1, 28, 28) as nested lists of numbers rounded to 6 decimals, in float64
    first: a float32 such as 0.3 would otherwise print as 0.30000001192092896."""
    return np.round(np.asarray(images, dtype=np.float64).reshape(-1, 28, 28), 6).tolist()


class ApiError(Exception):
    """The API answered an error, or could not be reached (one sentence)."""


class ApiOracle:
    def __init__(self, url, key, model="standard", output="label", budget=None, batch=250,
                 timeout=120, retries=5):
        if output not in ("label", "scores"):
            raise ValueError(f"ApiOracle: output must be 'label' or 'scores', got {output!r}")
        self.url, self.key, self.model, self.batch, self.timeout = (url.rstrip("/"), key, model,
                                                                     batch, timeout)
        self.answer = output
        self.output = "probs" if output == "scores" else "labels"  # what Square reads
        self.budget, self.queries, self.retries = budget, 0, retries
        self.limits = None

    def _send(self, path, data):
        """The JSON answer to one request (data: the body's bytes, None for a GET)."""
        request = urllib.request.Request(self.url + path, data=data, headers={
            "X-API-Key": self.key, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read())["error"]
            except (ValueError, KeyError, TypeError, OSError, http.client.HTTPException):
                message = f"HTTP {err.code}"
            if err.code == 429:
                raise QueryBudgetExceeded(f"the API refused: {message}") from None
            if err.code == 503:
                raise Busy(err.headers.get("Retry-After"), message) from None
            raise ApiError(f"{self.url}{path} answered {err.code}: {message}") from None
        except ValueError:
            raise ApiError(f"{self.url}{path} answered something that is not JSON") from None
        except http.client.IncompleteRead:
            raise ApiError(f"{self.url}{path} sent a truncated answer") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, ConnectionRefusedError):
                raise Refused(f"cannot reach {self.url}: connection refused") from None
            raise ApiError(f"cannot reach {self.url}: {err.reason}") from None
        except TimeoutError:
            raise ApiError(f"{self.url}{path} did not answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as err:
            raise ApiError(f"the connection to {self.url} broke: "
                           f"{type(err).__name__} {err}".rstrip()) from None

    def _request(self, path, body=None):
        """_send, again after what could not have been counted (a refused connection, a 503),
        waiting longer each time; the last failure as ApiError."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            try:
                return self._send(path, data)
            except (Refused, Busy) as err:
                if attempt == self.retries:
                    raise ApiError(str(err)) from None
                time.sleep(err.wait if isinstance(err, Busy) else 0.1 * 2 ** attempt)

    def _limits(self):
        if self.limits is None:
            self.limits = self._request("/api/v1/models").get("limits", {})
        return self.limits

    def _ask(self, images):
        """Labels or scores of host images, in one request if its body fits, else in two."""
        body = {"images": pixels(images), "model": self.model, "output": self.answer}
        if len(images) > 1 and len(json.dumps(body)) > self._limits().get("max_body", 1e30):
            half = len(images) // 2
            return [*self._ask(images[:half]), *self._ask(images[half:])]
        r = self._request("/api/v1/predict", body)
        self.queries += len(images)
        return [np.asarray(r["labels"], dtype=np.int64) if self.answer == "label"
                else np.asarray(r["scores"], dtype=np.float64)]

    def __call__(self, images, ids=None):
        """Labels (N,) int64, or probabilities (N, 10), of host images (N, 1, 28, 28)."""
        images = np.asarray(images)
        n = len(images)
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(f"the attack may ask about {self.budget} images; "
                                      f"{self.queries} were asked already, {n} more would pass")
        batch = min(self.batch, self._limits().get("max_batch", self.batch))
        out = []
        for start in range(0, n, batch):
            out += self._ask(images[start:start + batch])
        return np.concatenate(out)

    def usage(self):
        """The server's count of this key's queries."""
        return self._request("/api/v1/usage")["queries"]


class Refused(ApiError):
    """Nothing was sent: safe to send again."""


class Busy(ApiError):
    """The server answered 503 before charging anything: safe to send again after `wait`."""

    def __init__(self, retry_after, message):
        super().__init__(f"the API is busy: {message}")
        try:
            self.wait = min(30.0, max(0.0, float(retry_after)))
        except (TypeError, ValueError):
            self.wait = 1.0

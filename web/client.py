"""A client of serve.py's prediction API, on the standard library alone (urllib).

`ApiOracle` is a model behind the API seen as a LabelOracle (output="label": host images in,
labels out) or as a ScoreOracle (output="scores": probabilities), so that the attacks of
attacks/ run over HTTP unchanged. It sends up to `batch` images a request (pixels rounded to 6
decimals to keep the JSON small), counts every image in `queries`, and turns the server's 429
into QueryBudgetExceeded; `usage()` is the server's own count, the one an attack reports. A
request whose connection fails is sent again (up to `retries` times, waiting longer each time),
as any client of a busy API would; the server may then have counted the lost one too.
"""
import json
import time
import urllib.error
import urllib.request

import numpy as np

from attacks.blackbox import QueryBudgetExceeded


def pixels(images):
    """Host images (N, 1, 28, 28) as nested lists of numbers rounded to 6 decimals, in float64
    first: a float32 such as 0.3 would otherwise print as 0.30000001192092896, and 250 images
    would pass serve.py's 4 MB body limit."""
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

    def _request(self, path, body=None):
        """The JSON answer to one request, sent again on a failed connection; an HTTP error
        becomes ApiError (QueryBudgetExceeded for 429), a connection that keeps failing too."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={
            "X-API-Key": self.key, "Content-Type": "application/json"})
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                try:
                    message = json.loads(err.read())["error"]
                except (ValueError, KeyError):
                    message = f"HTTP {err.code}"
                if err.code == 429:
                    raise QueryBudgetExceeded(f"the API refused: {message}") from None
                raise ApiError(f"{self.url}{path} answered {err.code}: {message}") from None
            except (urllib.error.URLError, OSError) as err:
                if attempt == self.retries:
                    raise ApiError(f"cannot reach {self.url}: "
                                   f"{getattr(err, 'reason', err)}") from None
                time.sleep(0.1 * 2 ** attempt)

    def __call__(self, images, ids=None):
        """Labels (N,) int64, or probabilities (N, 10), of host images (N, 1, 28, 28)."""
        images = np.asarray(images)
        n = len(images)
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(f"the attack may ask about {self.budget} images; "
                                      f"{self.queries} were asked already, {n} more would pass")
        out = []
        for start in range(0, n, self.batch):
            part = pixels(images[start:start + self.batch])
            r = self._request("/api/v1/predict", {"images": part, "model": self.model,
                                                  "output": self.answer})
            self.queries += len(part)
            out.append(np.asarray(r["labels"], dtype=np.int64) if self.answer == "label"
                       else np.asarray(r["scores"], dtype=np.float64))
        return np.concatenate(out)

    def usage(self):
        """The server's count of this key's queries."""
        return self._request("/api/v1/usage")["queries"]

"""Tests for serve.py's API (web/api.py): a real uvicorn server on an ephemeral loopback port,
asked through urllib as any client would.

Predictions equal the model's own, PNG and lists give the same answer, budgets are exact (also
under 8 concurrent clients), every malformed request gets a 4xx and one sentence of JSON while
the server keeps serving, and the attack endpoint returns what the page draws.
"""
import base64
import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from PIL import Image  # noqa: E402

from attacks import predict  # noqa: E402
from data.mnist import load_mnist  # noqa: E402
from nn import reference_cnn  # noqa: E402
from web.api import Served, make_app  # noqa: E402

BUDGET = 50


class Server:
    """A uvicorn server of `app` in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.02)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


def call(url, path, body=None, key="free", method=None, raw=None):
    """(status, JSON answer) of one request; body is sent as JSON, raw as bytes."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **({"X-API-Key": key} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def images():
    x, t = load_mnist("test", limit=40)
    return x, t


@pytest.fixture(scope="module")
def model():
    return reference_cnn(rng=np.random.default_rng(3)).eval()


@pytest.fixture(scope="module")
def server(model):
    info = {"what": "random weights", "eps": 0.3, "clean": 0.1, "fgs": 0.0, "pgd20": 0.0,
            "robust": 0.0}
    app = make_app({"standard": Served(model, info)}, keys=["free", "capped"], budget=None,
                   max_body=1_000_000, max_batch=64)
    capped = make_app({"standard": Served(model, info)}, keys=["a", "b"], budget=BUDGET)
    servers = Server(app), Server(capped)
    yield servers
    for s in servers:
        s.stop()


def png(image):
    out = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_predictions_are_the_models_own(server, images, model):
    x, _ = images
    url = server[0].url
    status, r = call(url, "/api/v1/predict", {"images": x[:, 0].tolist()})
    assert status == 200 and r == {"labels": predict(model, x).tolist()}
    status, r = call(url, "/api/v1/predict", {"images": x.tolist(), "output": "scores"})
    scores = np.array(r["scores"])
    assert status == 200 and scores.shape == (40, 10)
    np.testing.assert_allclose(scores.sum(axis=1), 1, atol=1e-9)
    assert r["labels"] == scores.argmax(axis=1).tolist() == predict(model, x).tolist()
    status, r2 = call(url, "/api/v1/predict", {"images": x.tolist(), "output": "scores2"})
    np.testing.assert_array_equal(r2["scores"], np.round(scores, 2))
    # PNG holds 8-bit pixels: the same images, rounded to 1/255
    rounded = np.round(x * 255) / 255
    status, r3 = call(url, "/api/v1/predict", {"png": [png(i[0]) for i in x], "output": "scores"})
    assert status == 200
    np.testing.assert_allclose(r3["scores"], call(url, "/api/v1/predict", {
        "images": rounded.tolist(), "output": "scores"})[1]["scores"], atol=1e-6)


def test_budgets_count_every_image_and_refuse_whole_requests(server, images):
    x, _ = images
    url = server[1].url
    assert call(url, "/api/v1/predict", {"images": x[:30].tolist()}, key="a")[0] == 200
    status, r = call(url, "/api/v1/predict", {"images": x[:25].tolist()}, key="a")
    assert status == 429 and r == {"error": f"the key's budget of {BUDGET} queries is spent: "
                                            "30 used, 25 more asked"}
    assert call(url, "/api/v1/usage", key="a") == (200, {"key": "a", "queries": 30,
                                                         "budget": BUDGET, "remaining": 20})
    assert call(url, "/api/v1/predict", {"images": x[:20].tolist()}, key="a")[0] == 200
    assert call(url, "/api/v1/predict", {"images": x[:1].tolist()}, key="a")[0] == 429
    assert call(url, "/api/v1/usage", key="a")[1]["remaining"] == 0


def test_counts_are_exact_under_eight_concurrent_clients(server, images):
    """8 clients of key "b" each send 1- to 3-image requests until refused: the images answered
    add up to exactly the budget and to the server's count."""
    x, _ = images
    url, answered, lock = server[1].url, [], threading.Lock()

    def client(seed):
        rng, mine = np.random.default_rng(seed), 0
        while True:
            n = int(rng.integers(1, 4))
            status, _ = call(url, "/api/v1/predict", {"images": x[:n].tolist()}, key="b")
            if status == 429:
                break
            assert status == 200
            mine += n
        with lock:
            answered.append(mine)
    threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    usage = call(url, "/api/v1/usage", key="b")[1]
    assert len(answered) == 8 and sum(answered) == usage["queries"]
    assert BUDGET - 2 <= usage["queries"] <= BUDGET  # the last refusal asked for up to 3


NAN = b'{"images": [[' + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]]}"
GOOD = [[[0.5] * 28] * 28]
BAD = [  # (json body or raw bytes, key, status, a fragment of the sentence)
    (b"{not json", "free", 400, "not valid JSON"),
    (b"[1, 2]", "free", 400, "must be a JSON object"),
    ({}, "free", 400, "exactly one of"),
    ({"images": GOOD, "png": ["x"]}, "free", 400, "exactly one of"),
    ({"images": [[[0.5] * 27] * 28]}, "free", 400, "must be N x 28 x 28"),
    ({"images": [[0.5] * 28] * 28}, "free", 400, "must be N x 28 x 28"),
    ({"images": [[["a"] * 28] * 28]}, "free", 400, "numbers only"),
    ({"images": [[[True] * 28] * 28]}, "free", 400, "numbers only"),
    ({"images": [[[0.5] * 28] * 27 + [[0.5] * 3]]}, "free", 400, "numbers only"),
    ({"images": "0.5"}, "free", 400, "numbers only"),
    (NAN, "free", 400, "NaN or infinite"),
    (NAN.replace(b"NaN", b"Infinity"), "free", 400, "NaN or infinite"),
    ({"images": [[[1.5] * 28] * 28]}, "free", 400, "must lie in [0, 1]"),
    ({"images": [[[-0.1] * 28] * 28]}, "free", 400, "must lie in [0, 1]"),
    ({"images": GOOD * 65}, "free", 413, "at most 64 images"),
    ({"png": ["bm90IGEgcG5n"]}, "free", 400, "png[0] is not a base64 28x28 PNG"),
    ({"png": ["%%%"]}, "free", 400, "png[0] is not a base64 28x28 PNG"),
    ({"png": [png(np.zeros((10, 10)))]}, "free", 400, "png[0] is not a base64 28x28"),
    ({"png": []}, "free", 400, "non-empty list"),
    ({"images": GOOD, "model": "nine"}, "free", 404, "no model 'nine'"),
    ({"images": GOOD, "output": "logits"}, "free", 400, "\"output\" must be one of"),
    ({"images": GOOD}, None, 401, "X-API-Key"),
    ({"images": GOOD}, "stolen", 403, "unknown API key"),
]


@pytest.mark.parametrize("body, key, status, fragment", BAD)
def test_every_malformed_request_is_a_4xx_with_one_sentence(server, body, key, status, fragment):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, r = call(server[0].url, "/api/v1/predict", raw=raw, key=key)
    assert (got, list(r)) == (status, ["error"]) and fragment in r["error"], r
    assert "\n" not in r["error"] and "Traceback" not in r["error"]
    assert call(server[0].url, "/api/v1/predict", {"images": GOOD})[0] == 200  # still serving


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    """A Content-Length over --max-body gets 413 at once, without the body being read (the
    client here announces 2 MB and sends 2 bytes, so that it is not still writing when the
    server answers)."""
    request = urllib.request.Request(server[0].url + "/api/v1/predict", data=b"{}", headers={
        "X-API-Key": "free", "Content-Type": "application/json", "Content-Length": "2000000"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 413
    assert json.loads(err.value.read()) == {"error": "the body is larger than 1000000 bytes"}
    assert call(server[0].url, "/api/v1/predict", {"images": GOOD})[0] == 200


@pytest.mark.parametrize("path, body, method, status, fragment", [
    ("/api/v1/predict", None, "GET", 405, "Method Not Allowed"),
    ("/api/v1/nowhere", None, "GET", 404, "Not Found"),
    ("/api/v1/attack", {"image": GOOD[0], "attack": "cw"}, "POST", 400, "\"attack\" must be"),
    ("/api/v1/attack", {"image": GOOD[0], "eps": 2}, "POST", 400, "\"eps\" must be a number"),
    ("/api/v1/attack", {"image": GOOD[0], "eps": "0.1"}, "POST", 400, "\"eps\" must be"),
    ("/api/v1/attack", {"image": GOOD[0], "attack": "targeted_pgd", "target": 10}, "POST", 400,
     "\"target\" must be one of"),
    ("/api/v1/attack", {"image": GOOD}, "POST", 400, "\"image\" must be 28 x 28"),
    ("/api/v1/attack", {}, "POST", 400, "give the image"),
])
def test_other_bad_requests_are_4xx_too(server, path, body, method, status, fragment):
    got, r = call(server[0].url, path, body, method=method)
    assert got == status and fragment in r["error"], r


@pytest.mark.parametrize("attack", ["fgs", "fgv", "pgd", "targeted_pgd"])
def test_the_attack_endpoint_returns_what_the_page_draws(server, images, attack):
    x, _ = images
    status, r = call(server[0].url, "/api/v1/attack", {"image": x[0, 0].tolist(),
                                                       "attack": attack, "eps": 0.2,
                                                       "target": 3})
    assert status == 200
    adv, delta = np.array(r["adversarial"]), np.array(r["perturbation"])
    assert adv.shape == delta.shape == (28, 28) and adv.min() >= 0 and adv.max() <= 1
    np.testing.assert_allclose(delta, adv - x[0, 0], atol=1e-6)
    if attack != "fgv":  # FGV's step is alpha * grad / max|grad|, eps bounds it too
        assert np.abs(delta).max() <= 0.2 + 1e-6
    assert np.abs(delta).max() > 0.01
    assert r["label_before"] == int(np.argmax(r["probs_before"]))
    assert abs(sum(r["probs_after"]) - 1) < 1e-6
    assert call(server[0].url, "/api/v1/usage")[1]["queries"] >= 0  # attacks are not counted


def test_models_and_seeds_for_the_page(server):
    status, r = call(server[0].url, "/api/v1/models", key=None)
    assert status == 200 and r["page_key"] == "free" and r["models"][0]["name"] == "standard"
    assert call(server[0].url, "/api/v1/seeds", key=None) == (200, {"seeds": []})

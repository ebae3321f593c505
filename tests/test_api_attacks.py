"""Attacks over the wire: HopSkipJump, Square and the substitute attack through serve.py's API.

A real server on a loopback port serves a shipped model built by models.build (the tiny one of
test_models); the attacks ask it through web/client.py (urllib), and the count they report is
the server's, equal to what the client sent.
"""
import json

import numpy as np
import pytest

pytest.importorskip("starlette")

import models  # noqa: E402
from attacks import LabelOracle, hopskipjump, square  # noqa: E402
from data.mnist import load_mnist  # noqa: E402
from nn import predict  # noqa: E402
from test_serve import Server  # noqa: E402
from web.api import Keys, Served, make_app  # noqa: E402
from web.client import ApiError, ApiOracle  # noqa: E402

K, SPARE = "attacker-key-000000", "spare-key-000000000"


@pytest.fixture(scope="module")
def api(tiny):
    model, _, _ = models.load("tiny")
    server = Server(make_app({"tiny": Served(model, {})}, keys=Keys.of([K, SPARE])))
    yield server.url, model
    server.stop()


def test_hopskipjump_over_http_counts_what_the_server_counts(api):
    url, model = api
    x, t = load_mnist("test", limit=20)
    i = int(np.flatnonzero(predict(model, x) == t)[0])
    remote, local = ApiOracle(url, SPARE, model="tiny"), LabelOracle(model)
    before = remote.usage()
    adv, trace = hopskipjump(remote, x[i], int(t[i]), "l2", 300, np.random.default_rng(0))
    assert remote.usage() - before == remote.queries <= 300 and trace[-1][0] <= remote.queries
    assert predict(model, adv[None])[0] != t[i]
    _, local_trace = hopskipjump(local, x[i], int(t[i]), "l2", 300, np.random.default_rng(0))
    assert trace[0][0] == local_trace[0][0]  # the same start, asked the same way


def test_square_runs_over_http_on_scores(api):
    url, model = api
    x, t = load_mnist("test", limit=6)
    oracle = ApiOracle(url, SPARE, model="tiny", output="scores")
    before = oracle.usage()
    adv = square(oracle, x, t, 0.3, n_queries=30, rng=np.random.default_rng(0))
    assert oracle.usage() - before == oracle.queries > 0
    assert np.abs(adv - x).max() <= 0.3 + 1e-6


def test_attack_py_decision_over_the_api(api, cli, tmp_path):
    url, _ = api
    code, out, err = cli("decision", "--model", "tiny", "--api", url, "--api-key", K,
                         "--images", 6, "--budgets", 50, 150, "--out", tmp_path)
    assert code == 0, err
    r = json.loads((tmp_path / "decision.json").read_text())
    assert r["api"] == url and r["queries_counted"] <= r["images"] * 2 * 150
    assert r["queries_counted"] == ApiOracle(url, K).usage()  # the server's count
    for norm in ("l2", "linf"):
        curve = r["hopskipjump"][norm]
        assert len(curve) == 2 and curve[1] <= curve[0]
    within = r["within_eps"]["hopskipjump"]  # shares of images, growing with the budget
    assert r["within_eps"]["eps"] == 0.3 and 0 <= within[0] <= within[1] <= 1
    assert "queries counted by the server" in out
    assert (tmp_path / "decision.png").read_bytes().startswith(b"\x89PNG")


def test_attack_py_blackbox_over_the_api(api, cli, tmp_path):
    url, _ = api
    before = ApiOracle(url, SPARE).usage()
    code, out, err = cli("blackbox", "--model", "tiny", "--api", url, "--api-key", SPARE,
                         "--images", 10, "--budgets", 20, 40, "--methods", "random",
                         "--substitute-steps", 3, "--out", tmp_path)
    assert code == 0, err
    rows = json.loads((tmp_path / "blackbox.json").read_text())["rows"]
    assert [r["queries"] for r in rows] == [20, 40]  # counted by the server
    assert ApiOracle(url, SPARE).usage() - before == 40


def test_an_unreachable_api_is_one_sentence(cli, tiny, tmp_path):
    code, out, err = cli("decision", "--model", "tiny", "--api", "http://127.0.0.1:9",
                         "--api-key", K, "--images", 2, "--out", tmp_path)
    assert code == 1 and "cannot reach http://127.0.0.1:9" in err and err.count("\n") == 1
    with pytest.raises(ApiError):
        ApiOracle("http://127.0.0.1:9", K).usage()


def test_decision_says_in_one_sentence_when_the_budget_runs_out(tiny, cli, tmp_path):
    """A metered server refuses the key past its budget: attack.py decision ends in one sentence
    that says what was kept, and a key with queries left goes on from there."""
    model, _, _ = models.load("tiny")
    server = Server(make_app({"tiny": Served(model, {})}, keys=Keys.of([K, SPARE]), budget=400,
                             page=False))
    argv = ("decision", "--model", "tiny", "--api", server.url, "--images", 6, "--budgets", 50,
            150, "--out", tmp_path)
    try:
        code, out, err = cli(*argv, "--api-key", K)
        runs = len((tmp_path / "decision.csv").read_text().splitlines()) // 2
        assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("attack.py decision: error: the API refused: the key's budget of "
                              "400 queries is spent")
        assert f"keeps the {runs} run" in err and "a key that has queries left" in err
        code, out, err = cli(*argv, "--api-key", SPARE)
        assert f"continuing: {runs} runs" in out
    finally:
        server.stop()


def test_decision_continues_an_interrupted_run(api, cli, tmp_path, monkeypatch):
    """Interrupted after its first image (the attack raises KeyboardInterrupt on the second),
    the same command continues from the CSV written after each image: the finished run has
    every image, and the first one's rows were not measured again."""
    import experiments.hopskipjump as decision
    url, _ = api
    argv = ("decision", "--model", "tiny", "--api", url, "--api-key", K, "--images", 6,
            "--budgets", 40, 80, "--norms", "l2", "--out", tmp_path)
    real, calls = decision.hopskipjump, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(decision, "hopskipjump", interrupted)
    code, out, err = cli(*argv)
    assert code == 130
    first = (tmp_path / "decision.csv").read_text()
    assert first.count("\n") == 3  # the header and image 0's two budgets
    monkeypatch.setattr(decision, "hopskipjump", real)
    code, out, err = cli(*argv)
    assert code == 0, err
    assert "continuing: 1 runs" in out
    rows = (tmp_path / "decision.csv").read_text()
    assert rows.startswith(first) and rows.count("\n") == 1 + 2 * json.loads(
        (tmp_path / "decision.json").read_text())["images"]


def test_a_full_batch_of_float32_images_stays_far_below_the_body_limit():
    from web.client import pixels
    images = np.random.default_rng(0).uniform(0, 1, (250, 1, 28, 28)).astype(np.float32)
    body = json.dumps({"images": pixels(images), "model": "standard", "output": "label"})
    assert len(body) < 2_500_000  # serve.py's default limit is 4,000,000 bytes
    np.testing.assert_allclose(np.array(json.loads(body)["images"])[:, None], images, atol=5e-7)

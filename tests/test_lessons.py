"""Tests for web/lessons.py: the page's lessons follow the measurements in results/page/flips.json,
a lesson whose claim the measurements contradict is refused, the verdicts say what the page says,
and `measure` records what Served.attack answers.
"""
import copy
import json
import re

import numpy as np
import pytest

pytest.importorskip("starlette")

from data.mnist import load_mnist  # noqa: E402
from nn import reference_cnn  # noqa: E402
from web import lessons as L  # noqa: E402
from web.api import Served  # noqa: E402
from web.shipped import seed_digits  # noqa: E402


@pytest.fixture(scope="module")
def flips():
    return json.loads(L.FLIPS.read_text())


def test_the_page_lessons_follow_the_measurements(flips):
    """web/static/lessons.json is what `lessons` writes from results/page/flips.json: a caption
    cannot fall behind the file (rerun python -m web.lessons)."""
    assert json.loads(L.LESSONS.read_text()) == L.lessons(flips)


def test_the_lessons_quote_the_measured_numbers(flips):
    t = L.Table(flips)
    first = t.first_fooled("standard", "fgs")
    tiny = next(x for x in L.lessons(flips) if x["id"] == "tiny-step")
    assert f"first at eps {min(first):.2f}-{max(first):.2f}" in tiny["numbers"]
    assert tiny["expect"] == {"standard": L.FOOLED, "adversarial": L.RIGHT, "pgd": L.RIGHT,
                              "ibp": L.RIGHT}
    six = t.pos(6)
    assert flips["models"]["standard"]["fgs"][six][L.GRID.index(0.12)] != 4


@pytest.mark.parametrize("lesson, model, attack", [("tiny-step", "pgd", "fgs"),
                                                   ("masking", "adversarial", "pgd")])
def test_a_lesson_the_measurements_contradict_is_refused(flips, lesson, model, attack):
    """Had the PGD-trained model read the 4 as an 8 under FGS at 0.12 (or the FGS-trained one
    held under PGD), the lesson would say what the models do not: lessons() refuses it."""
    changed = copy.deepcopy(flips)
    six, at = L.Table(flips).pos(6), L.GRID.index(0.12)
    changed["models"][model][attack][six][at] = 4 if lesson == "masking" else 8
    with pytest.raises(ValueError, match=f"lesson '{lesson}' claims"):
        L.lessons(changed)


@pytest.mark.parametrize("model, eps", [("ibp", 0.3), ("pgd", 0.3), ("standard", 0.05)])
def test_a_proof_the_measurements_do_not_give_is_refused(flips, model, eps):
    """Had the bounds failed the IBP-trained model on the 4 at 0.3, or proved the PGD-trained
    model there, or the standard model anywhere, the 'proof' lesson would be false: refused."""
    changed = copy.deepcopy(flips)
    six, at = L.Table(flips).pos(6), L.GRID.index(eps)
    rows = changed["models"][model]["certified"]
    rows[six][at] = not rows[six][at]
    with pytest.raises(ValueError, match="lesson 'proof' claims"):
        L.lessons(changed)


def test_measure_records_the_certificates_as_the_bounds_give_them(flips):
    proof = next(x for x in L.lessons(flips) if x["id"] == "proof")
    assert proof["certified"] == {"standard": False, "adversarial": False, "pgd": False,
                                  "ibp": True}
    shares = {m: L.Table(flips).certified_share(m, 0.1) for m in flips["models"]}
    assert shares["ibp"] > shares["pgd"] == shares["standard"] == 0


@pytest.mark.parametrize("truth, before, after, said", [
    (4, 4, 8, L.FOOLED), (4, 4, 4, L.RIGHT), (9, 5, 9, L.WRONG), (9, 5, 3, L.WRONG),
    (None, 3, 3, L.RIGHT), (None, 3, 5, L.FOOLED)])
def test_the_verdict_is_against_the_true_label_or_the_models_own_answer(truth, before, after,
                                                                         said):
    assert L.verdict(truth, before, after) == said


def test_measure_records_what_the_page_is_answered(monkeypatch):
    model = reference_cnn(rng=np.random.default_rng(3)).eval()
    served = Served(model, {})
    x, t = load_mnist("test", limit=30)
    seeds = seed_digits(model, x, t, n=1)
    monkeypatch.setattr(L, "GRID", [0.0, 0.1])
    monkeypatch.setattr(L, "TARGETED_EPS", [0.3])
    got = L.measure({"m": served}, seeds)
    m = got["models"]["m"]
    image = np.asarray(seeds[0]["image"], dtype=np.float32)[None, None]
    assert m["clean"][0] == seeds[0]["read"] == m["fgs"][0][0]
    assert m["pgd"][0][1] == int(served.attack(image, "pgd", 0.1, None)[2].argmax())
    row = m["targeted_pgd"][0]
    assert row[seeds[0]["label"]] is None and sum(r is None for r in row) == 1
    assert row[(seeds[0]["label"] + 1) % 10] == [
        int(served.attack(image, "targeted_pgd", 0.3, (seeds[0]["label"] + 1) % 10)[2].argmax())]


def test_the_docs_quote_the_lessons_numbers(flips):
    """Every eps span and count in the lessons' numbers appears on the page's docs page."""
    section = (L.ROOT / "docs" / "page.md").read_text()
    quoted = set()
    for lesson in L.lessons(flips):
        quoted |= set(re.findall(r"\d\.\d\d-\d\.\d\d|\b\d+ of \d+\b", lesson["numbers"]))
    assert quoted and {q for q in quoted if q not in section} == set()

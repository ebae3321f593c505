"""A real-browser test of the page: headless Chromium (Debian's `chromium`) driven by Playwright.

It opens the page of a real server over the shipped models on a loopback port, at a laptop's
1280x900 and a phone's 390x844, and checks what a newcomer meets: the opening lesson's
verdicts on the first screen and no control past the viewport's right edge; each lesson button
changes the verdicts (and the proofs) as web/static/lessons.json (measured by web/lessons.py)
says; the slider and the attack recompute, and the perturbation panel changes with eps; the keyboard alone
reaches a verdict; a slow answer shows the busy state; a stopped server shows the banner and
marks the result stale; and no console error. Skipped, with the reason, where Playwright or
Chromium is missing (.ci/run installs Chromium). PAGE_SCREENSHOT=docs/page.png saves the
README's screenshots, the first screen at both sizes (docs/page.png and docs/page-phone.png).
"""
import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium")

import models  # noqa: E402
from test_serve import Server  # noqa: E402
from web.api import make_app  # noqa: E402
from web.lessons import LESSONS  # noqa: E402
from web.shipped import served_models  # noqa: E402

LAPTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
VERDICTS = "() => [...document.querySelectorAll('.verdict')].map((e) => e.textContent)"
PROOFS = "() => [...document.querySelectorAll('.proof')].map((e) => e.dataset.certified)"


@pytest.fixture(scope="module")
def shipped():
    """The shipped models and the page's seeds (the lessons were measured on them)."""
    return served_models(list(models.MODELS))


@pytest.fixture(scope="module")
def url(shipped):
    served, seeds = shipped
    server = Server(make_app(served, seeds=seeds))
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Page:
    """A page at `viewport` and the errors it logs (uncaught exceptions, console errors: a
    Content-Security-Policy violation, a failed load)."""

    def __init__(self, browser, url, viewport=LAPTOP):
        self.page = browser.new_page(viewport=viewport)
        self.errors = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.goto(url + "/")
        wait_for(self.page, "() => document.getElementById('results').dataset.shown", timeout=30)

    def shown(self):
        return json.loads(self.page.evaluate(
            "() => document.getElementById('results').dataset.shown || 'null'"))

    def verdicts(self):
        return self.page.evaluate(VERDICTS)


def lessons():
    return json.loads(LESSONS.read_text())


def wait_for(page, predicate, arg=None, timeout=20):
    """Poll a JavaScript function of `arg` until it is true. (Playwright's wait_for_function
    builds its predicate with eval, which the page's Content-Security-Policy forbids, as it
    should; page.evaluate is the browser's own evaluation, outside the page's CSP.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate, arg):
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.05)


def wait_shown(p, **settings):
    """Until the results shown are those of `settings` (seed, attack, eps, target)."""
    wait_for(p.page, """(want) => {
        const shown = JSON.parse(document.getElementById('results').dataset.shown || 'null');
        return shown && Object.entries(want).every(([k, v]) => shown[k] === v); }""", settings)


def pixels(page, selector):
    return page.evaluate("(s) => document.querySelector(s).toDataURL()", selector)


# the controls past the viewport's edges; the skip link sits off screen until it has the focus
OUTSIDE = """() => {
    const width = document.documentElement.clientWidth;
    const outside = [...document.querySelectorAll('button, select, input, canvas, a, output')]
      .filter((e) => !e.classList.contains('skip') && e.getClientRects().length)
      .filter((e) => { const r = e.getBoundingClientRect();
                       return r.left < -0.5 || r.right > width + 0.5; })
      .map((e) => e.id || e.className || e.tagName);
    return {width, scrolled: document.documentElement.scrollWidth, outside}; }"""


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["1280x900", "390x844"])
def test_the_first_screen_shows_the_lesson_and_every_control_fits(browser, url, viewport):
    p = Page(browser, url, viewport)
    first = lessons()[0]
    wait_shown(p, seed=first["seed"], attack=first["attack"], eps=first["eps"])
    assert p.verdicts() == list(first["expect"].values())
    assert p.page.inner_text("#lesson-caption") == first["caption"]
    bottoms = p.page.evaluate("() => [...document.querySelectorAll('.verdict')]"
                              ".map((e) => e.getBoundingClientRect().bottom)")
    assert max(bottoms) <= viewport["height"], bottoms  # seen without scrolling
    fit = p.page.evaluate(OUTSIDE)
    assert fit["outside"] == [] and fit["scrolled"] <= fit["width"] == viewport["width"], fit
    shot = os.environ.get("PAGE_SCREENSHOT")
    if shot:
        path = Path(shot)
        if viewport is PHONE:
            path = path.with_name(f"{path.stem}-phone{path.suffix}")
        p.page.screenshot(path=str(path))
    p.page.close()
    assert p.errors == []


def test_each_lesson_changes_the_verdicts_and_proofs_as_its_caption_says(browser, url):
    p = Page(browser, url)
    for lesson in lessons():
        p.page.click(f"[data-lesson='{lesson['id']}']")
        assert p.page.inner_text("#lesson-caption") == lesson["caption"]
        if lesson["seed"] is None:  # drawn by you: nothing is attacked until something is drawn
            wait_for(p.page, "() => !document.getElementById('results').dataset.shown")
            draw(p.page)
            wait_shown(p, seed=None, attack=lesson["attack"], eps=lesson["eps"])
            assert set(p.verdicts()) <= {"fooled", "still right"}, p.verdicts()
            assert p.page.get_attribute("[data-lesson='drawn']", "aria-pressed") == "true"
            continue
        wait_shown(p, seed=lesson["seed"], attack=lesson["attack"], eps=lesson["eps"],
                   target=lesson["target"])
        assert p.verdicts() == list(lesson["expect"].values()), lesson["id"]
        proofs = p.page.evaluate(PROOFS)
        if "certified" in lesson:  # the interval bounds' proof, as the lesson says
            assert proofs == [str(v).lower() for v in lesson["certified"].values()], proofs
        assert all(v in ("true", "false") for v in proofs), proofs
        assert p.page.get_attribute("[data-lesson='" + lesson["id"] + "']",
                                    "aria-pressed") == "true"
    p.page.close()
    assert p.errors == []


def draw(page):
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 40)
    page.mouse.down()
    for y in range(40, int(box["height"]) - 30, 15):
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + y)
    page.mouse.up()


def test_the_slider_and_the_attack_recompute_and_the_perturbation_deepens(browser, url):
    p = Page(browser, url)
    first = lessons()[0]
    wait_shown(p, seed=first["seed"], eps=first["eps"])
    card = "[data-model='standard']"
    before = {c: pixels(p.page, f"{card} .{c} canvas") for c in ("adversarial", "perturbation")}
    original = pixels(p.page, "#original")
    p.page.locator("#eps").fill("0.35")  # a range input: sets the value, fires "input"
    wait_shown(p, eps=0.35)
    assert p.page.inner_text("#eps-value") == "0.35"
    for c in before:  # FGS's perturbation is +-eps nearly everywhere: its colour must deepen
        assert pixels(p.page, f"{card} .{c} canvas") != before[c], c
    assert pixels(p.page, "#original") == original
    assert p.page.get_attribute("[data-lesson]", "aria-pressed") == "false"  # lesson left

    p.page.select_option("#attack", "targeted_pgd")
    assert p.page.is_visible("#target")
    p.page.select_option("#target", "3")
    wait_shown(p, attack="targeted_pgd", target=3)
    assert p.page.inner_text(f"{card} .reads").split("→ ")[1].startswith("3")
    p.page.close()
    assert p.errors == []


def test_the_misread_digit_is_judged_against_its_true_label(browser, url, shipped):
    """The seed the standard model gets wrong (a 9 it reads as 5): whatever the attack does to
    it, the standard model's verdict is that it was already wrong; the others, which read it
    right, are judged against the 9; and the true label is on the screen."""
    seed = next(s for s in shipped[1] if s["read"] != s["label"])
    p = Page(browser, url)
    p.page.click(f".seed[data-index='{seed['index']}']")
    p.page.locator("#eps").fill("0.3")
    wait_shown(p, seed=seed["index"], eps=0.3)
    assert f"true label {seed['label']}" in p.page.inner_text("#digit-caption")
    said = p.verdicts()
    assert said[0] == "the model was already wrong" and said[1:] != ["", ""], said
    assert set(said[1:]) <= {"fooled", "still right"}, said
    assert "wrong" in p.page.get_attribute(f".seed[data-index='{seed['index']}']", "class")
    p.page.close()
    assert p.errors == []


def test_the_keyboard_alone_reaches_a_verdict(browser, url):
    """Tab to a seed digit (a button), Enter, Tab on to the eps slider, an arrow key: each
    step recomputes, the verdicts are read out (aria-live), the drawing canvas is never in
    the way."""
    p = Page(browser, url)
    focused = "() => document.activeElement && (document.activeElement.dataset.index || " \
              "document.activeElement.id || document.activeElement.tagName)"
    seen = []
    for _ in range(40):
        p.page.keyboard.press("Tab")
        seen.append(p.page.evaluate(focused))
        if seen[-1] == "0":  # the first test digit, a 7
            break
    assert seen[-1] == "0", seen
    p.page.keyboard.press("Enter")
    wait_shown(p, seed=0)
    for _ in range(20):
        p.page.keyboard.press("Tab")
        seen.append(p.page.evaluate(focused))
        if seen[-1] == "eps":
            break
    eps = float(p.page.input_value("#eps"))
    p.page.keyboard.press("ArrowRight")
    wait_shown(p, seed=0, eps=round(eps + 0.01, 2))
    assert "draw" not in seen, seen
    assert p.page.get_attribute("#summary", "aria-live") == "polite"
    summary = p.page.inner_text("#summary")
    assert summary.startswith("Test digit 7") and "Standard" in summary
    assert all(v in ("fooled", "still right", "the model was already wrong")
               for v in p.verdicts())
    p.page.close()
    assert p.errors == []


def test_a_slow_answer_shows_the_busy_state(browser, url):
    """While the attacks take long (their requests held back here), the page says it is
    computing (visible, aria-busy) and says nothing once they are in."""
    p = Page(browser, url)
    held = []
    p.page.route("**/api/v1/attack", lambda route: held.append(route))
    p.page.locator("#eps").fill("0.2")
    wait_for(p.page, "() => document.getElementById('results').classList.contains('busy')")
    assert p.page.is_visible("#busy") and p.page.inner_text("#busy").startswith("computing")
    assert p.page.get_attribute("#results", "aria-busy") == "true"
    for _ in range(100):  # one request a model
        if len(held) == len(models.MODELS):
            break
        p.page.wait_for_timeout(50)
    assert len(held) == len(models.MODELS)
    for route in held:
        route.continue_()
    wait_shown(p, eps=0.2)
    assert not p.page.is_visible("#busy")
    assert p.page.get_attribute("#results", "aria-busy") == "false"
    p.page.close()
    assert p.errors == []


def test_a_stopped_server_shows_the_banner_and_marks_the_result_stale(browser, shipped):
    served, seeds = shipped
    server = Server(make_app(served, seeds=seeds))
    p = Page(browser, server.url)
    shown, summary = p.shown(), p.page.inner_text("#summary")
    assert not p.page.is_visible("#banner")
    errors = list(p.errors)
    server.stop()
    p.page.locator("#eps").fill("0.3")
    wait_for(p.page, "() => !document.getElementById('banner').hidden")
    assert "cannot be reached" in p.page.inner_text("#banner")
    assert "stale" in p.page.get_attribute("#results", "class")
    assert p.page.is_visible("#stale-note")
    assert p.shown() == shown and p.page.inner_text("#summary") == summary  # the old result
    p.page.close()
    assert errors == []

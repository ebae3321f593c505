"""A real-browser test of the page: headless Chromium (Debian's `chromium`) driven by Playwright.

It opens the page of a real server on a loopback port, waits for the first attack, moves the
eps slider, switches to targeted PGD, draws on the canvas, and checks that the images and the
predictions change each time. Skipped, with the reason, where Playwright or Chromium is missing
(.ci/run installs Chromium). PAGE_SCREENSHOT=docs/page.png saves the README's screenshot.
"""
import os
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium")

import models  # noqa: E402
import train  # noqa: E402
from data.mnist import load_mnist  # noqa: E402
from experiments.common import load_model  # noqa: E402
from test_serve import Server  # noqa: E402
from test_train import call  # noqa: E402
from web.api import Served, make_app  # noqa: E402
from web.shipped import seed_digits, served_models  # noqa: E402


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """The page over the shipped models that are built, else over a CNN trained for one epoch
    on 2,000 images."""
    shipped = [name for name in models.MODELS if name in models.manifest()]
    if shipped:
        served, seeds = served_models(shipped)
    else:
        run = tmp_path_factory.mktemp("page") / "run"
        assert call(train.main, ["--train-limit", 2000, "--test-limit", 100, "--epochs", 1,
                                 "--out", run]) == 0
        model, _ = load_model(run / "checkpoint.npz", np)
        x, t = load_mnist("test", limit=100)
        info = {"what": "1 epoch on 2,000 images", "eps": 0.3, "clean": 0.9, "fgs": 0.1,
                "pgd20": 0.0, "robust": 0.0}
        served, seeds = {"standard": Served(model, info)}, seed_digits(model, x, t)
    server = Server(make_app(served, seeds=seeds))
    yield server.url
    server.stop()


def pixels(page, canvas):
    return page.evaluate(f"document.getElementById('{canvas}').toDataURL()")


def wait_for(page, predicate, arg=None, timeout=15):
    """Poll a JavaScript function of `arg` until it is true. (Playwright's wait_for_function
    builds its predicate with eval, which the page's Content-Security-Policy forbids, as it
    should; page.evaluate is the browser's own evaluation, outside the page's CSP.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate, arg):
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.05)


def wait_for_change(page, canvas, before):
    wait_for(page, "([id, old]) => document.getElementById(id).toDataURL() !== old",
             [canvas, before])


def test_the_page_recomputes_as_the_slider_moves_and_the_digit_is_drawn(url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # a Content-Security-Policy violation, a failed load: console errors
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(url + "/")
        wait_for(page, "() => document.getElementById('label-after').textContent !== '-'",
                 timeout=20)
        assert page.locator(".seed").count() >= 2 and page.locator(".seed.wrong").count() == 1
        assert page.locator("input[name=model]").count() >= 1
        before = {c: pixels(page, c) for c in ("original", "adversarial")}
        bars = page.inner_text("#bars-after")

        page.locator("#eps").fill("0.35")  # a range input: sets the value, fires "input"
        wait_for_change(page, "adversarial", before["adversarial"])
        assert pixels(page, "original") == before["original"]
        wait_for(page, "([old]) => document.getElementById('bars-after').innerText !== old",
                 [bars])
        assert page.inner_text("#eps-value") == "0.35"

        fgs = pixels(page, "adversarial")
        shown = {int(page.inner_text(f"#label-{w}")[0]) for w in ("before", "after")}
        target = next(c for c in range(10) if c not in shown)
        page.select_option("#attack", "targeted_pgd")
        assert page.is_visible("#target")
        page.select_option("#target", str(target))
        wait_for_change(page, "adversarial", fgs)
        wait_for(page, f"() => document.getElementById('label-after').textContent"
                       f".startsWith('{target}')")
        assert page.get_attribute("#label-after", "class") == "changed"

        drawn = pixels(page, "original")
        page.click("#clear")
        box = page.locator("#draw").bounding_box()
        page.mouse.move(box["x"] + 140, box["y"] + 40)
        page.mouse.down()
        for y in range(40, 250, 15):
            page.mouse.move(box["x"] + 140, box["y"] + y)
        page.mouse.up()
        wait_for_change(page, "original", drawn)
        shot = os.environ.get("PAGE_SCREENSHOT")
        if shot:
            page.locator(".seed").nth(0).click()
            page.select_option("#attack", "fgs")
            page.locator("#eps").fill("0.2")
            page.wait_for_timeout(1500)
            page.screenshot(path=shot, full_page=True)
        browser.close()
    assert errors == []

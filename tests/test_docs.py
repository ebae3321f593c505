"""The documentation site (mkdocs.yml, docs/): `mkdocs build --strict` passes (a broken link, a
missing figure or a page left out of the navigation fails it), and in headless Chromium every
page of the navigation shows its figures (each <img> loaded) without a console error, nothing
fetched from elsewhere. DOCS_SCREENSHOTS=folder saves a screenshot of three pages."""
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("mkdocs", reason="the docs need the [test] (or [docs]) extra: mkdocs")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(out)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def nav_pages():
    import yaml

    def leaves(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from leaves(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from leaves(value)
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    return list(leaves(config["nav"]))


def test_the_site_builds_strict_with_every_page_in_the_navigation(site):
    pages = nav_pages()
    on_disk = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert set(pages) == on_disk, "every docs/*.md page is in mkdocs.yml's nav, and only those"
    for page in pages:
        html = site / ("index.html" if page == "index.md" else page[:-3] + "/index.html")
        assert html.is_file(), page


def test_every_page_shows_its_figures_in_a_real_browser(site):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium: apt-get install chromium")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    shots = os.environ.get("DOCS_SCREENSHOTS")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors, outside = [], []
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("request", lambda r: not r.url.startswith(url) and
                    not r.url.startswith("data:") and outside.append(r.url))
            for name in nav_pages():
                path = "" if name == "index.md" else name[:-3] + "/"
                page.goto(url + path, wait_until="load")
                broken = page.evaluate("() => [...document.images].filter("
                                       "i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
                assert broken == [], (name, broken)
                if shots and name in ("index.md", "certified.md", "over-the-wire.md"):
                    Path(shots).mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(Path(shots) / f"{name[:-3]}.png"))
            browser.close()
    finally:
        server.shutdown()
    assert errors == [] and outside == [], (errors, outside)

"""The documentation site, as a reader sees it: built, then opened in Chromium.

Marked `browser` and left out of the default run: it needs the `docs` extra
(MkDocs, mkdocstrings, Playwright) and Debian's `chromium` package. `.ci/run`
installs both and runs `python -m pytest -m browser tests/test_docs.py`.
The site is built with `--strict` (warnings are errors), unless
`KERAS_VIB_SITE` names a site that is already built.
"""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.browser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    built = os.environ.get("KERAS_VIB_SITE")
    if built:
        return os.path.abspath(built)
    site_dir = str(tmp_path_factory.mktemp("site"))
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"]
        + ["--site-dir", site_dir],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return site_dir


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="needs the docs extra: pip install -e '.[docs]'",
    )
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium: apt-get install -y chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=FLAGS
        )
        yield browser.new_page()
        browser.close()


def open_page(page, site, path):
    url = "file://" + os.path.join(site, path)
    response = page.goto(url, wait_until="load")
    assert response is None or response.ok, url
    return page


def images_loaded(page):
    """(number of images, number that failed to load) on the page."""
    return page.evaluate(
        """() => {
          const imgs = Array.from(document.querySelectorAll(
            'article img, .md-content img'));
          const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0));
          return [imgs.length, bad.length];
        }"""
    )


def test_index(page, site):
    open_page(page, site, "index.html")
    assert "keras_vib" in page.title()
    text = page.inner_text("article")
    assert "kv.layers.VIB" in text and "Tutorials" in text


def test_api_page_renders_signatures(page, site):
    open_page(page, site, "api/layers.html")
    heading = page.locator(
        "h2#keras_vib.layers.VIB, [id='keras_vib.layers.VIB']"
    )
    assert heading.count() >= 1
    signatures = page.locator(".doc-signature").all_inner_texts()
    vib = [s for s in signatures if s.lstrip().startswith("VIB(")]
    assert vib, signatures[:5]
    for argument in ("kl_weight", "seed", "free_bits", "log_name"):
        assert argument in vib[0]
    # The docstring's sections and its example render too.
    text = page.inner_text("article")
    assert "Call arguments" in text and ">>>" in text


def test_tutorial_page_shows_code_and_figures(page, site):
    open_page(page, site, "tutorials/kl_weight.html")
    assert page.locator("pre code").count() >= 5
    page.wait_for_load_state("networkidle")
    count, failed = images_loaded(page)
    assert count >= 1 and failed == 0
    open_page(page, site, "tutorials/quickstart.html")
    count, failed = images_loaded(page)
    assert count >= 1 and failed == 0

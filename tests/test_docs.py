"""The documentation site, as a reader sees it: built, then opened in Chromium.

Marked `browser` and left out of the default run: it needs the `docs` extra
(MkDocs, mkdocstrings, Playwright) and Debian's `chromium` package. `.ci/run`
installs both and runs `python -m pytest -m browser tests/test_docs.py`.
The site is built with `--strict` (warnings are errors), unless
`KERAS_VIB_SITE` names a site that is already built.
"""

import functools
import http.server
import json
import os
import subprocess
import sys
import threading

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


API_PAGES = [
    "callbacks",
    "datasets",
    "export",
    "layers",
    "likelihoods",
    "losses",
    "metrics",
    "models",
    "ops",
    "prediction",
    "schedules",
    "uncertainty",
]

#: What each check finds on a page, computed in the browser.
FAULTS_JS = """() => {
  const article = document.querySelector('article');
  const faults = [];
  // A continuation line read as Markdown: a quote inside a parameter list.
  for (const quote of article.querySelectorAll(
      'li blockquote, .doc-contents blockquote')) {
    faults.push('blockquote in a list: ' + quote.innerText.slice(0, 60));
  }
  // A `:::` directive that picked up a module of the symbol's name.
  for (const name of article.querySelectorAll('.doc-heading '
                                               + '.doc-module-name')) {
    faults.push('module heading: ' + name.textContent.trim());
  }
  // The same object rendered twice: same name, same documentation.
  const seen = new Map();
  for (const object of article.querySelectorAll('.doc-object')) {
    const heading = object.querySelector('.doc-heading');
    const contents = object.querySelector('.doc-contents');
    if (!heading || !contents) continue;
    const name = heading.id.split('.').pop();
    const key = name + '\\n' + contents.innerText;
    if (seen.has(key)) {
      faults.push('rendered twice: ' + seen.get(key) + ', ' + heading.id);
    }
    seen.set(key, heading.id);
  }
  if (article.innerText.includes('doctest:')) {
    faults.push('doctest directive visible');
  }
  // Private bases (a `_module` or a `_Name`, e.g. SeedStateSavingMixin).
  for (const bases of article.querySelectorAll('.doc-class-bases')) {
    for (const link of bases.querySelectorAll('code, a')) {
      const path = (link.getAttribute('title') || '') + ' '
        + link.textContent;
      if (/(^|[.\\s])_[A-Za-z]|Mixin/.test(path)) {
        faults.push('private base: ' + link.textContent.trim());
      }
    }
  }
  // "Call arguments" boxes: one list item per argument, no run-on text.
  for (const box of article.querySelectorAll('.admonition, details')) {
    const title = box.querySelector('.admonition-title, summary');
    if (!title || !/call arguments/i.test(title.textContent)) continue;
    if (box.querySelectorAll('li').length === 0) {
      faults.push('call arguments not a list: '
                  + box.innerText.slice(0, 60));
    }
  }
  // Signatures wider than their box (clipped behind a scroll bar).
  for (const code of article.querySelectorAll('.doc-signature code')) {
    if (code.scrollWidth > code.clientWidth + 1) {
      faults.push('clipped signature: ' + code.innerText.slice(0, 40));
    }
  }
  return faults;
}"""


@pytest.mark.parametrize("name", API_PAGES)
def test_api_page_has_no_rendering_faults(page, site, name):
    open_page(page, site, f"api/{name}.html")
    assert page.locator(".doc-heading").count() >= 1
    assert page.evaluate(FAULTS_JS) == []


def test_call_arguments_render_one_item_per_argument(page, site):
    open_page(page, site, "api/layers.html")
    # The first "Call arguments" box on the page is VIB's.
    box = page.locator("details.call-arguments").first
    assert "Call arguments" in box.locator("summary").inner_text()
    items = box.locator("li").all_inner_texts()
    assert [item.split(":")[0] for item in items] == [
        "inputs",
        "training",
        "mask",
    ]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_search_works_when_served(page, site):
    """Served over HTTP (as `mkdocs serve` does), the search finds a symbol.

    Opened as a file, browsers refuse the search's web worker: the README
    says to serve the site for search.
    """
    handler = functools.partial(_QuietHandler, directory=site)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        url = f"http://127.0.0.1:{port}/index.html"
        page.goto(url, wait_until="networkidle")
        search = page.locator("input.md-search__input")
        search.click()
        # Typed key by key: the search reacts to key events.
        search.press_sequentially("predict_mc", delay=20)
        page.locator(".md-search-result__item").first.wait_for(timeout=20000)
        results = page.locator(".md-search-result").inner_text()
        assert "matching document" in results
    finally:
        server.shutdown()
        server.server_close()


def test_index_lists_every_tutorial_and_api_page(page, site):
    open_page(page, site, "index.html")
    links = page.eval_on_selector_all(
        "article a", "links => links.map(a => a.getAttribute('href'))"
    )
    examples = sorted(
        name[:-3]
        for name in os.listdir(os.path.join(ROOT, "examples"))
        if name.endswith(".py") and not name.startswith("_")
    )
    assert len(examples) == 8
    for name in examples:
        assert f"tutorials/{name}.html" in links, name
    for name in API_PAGES:
        assert f"api/{name}.html" in links, name


def test_tutorials_show_their_recorded_output(page, site):
    """Each recorded output appears on its tutorial page, under its cell."""
    folder = os.path.join(ROOT, "docs", "tutorials", "output")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    if not names:
        pytest.skip("no recorded tutorial output")
    for filename in names:
        with open(os.path.join(folder, filename), encoding="utf-8") as f:
            record = json.load(f)
        open_page(page, site, f"tutorials/{filename[:-5]}.html")
        text = page.inner_text("article")
        assert record["command"] in text
        printed = [o.strip() for o in record["outputs"] if o.strip()]
        assert printed, filename
        for output in printed:
            assert output.splitlines()[-1].strip() in text, filename

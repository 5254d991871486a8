# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The docs site (build/docsite/html, made by `make docs`) in headless Chromium.

Run by `make docs-check` with the docs venv (.venv-docs: Playwright from PyPI
driving Debian's /usr/bin/chromium; no browser is downloaded). The site is
served on a free localhost port; every HTML page is loaded once, with its
scripts run, and what the checks need is read from the DOM:

- the page loads (HTTP 200, no failed request, no script error) and nothing is
  requested from another host;
- it has its title (the FQCN for a module or role page, the heading otherwise);
- each module page has its parameters table with a row for every option
  that ansible-doc knows, the role page its table of role variables;
- every link to a page of the site, with its #anchor, resolves;
- a screenshot of the reflink_volume page is written to build/docsite/.

DOCSITE_HTML (a directory) checks another copy of the site.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import urllib.parse

import pytest
from conftest import serve_directory

ROOT = pathlib.Path(__file__).resolve().parents[2]
HTML = pathlib.Path(os.environ.get("DOCSITE_HTML", ROOT / "build" / "docsite" / "html")).resolve()
SHOTS = ROOT / "build" / "docsite"
COLLECTION = "collections/dom0/reflink/"
# Every module of the collection has its page.
MODULES = tuple(sorted(path.stem for path in (ROOT / "plugins" / "modules").glob("reflink_*.py")))
# Pages whose title is known in advance (the rest: their <h1>).
# Sphinx's search page is the only one without a heading.
NO_HEADING = {"search.html"}
TITLES = {
    "index.html": "dom0.reflink",
    "search.html": "Search",
    "performance.html": "Performance",
    "reliability.html": "Reliability: what is guaranteed, and how it is tested",
    COLLECTION + "docsite/guide.html": "dom0.reflink guide",
    COLLECTION + "pool_role.html": "dom0.reflink.pool role",
    COLLECTION + "maintenance_role.html": "dom0.reflink.maintenance role",
} | {COLLECTION + "%s_module.html" % m: "dom0.reflink.%s module" % m for m in MODULES}

# Read in the page once it has loaded: title, heading, every id (anchors),
# every link, and the option tables.
COLLECT_JS = """() => {
  const ids = Array.from(document.querySelectorAll('[id]'), e => e.id)
    .concat(Array.from(document.querySelectorAll('a[name]'), e => e.name));
  const links = Array.from(document.querySelectorAll('a[href], link[href], area[href]'), a => a.href);
  const tables = Array.from(document.querySelectorAll('table.ansible-option-table'), t => ({
    section: (t.closest('section') || {}).id || '',
    rows: t.querySelectorAll('tbody > tr').length,
    anchors: Array.from(t.querySelectorAll('.ansibleOptionAnchor[id]'), e => e.id),
    visible: t.getBoundingClientRect().width > 0,
  }));
  let h1 = document.querySelector('h1');
  if (h1) {
    h1 = h1.cloneNode(true);
    h1.querySelectorAll('.headerlink').forEach(e => e.remove());
  }
  return {title: document.title, h1: h1 ? h1.textContent.trim() : null, ids, links, tables};
}"""


def _pages():
    return sorted(p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html"))


@pytest.fixture(scope="session")
def server():
    if not (HTML / "index.html").is_file():
        pytest.fail("no site in %s: run `make docs` first" % HTML)
    with serve_directory(HTML) as base:
        yield base


@pytest.fixture(scope="session")
def site(server, browser_context):
    """Every page, loaded once: {relative path: what COLLECT_JS read, with 'status' and 'problems'}."""
    foreign = []

    def route(route, request):
        if request.url.startswith(server) or request.url.startswith(("data:", "blob:", "about:")):
            route.continue_()
        else:
            foreign.append(request.url)
            route.abort()

    browser_context.route("**/*", route)
    page = browser_context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append("script error: %s" % exc))
    page.on("console", lambda msg: problems.append("console %s: %s" % (msg.type, msg.text)) if msg.type == "error" else None)
    page.on("requestfailed", lambda req: problems.append("request failed: %s (%s)" % (req.url, req.failure)))
    page.on("response", lambda resp: problems.append("HTTP %d: %s" % (resp.status, resp.url)) if resp.status >= 400 else None)
    result = {}
    for rel in _pages():
        problems.clear()
        foreign.clear()
        response = page.goto(server + rel, wait_until="load")
        # Let every request of the page end here, not during the next page's load.
        page.wait_for_load_state("networkidle")
        data = page.evaluate(COLLECT_JS)
        data["status"] = response.status if response else None
        data["problems"] = list(problems) + ["request to another host: %s" % url for url in foreign]
        result[rel] = data
        if rel == COLLECTION + "reflink_volume_module.html":
            page.screenshot(path=str(SHOTS / "reflink_volume.png"))
            page.locator("#parameters").scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / "reflink_volume-parameters.png"))
    page.close()
    return {"base": server, "pages": result}


@pytest.fixture(scope="session")
def module_options():
    """{module: its top-level option names}, as ansible-doc reads them (doc fragments included)."""
    ansible_doc = shutil.which("ansible-doc")
    if ansible_doc is None:
        pytest.fail("ansible-doc is not on PATH")
    out = subprocess.run(
        [ansible_doc, "--json", "-t", "module"] + ["dom0.reflink." + m for m in MODULES],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout
    docs = json.loads(out)
    return {name.rsplit(".", 1)[1]: sorted(doc["doc"].get("options") or {}) for name, doc in docs.items()}


def test_expected_pages_exist():
    pages = set(_pages())
    missing = [rel for rel in TITLES if rel not in pages]
    assert not missing, "pages missing from the site: %s" % missing


@pytest.mark.parametrize("rel", _pages())
def test_page_loads_with_its_title(site, rel):
    data = site["pages"][rel]
    assert data["status"] == 200, rel
    assert not data["problems"], "%s: %s" % (rel, data["problems"])
    assert data["title"].strip(), "%s has no title" % rel
    heading = TITLES.get(rel) or data["h1"]
    assert heading, "%s has neither a known title nor a heading" % rel
    assert data["title"].startswith(heading), "%s: title %r, expected it to start with %r" % (rel, data["title"], heading)
    if rel in TITLES and rel not in NO_HEADING:
        assert data["h1"] and data["h1"].startswith(TITLES[rel]), "%s: heading %r" % (rel, data["h1"])


@pytest.mark.parametrize("module", MODULES)
def test_module_page_has_its_option_table(site, module_options, module):
    data = site["pages"][COLLECTION + "%s_module.html" % module]
    tables = [t for t in data["tables"] if t["section"] == "parameters"]
    assert tables, "%s: no parameters table (table.ansible-option-table in section #parameters)" % module
    table = tables[0]
    assert table["visible"], "%s: the parameters table is not displayed" % module
    assert table["rows"] >= len(module_options[module]) > 0, "%s: %d rows for %d options" % (module, table["rows"], len(module_options[module]))
    missing = [o for o in module_options[module] if "parameter-%s" % o not in table["anchors"]]
    assert not missing, "%s: options without a row in the parameters table: %s" % (module, missing)
    assert any(t["section"] == "return-values" for t in data["tables"]), "%s: no return values table" % module


@pytest.mark.parametrize("role", ["pool", "maintenance"])
def test_role_page_has_its_variable_table(site, role):
    data = site["pages"][COLLECTION + "%s_role.html" % role]
    assert any(t["rows"] > 0 and t["visible"] for t in data["tables"]), "%s role: no table of role variables" % role


@pytest.mark.parametrize("rel", _pages())
def test_internal_links_resolve(site, rel):
    base = site["base"]
    pages = site["pages"]
    broken = []
    for href in pages[rel]["links"]:
        if not href.startswith(base):
            continue
        url = urllib.parse.urlsplit(href)
        target = urllib.parse.unquote(url.path[len(urllib.parse.urlsplit(base).path):])
        if target == "" or target.endswith("/"):
            target += "index.html"
        if target not in pages:
            if not (target.endswith(".html") or (HTML / target).is_file()):
                broken.append("%s (no such file)" % href)
            elif target.endswith(".html"):
                broken.append("%s (no such page)" % href)
            continue
        fragment = urllib.parse.unquote(url.fragment)
        if fragment and fragment not in pages[target]["ids"]:
            broken.append("%s (no #%s on %s)" % (href, fragment, target))
    assert not broken, "%s links to what does not exist:\n  %s" % (rel, "\n  ".join(sorted(set(broken))))


def test_screenshot_written(site):
    shot = SHOTS / "reflink_volume.png"
    assert shot.is_file(), shot
    with shot.open("rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000, "the screenshot is suspiciously small (an empty page?)"

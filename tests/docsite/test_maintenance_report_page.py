# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The maintenance report the molecule scenario maintenance made, in headless Chromium.

The scenario runs the role dom0.reflink.maintenance on a pool with a history and
keeps its first report with the results it was made from in
build/maintenance-report/ (report.html, results.json); `make docs-check` runs
the scenario first when that report is missing or older than the role, the
plugins or the scenario (MAINTENANCE_REPORT_DIR checks another one). The page is
served on localhost and loaded with nothing else reachable:

- it loads without a script error and asks for nothing but itself (no script,
  style sheet, font or image from anywhere: its policy forbids them);
- every number Chromium shows is the value of its source in the results of
  reflink_info, reflink_gc and reflink_dedupe (report_helpers.evaluate), in the
  text Chromium renders (report_helpers.text_matches), and the figures of
  reflink_info's space accounting are all there, each volume's and the pool's;
- a screenshot of the whole page is written to build/docsite/maintenance-report.png.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest
from conftest import serve_directory

ROOT = pathlib.Path(__file__).resolve().parents[2]
REPORT_DIR = pathlib.Path(os.environ.get("MAINTENANCE_REPORT_DIR", ROOT / "build" / "maintenance-report")).resolve()
SHOTS = ROOT / "build" / "docsite"
SPACE_KEYS = ("allocated", "exclusive", "revisions_exclusive", "stranded")

sys.path.insert(0, str(ROOT / "tests" / "modules"))
from report_helpers import evaluate, text_matches  # noqa: E402  # pylint: disable=wrong-import-position

# Every figure as Chromium has it: its source, its exact value, the text it renders, and whether it is drawn.
FIGURES_JS = """() => Array.from(document.querySelectorAll('[data-of]'), e => ({
  of: e.getAttribute('data-of'),
  value: e.tagName.toLowerCase() === 'data' ? e.getAttribute('value') : e.getAttribute('data-value'),
  text: e.tagName.toLowerCase() === 'data' ? e.innerText : e.textContent,
  drawn: e.getClientRects().length > 0,
}))"""


@pytest.fixture(scope="module")
def report(browser_context):
    """The page as Chromium loaded it: its figures, what it asked for, what went wrong, and the results."""
    if not (REPORT_DIR / "report.html").is_file() or not (REPORT_DIR / "results.json").is_file():
        pytest.fail("no maintenance report in %s: `make docs-check` makes it with the molecule scenario maintenance "
                    "(make molecule MOLECULE_ARGS='--scenario-name maintenance')" % REPORT_DIR)
    results = json.loads((REPORT_DIR / "results.json").read_text(encoding="utf-8"))
    with serve_directory(REPORT_DIR) as base:
        url = base + "report.html"
        requested: list[str] = []
        problems: list[str] = []
        page = browser_context.new_page()
        # The page's own route wins over the site check's, which aborts what is not the site.
        page.route("**/*", lambda route, request: route.continue_() if request.url == url else route.abort())
        page.on("request", lambda request: requested.append(request.url))
        page.on("pageerror", lambda exc: problems.append("script error: %s" % exc))
        page.on("console", lambda msg: problems.append("console %s: %s" % (msg.type, msg.text)))
        page.on("requestfailed", lambda request: problems.append("request failed: %s" % request.url))
        response = page.goto(url, wait_until="load")
        page.wait_for_load_state("networkidle")
        figures = page.evaluate(FIGURES_JS)
        heading = page.locator("h1").inner_text()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "maintenance-report.png"), full_page=True)
        page.close()
    return {"status": response.status if response else None, "requested": requested, "problems": problems,
            "figures": figures, "heading": heading, "results": results}


def test_the_report_loads_alone(report):
    assert report["status"] == 200
    assert report["heading"] == "Pool maintenance report"
    assert report["requested"] == [report["requested"][0]] and report["requested"][0].endswith("/report.html")
    assert report["problems"] == []


def test_every_number_is_that_of_its_source(report):
    results = report["results"]
    document = {"info": results["info"], "gc": results.get("gc"), "dedupe": results.get("dedupe")}
    assert len(report["figures"]) > 50
    for figure in report["figures"]:
        value = evaluate(document, figure["of"])
        assert str(value) == figure["value"], figure
        if figure["drawn"]:
            assert text_matches(figure["text"], value), figure


def test_the_space_of_every_volume_and_of_the_pool_is_shown(report):
    info = report["results"]["info"]
    shown = {figure["of"] for figure in report["figures"] if figure["drawn"]}
    assert info["volumes"], "the scenario's pool has volumes"
    for number, volume in enumerate(info["volumes"]):
        assert "space" in volume, volume["vid"]
        for key in SPACE_KEYS:
            assert "/info/volumes/%d/space/%s" % (number, key) in shown, (volume["vid"], key)
    for key in ("referenced", "allocated", "saved", "stranded", "fs_size", "fs_free"):
        assert "/info/pool/space/" + key in shown
    # gc and dedupe ran, and what they freed is on the page
    assert {"/gc/reclaimed_bytes", "/dedupe/reclaimed_bytes", "/dedupe/deduped_bytes"} <= shown


def test_the_screenshot_is_written(report):
    shot = SHOTS / "maintenance-report.png"
    assert report["figures"] and shot.is_file()
    with shot.open("rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 50_000, "the screenshot is suspiciously small (an empty page?)"

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The maintenance role's HTML report, rendered by ansible.builtin.template from a nightly run's results.

The sample (report/nightly.json) is shaped as the modules return their results.
Each rendered page is read back: well-formed, self-contained (no script, no
request of any kind), every value from the pool escaped, and every number on it
equal to the figure it names in the results.
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
import subprocess

import pytest
from report_helpers import evaluate, read_page, text_matches

from ansible_collections.dom0.reflink.plugins.filter.maintenance_report import maintenance_report
from ansible_collections.dom0.reflink.plugins.plugin_utils._report_figures import human_bytes

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
TEMPLATE = REPO / "roles" / "maintenance" / "templates" / "report.html.j2"
SAMPLE = HERE / "report" / "nightly.json"
SPACE_KEYS = ("allocated", "exclusive", "revisions_exclusive", "stranded")

PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: write the report
      ansible.builtin.template:
        src: {template}
        dest: {dest}
        mode: "0644"
      vars:
        # a lookup's data is never templated, as registered results are not
        results: "{{{{ lookup('ansible.builtin.file', {sample!r}) | from_json }}}}"
        maintenance_info: "{{{{ results.info }}}}"
        maintenance_gc: "{{{{ results.gc | default(none) }}}}"
        maintenance_dedupe: "{{{{ results.dedupe | default(none) }}}}"
        maintenance_now: "{{{{ results.now | default(none) }}}}"
        maintenance_failed_steps: "{{{{ results.failed_steps | default([]) }}}}"
"""


@pytest.fixture
def render(ansible_env, tmp_path):
    """Render the role's template from ``results`` with ansible-playbook; the page's text."""
    def run(results, name="report"):
        sample = tmp_path / (name + ".json")
        sample.write_text(json.dumps(results), encoding="utf-8")
        dest = tmp_path / (name + ".html")
        playbook = tmp_path / (name + ".yml")
        playbook.write_text(PLAYBOOK.format(template=json.dumps(str(TEMPLATE)), dest=json.dumps(str(dest)), sample=str(sample)),
                            encoding="utf-8")
        proc = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", str(playbook)], cwd=tmp_path,
                              env=ansible_env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return dest.read_text(encoding="utf-8")
    return run


def nightly():
    return json.loads(SAMPLE.read_text(encoding="utf-8"))


def check_page(html, results):
    """The checks every report passes; the page read back."""
    page = read_page(html)
    assert page.problems == []
    assert page.doctype.lower() == "doctype html"
    assert page.tags["html"] == page.tags["head"] == page.tags["body"] == 1
    assert re.search(r'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">', html)
    # self-contained: no script, no address of anything outside the page, no way to fetch one
    lowered = html.lower()
    for word in ("<script", "http:", "https:", "//", "url(", "@import", "@font-face", "<link", "<img", "<iframe",
                 "<object", "<embed", "javascript:"):
        assert word not in lowered, word
    assert all(link.startswith("#") for link in page.links)
    assert {link[1:] for link in page.links} <= set(page.ids)
    assert len(page.ids) == len(set(page.ids))
    # every number is a figure that equals its source and reads as its value
    document = {"info": results["info"], "gc": results.get("gc"), "dedupe": results.get("dedupe")}
    for figure in page.figures:
        assert str(evaluate(document, figure.of)) == figure.value, figure
        assert text_matches(figure.text, int(figure.value)), figure
    assert page.loose_sizes == []
    return page


def sources(page):
    return {figure.of for figure in page.figures}


def test_the_report_of_a_nightly_run(render):
    results = nightly()
    html = render(results)
    page = check_page(html, results)
    shown = sources(page)
    volumes = results["info"]["volumes"]
    # every figure of the run is on the page: each volume's space, the pool's, what gc and dedupe freed
    for number in range(len(volumes)):
        for key in SPACE_KEYS:
            assert "/info/volumes/%d/space/%s" % (number, key) in shown
        assert "#/info/volumes/%d/revisions" % number in shown
        assert "#/info/volumes/%d/pins" % number in shown
    for key in ("referenced", "allocated", "saved", "stranded", "fs_size", "fs_free"):
        assert "/info/pool/space/" + key in shown
    assert {"/gc/reclaimed_bytes", "#/gc/removed", "/dedupe/reclaimed_bytes", "/dedupe/deduped_bytes"} <= shown
    for kind in {finding["kind"] for finding in results["info"]["findings"]}:
        assert "#/info/findings kind=" + kind in shown
    # each finding's way out, each volume and each file gc removed is there in words
    text = " ".join("".join(page.text).split())
    for finding in results["info"]["findings"]:
        assert finding["msg"] in text
    for item in results["gc"]["removed"]:
        assert item["file"] in text and item["reason"] in text
    # the space chart: one bar per volume (the sample has fewer than 25), three parts each
    assert page.classes_seen["seg-shared"] + page.classes_seen.get("seg-exclusive", 0) >= len(volumes)
    # the time line: a mark for every revision and pin
    assert page.classes_seen["m-revision"] - 1 == sum(len(volume["revisions"]) for volume in volumes)   # 1: the legend's
    pins = [pin["name"] for volume in volumes for pin in volume["pins"]]
    assert page.classes_seen["m-auto"] - 1 == sum(name.startswith("auto-") for name in pins)
    assert page.classes_seen["m-pin"] - 1 == sum(not name.startswith("auto-") for name in pins)
    assert "made 2026-11-26 03:40 UTC" in text


HOSTILE = '<script>alert(1)</script> "><b onmouseover=x>&amp; {{ lookup(\'pipe\', \'id\') }} https://example.org/x.png'


def test_everything_from_the_pool_is_escaped(render):
    results = nightly()
    info = results["info"]
    info["pool"]["path"] = "/pool/" + HOSTILE
    info["pool"]["fstype"] = HOSTILE
    volume = info["volumes"][0]
    volume["qubes"]["vm"] = HOSTILE
    volume["qubes"]["volume"] = HOSTILE
    volume["pins"].append({"name": HOSTILE, "size": 1, "timestamp": "2026-11-01T00:00:00Z"})
    info["findings"][0].update(file=HOSTILE, msg=HOSTILE)
    info["findings"].append({"kind": "unknown_kind", "vid": HOSTILE, "file": HOSTILE, "severity": "warning", "msg": HOSTILE})
    results["gc"]["removed"][0].update(file=HOSTILE, reason=HOSTILE)
    results["dedupe"]["skipped"][0].update(file=HOSTILE, reason=HOSTILE)
    results["dedupe"]["volumes"][0]["vid"] = HOSTILE
    results["failed_steps"] = [{"name": HOSTILE, "result": {"failed": True, "msg": HOSTILE}}]
    html = render(results)
    lowered = html.lower()
    assert "<script" not in lowered and "<b onmouseover" not in lowered
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &#34;&gt;&lt;b onmouseover=x&gt;&amp;amp;" in html
    page = read_page(html)
    assert page.problems == []
    text = " ".join(page.text)
    # shown as the text it is (not dropped, not templated), once per place it comes from
    assert text.count(HOSTILE) >= 11
    # the one external-looking address on the page is the pool's own text, escaped as text
    assert all(link.startswith("#") for link in page.links)


def test_an_empty_pool_and_steps_that_did_not_run(render):
    results = nightly()
    results["info"].update(volumes=[], findings=[])
    results["info"]["pool"]["space"].update(referenced=0, allocated=0, saved=0, stranded=0)
    results["gc"] = {"failed": True, "msg": "the pool lock is held by pid 4242 (qvm-volume)", "changed": False}
    del results["dedupe"]
    # the role's list of the steps that failed, each with its registered result
    results["failed_steps"] = [{"name": "gc (reflink_gc)", "result": results["gc"]},
                               {"name": "scheduled pins (reflink_pin)",
                                "result": {"failed": True, "msg": "volume appvms/gone/private does not exist, 1.5 GiB"}}]
    html = render(results)
    page = check_page(html, results)
    text = " ".join("".join(page.text).split())
    assert "The pool holds no volumes." in text
    assert "gc failed: the pool lock is held by pid 4242 (qvm-volume)" in text
    assert ("Steps of this run that failedgc (reflink_gc)the pool lock is held by pid 4242 (qvm-volume)scheduled pins "
            "(reflink_pin)volume appvms/gone/private does not exist, 1.5 GiB") in text
    assert "dedupe did not run." in text
    assert "No findings: nothing in the pool needs your attention." in text
    assert "No volume has revisions or pins." in text

    results = nightly()
    for volume in results["info"]["volumes"]:
        del volume["space"]
    del results["info"]["pool"]["space"]
    html = render(results, "unmeasured")
    page = check_page(html, results)
    text = " ".join("".join(page.text).split())
    assert "The space of each volume was not measured: run dom0.reflink.reflink_info with space: true." in text
    assert "seg-shared" not in page.classes_seen   # no bars, and no legend of them
    assert "m-auto" in page.classes_seen


def a_thousand_volumes():
    results = nightly()
    base = results["info"]["volumes"]
    volumes, findings = [], []
    for number in range(1000):
        volume = copy.deepcopy(base[number % len(base)])
        prefix, vm, name = volume["vid"].split("/")
        volume["vid"] = "%s/%s-%03d/%s" % (prefix, vm, number // len(base), name)
        if volume["qubes"]:
            volume["qubes"]["vm"] = "%s-%03d" % (vm, number // len(base))
        for key in SPACE_KEYS:
            volume["space"][key] = volume["space"][key] * (1 + number % 7) // 7
        volumes.append(volume)
        findings += [dict(finding, vid=volume["vid"]) for finding in results["info"]["findings"]
                     if finding["vid"] == base[number % len(base)]["vid"]]
    volumes.sort(key=lambda volume: volume["vid"])
    results["info"].update(volumes=volumes, findings=findings)
    results["gc"]["removed"] *= 7
    return results


def test_a_thousand_volumes_give_a_page_that_still_reads(render):
    results = a_thousand_volumes()
    html = render(results)
    page = check_page(html, results)
    assert len(html) < 2_000_000
    shown = sources(page)
    # the largest 25 are drawn, the table has every volume, the time line the 40 with the most history
    assert page.classes_seen["seg-shared"] <= 26 and "#/info/volumes space? - 25" in shown
    assert all("/info/volumes/%d/space/allocated" % number in shown for number in range(1000))
    assert "#/info/volumes any=revisions,pins - 40" in shown
    assert "#/gc/removed - 12" in shown
    assert "#/info/findings kind=not_shared - 6" in shown


def test_every_value_the_template_writes_goes_through_e():
    template = TEMPLATE.read_text(encoding="utf-8")
    expressions = re.findall(r"\{\{(.*?)\}\}", template, re.DOTALL)
    assert len(expressions) > 100
    for written in expressions:
        expression = written.strip()
        assert expression.endswith("| e") or re.fullmatch(r"(svg)?fig\([\w.]+\)", expression), expression


@pytest.mark.parametrize("value, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (1536, "1.50 KiB"), (10 * 1024 ** 2, "10.0 MiB"),
    (123 * 1024 ** 3, "123 GiB"), (1023 * 1024 ** 4, "1023 TiB"), (2 ** 63 - 1, "8.00 EiB"),
])
def test_sizes_read_in_binary_units(value, text):
    assert human_bytes(value) == text
    assert text_matches(text, value)


@pytest.mark.parametrize("call, message", [
    (lambda: maintenance_report([]), "the input must be the registered result of reflink_info"),
    (lambda: maintenance_report({}, now="yesterday"), "now must be a UTC time like 2026-11-26T03:40:59Z"),
    (lambda: maintenance_report({}, top=0), "top must be a positive integer"),
    (lambda: maintenance_report({}, timeline_rows=True), "timeline_rows must be a positive integer"),
])
def test_the_filter_refuses_what_it_cannot_use(call, message):
    with pytest.raises(Exception, match=message):
        call()

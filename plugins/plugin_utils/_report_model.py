# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The maintenance report's content, made from the nightly run's results; the template only lays it out.

Inputs are the registered results of ``reflink_info`` (with ``space: true``),
``reflink_gc`` and ``reflink_dedupe``, as the modules return them.  Anything
missing (a step that did not run or failed, ``space`` not measured) leaves its
part of the page saying so, never an error: a report is most wanted when
something went wrong.  Strings from the pool (vids, file names, messages) are
passed on as they are; the template escapes them.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from ansible_collections.dom0.reflink.plugins.plugin_utils import _report_charts as charts
from ansible_collections.dom0.reflink.plugins.plugin_utils._report_figures import (
    Figure,
    as_dict,
    as_int,
    as_list,
    as_text,
    count_figure,
    parse_time,
    pointer,
    show_time,
    size_figure,
    sum_of,
)

SPACE_KEYS = ("allocated", "exclusive", "revisions_exclusive", "stranded")
LIST_LIMIT = 12          # rows of a list (files gc removed, volumes dedupe changed) before "and N more"
FINDINGS_LIMIT = 6       # findings shown of one kind
SCHEDULED_PREFIX = "auto-"

# What each kind of finding means, in a sentence; the finding's own message names the way out.
FINDING_KINDS = {
    "nocow": ("No_COW attribute", "Reflinks to and from a file with btrfs's No_COW attribute (chattr +C) fail, "
                                  "so every clone of it silently becomes a full copy."),
    "not_shared": ("Copies that could share", "A precache, revision or pin holds its own copy of data the clean "
                                              "image has; reflink_dedupe gets the space back."),
    "direct_io_loop": ("Direct I/O loop device on btrfs", "A loop device reads a pool image on btrfs with direct "
                                                          "I/O on, which leads to checksum errors (qubes-issues #9488)."),
    "size_mismatch": ("Size differs from qubes.xml", "The image's size is not the size qubes.xml records for the volume."),
    "stale_precache": ("Stale precache", "The precache no longer matches the clean image; reflink_gc removes it."),
    "pending_commit": ("Commit pending", "A dirty image of a volume that is not running: data a VM wrote that was "
                                         "never committed."),
    "fragmented": ("Fragmented image", "An image split into very many extents (at least 1,000, and more than 1,000 "
                                       "per GiB of its data)."),
    "stranded": ("Stranded extents", "The volume's files keep whole extents allocated of which they use only a part "
                                     "(on btrfs an extent is freed only when its last reference goes)."),
    "no_reflink": ("No block sharing", "The pool's file system cannot share blocks: every clone is a full copy."),
}


def _more(count: int, shown: int, of: str) -> Figure | None:
    """How many of ``count`` items the page leaves out after showing ``shown``: a figure, or None for none."""
    return count_figure(count - shown, "%s - %d" % (of, shown)) if count > shown else None


def _vm_and_volume(volume: Mapping[str, Any]) -> tuple[str, str, bool]:
    vid = as_text(volume.get("vid"))
    parts = vid.split("/")
    prefix, vm, name = (parts + ["", "", ""])[:3] if len(parts) == 3 else ("", vid, "")
    qubes = as_dict(volume.get("qubes"))
    return as_text(qubes.get("vm")) or vm, as_text(qubes.get("volume")) or name, prefix == "vm-templates"


def _volume_row(number: int, volume: Mapping[str, Any]) -> dict[str, Any]:
    vm, name, template = _vm_and_volume(volume)
    at = pointer("info", "volumes", number)
    row: dict[str, Any] = {
        "vid": as_text(volume.get("vid")), "vm": vm, "volume": name, "template": template,
        "state": as_text(volume.get("state")), "kind": as_text(as_dict(volume.get("qubes")).get("kind")),
        "revisions": count_figure(len(as_list(volume.get("revisions"))), "#" + at + "/revisions"),
        "pins": count_figure(len(as_list(volume.get("pins"))), "#" + at + "/pins"),
        "space": None,
    }
    marks = [("revision", as_text(as_dict(rev).get("id")), parse_time(as_dict(rev).get("timestamp")))
             for rev in as_list(volume.get("revisions"))]
    marks += [("auto" if as_text(as_dict(pin).get("name")).startswith(SCHEDULED_PREFIX) else "pin",
               as_text(as_dict(pin).get("name")), parse_time(as_dict(pin).get("timestamp")))
              for pin in as_list(volume.get("pins"))]
    row["marks"] = [(kind, label, moment) for kind, label, moment in marks if moment is not None]
    pin_times = [moment for kind, _label, moment in row["marks"] if kind != "revision"]
    row["newest_pin"] = max(pin_times).strftime("%Y-%m-%d %H:%M") if pin_times else ""
    space = volume.get("space")
    if isinstance(space, Mapping):
        figures = {key: size_figure(as_int(space.get(key)), at + "/space/" + key) for key in SPACE_KEYS}
        allocated, exclusive = figures["allocated"], figures["exclusive"]
        figures["shared"] = size_figure(max(allocated["v"] - exclusive["v"], 0), "%s - %s" % (allocated["of"], exclusive["of"]))
        row["space"] = figures
    return row


def _vm_groups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[bool, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["template"], row["vm"]), []).append(row)
    result: list[dict[str, Any]] = []
    for (template, vm), members in groups.items():
        totals: dict[str, Figure] = {}
        measured = [row["space"] for row in members if row["space"] is not None]
        if measured:
            for key in SPACE_KEYS + ("shared",):
                totals[key] = size_figure(sum(space[key]["v"] for space in measured),
                                          sum_of(space[key]["of"] for space in measured))
        result.append({"vm": vm, "template": template, "volumes": sorted(members, key=lambda row: row["volume"]),
                       "totals": totals or None})
    result.sort(key=lambda group: (-group["totals"]["allocated"]["v"] if group["totals"] else 0, group["vm"]))
    return result


def _findings(info: Mapping[str, Any]) -> list[dict[str, Any]]:
    by_kind: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for number, item in enumerate(as_list(info.get("findings"))):
        finding = as_dict(item)
        by_kind.setdefault(as_text(finding.get("kind")), []).append((number, finding))
    groups: list[dict[str, Any]] = []
    for kind, items in by_kind.items():
        title, meaning = FINDING_KINDS.get(kind, (kind or "finding", ""))
        warning = any(as_text(finding.get("severity")) == "warning" for _number, finding in items)
        groups.append({
            "kind": kind, "title": title, "meaning": meaning, "severity": "warning" if warning else "info",
            "count": count_figure(len(items), "#/info/findings kind=" + kind),
            "entries": [{"vid": as_text(finding.get("vid")), "file": as_text(finding.get("file")),
                         "severity": as_text(finding.get("severity")) or "info", "msg": as_text(finding.get("msg"))}
                        for _number, finding in items[:FINDINGS_LIMIT]],
            "more": _more(len(items), FINDINGS_LIMIT, "#/info/findings kind=" + kind),
        })
    groups.sort(key=lambda group: (group["severity"] != "warning", -group["count"]["v"], group["kind"]))
    return groups


def _step(result: Any, name: str) -> dict[str, Any]:
    """Whether a step ran: {ran, failed (its message) or None}."""
    result = as_dict(result)
    if result.get("failed"):
        return {"ran": False, "failed": as_text(result.get("msg")) or "%s failed" % name}
    # "skipped" is also dedupe's list of files left alone: a skipped task says True
    if not result or result.get("skipped") is True or "reclaimed_bytes" not in result:
        return {"ran": False, "failed": None}
    return {"ran": True, "failed": None}


def _gc(gc: Any) -> dict[str, Any]:
    step = _step(gc, "reflink_gc")
    if not step["ran"]:
        return step
    gc = as_dict(gc)
    removed = sorted(enumerate(as_list(gc.get("removed"))), key=lambda item: -as_int(as_dict(item[1]).get("bytes")))
    step.update({
        "reclaimed": size_figure(as_int(gc.get("reclaimed_bytes")), "/gc/reclaimed_bytes"),
        "removed_count": count_figure(len(removed), "#/gc/removed"),
        "removed": [{"file": as_text(as_dict(item).get("file")), "reason": as_text(as_dict(item).get("reason")),
                     "bytes": size_figure(as_int(as_dict(item).get("bytes")), pointer("gc", "removed", number, "bytes"))}
                    for number, item in removed[:LIST_LIMIT]],
        "more": _more(len(removed), LIST_LIMIT, "#/gc/removed"),
        "left_alone": [dict(count_figure(len(as_list(gc.get(key))), "#/gc/" + key),
                            label=one if len(as_list(gc.get(key))) == 1 else many)
                       for key, one, many in (("skipped_files", "file held open", "files held open"),
                                              ("skipped_volumes", "volume in use", "volumes in use"),
                                              ("pending_commit", "pending commit", "pending commits"),
                                              ("orphans", "orphaned volume", "orphaned volumes"),
                                              ("orphaned_pins", "pin without a volume", "pins without a volume"))
                       if as_list(gc.get(key))],
    })
    return step


def _dedupe(dedupe: Any) -> dict[str, Any]:
    step = _step(dedupe, "reflink_dedupe")
    if not step["ran"]:
        return step
    dedupe = as_dict(dedupe)
    volumes = dedupe.get("volumes")
    # per vid: a list of {vid, deduped_bytes, reclaimed_bytes}, or a dict keyed by vid
    entries = ([(pointer("dedupe", "volumes", number), as_dict(item)) for number, item in enumerate(as_list(volumes))]
               if not isinstance(volumes, Mapping) else
               [(pointer("dedupe", "volumes", vid), dict(as_dict(item), vid=vid)) for vid, item in volumes.items()])
    entries.sort(key=lambda entry: (-as_int(entry[1].get("reclaimed_bytes")), -as_int(entry[1].get("deduped_bytes"))))
    entries = [entry for entry in entries if as_int(entry[1].get("deduped_bytes"))]   # the volumes it changed
    skipped = as_list(dedupe.get("skipped"))
    step.update({
        "deduped": size_figure(as_int(dedupe.get("deduped_bytes")), "/dedupe/deduped_bytes"),
        "reclaimed": size_figure(as_int(dedupe.get("reclaimed_bytes")), "/dedupe/reclaimed_bytes"),
        "volumes": [{"vid": as_text(item.get("vid")),
                     "deduped": size_figure(as_int(item.get("deduped_bytes")), at + "/deduped_bytes"),
                     "reclaimed": size_figure(as_int(item.get("reclaimed_bytes")), at + "/reclaimed_bytes")}
                    for at, item in entries[:LIST_LIMIT]],
        "more": _more(len(entries), LIST_LIMIT, "#/dedupe/volumes deduped_bytes!=0"),
        "skipped_count": count_figure(len(skipped), "#/dedupe/skipped"),
        "skipped": [{"file": as_text(as_dict(item).get("file")), "reason": as_text(as_dict(item).get("reason"))}
                    for item in skipped[:LIST_LIMIT]],
    })
    return step


def build(info: Any, gc: Any = None, dedupe: Any = None, now: datetime.datetime | None = None,
          top: int = 25, timeline_rows: int = 40) -> dict[str, Any]:
    """The report's content (see the filter maintenance_report for its inputs)."""
    info = as_dict(info)
    pool = as_dict(info.get("pool"))
    volumes = [as_dict(volume) for volume in as_list(info.get("volumes"))]
    rows = [_volume_row(number, volume) for number, volume in enumerate(volumes)]
    times = [moment for row in rows for _kind, _label, moment in row["marks"]]
    if now is None:
        now = max(times) if times else datetime.datetime.now(datetime.timezone.utc)
    space = as_dict(pool.get("space"))
    measured = [row for row in rows if row["space"] is not None]
    pool_space = {key: size_figure(as_int(space.get(key)), "/info/pool/space/" + key)
                  for key in ("referenced", "allocated", "saved", "stranded", "fs_size", "fs_free")} if space else None
    other_data = None
    if pool_space:
        other = pool_space["fs_size"]["v"] - pool_space["fs_free"]["v"] - pool_space["allocated"]["v"]
        if other >= 0:
            other_data = size_figure(other, " - ".join(pool_space[key]["of"] for key in ("fs_size", "fs_free", "allocated")))
    findings = _findings(info)
    warnings = sum(group["count"]["v"] for group in findings if group["severity"] == "warning")
    # the volumes whose history says most: scheduled pins count double, then revisions
    with_marks = sorted((row for row, volume in zip(rows, volumes, strict=True) if volume.get("revisions") or volume.get("pins")),
                        key=lambda row: (-sum(2 if kind != "revision" else 1 for kind, _l, _m in row["marks"]), row["vid"]))
    shown_on_timeline = sorted(with_marks[:timeline_rows], key=lambda row: row["vid"])
    biggest = sorted(measured, key=lambda row: (-row["space"]["allocated"]["v"], row["vid"]))[:top]
    timeline = charts.timeline(shown_on_timeline, now) if shown_on_timeline else None
    for row in rows:
        del row["marks"]   # datetimes: the page has their text, and a filter's result stays plain data
    return {
        "generated": show_time(now),
        "pool": {"path": as_text(pool.get("path")), "fstype": as_text(pool.get("fstype")) or "unknown",
                 "reflink": "yes" if pool.get("reflink") is True else "no" if pool.get("reflink") is False else "unknown"},
        "volume_count": count_figure(len(rows), "#/info/volumes"),
        "vm_groups": _vm_groups(rows),
        "space": pool_space,
        "space_measured": bool(measured),
        "other_data": other_data,
        "filesystem": (charts.filesystem_bar(pool_space["fs_size"]["v"], pool_space["fs_free"]["v"],
                                             pool_space["allocated"]["v"], pool_space["referenced"]["v"])
                       if pool_space else None),
        "space_chart": charts.space_bars(biggest) if biggest else None,
        "space_chart_more": _more(len(measured), len(biggest), "#/info/volumes space?"),
        "findings": findings,
        "warning_count": count_figure(warnings, "#/info/findings severity=warning"),
        "finding_count": count_figure(sum(group["count"]["v"] for group in findings), "#/info/findings"),
        "missing": [{"vid": as_text(as_dict(item).get("vid"))} for item in as_list(info.get("missing"))],
        "gc": _gc(gc),
        "dedupe": _dedupe(dedupe),
        "timeline": timeline,
        "timeline_more": _more(len(with_marks), len(shown_on_timeline), "#/info/volumes any=revisions,pins"),
    }

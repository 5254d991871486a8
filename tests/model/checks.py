# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The comparisons of harness.py: results with results, results with the disk, listings with listings."""

from __future__ import annotations

import errno
import os
import re

from pool_model import PoolModel, Vol

_HOW = re.compile(r" \((?:reflink|sparse copy[^)]*)\)\Z")
_BARE = {os.strerror(code) for code in errno.errorcode}


def strip(value):
    """A result without what check mode cannot know: usage figures, warnings, how a clone was made."""
    if isinstance(value, dict):
        return {key: strip(item) for key, item in value.items() if key not in ("usage", "warnings", "diff")}
    if isinstance(value, list):
        return [strip(item) for item in value]
    if isinstance(value, str):
        return _HOW.sub("", value)
    return value


def is_bare(msg: str) -> bool:
    """A message that is only an errno's text (and perhaps a path): it does not say why or what to do."""
    return msg.split(" (", maxsplit=1)[0].strip() in _BARE


def report_differences(report: dict, found: PoolModel) -> list:
    """Where a returned volume dict disagrees with the disk."""
    vol = found.vols.get(report.get("vid")) or Vol()
    image = vol.dirty or vol.clean
    state = "dirty" if vol.dirty is not None else "stopped" if vol.clean is not None else "absent"
    expected = {
        "size": image.size if image else 0,
        "revisions": [{"id": number, "timestamp": vol.revisions[number][1]} for number in sorted(vol.revisions)],
        "pins": sorted(vol.pins),
        "precache": vol.precache,
        "state": state,
    }
    given = dict(report, pins=[pin["name"] for pin in report.get("pins", [])])
    return ["%s: reported %r, on disk %r" % (key, given.get(key), value)
            for key, value in expected.items() if given.get(key) != value]


def shown_by_diff(rel: str, before: dict, after: dict) -> bool:
    """Whether a change of the entry ``rel`` is one that diff mode shows (a file of a VM directory came,
    went or changed size)."""
    if not rel.startswith(("pool/appvms/", "pool/vm-templates/")) or rel.count("/") != 3:
        return False
    if (rel in before) != (rel in after):
        return True
    return rel in before and before[rel].size != after[rel].size


def lost(before: PoolModel, expected: PoolModel, found: PoolModel) -> list:
    """Contents a user keeps that a failed task took away although it was not to remove them."""
    lost = []
    for vid, vol in before.vols.items():
        have = kept(found.vols.get(vid))
        allowed = kept(expected.vols.get(vid))
        for what, key in kept(vol).items():
            if key not in have.values() and key in allowed.values():
                lost.append("%s %s" % (vid, what))
    return lost


def kept(vol) -> dict:
    if vol is None:
        return {}
    kept = {}
    if vol.clean is not None:
        kept["clean"] = vol.clean.key
    if vol.dirty is not None:
        kept["dirty"] = vol.dirty.key
    for number, (content, _ts) in vol.revisions.items():
        kept["revision %d" % number] = content.key
    for name, (content, _ts) in vol.pins.items():
        kept["pin %s" % name] = content.key
    return kept


def changes(before: dict, after: dict) -> str:
    gone = sorted(set(before) - set(after))
    new = sorted(set(after) - set(before))
    changed = sorted(rel for rel in set(before) & set(after) if before[rel] != after[rel])
    return "removed %s, added %s, changed %s" % (gone[:8], new[:8], changed[:8])


def dict_difference(left, right, path="") -> str:
    if isinstance(left, dict) and isinstance(right, dict):
        if set(left) != set(right):
            return "%s keys: check %s, real %s" % (path or "result", sorted(set(left) - set(right)),
                                                   sorted(set(right) - set(left)))
        for key in left:
            if left[key] != right[key]:
                return dict_difference(left[key], right[key], "%s.%s" % (path, key))
    return "%s: check mode %r, real run %r" % (path or "result", left, right)


def gc_space_problems(result: dict, kind: str) -> list:
    """Where gc's space figures contradict each other or the files it removed.

    ``reclaimed_bytes`` is what the removed files free as one set: 0 when nothing
    was removed, at least the sum of what each frees alone (``exclusive_bytes``,
    from the same extent map), and ``reclaimed_exclusive_bytes`` (deprecated)
    the same figure.  Outside btrfs it is at most the removed files' allocated
    bytes (``bytes``, st_blocks): a freed block is a block of a removed file.
    On btrfs that bound does not hold: a file that references part of an
    extent keeps the whole extent allocated, and removing the last such file
    frees all of it (stranded bytes included).
    """
    removed = result.get("removed", [])
    reclaimed = result.get("reclaimed_bytes")
    problems = []
    if not isinstance(reclaimed, int) or reclaimed < 0:
        return ["reclaimed_bytes is %r" % (reclaimed,)]
    if result.get("reclaimed_exclusive_bytes") != reclaimed:
        problems.append("reclaimed_exclusive_bytes %r differs from reclaimed_bytes %d"
                        % (result.get("reclaimed_exclusive_bytes"), reclaimed))
    if not removed and reclaimed != 0:
        problems.append("reclaimed_bytes %d with nothing removed" % reclaimed)
    alone = sum(entry.get("exclusive_bytes", 0) for entry in removed)
    if reclaimed < alone:
        problems.append("reclaimed_bytes %d is less than the removed files' exclusive_bytes, %d in all"
                        % (reclaimed, alone))
    allocated = sum(entry["bytes"] for entry in removed)
    if kind != "btrfs" and reclaimed > allocated:
        problems.append("reclaimed_bytes %d is more than the removed files' allocated bytes, %d in all"
                        % (reclaimed, allocated))
    return problems


def brief(value) -> str:
    text = repr(value)
    return text if len(text) < 300 else text[:300] + "..."

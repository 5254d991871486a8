# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What reflink_gc should remove (modules.md, "reflink_gc" and "Edges a user hits in the first hour")."""

from __future__ import annotations

import os
import re

from predict import Ctx, Refuse, keep_of, vid_ok

_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*\Z", re.IGNORECASE)
_FACTORS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(value) -> float:
    if isinstance(value, bool):
        raise Refuse("min_age %r" % (value,))
    if isinstance(value, int):
        if value < 0:
            raise Refuse("min_age %r" % (value,))
        return value
    match = _DURATION_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise Refuse("min_age %r" % (value,))
    return float(match.group(1)) * _FACTORS[match.group(2).lower()]


def names_of(vid: str, vol) -> dict:
    """The file names of a volume (pins left out), by what they are."""
    volume = os.path.basename(vid)
    found = {}
    if vol.clean is not None:
        found[volume + ".img"] = "clean"
    if vol.precache != "missing":
        found[volume + "-precache.img"] = "precache"
    if vol.import_ is not None:
        found[volume + "-import.img"] = "import"
    for number, (_content, ts) in vol.revisions.items():
        found["%s.img.%d@%s" % (volume, number, ts)] = "revision %d" % number
    for name in vol.leftovers:
        found[name] = "tempfile" if "~" in name else "junk revision"
    return found


def gc(model, options: dict, ctx: Ctx) -> str | None:
    """Change ``model`` as the gc run should; returns the known defect that explains a difference, if any."""
    known = None
    min_age = duration(options.get("min_age", "1h"))
    # Every journal of a run is younger than a day: with the default import_max_age none has expired.
    expired = duration(options.get("import_max_age", "1d")) <= 0
    keep = keep_of(options.get("revisions_to_keep"), default=None)
    vids = options.get("vids")
    keep_vids = options.get("keep_vids")
    for vid in (vids or []) + (keep_vids or []):
        vid_ok(vid)
    if options.get("remove_orphans") and keep_vids is None:
        raise Refuse("remove_orphans needs keep_vids or a qubes.xml")
    if options.get("remove_orphans") and keep_vids == []:
        raise Refuse("keep_vids: [] with remove_orphans would remove every volume", known="empty_keep_vids_orphans")
    if vids == []:
        known = "empty_vids_widen"
    scope = None if vids is None else set(vids)
    skipped = set()
    for vid, vol in sorted(model.vols.items()):
        if scope is not None and vid not in scope:
            continue
        if vol.dirty is not None:
            skipped.add(vid)
            continue
        files = names_of(vid, vol)
        removed = set()
        orphan = keep_vids is not None and vid not in keep_vids and vol.has_files
        young = any(ctx.ages.get((vid, name), 0) < min_age for name in files)
        if orphan and options.get("remove_orphans") and not young:
            removed = set(files)
        else:
            for name, what in files.items():
                old = ctx.ages.get((vid, name), 0) >= min_age
                if (what == "junk revision" or (what == "tempfile" and old)
                        or (what == "import" and vol.journal != "begun" and old)
                        or (what == "import" and vol.journal == "begun" and expired)
                        or (what == "precache" and vol.precache == "stale")):
                    removed.add(name)
            if keep is not None:
                excess = sorted(vol.revisions)[:max(len(vol.revisions) - max(keep, 0), 0)]
                removed.update(name for name, what in files.items()
                               if what.startswith("revision ") and int(what.split()[1]) in excess)
        removed = {name for name in removed if (vid, name) not in ctx.held}
        _remove(vol, files, removed)
        if options.get("rebuild_precache") and keep != -1 and vol.clean is not None and vol.precache != "fresh":
            if (vid, os.path.basename(vid) + "-precache.img") in ctx.held:
                # A rebuild renames over the held stale precache, which removes it too: left alone.
                known = known or "gc_rebuild_replaces_held_precache"
                continue
            ctx.allocates = True
            vol.precache = "fresh"
    for vid, vol in sorted(model.vols.items()):
        if vol.journal is None or vid in skipped:
            continue
        if scope is not None and vid not in scope and vol.journal == "begun" and vol.import_ is not None:
            known = known or "gc_scoped_removes_begun_journal"   # today's gc takes it for one whose image is gone
        if vol.journal == "corrupt" or (vol.journal == "begun" and vol.import_ is None) \
                or (vol.journal == "committed" and expired):
            if scope is not None and vid not in scope:
                known = known or "gc_scoped_removes_other_journal"
                continue
            vol.journal = None
            vol.journal_size = vol.begun_ino = vol.begun_gen = None
    return known


def _remove(vol, files: dict, removed: set) -> None:
    for name in removed:
        what = files[name]
        if what == "clean":
            vol.clean = None
            vol.clean_ts = vol.marker = None
            vol.imported = False
        elif what == "precache":
            vol.precache = "missing"
        elif what == "import":
            vol.import_ = None
            vol.import_ino = vol.import_gen = None
        elif what.startswith("revision "):
            del vol.revisions[int(what.split()[1])]
        else:
            vol.leftovers = vol.leftovers - {name}
    if vol.clean is None and vol.precache == "fresh":
        vol.precache = "stale"   # a precache left (held open) without its clean image


def expected_reports(model, options: dict) -> dict:
    """gc's orphans and orphaned_pins (vids) as the run should report them, from the model before it."""
    scope = options.get("vids")
    keep_vids = options.get("keep_vids")
    orphans, orphaned_pins = [], []
    for vid, vol in sorted(model.vols.items()):
        if scope is not None and vid not in scope:
            continue
        if vol.pins and not vol.exists:
            orphaned_pins.append(vid)
        if keep_vids is not None and vid not in keep_vids and vol.has_files and vol.dirty is None:
            orphans.append(vid)
    return {"orphans": orphans, "orphaned_pins": orphaned_pins}


def expected_artifacts(vid: str, vol) -> dict:
    """The ``artifacts`` reflink_info should report of a volume: the leftovers gc would look at."""
    volume = os.path.basename(vid)
    return {
        "tempfiles": sorted(name for name in vol.leftovers if "~" in name),
        "import_image": volume + "-import.img" if vol.import_ is not None else None,
        "junk_revisions": sorted(name for name in vol.leftovers if "~" not in name),
        "stale_precache": volume + "-precache.img" if vol.precache == "stale" else None,
    }


def expected_info(model, options: dict) -> tuple[list, str | None]:
    """The vids reflink_info should list, and the known defect that explains a difference."""
    vids = options.get("vids")
    for vid in vids or []:
        vid_ok(vid)
    listed = sorted(vid for vid, vol in model.vols.items() if vol.has_files or vol.pins)
    if vids is None:
        return listed, None
    return sorted(set(vids)), "empty_vids_widen" if vids == [] else None


def pool_absent(model, pool_names: list, symlink: bool) -> None:
    if symlink:
        raise Refuse("the pool path is a symlink", known="pool_absent_symlink")
    holding = [vid for vid, vol in model.vols.items() if vol.has_files or vol.pins]
    if holding:
        raise Refuse("the pool holds image files")
    foreign = [name for name in pool_names if name not in ("appvms", "vm-templates", ".reflink")]
    if foreign or model.foreign:
        raise Refuse("the pool holds files that are not part of a pool")
    model.vols.clear()   # its journals go with it

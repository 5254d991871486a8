# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Defects the model-based test knows about: reported and passed over, until they are switched strict.

Each entry is a defect of issue 26 (or found by this test) that a fix on
another branch removes.  While it is listed here, a step that shows it is
recorded (see ``report()``; ``make test-model`` prints the list at the end),
the model is read again from the disk, and the run goes on.  A violation that
is not listed fails the run.

Switching them strict (once the fixes are merged):
- ``MODEL_STRICT=all make test-model`` (or a comma-separated list of names)
  turns the listed defects into failures for one run;
- for good, delete the entry below: its check is then strict in every run.
"""

from __future__ import annotations

import json
import os

KNOWN: dict[str, str] = {
    # Issue 26, the seven defects.
    "full_disk_cleanup": "issue 26 #1: on a full file system (btrfs) gc, volume absent and pool present fail "
                         "with a bare 'No space left on device' (the lock's holder record)",
    "empty_source_import": "issue 26 #2: an import from a 0-byte source replaces the volume with a 0-byte image "
                           "instead of being refused like size: 0",
    "held_import_replaced": "issue 26 #3: a one-shot import, begin, abort, volume absent or create replaces or "
                            "removes an -import.img that another process holds open",
    "empty_vids_widen": "issue 26 #4: vids: [] on reflink_gc / reflink_info means the whole pool",
    "empty_keep_vids_orphans": "issue 26 #4: keep_vids: [] with remove_orphans: true removes every volume "
                               "instead of being refused",
    "commit_rerun_unchecked": "issue 26 #5: a rerun of a finished two-phase commit with another size or a wrong "
                              "checksum reports success",
    "pool_absent_symlink": "issue 26 #6: reflink_pool state=absent on a symlinked path removes the pool's "
                           "directories, then fails",
    "check_mode_fallback_never": "issue 26 #7: check mode says changed where the real run must fail "
                                 "(fallback: never and no reflink possible)",
    # Issue 26, the smaller ones.
    "pool_refusal_pins_advice": "issue 26: the pool refusal advises reflink_volume state=absent where pins need "
                                "remove_pins: true",
    "check_mode_pin_of_planned_volume": "issue 26: check mode of a pin of a volume that a check-mode task before "
                                        "it only planned fails instead of warning",
    "revision_zero_listed": "issue 26: reflink_info lists .img.0@... as revision 0",
    "gc_reason_negative_revision": "issue 26: gc calls .img.-1@... 'not an integer'",
    "diff_empty_forced_pin": "issue 26: --diff shows no difference for a forced pin replacement",
    "lock_timeout_negative": "issue 26: lock_timeout: -1 is accepted",
    "size_ignored_stopped_absent": "issue 26: size with state stopped/absent is silently ignored",
    "failed_but_changed": "issue 26: a failed task that changed nothing (a checksum refusal) reports changed: true",
    "abort_leaves_vm_dir": "issue 26: state=abort leaves the (empty) VM directory that begin made",
    "gc_scoped_removes_other_journal": "issue 26: gc scoped with vids removes another volume's journal",
    "enospc_precache_advice": "issue 26: an ENOSPC on a precache copy fails without naming revisions_to_keep: -1",
    # Found by this test, beyond issue 26's list (see tests/model/README.md): not fixed on any branch yet.
    "gc_scoped_removes_begun_journal": "model test: reflink_gc with vids removes the journal of a begun two-phase "
                                       "import of a volume outside vids whose import image still exists; its "
                                       "commit then fails, and the next gc removes the writer's data",
    "commit_finishes_on_reused_inode": "model test: a two-phase commit whose import image is gone reports success "
                                       "(changed, 'record the import ... as committed') when the clean image has "
                                       "the import image's old inode number (ext4 reuses it): the data is lost",
    "gc_rebuild_replaces_held_precache": "model test: reflink_gc with rebuild_precache renames a new precache over a "
                                         "stale one that a process holds open, while skipped_files reports it "
                                         "'not removed'",
}

_SEEN: dict[str, dict] = {}


def strict_names() -> set:
    value = os.environ.get("MODEL_STRICT", "").strip()
    if value in ("", "0", "no", "none"):
        return set()
    if value in ("1", "all", "yes"):
        return set(KNOWN)
    return {name.strip() for name in value.split(",") if name.strip()}


def is_lenient(name: str | None) -> bool:
    """Whether a violation tagged ``name`` is a known defect to report and pass over."""
    return name is not None and name in KNOWN and name not in strict_names()


def record(name: str, text: str, steps: list) -> None:
    entry = _SEEN.setdefault(name, {"count": 0, "first": text, "steps": list(steps)})
    entry["count"] += 1
    if len(steps) < len(entry["steps"]):   # keep the shortest way there
        entry.update(first=text, steps=list(steps))


def seen() -> dict:
    return dict(_SEEN)


def count(name: str) -> int:
    """How often the known defect ``name`` was seen in this process so far."""
    return _SEEN.get(name, {}).get("count", 0)


def report(path: str | None = None) -> str:
    """The known defects seen so far, in words (and as JSON in ``path``)."""
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(_SEEN, handle, indent=1, sort_keys=True)
    if not _SEEN:
        return "model: no known defect was seen"
    lines = ["model: known defects seen (reported, not failed; MODEL_STRICT=all makes them fail):"]
    for name in sorted(_SEEN):
        entry = _SEEN[name]
        lines.append("  %s (%d times): %s" % (name, entry["count"], KNOWN.get(name, "?")))
        lines.append("      first: %s" % entry["first"][:400])
        lines.append("      shortest way there: %s" % "; ".join(entry["steps"])[:600])
    return "\n".join(lines)

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_dedupe in the model: DedupeMachine, PoolMachine with a dedupe rule, and the dedupe's step.

DedupeMachine runs as a test of its own (test_model.py), so that PoolMachine's
sequences stay the ones they were.  A dedupe changes which blocks hold an
image's bytes, and nothing a user sees.

Harness.perform's properties do not fit such a task (its change is not in a
listing, so "changed: true with an unchanged disk" is right here); this step
checks its own, through the same core_api.run:
- check mode changes nothing (lock files included) and predicts the real run:
  the same actions, skipped files and deduped_bytes (in total and per volume),
  reclaimed_bytes within the space tolerance;
- the real run changes no entry of the listing (every image's content digest,
  size, mode, mtime, inode and markers; no tempfile), the model read from the
  disk still equals the model, and no dirty image's extents moved (a running
  VM's image is never touched);
- the space the file system gives back (statvfs after syncfs) is
  reclaimed_bytes within 1 MiB + 1 %;
- ``vids: []`` selects nothing; on ext4 a named volume is refused with a clear
  message and no vids warns; a full file system may fail the run, clearly;
- a rerun right after changes nothing and dedupes nothing.
"""

from __future__ import annotations

import os

from hypothesis import strategies as st
from hypothesis.stateful import rule

import core_api as api
from checks import brief, changes, is_bare
from disk import extent_map, syncfs
from harness import STATS
from machine import PoolMachine, scopes, vids

TOLERANCE = 1 << 20
TOLERANCE_SHARE = 0.01


def _used(path: str) -> int:
    syncfs(path)
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _dirty_maps(h) -> dict:
    found = {}
    for vid, vol in h.model.vols.items():
        if vol.dirty is not None:
            path = os.path.join(h.pool, "%s-dirty.img" % vid)
            if os.path.isfile(path) and not os.path.islink(path):
                found[vid] = extent_map(path)
    return found


def _close(figure: int, measured: int) -> bool:
    return abs(figure - measured) <= TOLERANCE + TOLERANCE_SHARE * max(abs(figure), abs(measured))


def _per_volume(result: dict) -> dict:
    return {entry["vid"]: entry["deduped_bytes"] for entry in result.get("volumes", [])}


def perform_dedupe(h, options: dict) -> None:
    """Check mode, the real run and a rerun of reflink_dedupe with ``options``; each checked (see above)."""
    h.steps.append("dedupe %s" % brief(options))
    vids = options.get("vids")
    refused = h.kind == "ext4" and bool(vids)
    with_locks = h.snapshot(locks=True)
    check = api.run("reflink_dedupe", options, check=True)
    if h.snapshot(locks=True) != with_locks:
        h.violation("check_mode_changed_disk", "reflink_dedupe: %s" % changes(with_locks, h.snapshot(locks=True)))
    before, dirty, used = h.snapshot(), _dirty_maps(h), _used(h.pool)
    real = api.run("reflink_dedupe", options)
    after, freed = h.snapshot(), used - _used(h.pool)
    STATS[("dedupe", "refused" if real.refusal else "failed" if real.failed
           else "changed" if real.result.get("changed") else "unchanged")] += 1
    if after != before:
        h.violation("dedupe_changed_disk", "a dedupe changed what a user sees: %s" % changes(before, after))
    differences = h.model.differences(h.read_model())
    if differences:
        h.violation("model_mismatch", "after a dedupe: %s" % "; ".join(differences))
    if _dirty_maps(h) != dirty:
        h.violation("dedupe_touched_dirty", "a dirty image's extents moved: %s" % sorted(dirty))
    if real.failed:
        _failed(h, check, real, refused)
        return
    if refused:
        h.violation("should_refuse", "ext4 cannot share blocks, yet the dedupe of %s succeeded: %s"
                    % (vids, brief(real.result)))
    result = real.result
    if vids == [] and (result["changed"] or result["volumes"] or result["deduped_bytes"]):
        h.violation("empty_vids_widen", "vids: [] selected volumes: %s" % brief(result))
    warnings = list(real.warnings) + list(result.get("warnings", []))
    if h.kind == "ext4" and vids is None and not any("cannot share" in text for text in warnings):
        h.violation("ext4_silent", "no warning that ext4 cannot share blocks: %s" % brief(result))
    if result["changed"] != bool(result["actions"]) or (result["deduped_bytes"] > 0 and not result["changed"]):
        h.violation("changed_flag_wrong", "changed %s, deduped_bytes %d, actions %s"
                    % (result["changed"], result["deduped_bytes"], brief(result["actions"])))
    if check.failed:
        h.violation("check_failed_real_ok", "check mode failed (%s), the real run succeeded" % check.msg)
    elif (check.result["actions"], check.result["skipped"], check.result["deduped_bytes"], _per_volume(check.result)) \
            != (result["actions"], result["skipped"], result["deduped_bytes"], _per_volume(result)) \
            or not _close(check.result["reclaimed_bytes"], result["reclaimed_bytes"]):
        h.violation("check_mode_differs", "check mode %s, real run %s" % (brief(check.result), brief(result)))
    if not _close(result["reclaimed_bytes"], freed):
        h.violation("reclaimed_wrong", "reclaimed_bytes %d, the file system freed %d"
                    % (result["reclaimed_bytes"], freed))
    again = api.run("reflink_dedupe", options)
    if again.failed or again.result["changed"] or again.result["deduped_bytes"] or h.snapshot() != after:
        h.violation("rerun_changed", "the rerun: %s" % brief(again.result))


def _failed(h, check, real, refused: bool) -> None:
    if real.result.get("changed"):
        h.violation("failed_but_changed", "the dedupe failed (%s) and says changed: true" % real.msg)
    if not real.msg.strip() or is_bare(real.msg):
        h.violation("bare_message", "the message does not say why: %r" % real.msg)
    if refused:
        if "cannot share blocks" not in real.msg:
            h.violation("ext4_unclear", "the refusal does not say that ext4 cannot share blocks: %s" % real.msg)
        if not check.failed:
            h.violation("check_mode_missed_refusal", "check mode succeeded where the real run is refused")
        return
    if h.filler is None or "No space left" not in real.msg:
        h.violation("unexpected_failure", "expected success, got: %s" % real.msg)


class DedupeMachine(PoolMachine):
    """PoolMachine's rules and the dedupe (after a restore wrote some images anew).

    Held files and the full file system are left to PoolMachine: with them, this machine's sequences meet
    defects of other tasks first (a refusal's way out that fails while the import image is held open; an
    import begun on a full file system that leaves the journal directory), which PoolMachine's budget does not
    reach; see the report of the branch that added this.
    """

    hold_open = None
    fill_disk = None

    @rule(scope=scopes, vid=vids, dedupe_scope=st.sampled_from(["volume", "pool"]),
          restored=st.lists(st.sampled_from(["clean", "precache", "revision", "revision", "pin", "dirty"]),
                            min_size=1, max_size=3))
    def dedupe(self, scope, vid, dedupe_scope, restored=()) -> None:
        """``restored``: images of ``vid`` a restore wrote anew first (the same bytes, nothing shared), planted."""
        for which in restored:
            self.plant.restored(vid, which)
        perform_dedupe(self.h, self.opts(pool=self.h.pool, vids=self.scope(scope, vid), scope=dedupe_scope))

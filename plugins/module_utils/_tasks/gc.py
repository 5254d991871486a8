# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The task of reflink_gc: scan the pool, plan (see _plans/gc.py), remove unless in check mode, report."""

from __future__ import annotations

import os
import time
from typing import Any

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import parse_vid
from ansible_collections.dom0.reflink.plugins.module_utils._base.units import parse_duration
from ansible_collections.dom0.reflink.plugins.module_utils._engine.inuse_guard import InUseGuard
from ansible_collections.dom0.reflink.plugins.module_utils._engine.prediction import CloneProbe, predicted_texts
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import LOCKS_DIR, metadata_dir, pool_lock, try_volume_lock
from ansible_collections.dom0.reflink.plugins.module_utils._plans.gc import GcOptions, GcPlanner
from ansible_collections.dom0.reflink.plugins.module_utils._plans.gc_steps import (
    Removal,
    execute_reporting,
    read_journals,
    remove_journal_step,
    remove_vm_dir_step,
)
from ansible_collections.dom0.reflink.plugins.module_utils._plans.journal import journal_name
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import check_revisions_to_keep
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import read_qubes_xml
from ansible_collections.dom0.reflink.plugins.module_utils._state.scan import PoolScan, require_pool
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import Params, Result, missing_pool_warning, run_or_report


def parse_gc_options(params: Params) -> GcOptions:
    min_age = parse_duration(params["min_age"], "min_age")
    import_max_age = parse_duration(params["import_max_age"], "import_max_age")
    revisions_to_keep = check_revisions_to_keep(params["revisions_to_keep"], optional=True)
    per_volume = {}
    for vid, given in (params.get("revisions_to_keep_per_volume") or {}).items():
        try:
            keep = int(given)
        except (TypeError, ValueError):
            raise InvalidArgument("revisions_to_keep_per_volume[%s] must be an integer" % vid) from None
        per_volume[str(parse_vid(vid))] = check_revisions_to_keep(keep)
    keep_vids = None
    if params.get("keep_vids") is not None:
        keep_vids = {str(parse_vid(vid)) for vid in params["keep_vids"]}
    return GcOptions(min_age=min_age, import_max_age=import_max_age, revisions_to_keep=revisions_to_keep,
                     revisions_to_keep_per_volume=per_volume, rebuild_precache=params["rebuild_precache"],
                     remove_orphans=params["remove_orphans"], keep_vids=keep_vids)


def run_gc_task(params: Params, check_mode: bool) -> Result:
    """reflink_gc: scan, plan, remove (unless in check mode), report."""
    options = parse_gc_options(params)
    # An empty list means no volume, never every volume (an empty template variable must not widen the task).
    only = [parse_vid(vid) for vid in params["vids"]] if params.get("vids") is not None else None
    path = params["pool"]
    if options.remove_orphans and options.keep_vids == set():
        raise InvalidArgument("keep_vids is an empty list and remove_orphans is true: that would remove every "
                              "volume of the pool (an empty keep_vids is almost always an empty template "
                              "variable); nothing was changed; name the volumes that should exist in keep_vids, "
                              "or leave keep_vids out to take them from qubes.xml")
    qubes = read_qubes_xml(params.get("qubes_xml"), path)
    if options.remove_orphans and options.keep_vids is None and qubes is None:
        raise InvalidArgument("remove_orphans needs keep_vids (the list of volumes that should exist), or a "
                              "qubes.xml (qubes_xml) that lists this pool")
    now = time.time()
    removed: list[dict[str, Any]] = []
    actions: list[str] = []
    skipped: list[dict[str, Any]] = []
    if check_mode and not os.path.lexists(path):
        # As the volume modules do: plan against the empty pool an earlier reflink_pool task would make.
        return dict(_gc_result([], [], 0, [], [], [], []), warnings=[missing_pool_warning(path)])
    with Directory.open_pool(path) as pool_dir:
        require_pool(pool_dir)
        with pool_lock(pool_dir, exclusive=True, timeout=params["lock_timeout"], purpose="reflink_gc",
                       create=not check_mode, record=not check_mode):
            scan = PoolScan.read(pool_dir, only)
            planner = GcPlanner(pool_dir, options, now, qubes)
            surroundings = Surroundings.read(path, qubes.name if qubes else None)
            planner.plan(scan, surroundings, *read_journals(pool_dir, only))
            skipped.extend(planner.skipped)
            locks = None
            meta = metadata_dir(pool_dir, create=False)
            if meta is not None:
                with meta:
                    locks = meta.open_dir(LOCKS_DIR)
            probe = CloneProbe(pool_dir)   # check mode: how a rebuilt precache's clone would go
            try:
                for key in sorted(planner.per_volume):
                    vid, volume_actions = planner.per_volume[key]
                    if check_mode:
                        actions.extend(predicted_texts(volume_actions, probe))
                        removed.extend(a.entry for a in volume_actions if isinstance(a, Removal))
                        continue
                    lock = try_volume_lock(locks, vid) if locks is not None else None
                    if locks is not None and lock is None:
                        skipped.append({"vid": key, "reason": "its volume lock is held by another task"})
                        continue
                    try:
                        with Workspace(pool_dir, vid).open_vm_dir() as workspace:
                            guard = InUseGuard(planner.planned_files[key], surroundings)
                            execute_reporting(volume_actions, workspace, removed, actions, skipped, guard)
                    finally:
                        if lock is not None:
                            lock.release()
                steps = [remove_vm_dir_step(pool_dir, prefix, vm) for prefix, vm in planner.vm_dir_removals
                         if not any(item["vid"].startswith("%s/%s/" % (prefix, vm)) for item in skipped)]
                # A volume left alone keeps its journal too (its import image may still be there).
                left_alone = {journal_name(parse_vid(item["vid"])) for item in skipped}
                steps += [remove_journal_step(pool_dir, name, reason) for name, reason in planner.journal_removals
                          if name not in left_alone]
                actions.extend(run_or_report(steps, None, check_mode))
            finally:
                if locks is not None:
                    locks.close()
    return _gc_result(actions, removed, planner.reclaimed_bytes(removed), planner.orphans, planner.pending_commit,
                      skipped, planner.skipped_files, planner.orphaned_pins)


def _gc_result(actions: list[str], removed: list[dict[str, Any]], reclaimed: int, orphans: list[dict[str, Any]],
               pending_commit: list[dict[str, Any]], skipped: list[dict[str, Any]], skipped_files: list[dict[str, Any]],
               orphaned_pins: list[dict[str, Any]] | tuple[()] = ()) -> Result:
    return {
        "changed": bool(actions),
        "actions": actions,
        "removed": removed,
        # What the removals freed as one set (read before the first of them; the same figure in check mode).
        "reclaimed_bytes": reclaimed,
        # Deprecated (0.2.0): the same figure, under the name playbooks read when reclaimed_bytes summed allocated bytes.
        "reclaimed_exclusive_bytes": reclaimed,
        "orphans": orphans,
        "pending_commit": pending_commit,
        "orphaned_pins": list(orphaned_pins),
        "skipped_volumes": skipped,
        "skipped_files": skipped_files,
    }

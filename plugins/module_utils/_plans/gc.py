# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pool-wide garbage collection: what crashes and old revisions leave behind.

One directory walk reads the pool (PoolScan); the plan is a list of removals,
each with its reason and the bytes it frees, per volume.  What gc never
touches: a dirty image (uncommitted data), anything of a volume in use or
whose lock is held, files that match no image pattern, and anything outside
``appvms/`` and ``vm-templates/`` except its own stale journals.
"""

from __future__ import annotations

import os
import stat
import time

from ansible_collections.dom0.reflink.plugins.module_utils._engine import file_actions as act
from ansible_collections.dom0.reflink.plugins.module_utils._fs.compare import exclusive_bytes
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument, ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._plans.gc_steps import (
    Removal,
    execute_reporting,
    read_journals,
    remove_journal_step,
    remove_vm_dir_step,
)
from ansible_collections.dom0.reflink.plugins.module_utils._fs.holders import set_aside_held_files
from ansible_collections.dom0.reflink.plugins.module_utils._engine.inuse_guard import InUseGuard
from ansible_collections.dom0.reflink.plugins.module_utils._plans.journal import (
    BEGUN,
    journal_name,
)
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import (
    LOCKS_DIR,
    metadata_dir,
    pool_lock,
    try_volume_lock,
)
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import classify, parse_vid, revision_id_problem
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import (
    SNAPSHOTS_DISABLED,
    VolumePlanner,
    check_revisions_to_keep,
)
from ansible_collections.dom0.reflink.plugins.module_utils._plans.pool import PoolScan, require_pool
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import (
    QUBESD_OWNED_KINDS,
    orphan_reason,
    read_qubes_xml,
)
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import execute, missing_pool_warning, planned_texts
from ansible_collections.dom0.reflink.plugins.module_utils._base.units import parse_duration
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import Surroundings


def _age(now, info):
    return now - info.mtime_ns / 1e9


class GcPlanner:
    """Works out, volume by volume, what gc removes (or rebuilds), and what it reports."""

    def __init__(self, pool_dir, options, now, qubes=None):
        self.pool_dir = pool_dir
        self.options = options
        self.now = now
        self.qubes = qubes          # the QubesPool from qubes.xml, or None
        self.per_volume = {}        # vid str -> list of actions
        self.vm_dir_removals = []   # (prefix, vm)
        self.journal_removals = []  # (journal file name, reason)
        self.orphans = []
        self.pending_commit = []
        self.orphaned_pins = []     # pins whose volume has neither a clean nor a dirty image; never removed
        self.skipped = []
        self.skipped_files = []     # removals left out because a process holds the file open
        self.planned_files = {}     # vid str -> VolumeFiles the volume's actions were planned from
        self._open_vm_dir = None    # (vm_dir, Directory or None), see _vm_dir
        self._prefix_dirs = {}      # prefix -> Directory or None

    def exclusive(self, vid, info):
        try:
            vm_dir = self._vm_dir(vid)
            if vm_dir is None:
                return None
            # O_NONBLOCK: a FIFO swapped in since the scan must not block gc (O_NOFOLLOW comes with open_file).
            fd = vm_dir.open_file(info.name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except (OSError, ReflinkError):   # gone or replaced meanwhile: no figure, not an error
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None   # replaced by something that is not an image since the scan: no figure
            return exclusive_bytes(fd)
        except OSError:
            return None
        finally:
            os.close(fd)

    def _vm_dir(self, vid):
        """The open VM directory of ``vid``: volumes come sorted, so one open at a time is enough."""
        if self._open_vm_dir is None or self._open_vm_dir[0] != vid.vm_dir:
            self._close_vm_dir()
            if vid.prefix not in self._prefix_dirs:
                self._prefix_dirs[vid.prefix] = self.pool_dir.open_dir(vid.prefix)
            prefix_dir = self._prefix_dirs[vid.prefix]
            self._open_vm_dir = (vid.vm_dir, prefix_dir.open_dir(vid.vm) if prefix_dir is not None else None)
        return self._open_vm_dir[1]

    def _close_vm_dir(self):
        if self._open_vm_dir is not None and self._open_vm_dir[1] is not None:
            self._open_vm_dir[1].close()
        self._open_vm_dir = None

    def close(self):
        """Close the directories opened for FIEMAP reads (once planning is done)."""
        self._close_vm_dir()
        for directory in self._prefix_dirs.values():
            if directory is not None:
                directory.close()
        self._prefix_dirs.clear()

    def removal(self, vid, info, reason):
        return Removal(vid, info, reason, self.exclusive(vid, info))

    def plan(self, scan, surroundings, journals, journal_tempfiles):
        options = self.options
        keep_vids = options["keep_vids"]
        for files in scan.sorted_volumes():
            vid = files.vid
            key = str(vid)
            listed = self.qubes.volume(key) if self.qubes is not None else None
            # A snapshot or volatile volume's dirty image is a running VM's, never a commit to make.
            if files.dirty is not None and (listed is None or listed.kind not in QUBESD_OWNED_KINDS):
                self.pending_commit.append({"vid": key, "file": "%s/%s" % (vid.vm_dir, files.dirty.name),
                                            "size": files.dirty.size})
            if files.pins and files.clean is None and files.dirty is None:
                self.orphaned_pins.extend({"vid": key, "name": name, "file": "%s/%s" % (vid.vm_dir, info.name),
                                           "size": info.size} for name, info in sorted(files.pins.items()))
            reasons = surroundings.in_use_reasons(files)
            if reasons:
                if files.all():
                    self.skipped.append({"vid": key, "reason": "in use: " + "; ".join(reasons)})
                continue
            journal = journals.get(journal_name(vid), (None, 0))
            actions = self.plan_volume(files, surroundings, journal, listed)
            orphan = orphan_reason(self.qubes, vid, keep_vids) if files.all() else None
            if orphan is not None:
                self.orphans.append({"vid": key, "size": files.size, "usage": sum(i.usage for i in files.all()),
                                     "reason": orphan})
                young = [info for info in files.all() if _age(self.now, info) < options["min_age"]]
                if options["remove_orphans"] and young:
                    # qvm-create, qvm-clone and a restore make images before qubesd saves qubes.xml.
                    self.orphans[-1]["kept"] = "%s is younger than min_age: a VM being created?" % young[0].name
                elif options["remove_orphans"]:
                    actions = [self.removal(vid, info, "orphan: " + orphan)
                               for info in files.all()]
            if actions:
                self.per_volume[key] = (vid, actions)
                self.planned_files[key] = files
        self.set_aside_held_files()
        self.plan_vm_dirs(scan)
        self.plan_journals(scan, journals)
        for name, mtime in sorted(journal_tempfiles.items()):
            if self.now - mtime >= self.options["min_age"]:
                self.journal_removals.append((name, "stale tempfile of a journal"))

    def set_aside_held_files(self):
        """Drop the removals of files that a process holds open (one walk of /proc for the whole run)."""
        self.skipped_files.extend(set_aside_held_files(self.per_volume))

    def plan_volume(self, files, surroundings, journal, listed=None):
        options = self.options
        vid = files.vid
        min_age = options["min_age"]
        actions = []
        for info in files.tempfiles:
            if _age(self.now, info) >= min_age:
                actions.append(self.removal(vid, info, "stale tempfile, older than min_age"))
        if files.import_ is not None:
            record, journal_mtime = journal
            claimed = record is not None and record.get("state") == BEGUN
            journal_age = self.now - journal_mtime
            if claimed and journal_age < options["import_max_age"]:
                pass  # a begun two-phase import: another program may be writing it
            elif claimed:
                actions.append(self.removal(vid, files.import_,
                                            "import begun longer ago than import_max_age and never committed"))
            elif _age(self.now, files.import_) >= min_age:
                actions.append(self.removal(vid, files.import_, "import image that no begun import claims"))
        for info in files.junk_revisions:
            problem = revision_id_problem(classify(info.name).revision_text)
            actions.append(self.removal(vid, info, "not a valid revision file: %s" % problem))
        keep = self.revisions_to_keep_of(vid, listed)
        excess = 0 if keep is None else len(files.revisions) - max(keep, 0)
        for number, info in files.revisions[:max(excess, 0)]:
            actions.append(self.removal(vid, info, "revision %d is beyond revisions_to_keep=%d" % (number, keep)))
        if files.precache is not None and files.precache_state == "stale":
            actions.append(self.removal(vid, files.precache, "stale precache (mtime or size differs from clean)"))
        qubesd_owned = listed is not None and listed.kind in QUBESD_OWNED_KINDS   # no precache of its own
        # Whether the volume has snapshots disabled is its own setting, whatever gc prunes to.
        own_keep = listed.revisions_to_keep if listed is not None else keep
        if options["rebuild_precache"] and own_keep != SNAPSHOTS_DISABLED and files.clean is not None \
                and files.dirty is None and files.precache_state != "fresh" and not qubesd_owned:
            planner = VolumePlanner(files, surroundings, lambda name: "%s/%s" % (vid.vm_dir, name))
            actions.append(planner.new_precache())
        return actions

    def revisions_to_keep_of(self, vid, listed=None):
        """How many revisions of ``vid`` gc keeps, or None: prune none of them.

        The per-volume value, else the option, else the volume's own setting in
        qubes.xml (``listed``; what ``qvm-volume config`` set).  Nobody having
        said how many means none is pruned: the volume's owner may keep more
        than gc would guess.
        """
        per_volume = self.options["revisions_to_keep_per_volume"]
        if str(vid) in per_volume:
            return per_volume[str(vid)]
        if self.options["revisions_to_keep"] is not None:
            return self.options["revisions_to_keep"]
        return listed.revisions_to_keep if listed is not None else None

    def plan_vm_dirs(self, scan):
        """VM directories that are (or will be, after the removals) empty."""
        removed = {}
        for vid, actions in self.per_volume.values():
            removed.setdefault(vid.vm_dir, set()).update(
                action.name for action in actions if isinstance(action, Removal))
        for rel_dir, entries in sorted(scan.vm_dirs.items()):
            if set(entries) <= removed.get(rel_dir, set()):
                self.vm_dir_removals.append(tuple(rel_dir.split("/")))

    def plan_journals(self, scan, journals):
        import_max_age = self.options["import_max_age"]
        for name, (record, mtime) in sorted(journals.items()):
            vid = None
            if record is not None:
                try:
                    vid = parse_vid(record.get("vid", ""))
                except InvalidArgument:
                    vid = None
            if vid is None:
                self.journal_removals.append((name, "unreadable journal"))
                continue
            files = scan.volumes.get(str(vid))
            planned = self.per_volume.get(str(vid), (None, []))[1]
            import_removed = any(isinstance(a, Removal) and a.name == vid.import_ for a in planned)
            if record.get("state") == BEGUN:
                if files is None or files.import_ is None or import_removed:
                    self.journal_removals.append((name, "journal of an import whose image is gone"))
            elif self.now - mtime >= import_max_age:
                self.journal_removals.append((name, "record of a committed import, older than import_max_age"))


def parse_gc_options(params):
    options = {
        "min_age": parse_duration(params["min_age"], "min_age"),
        "import_max_age": parse_duration(params["import_max_age"], "import_max_age"),
        "revisions_to_keep": check_revisions_to_keep(params["revisions_to_keep"], optional=True),
        "revisions_to_keep_per_volume": {},
        "rebuild_precache": params["rebuild_precache"],
        "remove_orphans": params["remove_orphans"],
        "keep_vids": None,
    }
    for vid, given in (params.get("revisions_to_keep_per_volume") or {}).items():
        try:
            keep = int(given)
        except (TypeError, ValueError):
            raise InvalidArgument("revisions_to_keep_per_volume[%s] must be an integer" % vid) from None
        options["revisions_to_keep_per_volume"][str(parse_vid(vid))] = check_revisions_to_keep(keep)
    if params.get("keep_vids") is not None:
        options["keep_vids"] = {str(parse_vid(vid)) for vid in params["keep_vids"]}
    return options


def run_gc_task(params, check_mode):
    """reflink_gc: scan, plan, remove (unless in check mode), report."""
    options = parse_gc_options(params)
    # An empty list means no volume, never every volume (an empty template variable must not widen the task).
    only = [parse_vid(vid) for vid in params["vids"]] if params.get("vids") is not None else None
    path = params["pool"]
    if options["remove_orphans"] and options["keep_vids"] == set():
        raise InvalidArgument("keep_vids is an empty list and remove_orphans is true: that would remove every "
                              "volume of the pool (an empty keep_vids is almost always an empty template "
                              "variable); nothing was changed; name the volumes that should exist in keep_vids, "
                              "or leave keep_vids out to take them from qubes.xml")
    qubes = read_qubes_xml(params.get("qubes_xml"), path)
    if options["remove_orphans"] and options["keep_vids"] is None and qubes is None:
        raise InvalidArgument("remove_orphans needs keep_vids (the list of volumes that should exist), or a "
                              "qubes.xml (qubes_xml) that lists this pool")
    now = time.time()
    removed, actions, skipped = [], [], []
    if check_mode and not os.path.lexists(path):
        # As the volume modules do: plan against the empty pool an earlier reflink_pool task would make.
        return dict(_gc_result([], [], [], [], [], []), warnings=[missing_pool_warning(path)])
    with Directory.open_pool(path) as pool_dir:
        require_pool(pool_dir)
        with pool_lock(pool_dir, exclusive=True, timeout=params["lock_timeout"], purpose="reflink_gc",
                       create=not check_mode):
            scan = PoolScan.read(pool_dir, only)
            planner = GcPlanner(pool_dir, options, now, qubes)
            surroundings = Surroundings.read(path, qubes.name if qubes else None)
            try:
                planner.plan(scan, surroundings, *read_journals(pool_dir, only))
            finally:
                planner.close()
            skipped.extend(planner.skipped)
            locks = None
            meta = metadata_dir(pool_dir, create=False)
            if meta is not None:
                with meta:
                    locks = meta.open_dir(LOCKS_DIR)
            probed = {}
            try:
                for key in sorted(planner.per_volume):
                    vid, volume_actions = planner.per_volume[key]
                    if check_mode:
                        actions.extend(planned_texts(volume_actions, pool_dir, probed))
                        removed.extend(a.entry for a in volume_actions if isinstance(a, Removal))
                        continue
                    lock = try_volume_lock(locks, vid) if locks is not None else None
                    if locks is not None and lock is None:
                        skipped.append({"vid": key, "reason": "its volume lock is held by another task"})
                        continue
                    try:
                        with act.Workspace(pool_dir, vid).open_vm_dir() as workspace:
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
                if check_mode:
                    actions.extend(step.text for step in steps)
                else:
                    actions.extend(execute(steps, None))
            finally:
                if locks is not None:
                    locks.close()
    return _gc_result(actions, removed, planner.orphans, planner.pending_commit, skipped, planner.skipped_files,
                      planner.orphaned_pins)


def _gc_result(actions, removed, orphans, pending_commit, skipped, skipped_files, orphaned_pins=()):
    return {
        "changed": bool(actions),
        "actions": actions,
        "removed": removed,
        "reclaimed_bytes": sum(entry["bytes"] for entry in removed),
        "reclaimed_exclusive_bytes": sum(entry.get("exclusive_bytes", 0) for entry in removed),
        "orphans": orphans,
        "pending_commit": pending_commit,
        "orphaned_pins": list(orphaned_pins),
        "skipped_volumes": skipped,
        "skipped_files": skipped_files,
    }

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pool-wide garbage collection: what crashes and old revisions leave behind.

One directory walk reads the pool (PoolScan); the plan is a list of removals,
each with its reason, per volume, and what they free (gc_space.py: one
extent map of the whole pool, read once when there is anything to remove).  What gc never
touches: a dirty image (uncommitted data), anything of a volume in use or
whose lock is held, files that match no image pattern, and anything outside
``appvms/`` and ``vm-templates/`` except its own stale journals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Vid, classify, parse_vid, revision_id_problem
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Action
from ansible_collections.dom0.reflink.plugins.module_utils._engine.file_actions import Clone
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.holders import describe_holders, open_holders
from ansible_collections.dom0.reflink.plugins.module_utils._plans.gc_space import RemovalSpace
from ansible_collections.dom0.reflink.plugins.module_utils._plans.gc_steps import Removal
from ansible_collections.dom0.reflink.plugins.module_utils._plans.journal import BEGUN, journal_name
from ansible_collections.dom0.reflink.plugins.module_utils._plans.journal import JournalRecord
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import SNAPSHOTS_DISABLED, VolumePlanner
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo, VolumeFiles
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import QUBESD_OWNED_KINDS, QubesPool, QubesVolume, orphan_reason
from ansible_collections.dom0.reflink.plugins.module_utils._state.scan import PoolScan
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings


@dataclass(frozen=True)
class GcOptions:
    """What reflink_gc is asked to do, parsed from its options (see _tasks/gc.py)."""

    min_age: int                                  # seconds
    import_max_age: int                           # seconds
    revisions_to_keep: int | None                 # None: the volume's own setting decides
    revisions_to_keep_per_volume: dict[str, int] = field(default_factory=dict)   # vid str -> revisions to keep
    rebuild_precache: bool = False
    remove_orphans: bool = False
    keep_vids: set[str] | None = None                  # vid strs that should exist, or None: not given


def _age(now: float, info: FileInfo) -> float:
    return now - info.mtime_ns / 1e9


def set_aside_held_files(per_volume: dict[str, tuple[Vid, list[Action[Workspace]]]]) -> list[dict[str, Any]]:
    """Take out of ``per_volume`` ({key: (vid, actions)}) the removals of files some process holds open.

    A Removal knows the file it removes by its ``identity`` (st_dev, st_ino);
    a volume left with no action is dropped.  A clone that would replace a
    file held open (the rebuild of a held stale precache) goes too: its rename
    would take the name from the held file as surely as a removal.  Returns
    the reports of the removals taken out, for ``skipped_files``.
    """
    identities = [action.identity for _vid, actions in per_volume.values() for action in actions
                  if isinstance(action, Removal)]
    holders = open_holders(identities)
    skipped: list[dict[str, Any]] = []
    if not holders:
        return skipped
    for key in list(per_volume):
        vid, actions = per_volume[key]
        kept: list[Action[Workspace]] = []
        held: dict[str, dict[str, Any]] = {}   # file name -> its report
        for action in actions:
            if isinstance(action, Clone) and action.dst in held:
                held[action.dst]["reason"] += ", nor rebuilt"
                continue
            found = holders.get(action.identity) if isinstance(action, Removal) else None
            if found is None or not isinstance(action, Removal):
                kept.append(action)
                continue
            held[action.name] = {
                "file": action.entry["file"],
                "reason": "held open by %s; not removed (it would have been: %s)"
                          % (describe_holders(found), action.entry["reason"]),
                "holders": [{"pid": pid, "command": command} for pid, command in found],
            }
            skipped.append(held[action.name])
        if kept:
            per_volume[key] = (vid, kept)
        else:
            del per_volume[key]
    return skipped


class GcPlanner:
    """Works out, volume by volume, what gc removes (or rebuilds), and what it reports."""

    def __init__(self, pool_dir: Directory, options: GcOptions, now: float, qubes: QubesPool | None = None) -> None:
        self.pool_dir = pool_dir
        self.options = options
        self.now = now
        self.qubes = qubes          # the QubesPool from qubes.xml, or None
        self.per_volume: dict[str, tuple[Vid, list[Action[Workspace]]]] = {}   # vid str -> (vid, actions)
        self.vm_dir_removals: list[tuple[str, str]] = []   # (prefix, vm)
        self.journal_removals: list[tuple[str, str]] = []  # (journal file name, reason)
        self.orphans: list[dict[str, Any]] = []
        self.pending_commit: list[dict[str, Any]] = []
        self.orphaned_pins: list[dict[str, Any]] = []     # pins whose volume has neither a clean nor a dirty image; never removed
        self.skipped: list[dict[str, Any]] = []
        self.skipped_files: list[dict[str, Any]] = []     # removals left out because a process holds the file open
        self.planned_files: dict[str, VolumeFiles] = {}     # vid str -> VolumeFiles the volume's actions were planned from
        self.space: RemovalSpace | None = None   # what the removals free; read only when there is a removal

    def removal(self, vid: Vid, info: FileInfo, reason: str) -> Removal:
        return Removal(vid, info, reason)

    def removals(self) -> list[Removal]:
        """Every file removal planned (the held files already set aside)."""
        return [action for _vid, actions in self.per_volume.values() for action in actions if isinstance(action, Removal)]

    def read_space(self, scan: PoolScan) -> None:
        """Read what the planned removals free (once, before any is done), if there is any; give each its figure."""
        removals = self.removals()
        if not removals:
            return   # a run that removes nothing reads no extent map
        self.space = RemovalSpace.read(self.pool_dir, scan)
        for removal in removals:
            removal.set_exclusive(self.space.exclusive(removal.entry["file"]))

    def reclaimed_bytes(self, removed: list[dict[str, Any]]) -> int:
        """What removing the files of the entries ``removed`` frees, as one set (0 without a removal)."""
        if self.space is None or not removed:
            return 0
        return self.space.freed(entry["file"] for entry in removed)

    def plan(self, scan: PoolScan, surroundings: Surroundings, journals: dict[str, tuple[JournalRecord | None, float]],
             journal_tempfiles: dict[str, float]) -> None:
        options = self.options
        keep_vids = options.keep_vids
        for files in scan.sorted_volumes():
            vid = files.vid
            key = str(vid)
            listed = self.qubes.volume(key) if self.qubes is not None else None
            # A snapshot or volatile volume's dirty image is a running VM's, never a commit to make.
            if files.dirty is not None and (listed is None or listed.kind not in QUBESD_OWNED_KINDS):
                self.pending_commit.append({"vid": key, "file": vid.rel(files.dirty.name),
                                            "size": files.dirty.size})
            if files.pins and files.clean is None and files.dirty is None:
                self.orphaned_pins.extend({"vid": key, "name": name, "file": vid.rel(info.name),
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
                young = [info for info in files.all() if _age(self.now, info) < options.min_age]
                if options.remove_orphans and young:
                    # qvm-create, qvm-clone and a restore make images before qubesd saves qubes.xml.
                    self.orphans[-1]["kept"] = "%s is younger than min_age: a VM being created?" % young[0].name
                elif options.remove_orphans:
                    actions = [self.removal(vid, info, "orphan: " + orphan)
                               for info in files.all()]
            if actions:
                self.per_volume[key] = (vid, actions)
                self.planned_files[key] = files
        self.set_aside_held_files()
        self.read_space(scan)
        self.plan_vm_dirs(scan)
        self.plan_journals(scan, journals)
        for name, mtime in sorted(journal_tempfiles.items()):
            if self.now - mtime >= self.options.min_age:
                self.journal_removals.append((name, "stale tempfile of a journal"))

    def set_aside_held_files(self) -> None:
        """Drop the removals of files that a process holds open (one walk of /proc for the whole run)."""
        self.skipped_files.extend(set_aside_held_files(self.per_volume))

    def plan_volume(self, files: VolumeFiles, surroundings: Surroundings, journal: tuple[JournalRecord | None, float],
                    listed: QubesVolume | None = None) -> list[Action[Workspace]]:
        options = self.options
        vid = files.vid
        min_age = options.min_age
        actions: list[Action[Workspace]] = []
        for info in files.tempfiles:
            if _age(self.now, info) >= min_age:
                actions.append(self.removal(vid, info, "stale tempfile, older than min_age"))
        if files.import_ is not None:
            record, journal_mtime = journal
            claimed = record is not None and record.get("state") == BEGUN
            journal_age = self.now - journal_mtime
            if claimed and journal_age < options.import_max_age:
                pass  # a begun two-phase import: another program may be writing it
            elif claimed:
                actions.append(self.removal(vid, files.import_,
                                            "import begun longer ago than import_max_age and never committed"))
            elif _age(self.now, files.import_) >= min_age:
                actions.append(self.removal(vid, files.import_, "import image that no begun import claims"))
        for info in files.junk_revisions:
            image = classify(info.name)
            problem = revision_id_problem(image.revision_text or "") if image is not None else None
            actions.append(self.removal(vid, info, "not a valid revision file: %s" % problem))
        keep = self.revisions_to_keep_of(vid, listed)
        excess = 0 if keep is None else len(files.revisions) - max(keep, 0)
        for number, info in files.revisions[:max(excess, 0)]:
            actions.append(self.removal(vid, info, "revision %d is beyond revisions_to_keep=%s" % (number, keep)))
        if files.precache is not None and files.precache_state == "stale":
            actions.append(self.removal(vid, files.precache, "stale precache (mtime or size differs from clean)"))
        qubesd_owned = listed is not None and listed.kind in QUBESD_OWNED_KINDS   # no precache of its own
        # Whether the volume has snapshots disabled is its own setting, whatever gc prunes to.
        own_keep = listed.revisions_to_keep if listed is not None else keep
        if options.rebuild_precache and own_keep != SNAPSHOTS_DISABLED and files.clean is not None \
                and files.dirty is None and files.precache_state != "fresh" and not qubesd_owned:
            planner = VolumePlanner(files, surroundings)
            actions.append(planner.new_precache())
        return actions

    def revisions_to_keep_of(self, vid: Vid, listed: QubesVolume | None = None) -> int | None:
        """How many revisions of ``vid`` gc keeps, or None: prune none of them.

        The per-volume value, else the option, else the volume's own setting in
        qubes.xml (``listed``; what ``qvm-volume config`` set).  Nobody having
        said how many means none is pruned: the volume's owner may keep more
        than gc would guess.
        """
        per_volume = self.options.revisions_to_keep_per_volume
        if str(vid) in per_volume:
            return per_volume[str(vid)]
        if self.options.revisions_to_keep is not None:
            return self.options.revisions_to_keep
        return listed.revisions_to_keep if listed is not None else None

    def plan_vm_dirs(self, scan: PoolScan) -> None:
        """VM directories that are (or will be, after the removals) empty."""
        removed: dict[str, set[str]] = {}
        for vid, actions in self.per_volume.values():
            removed.setdefault(vid.vm_dir, set()).update(
                action.name for action in actions if isinstance(action, Removal))
        for rel_dir, entries in sorted(scan.vm_dirs.items()):
            if set(entries) <= removed.get(rel_dir, set()):
                prefix, _slash, vm = rel_dir.partition("/")
                self.vm_dir_removals.append((prefix, vm))

    def plan_journals(self, scan: PoolScan, journals: dict[str, tuple[JournalRecord | None, float]]) -> None:
        import_max_age = self.options.import_max_age
        for name, (record, mtime) in sorted(journals.items()):
            vid = None
            if record is not None:
                try:
                    vid = parse_vid(record.get("vid", ""))
                except InvalidArgument:
                    vid = None
            if vid is None or record is None:
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

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plans for one volume: what create, resize, commit and remove do, as a list of actions.

``plan_volume`` reads the volume (one listing of its VM directory, one
``lstat`` per image) and hands a :class:`VolumePlanner` to the task's plan
function.  The planner's methods refuse what must not be done with a clear
error and return the actions that bring the volume to the wanted state; an
empty list means there is nothing to do.  Planning changes nothing on disk,
but it does read: besides the listing, a comparison of two images reads them
(cheaply for reflinks, see _fs/compare.py), and a size check tries the size
on an unnamed file that is gone once closed.  Reverts are planned in
revert.py, pins in pins.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import (
    InvalidArgument,
    VolumeInUse,
    VolumeStateError,
)
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Vid, format_timestamp
from ansible_collections.dom0.reflink.plugins.module_utils._engine import file_actions as act
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Action
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles, read_volume
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import QubesPool, QubesVolume
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings, loop_size

# The actions of a volume's plan, in the order they run.
Actions = list[Action[Workspace]]

# revisions_to_keep: -1 means "snapshots disabled": no revision, no precache.
SNAPSHOTS_DISABLED = -1


# What qubesd keeps for a volume whose revisions_to_keep nothing sets (the Qubes pool default).
DEFAULT_REVISIONS_TO_KEEP = 1


@overload
def check_revisions_to_keep(value: object, optional: Literal[False] = False) -> int: ...


@overload
def check_revisions_to_keep(value: object, optional: bool) -> int | None: ...


def check_revisions_to_keep(value: object, optional: bool = False) -> int | None:
    """``value`` if it is a valid revisions_to_keep (None too, when ``optional``: not given)."""
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < SNAPSHOTS_DISABLED:
        raise InvalidArgument("revisions_to_keep must be an integer >= -1 (got %r)" % (value,))
    return value


class VolumePlanner:
    """Plans for one volume, given its files and what surrounds it."""

    def __init__(self, files: VolumeFiles, surroundings: Surroundings, vm_dir: Directory | None = None,
                 prefix_dir: Directory | None = None, qubes: QubesVolume | None = None) -> None:
        self.files = files
        self.vid = files.vid
        self.surroundings = surroundings
        self.rel = files.vid.rel    # a file of the VM directory as a path relative to the pool, for messages
        self.vm_dir = vm_dir  # to compare contents; None where the VM directory does not exist
        self.prefix_dir = prefix_dir
        self.qubes = qubes    # the QubesVolume qubes.xml lists for this vid, or None

    def revisions_to_keep(self, given: int | None) -> int:
        """``given`` if the task sets it, else the volume's own value from qubes.xml, else Qubes' default."""
        if given is not None:
            return given
        if self.qubes is not None:
            return self.qubes.revisions_to_keep
        return DEFAULT_REVISIONS_TO_KEEP

    def check_size(self, size: int) -> None:
        """Refuse, before any change, a size larger than the filesystem's largest file."""
        where = self.vm_dir or self.prefix_dir
        if where is not None and not where.file_size_fits(size):
            raise InvalidArgument("size %d is too large: larger than the largest file the filesystem of %s can hold"
                                  % (size, where.path))

    # -- building blocks ---------------------------------------------------

    def refuse_if_in_use(self, what: str) -> None:
        reasons = self.surroundings.in_use_reasons(self.files)
        if reasons:
            if self.surroundings.running_reasons(self.files):
                way_out = "run this again once the VM is stopped and nothing else uses its images"
            else:   # only a dirty image: a halted VM whose stop did not commit
                way_out = ("if the VM is halted, commit its pending dirty image first with "
                           "dom0.reflink.reflink_volume state=stopped; then run this again")
            raise VolumeInUse("cannot %s volume %s: it is in use (%s); %s"
                              % (what, self.vid, "; ".join(reasons), way_out))

    def refuse_if_import_held(self, what: str) -> None:
        """Refuse to replace or remove the import image while a process holds it open.

        qubesd's Import writer keeps it open while a slow restore streams in: replaced or
        removed, the data would go into a file nobody can commit.  One walk of /proc, and
        only when there is an import image.
        """
        info = self.files.import_
        if info is None:
            return
        # Imported here, as the two below: a task with nothing to do does not compile what it does not run.
        # pylint: disable-next=import-outside-toplevel
        from ansible_collections.dom0.reflink.plugins.module_utils._fs.holders import describe_holders, open_holders  # noqa: PLC0415
        found = open_holders([(info.dev, info.ino)]).get((info.dev, info.ino))
        if found:
            raise VolumeInUse(
                "cannot %s volume %s: its import image %s is held open by %s (qubesd's Import writer keeps it "
                "open while data streams in), and this would replace or remove it; nothing was changed; run "
                "this again once that process has closed it" % (what, self.vid, self.rel(info.name),
                                                                describe_holders(found)))

    def new_precache(self) -> act.Clone:
        return act.MakePrecache(self.rel, self.vid.clean, self.vid.precache, "refresh precache",
                                copy_mtime=True)

    def remove_everything(self, why: str) -> list[act.Remove]:
        """Remove actions for every file of the volume (the dirty image last)."""
        files = self.files
        self.refuse_if_import_held("remove the files of")
        ordered = list(files.tempfiles)
        ordered.extend(info for info in (files.import_,) if info)
        ordered.extend(info for _number, info in files.revisions)
        ordered.extend(files.junk_revisions)
        ordered.extend(info for info in (files.clean, files.precache, files.dirty) if info)
        return [act.Remove(self.rel, info.name, why) for info in ordered]

    def newest_revision_is_clean(self, files: VolumeFiles) -> bool:
        """Whether the newest revision already holds the clean image.

        That is what a commit or revert leaves when it is killed after making
        the revision and before its rename; making another one would only
        push an older revision out.  Named from clean's mtime, same size, and
        the same bytes (cheap when they share extents, as a fresh reflink does).
        """
        if not files.revisions or files.clean is None or self.vm_dir is None:
            return False
        info = files.revisions[-1][1]
        clean = files.clean
        if info.size != clean.size or not info.name.endswith("@" + format_timestamp(clean.mtime_ns // 10 ** 9)):
            return False
        return self.same_content_of(info.name, self.vid.clean)

    def same_content_of(self, left: str, right: str) -> bool:
        """Whether the files ``left`` and ``right`` of the VM directory hold the same bytes."""
        vm_dir = self.vm_dir
        if vm_dir is None:   # no VM directory: neither file is there
            return False
        # pylint: disable-next=import-outside-toplevel
        from ansible_collections.dom0.reflink.plugins.module_utils._fs.compare import same_content  # noqa: PLC0415
        left_fd = vm_dir.open_file(left, os.O_RDONLY)
        try:
            right_fd = vm_dir.open_file(right, os.O_RDONLY)
            try:
                return same_content(left_fd, right_fd)
            finally:
                os.close(right_fd)
        finally:
            os.close(left_fd)

    def keep_clean_as_revision(self, files: VolumeFiles, why: str) -> tuple[Actions, int]:
        """Actions that keep the current clean image as the next revision; how many were added (0 or 1)."""
        if files.clean is None or self.newest_revision_is_clean(files):
            return [], 0
        name = self.vid.revision(files.next_revision(), format_timestamp(files.clean.mtime_ns // 10 ** 9))
        return [act.KeepAsRevision(self.rel, self.vid.clean, name, why)], 1

    def finish_precache(self, keep: int) -> Actions:
        """Make a missing or stale precache of a stopped volume: how an interrupted commit converges."""
        files = self.files
        if files.dirty is not None or files.clean is None or keep == SNAPSHOTS_DISABLED \
                or files.precache_state == "fresh":
            return []
        actions: Actions = []
        if files.precache is not None:
            actions.append(act.Remove(self.rel, self.vid.precache, "stale precache"))
        actions.append(self.new_precache())
        return actions

    def commit(self, staged: str, keep: int, files: VolumeFiles | None = None) -> Actions:
        """Make the file ``staged`` the new clean image, as qubesd's commit does.

        ``files`` is the volume as it will be when the commit starts (default:
        as it is now).  The staged file is flushed first, so that a failing
        disk stops the commit before any revision is pruned.
        """
        vid = self.vid
        files = files or self.files
        actions: Actions = []
        if staged == vid.dirty:
            actions.append(act.Fsync(self.rel, staged))
        added = 0
        if keep > 0:
            kept, added = self.keep_clean_as_revision(files, "keep the old image as a revision")
            actions.extend(kept)
        excess = len(files.revisions) + added - max(keep, 0)
        for number, info in files.revisions[:max(excess, 0)]:
            actions.append(act.Prune(self.rel, info.name,
                                     "revision %d is beyond revisions_to_keep=%d" % (number, keep)))
        if files.precache is not None:
            actions.append(act.RemovePrecache(self.rel, vid))
        actions.append(act.Rename(self.rel, staged, vid.clean, "commit"))
        if keep != SNAPSHOTS_DISABLED:
            actions.append(self.new_precache())
        return actions

    # -- operations --------------------------------------------------------

    def create(self, size: int, keep: int, vm_dir_exists: bool) -> Actions:
        """A new origin volume: no leftover of an earlier one, a sparse clean, its precache."""
        self.check_size(size)
        actions: Actions = list(self.remove_everything("leftover of an earlier volume with this vid"))
        if not vm_dir_exists:
            actions.append(act.MakeVmDir(self.vid))
        actions.append(act.CreateSparse(self.rel, self.vid.clean, size))
        if keep != SNAPSHOTS_DISABLED:
            actions.append(self.new_precache())
        return actions

    def resize(self, size: int, allow_shrink: bool, keep: int) -> Actions:
        files = self.files
        current = files.size
        if size == current:
            return []
        self.check_size(size)
        if size < current and not allow_shrink:
            raise VolumeStateError(
                "refusing to shrink volume %s from %d to %d bytes: data beyond the new end is lost. "
                "Shrink the filesystem inside first, then set allow_shrink: true" % (self.vid, current, size))
        if files.dirty is not None:
            running = self.surroundings.running_reasons(files)
            if size < current and running:
                raise VolumeInUse("cannot shrink volume %s while it is running (%s)"
                                  % (self.vid, "; ".join(running)))
            actions: Actions = [act.ResizeInPlace(self.rel, self.vid.dirty, size)]
            for device in self.surroundings.loops_of(self.vid, self.vid.dirty):
                actions.append(act.SetLoopCapacity(device))
            return actions
        # Stopped: never mutate clean (a backup may be reading it); give it a new inode.  The old
        # precache stays until the new one replaces it: it is stale (its size differs) meanwhile,
        # and still there if the resize fails.
        actions = [act.Clone(self.rel, self.vid.clean, self.vid.clean, "resize (new inode)", size=size)]
        if keep != SNAPSHOTS_DISABLED:
            actions.append(self.new_precache())
        elif files.precache is not None:
            actions.append(act.Remove(self.rel, self.vid.precache, "stale precache"))
        return actions

    def present(self, size: int | None, allow_shrink: bool, keep: int, vm_dir_exists: bool) -> Actions:
        files = self.files
        if not files.exists:
            if size is None:
                raise InvalidArgument("volume %s does not exist: give size to create it" % self.vid)
            return self.create(size, keep, vm_dir_exists)
        if size is not None and size != files.size:
            return self.resize(size, allow_shrink, keep)
        if files.dirty is not None:
            return self.loops_catch_up()
        return self.finish_precache(keep)

    def loops_catch_up(self) -> Actions:
        """Loop devices still at an older size of the dirty image: a resize was killed before telling them."""
        dirty = self.files.dirty
        if dirty is None:   # called for a volume with a dirty image only
            return []
        return [act.SetLoopCapacity(device) for device in self.surroundings.loops_of(self.vid, self.vid.dirty)
                if loop_size(device) not in (None, dirty.size)]

    def stopped(self, keep: int) -> Actions:
        if self.files.dirty is None:
            return self.finish_precache(keep)
        running = self.surroundings.running_reasons(self.files)
        if running:
            raise VolumeInUse("cannot commit volume %s: it is running (%s); stop the VM first"
                              % (self.vid, "; ".join(running)))
        return self.commit(self.vid.dirty, keep)

    def absent(self, vm_dir_names: list[str], remove_pins: bool = False) -> Actions:
        """Remove the volume; its pins stay (and so its VM directory) unless ``remove_pins``."""
        everything = self.files.all()
        if remove_pins:
            everything.extend(self.files.pins[name] for name in sorted(self.files.pins))
        if not everything:
            return []
        self.refuse_if_in_use("remove")
        actions: Actions = list(self.remove_everything("volume removed"))
        if remove_pins:
            actions.extend(act.Remove(self.rel, self.files.pins[name].name, "pin removed with its volume (remove_pins)")
                           for name in sorted(self.files.pins))
        if set(vm_dir_names) <= {info.name for info in everything}:
            actions.append(act.RemoveVmDirIfEmpty(self.vid))
        return actions


@dataclass
class PlanContext:
    """What a task's plan function gets besides the planner: where it plans, and what it may add to."""

    workspace: Workspace     # pool, prefix and VM directory
    vm_dir_names: list[str]  # the VM directory's entries (in a batch: as the items before leave them)
    vm_dir_exists: bool      # whether the VM directory exists (in a batch: once the items before have run)
    warnings: list[str]      # each becomes a module warning


@dataclass
class VolumePlan:
    """One volume's plan and what became of it."""

    workspace: Workspace
    files: VolumeFiles       # what the plan was made from
    actions: Actions
    after: VolumeFiles       # what the plan leaves: simulated, read again once executed
    done: list[str] = field(default_factory=list)   # what it did (check mode: what it would do)


# A task's plan function: the actions that bring the volume where the task wants it.
PlanFunction = Callable[[VolumePlanner, PlanContext], Actions]


def read_for_plan(workspace: Workspace) -> tuple[list[str], VolumeFiles]:
    """The entries of the VM directory of ``workspace`` (opened by the caller) and the volume's files among them."""
    vm_dir = workspace.vm_dir
    listing = vm_dir.names() if vm_dir is not None else []
    return listing, read_volume(vm_dir, workspace.vid, listing)


def plan_volume(files: VolumeFiles, surroundings: Surroundings, qubes: QubesPool | None, plan: PlanFunction,
                context: PlanContext) -> VolumePlan:
    """Plan the volume whose ``files`` were read: ``plan(planner, context)``.

    ``qubes``: the QubesPool of qubes.xml, or None.  The VolumePlan holds the
    files as the plan leaves them, simulated.
    """
    workspace = context.workspace
    planner = VolumePlanner(files, surroundings, workspace.vm_dir, workspace.prefix_dir,
                            qubes=qubes.volume(workspace.vid) if qubes is not None else None)
    actions = plan(planner, context)
    if not actions:
        return VolumePlan(workspace, files, actions, files)
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.dom0.reflink.plugins.module_utils._engine.executor import simulate  # noqa: PLC0415
    return VolumePlan(workspace, files, actions, simulate(files, actions))


STATES = ("present", "absent", "stopped")
# What each state does to the volume's data, for the refusal of a qubesd-owned volume (None: only removes).
CHANGES = {"present": "create or resize", "stopped": "commit", "absent": None}


@dataclass
class VolumeRequest:
    """What one volume should become: a task's options, or one item of ``volumes`` over them."""

    vid: Vid
    state: str = "present"
    size: int | None = None
    allow_shrink: bool = False
    revisions_to_keep: int | None = None
    remove_pins: bool = False
    label: str = ""       # how an error names the item ("" for a single-volume task)
    warning: str = ""     # what the task should be told about this request (a size it does not use), or ""

    @property
    def changes(self) -> str | None:
        return CHANGES[self.state]

    def kept_pins(self, after: VolumeFiles) -> dict[str, Any]:
        """The ``kept_pins`` of a task (or item) with state=absent: the pins that stay; nothing for other states."""
        return {"kept_pins": sorted(after.pins)} if self.state == "absent" else {}


def unused_size_warning(state: str, size: int | None, label: str = "") -> str:
    """The warning for a size given with a state that does not use it (never ignored silently), or ""."""
    if size is None or state == "present":
        return ""
    if state == "absent":
        why = "state=absent removes the volume"
    else:
        why = ("state=stopped commits the pending dirty image at its own size; to resize, run state=present "
               "with size after it")
    return "%ssize %d was not used: %s" % ("%s: " % label if label else "", size, why)


def plan_request(request: VolumeRequest, planner: VolumePlanner, context: PlanContext) -> Actions:
    """The actions that bring one volume to ``request`` (the one place for what each state means)."""
    keep = planner.revisions_to_keep(request.revisions_to_keep)
    if request.warning:
        context.warnings.append(request.warning)
    if request.state == "absent":
        return planner.absent(context.vm_dir_names, remove_pins=request.remove_pins)
    if request.state == "stopped":
        return planner.stopped(keep)
    return planner.present(request.size, request.allow_shrink, keep, vm_dir_exists=context.vm_dir_exists)

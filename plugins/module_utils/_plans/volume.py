# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plans of the volume operations of the contract: create, resize, commit, remove.

Each ``plan_*`` function reads a :class:`VolumeFiles` (and what surrounds the
volume), refuses what must not be done with a clear error, and returns the
list of actions that brings the volume to the wanted state; an empty list
means there is nothing to do.  Nothing here touches the disk.
"""

from __future__ import annotations

import os

from ansible_collections.dom0.reflink.plugins.module_utils._engine import file_actions as act
from ansible_collections.dom0.reflink.plugins.module_utils._fs.compare import same_content
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import (
    InvalidArgument,
    VolumeInUse,
    VolumeStateError,
)
from ansible_collections.dom0.reflink.plugins.module_utils._fs.holders import describe_holders, open_holders
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import format_timestamp
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import loop_size

# revisions_to_keep: -1 means "snapshots disabled": no revision, no precache.
SNAPSHOTS_DISABLED = -1


# What qubesd keeps for a volume whose revisions_to_keep nothing sets (the Qubes pool default).
DEFAULT_REVISIONS_TO_KEEP = 1


def check_revisions_to_keep(value, optional=False):
    """``value`` if it is a valid revisions_to_keep (None too, when ``optional``: not given)."""
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < SNAPSHOTS_DISABLED:
        raise InvalidArgument("revisions_to_keep must be an integer >= -1 (got %r)" % (value,))
    return value


class VolumePlanner:
    """Plans for one volume, given its files and what surrounds it."""

    def __init__(self, files, surroundings, rel, vm_dir=None, prefix_dir=None, qubes=None):
        self.files = files
        self.vid = files.vid
        self.surroundings = surroundings
        self.rel = rel
        self.vm_dir = vm_dir  # to compare contents; None where the VM directory does not exist
        self.prefix_dir = prefix_dir
        self.qubes = qubes    # the QubesVolume qubes.xml lists for this vid, or None

    def revisions_to_keep(self, given):
        """``given`` if the task sets it, else the volume's own value from qubes.xml, else Qubes' default."""
        if given is not None:
            return given
        if self.qubes is not None:
            return self.qubes.revisions_to_keep
        return DEFAULT_REVISIONS_TO_KEEP

    def check_size(self, size):
        """Refuse, before any change, a size larger than the filesystem's largest file."""
        where = self.vm_dir or self.prefix_dir
        if where is not None and not where.file_size_fits(size):
            raise InvalidArgument("size %d is too large: larger than the largest file the filesystem of %s can hold"
                                  % (size, where.path))

    # -- building blocks ---------------------------------------------------

    def refuse_if_in_use(self, what):
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
        found = open_holders([(info.dev, info.ino)]).get((info.dev, info.ino))
        if found:
            raise VolumeInUse(
                "cannot %s volume %s: its import image %s is held open by %s (qubesd's Import writer keeps it "
                "open while data streams in), and this would replace or remove it; nothing was changed; run "
                "this again once that process has closed it" % (what, self.vid, self.rel(info.name),
                                                                describe_holders(found)))

    def new_precache(self):
        return act.MakePrecache(self.rel, self.vid.clean, self.vid.precache, "refresh precache",
                                copy_mtime=True)

    def remove_everything(self, why):
        """Remove actions for every file of the volume (the dirty image last)."""
        files = self.files
        self.refuse_if_import_held("remove the files of")
        ordered = list(files.tempfiles)
        ordered.extend(info for info in (files.import_,) if info)
        ordered.extend(info for _number, info in files.revisions)
        ordered.extend(files.junk_revisions)
        ordered.extend(info for info in (files.clean, files.precache, files.dirty) if info)
        return [act.Remove(self.rel, info.name, why) for info in ordered]

    def newest_revision_is_clean(self, files):
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

    def same_content_of(self, left, right):
        """Whether the files ``left`` and ``right`` of the VM directory hold the same bytes."""
        left_fd = self.vm_dir.open_file(left, os.O_RDONLY)
        try:
            right_fd = self.vm_dir.open_file(right, os.O_RDONLY)
            try:
                return same_content(left_fd, right_fd)
            finally:
                os.close(right_fd)
        finally:
            os.close(left_fd)

    def keep_clean_as_revision(self, files, why):
        """Actions that keep the current clean image as the next revision; how many were added (0 or 1)."""
        if files.clean is None or self.newest_revision_is_clean(files):
            return [], 0
        name = self.vid.revision(files.next_revision(), format_timestamp(files.clean.mtime_ns // 10 ** 9))
        return [act.KeepAsRevision(self.rel, self.vid.clean, name, why)], 1

    def finish_precache(self, keep):
        """Make a missing or stale precache of a stopped volume: how an interrupted commit converges."""
        files = self.files
        if files.dirty is not None or files.clean is None or keep == SNAPSHOTS_DISABLED \
                or files.precache_state == "fresh":
            return []
        actions = []
        if files.precache is not None:
            actions.append(act.Remove(self.rel, self.vid.precache, "stale precache"))
        actions.append(self.new_precache())
        return actions

    def commit(self, staged, keep, files=None):
        """Make the file ``staged`` the new clean image, as qubesd's commit does.

        ``files`` is the volume as it will be when the commit starts (default:
        as it is now).  The staged file is flushed first, so that a failing
        disk stops the commit before any revision is pruned.
        """
        vid = self.vid
        files = files or self.files
        actions = []
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

    def create(self, size, keep, vm_dir_exists):
        """A new origin volume: no leftover of an earlier one, a sparse clean, its precache."""
        self.check_size(size)
        actions = self.remove_everything("leftover of an earlier volume with this vid")
        if not vm_dir_exists:
            actions.append(act.MakeVmDir(self.vid))
        actions.append(act.CreateSparse(self.rel, self.vid.clean, size))
        if keep != SNAPSHOTS_DISABLED:
            actions.append(self.new_precache())
        return actions

    def resize(self, size, allow_shrink, keep):
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
            actions = [act.ResizeInPlace(self.rel, self.vid.dirty, size)]
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

    def present(self, size, allow_shrink, keep, vm_dir_exists):
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

    def loops_catch_up(self):
        """Loop devices still at an older size of the dirty image: a resize was killed before telling them."""
        dirty = self.files.dirty
        return [act.SetLoopCapacity(device) for device in self.surroundings.loops_of(self.vid, self.vid.dirty)
                if loop_size(device) not in (None, dirty.size)]

    def stopped(self, keep):
        if self.files.dirty is None:
            return self.finish_precache(keep)
        running = self.surroundings.running_reasons(self.files)
        if running:
            raise VolumeInUse("cannot commit volume %s: it is running (%s); stop the VM first"
                              % (self.vid, "; ".join(running)))
        return self.commit(self.vid.dirty, keep)

    def absent(self, vm_dir_names, remove_pins=False):
        """Remove the volume; its pins stay (and so its VM directory) unless ``remove_pins``."""
        everything = self.files.all()
        if remove_pins:
            everything.extend(self.files.pins[name] for name in sorted(self.files.pins))
        if not everything:
            return []
        self.refuse_if_in_use("remove")
        actions = self.remove_everything("volume removed")
        if remove_pins:
            actions.extend(act.Remove(self.rel, self.files.pins[name].name, "pin removed with its volume (remove_pins)")
                           for name in sorted(self.files.pins))
        if set(vm_dir_names) <= {info.name for info in everything}:
            actions.append(act.RemoveVmDirIfEmpty(self.vid))
        return actions

    def refuse_revert_while_running(self):
        running = self.surroundings.running_reasons(self.files)
        if running:
            raise VolumeInUse("cannot revert volume %s: it is running (%s)" % (self.vid, "; ".join(running)))

    def drop_dirty_for_revert(self, discard_dirty):
        """The removal of a halted volume's dirty image if the task allows it; refused otherwise."""
        dirty = self.files.dirty
        if dirty is None:
            return []
        if not discard_dirty:
            raise VolumeInUse(
                "volume %s has a dirty image %s with uncommitted data (its VM halted without a commit); "
                "commit it with reflink_volume state=stopped, or set discard_dirty: true to drop it"
                % (self.vid, dirty.name))
        return [act.Remove(self.rel, self.vid.dirty, "discard_dirty: dropping uncommitted data")]

    def revert(self, revision, discard_dirty, marker):
        """Make revision ``revision`` (an id, or "latest") the clean image again.

        ``marker`` is the revision id a previous revert recorded on the current
        clean image (None if there is none): the same revert run again, and
        "latest" right after any revert, find the clean image already reverted.
        """
        files = self.files
        self.refuse_revert_while_running()
        already = marker is not None and revision in ("latest", marker)
        if not already:
            number = files.revisions[-1][0] if revision == "latest" and files.revisions else revision
            chosen = dict(files.revisions).get(number)
            if chosen is None:
                known = ", ".join(str(item) for item, _info in files.revisions) or "none"
                raise InvalidArgument("volume %s has no revision %s to revert to (revisions: %s)"
                                      % (self.vid, number, known))
        actions = self.drop_dirty_for_revert(discard_dirty)
        if already:
            return actions or self.finish_precache(0)
        kept, _added = self.keep_clean_as_revision(files, "keep the current image as a revision")
        actions.extend(kept)
        if files.precache is not None:
            actions.append(act.RemovePrecache(self.rel, self.vid))
        actions.append(act.MarkReverted(self.rel, chosen.name, number))
        actions.append(act.Rename(self.rel, chosen.name, self.vid.clean, "revert to revision %d" % number))
        actions.append(self.new_precache())
        return actions

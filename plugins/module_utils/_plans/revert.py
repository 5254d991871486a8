# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reverts: a revision, or a pin, of a volume becomes its clean image again.

The current clean image first becomes a revision, as in every commit, so a
revert loses nothing; revisions are not pruned.  A mark on the new clean
image (see _engine/markers.py) lets the same revert run again find it done.
"""

from __future__ import annotations

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument, VolumeInUse
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Revision
from ansible_collections.dom0.reflink.plugins.module_utils._engine import file_actions as act
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Rel
from ansible_collections.dom0.reflink.plugins.module_utils._engine.markers import MarkReverted, pin_marker, write_revert_marker
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs import clone
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import Actions, VolumePlanner
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo


class RestorePin(act.Clone):
    """Clean made anew from a pin: a clone of it, marked as this revert's result, renamed over clean."""

    def __init__(self, rel: Rel, pin_file: str, clean: str, name: str) -> None:
        super().__init__(rel, pin_file, clean, "revert to pin %s" % name, copy_mtime=True)
        # It replaces the clean image (Clone only knows that for a clone onto its own source), and with
        # it in place the revert is done: the precache that follows only finishes it.
        self.destructive = self.completes = True
        self.marker = pin_marker(name)

    def run(self, workspace: Workspace) -> None:
        self.copy_cause = None
        self.how = clone.clone_file(workspace.vm(), self.src, workspace.vm(), self.dst, copy_mtime=True,
                                    finish=lambda fd: write_revert_marker(fd, self.marker), copied=self.note_copy)


class RevertPlanner:
    """Plans of a revert of one volume, on top of its VolumePlanner."""

    def __init__(self, planner: VolumePlanner) -> None:
        self.planner = planner
        self.files = planner.files
        self.vid = planner.vid
        self.rel = planner.rel

    def refuse_revert_while_running(self) -> None:
        running = self.planner.surroundings.running_reasons(self.files)
        if running:
            raise VolumeInUse("cannot revert volume %s: it is running (%s)" % (self.vid, "; ".join(running)))

    def drop_dirty_for_revert(self, discard_dirty: bool) -> Actions:
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

    def to_revision(self, revision: Revision, discard_dirty: bool, marker: int | str | None) -> Actions:
        """Make revision ``revision`` (an id, or "latest") the clean image again.

        ``marker`` is the revision id a previous revert recorded on the current
        clean image (None if there is none): the same revert run again, and
        "latest" right after any revert, find the clean image already reverted.
        """
        files = self.files
        planner = self.planner
        self.refuse_revert_while_running()
        already = marker is not None and revision in ("latest", marker)
        chosen = None if already else self._revision_to_restore(revision)
        actions = self.drop_dirty_for_revert(discard_dirty)
        if chosen is None:   # already reverted
            return actions or planner.finish_precache(0)
        number, chosen_info = chosen
        kept, _added = planner.keep_clean_as_revision(files, "keep the current image as a revision")
        actions.extend(kept)
        if files.precache is not None:
            actions.append(act.RemovePrecache(self.rel, self.vid))
        actions.append(MarkReverted(self.rel, chosen_info.name, number))
        actions.append(act.Rename(self.rel, chosen_info.name, self.vid.clean, "revert to revision %d" % number))
        actions.append(planner.new_precache())
        return actions

    def _revision_to_restore(self, revision: Revision) -> tuple[int, FileInfo]:
        """The id and file of ``revision`` (an id, or "latest"); refused when the volume has no such revision."""
        files = self.files
        number = files.revisions[-1][0] if revision == "latest" and files.revisions else revision
        chosen = dict(files.revisions).get(number) if isinstance(number, int) else None
        if chosen is None or not isinstance(number, int):
            known = ", ".join(str(item) for item, _info in files.revisions) or "none"
            raise InvalidArgument("volume %s has no revision %s to revert to (revisions: %s)"
                                  % (self.vid, number, known))
        return number, chosen

    def to_pin(self, name: str, discard_dirty: bool, marker: int | str | None) -> Actions:
        """Make pin ``name``'s content the clean image (a new inode); the current clean becomes a revision.

        ``marker``: what a previous revert recorded on the clean image; the same
        revert run again finds it, and the clean image still equal to the pin.
        """
        planner = self.planner
        files = self.files
        self.refuse_revert_while_running()
        pin = files.pins.get(name)
        if pin is None:
            known = ", ".join(sorted(files.pins)) or "none"
            raise InvalidArgument("volume %s has no pin %s to revert to (pins: %s)" % (self.vid, name, known))
        actions = self.drop_dirty_for_revert(discard_dirty)
        already = (marker == pin_marker(name) and files.clean is not None and files.clean.size == pin.size
                   and planner.same_content_of(files.clean.name, pin.name))
        if already:
            return actions or planner.finish_precache(0)
        kept, _added = planner.keep_clean_as_revision(files, "keep the current image as a revision")
        actions.extend(kept)
        if files.precache is not None:
            actions.append(act.RemovePrecache(self.rel, self.vid))
        actions.append(RestorePin(self.rel, pin.name, self.vid.clean, name))
        actions.append(planner.new_precache())
        return actions

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pins: copies of a volume's image that only their own removal takes away (contract §7).

A pin ``V.img.pin-<name>`` is a new inode with the content of the clean image
or of a revision, and the time of that data as its mtime.  qubesd knows
nothing of pins and none of its globs matches one, so its commits, pruning
and reverts leave them alone; this file plans making, replacing and removing
a pin (a revert to a pin is in revert.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Literal, Union

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument, VolumeStateError
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Revision, parse_revision, parse_timestamp
from ansible_collections.dom0.reflink.plugins.module_utils._engine import file_actions as act
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Rel
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs import clone
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import Actions, VolumePlanner
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo

CLEAN_SOURCE: Literal["clean"] = "clean"
# What a pin is made from: "clean", "latest" or a revision id.
PinSource = Union[Revision, Literal["clean"]]  # noqa: UP007  (see names.Revision)


def parse_pin_source(value: object) -> PinSource:
    """What to pin, as users give it: "clean" (also None), "latest", or a revision id."""
    if value is None or (isinstance(value, str) and value.strip().lower() == CLEAN_SOURCE):
        return CLEAN_SOURCE
    try:
        return parse_revision(value)
    except InvalidArgument:
        raise InvalidArgument("revision must be 'clean', 'latest' or a revision id, a positive integer (got %r)"
                              % (value,)) from None


def _set_mtime(mtime_ns: int) -> Callable[[int], None]:
    def finish(fd: int) -> None:
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    return finish


class MakePin(act.Clone):
    """A new pin (or, with force, the replacement of one): a clone whose mtime is the data's time."""

    def __init__(self, rel: Rel, src: str, dst: str, mtime_ns: int, why: str) -> None:
        super().__init__(rel, src, dst, why)
        self.mtime_ns = mtime_ns

    def run(self, workspace: Workspace) -> None:
        self.copy_cause = None
        self.how = clone.clone_file(workspace.vm(), self.src, workspace.vm(), self.dst,
                                    finish=_set_mtime(self.mtime_ns), copied=self.note_copy)

    def simulate(self, files: dict[str, FileInfo]) -> None:
        source = files.get(self.src)   # None: check mode plans the pin of a volume an earlier task makes
        size, usage = (source.size, source.usage) if source is not None else (0, 0)
        files[self.dst] = FileInfo(self.dst, size, usage, self.mtime_ns)


class RemovePin(act.Remove):
    # A pin is never attached to a VM: a VM starting meanwhile is no reason to stop its removal.
    destructive = False


class PinPlanner:
    """Plans for the pins of one volume, on top of its VolumePlanner."""

    def __init__(self, planner: VolumePlanner) -> None:
        self.planner = planner
        self.files = planner.files
        self.vid = planner.vid
        self.rel = planner.rel

    def source(self, revision: PinSource) -> tuple[str, int, str]:
        """``(file name, mtime_ns of its data, description)`` of what ``revision`` names; refused if absent."""
        files = self.files
        if revision == CLEAN_SOURCE:
            if files.clean is None:
                why = " (a running volume with revisions_to_keep -1 has none)" if files.dirty is not None else ""
                raise InvalidArgument("volume %s has no clean image to pin%s" % (self.vid, why))
            return files.clean.name, files.clean.mtime_ns, CLEAN_SOURCE
        number = files.revisions[-1][0] if revision == "latest" and files.revisions else revision
        info = dict(files.revisions).get(number) if isinstance(number, int) else None
        if info is None or not isinstance(number, int):
            known = ", ".join(str(item) for item, _info in files.revisions) or "none"
            raise InvalidArgument("volume %s has no revision %s to pin (revisions: %s)" % (self.vid, number, known))
        # qubesd gives a revision the time of its copy as mtime; its name holds the data's time.
        return info.name, parse_timestamp(files.revision_timestamp(number) or "") * 10 ** 9, "revision %d" % number

    def present(self, name: str, revision: PinSource, force: bool,
                planned_only: list[str] | None = None) -> tuple[Actions, str]:
        """Actions that make pin ``name`` hold ``revision``'s content, and the pinned source's description.

        ``planned_only``: in check mode, a list for warnings: a volume that does not exist yet (an
        earlier task of the same check-mode run creates it) is planned with a warning, not refused.
        """
        if planned_only is not None and not self.files.exists:
            return self.planned_on_missing_volume(name, revision, planned_only)
        src, mtime_ns, description = self.source(revision)
        pin_file = self.vid.pin(name)
        existing = self.files.pins.get(name)
        if existing is None:
            return [MakePin(self.rel, src, pin_file, mtime_ns, "pin %s (%s)" % (name, description))], description
        if existing.size == self.size_of(src) and self.planner.same_content_of(pin_file, src):
            return [], description
        if not force:
            raise VolumeStateError(
                "volume %s already has a pin %s with other content than its %s; choose another name, or set "
                "force: true to replace it (the pin's old content is then lost)" % (self.vid, name, description))
        return [MakePin(self.rel, src, pin_file, mtime_ns, "replace pin %s (force) by %s" % (name, description))], \
            description

    def planned_on_missing_volume(self, name: str, revision: PinSource, warnings: list[str]) -> tuple[Actions, str]:
        """Check mode: the pin of a volume that does not exist, as if an earlier task of this run had made it."""
        if isinstance(revision, int):
            src, description = self.vid.revision(revision, "?"), "revision %d" % revision
        elif revision == "latest":
            src, description = self.vid.clean, "the latest revision"
        else:
            src, description = self.vid.clean, CLEAN_SOURCE
        warnings.append("volume %s does not exist: check mode planned pin %s as if an earlier task of this check-mode "
                        "run had created it (check mode creates nothing); a real run pins it once the volume "
                        "exists, and fails without it" % (self.vid, name))
        return [MakePin(self.rel, src, self.vid.pin(name), time.time_ns(), "pin %s (%s)" % (name, description))], \
            description

    def size_of(self, name: str) -> int:
        return next(info.size for info in self.files.all() if info.name == name)

    def absent(self, name: str) -> Actions:
        existing = self.files.pins.get(name)
        if existing is None:
            return []
        return [RemovePin(self.rel, existing.name, "pin removed")]

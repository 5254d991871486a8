# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Has the volume become in use since its plan was made?

qubesd does not take our locks: it may start the volume's VM (rename the
precache to the dirty image, attach a loop device, write its running-state
file) at any moment, also while one of our plans runs.  The executor calls an
:class:`InUseGuard` after each long step and right before each destructive
one; the guard compares what is true now with what planning saw, so that a plan
made on purpose for a volume in use (resize in place, discard_dirty, a commit
of the dirty image) is not stopped by what it already knew.
"""

from __future__ import annotations

import dataclasses

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import VolumeInUse
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import (
    VolumeFiles,
    loop_devices,
    qubes_running_names,
    read_volume,
)


class VolumeBecameInUse(VolumeInUse):
    """The volume became in use while a plan ran: the plan is withdrawn."""

    def __init__(self, vid, reasons):
        super().__init__("volume %s became in use while this task ran (%s): its VM was started, most likely by "
                         "qubesd" % (vid, "; ".join(reasons)))
        self.vid = vid
        self.reasons = reasons


class InUseGuard:
    """Re-reads the volume's in-use state cheaply and raises VolumeBecameInUse on what is new.

    Cheap: one listing of the VM directory with an lstat per image of the
    volume, one read of the loop devices' backing files, one glob of qubesd's
    running-state files.
    """

    def __init__(self, files, surroundings):
        """``files`` and ``surroundings``: what the plan was made from."""
        self.planned_files = files
        self.planned = surroundings
        self.checks = 0

    def reread_surroundings(self):
        # dataclasses.replace keeps whatever else Surroundings knows (the pool itself, its Qubes name).
        return dataclasses.replace(self.planned, loops=loop_devices(), running=qubes_running_names())

    def new_reasons(self, workspace):
        vid = self.planned_files.vid
        vm_dir = workspace.vm_dir if workspace is not None else None
        files = read_volume(vm_dir, vid) if vm_dir is not None else VolumeFiles(vid)
        now = self.reread_surroundings()
        seen = set(self.planned.running_reasons(files))
        reasons = [reason for reason in now.running_reasons(files) if reason not in seen]
        planned_dirty = self.planned_files.dirty
        if files.dirty is not None and (planned_dirty is None or
                                        (files.dirty.dev, files.dirty.ino) != (planned_dirty.dev, planned_dirty.ino)):
            reasons.append("the dirty image %s appeared" % files.dirty.name)
        return reasons

    def __call__(self, workspace):
        self.checks += 1
        reasons = self.new_reasons(workspace)
        if reasons:
            raise VolumeBecameInUse(self.planned_files.vid, reasons)

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scheduled pins of one volume: the calendar's choice (schedule.py) turned into pins made and removed.

The candidates are read from the volume's files: the clean image at its mtime,
each revision at the time in its name (qubesd stamps a revision with the
clean image's mtime; the file's own mtime is the time of the copy), and every
pin (schedule.py keeps those named ``auto-<YYYYMMDD>t<HHMMSS>`` and counts
each at the time in its name).  New pins are made before old ones are
removed, so a failure in between leaves more pins, never fewer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument, VolumeStateError
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import format_timestamp, parse_timestamp, timestamp_of
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Rel
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs import clone
from ansible_collections.dom0.reflink.plugins.module_utils._plans.pins import MakePin, RemovePin
from ansible_collections.dom0.reflink.plugins.module_utils._plans.schedule import (
    CLEAN,
    PIN,
    REVISION,
    Candidate,
    PinToMake,
    ScheduleResult,
    plan_schedule,
)
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import Actions, VolumePlanner
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo, VolumeFiles


def candidates_of(files: VolumeFiles) -> list[Candidate]:
    """The volume's clean image, revisions and pins as candidates of a schedule (junk revisions are none)."""
    found = []
    if files.clean is not None:
        found.append(Candidate(CLEAN, CLEAN, files.clean.mtime_ns // 10 ** 9))
    for number, info in files.revisions:
        found.append(Candidate(REVISION, str(number), parse_timestamp(timestamp_of(info.name) or "")))
    for name, info in files.pins.items():
        found.append(Candidate(PIN, name, info.mtime_ns // 10 ** 9))
    return found


class MakeScheduledPin(MakePin):
    """A new scheduled pin; the source must still be the file the plan saw.

    qubesd takes none of our locks: a VM's stop may replace the clean image (a
    commit) or prune a revision between the plan and this step.  A pin made from
    the new clean image would carry the new data under the old time's name, and
    keep it there, since the name is what the schedule counts; so once the data
    is in, the source's name must still lead to the planned inode, unchanged.
    """

    def __init__(self, rel: Rel, source: FileInfo, dst: str, mtime_ns: int, why: str) -> None:
        super().__init__(rel, source.name, dst, mtime_ns, why)
        self.source = source

    def run(self, workspace: Workspace) -> None:
        vm_dir = workspace.vm()

        def finish(fd: int) -> None:
            # The name still leads to the planned inode: the clone read it (a replaced name never leads back to it).
            now = vm_dir.lstat(self.src)
            planned = self.source
            if now is None or (now.st_dev, now.st_ino, now.st_mtime_ns) != (planned.dev, planned.ino, planned.mtime_ns):
                raise VolumeStateError(
                    "%s changed while the task ran (qubesd committed or pruned it); no pin was made of it; "
                    "run the task again" % vm_dir.join(self.src))
            os.utime(fd, ns=(self.mtime_ns, self.mtime_ns))

        self.how = clone.clone_file(vm_dir, self.src, vm_dir, self.dst, finish=finish)


@dataclass
class VolumeSchedule:
    """One volume's scheduled pins: the calendar's result and the actions that carry it out."""

    result: ScheduleResult
    actions: Actions

    def report(self) -> dict[str, object]:
        """``pinned`` (newest first), ``unpinned`` and ``kept`` (by name) and the ``periods`` of each pin kept or made."""
        return {
            "pinned": [made.name for made in self.result.pin],
            "unpinned": list(self.result.unpin),
            "kept": list(self.result.keep),
            "periods": {name: list(periods) for name, periods in sorted(self.result.periods.items())},
        }


def plan_volume_schedule(planner: VolumePlanner, schedule: Mapping[str, int], check_mode: bool,
                         warnings: list[str]) -> VolumeSchedule:
    """The scheduled pins ``schedule`` (as parse_schedule returns it) makes and removes for the planner's volume.

    A volume that does not exist (neither a clean nor a dirty image) is refused;
    in check mode it is planned with nothing to do and a warning, as an earlier
    task of the same run may create it.
    """
    files = planner.files
    vid = planner.vid
    if not files.exists:
        if check_mode:
            warnings.append("volume %s does not exist: check mode planned no scheduled pin for it (an earlier task "
                            "of this run may create it; check mode creates nothing); a real run fails without it"
                            % vid)
            return VolumeSchedule(plan_schedule([], schedule), [])
        raise InvalidArgument("volume %s does not exist (it has neither a clean nor a dirty image): there is nothing "
                              "to pin; create it first, or take it out of vids (its scheduled pins stay until "
                              "removed with state=absent)" % vid)
    if files.clean is None:
        warnings.append("volume %s has no clean image now (a VM with revisions_to_keep -1 is running, or a commit "
                        "is pending): no pin is made of its current data; its scheduled pins are planned from its "
                        "revisions and pins only" % vid)
    result = plan_schedule(candidates_of(files), schedule)
    for name in result.drifted:
        info = files.pins[name]
        warnings.append("scheduled pin %s of volume %s has the mtime %s, not the time in its name (a copy or a restore "
                        "that did not keep mtimes does this): the schedule counts it at the time in its name; remove "
                        "it with state=absent if it does not hold the data of that time"
                        % (name, vid, format_timestamp(info.mtime_ns // 10 ** 9)))
    actions: Actions = [_make(planner, made) for made in result.pin]
    actions.extend(RemovePin(planner.rel, vid.pin(name), "scheduled pin %s: no period of the schedule selects it "
                                                         "any more" % name)
                   for name in result.unpin)
    return VolumeSchedule(result, actions)


def _make(planner: VolumePlanner, made: PinToMake) -> MakeScheduledPin:
    files = planner.files
    why = "scheduled pin %s (%%s; %s)" % (made.name, ", ".join(made.periods))
    if made.source.kind == CLEAN and files.clean is not None:
        # The clean image's own mtime, to the nanosecond: the pin's time is the data's, as for every pin.
        return MakeScheduledPin(planner.rel, files.clean, planner.vid.pin(made.name), files.clean.mtime_ns,
                                why % CLEAN)
    number = int(made.source.name)
    info = dict(files.revisions)[number]
    return MakeScheduledPin(planner.rel, info, planner.vid.pin(made.name), made.time * 10 ** 9,
                            why % ("revision %d" % number))

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The task of reflink_pin with ``schedule``: the scheduled pins of one volume (vid) or many (vids).

The pool lock is taken shared and every volume lock in vid order (as a batch
of reflink_volume takes them); every volume is planned before any pin is made
or removed, so a refusal (a bad vid, a volume that does not exist) changes
nothing; then the volumes are done in the order given.  No in-use guard: a
pin never needs its VM stopped (qubesd writes neither the clean image nor a
revision of a running volume), and a commit or pruning that replaces a pin's
source meanwhile is caught by the pin step itself (_plans/scheduled_pins.py).
"""

from __future__ import annotations

from typing import Any

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument, PlanFailed, ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Vid, parse_vid
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import volume_locks
from ansible_collections.dom0.reflink.plugins.module_utils._plans.schedule import parse_schedule
from ansible_collections.dom0.reflink.plugins.module_utils._plans.scheduled_pins import VolumeSchedule, plan_volume_schedule
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import Actions, PlanContext, VolumePlan, VolumePlanner, plan_volume, read_for_plan
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import read_volume
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import QubesPool, read_qubes_xml, refuse_qubesd_volume
from ansible_collections.dom0.reflink.plugins.module_utils._state.report import volume_report
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import Params, Result, open_task_pool, run_or_report
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.volume_batch import PrefixDirs, make_room_for_locks

PURPOSE = "reflink_pin schedule"


def schedule_vids(params: Params) -> list[Vid]:
    """The volumes of the task, in the order given: ``vid``, or ``vids`` (a vid given twice counts once)."""
    given = [params["vid"]] if params.get("vid") is not None else params.get("vids")
    if given is None:
        raise InvalidArgument("schedule needs vid or vids, the volumes to pin")
    vids: list[Vid] = []
    for value in given:
        vid = parse_vid(value)
        if vid not in vids:
            vids.append(vid)
    return vids


class _Volume:
    """One volume of the task: where it is, its plan, and what its schedule made of it."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.vid = workspace.vid
        self.plan: VolumePlan | None = None
        self.schedule: VolumeSchedule | None = None

    def planned(self, surroundings: Surroundings, qubes: QubesPool | None, schedule: dict[str, int], check_mode: bool,
                warnings: list[str]) -> None:
        def plan(planner: VolumePlanner, _context: PlanContext) -> Actions:
            self.schedule = plan_volume_schedule(planner, schedule, check_mode, warnings)
            return self.schedule.actions

        workspace = self.workspace.open_vm_dir()
        try:
            listing, files = read_for_plan(workspace)
            self.plan = plan_volume(files, surroundings, qubes, plan,
                                    PlanContext(workspace, listing, workspace.vm_dir is not None, warnings))
        finally:
            # One descriptor per volume would be too many for a long list: opened again to execute.
            workspace.close_vm_dir()

    def carry_out(self, check_mode: bool) -> None:
        plan = self.plan
        if plan is None or not plan.actions:
            return
        workspace = self.workspace.open_vm_dir()
        try:
            plan.done = run_or_report(plan.actions, workspace, check_mode)
            if not check_mode:
                plan.after = read_volume(workspace.vm_dir, self.vid)
        finally:
            workspace.close_vm_dir()

    def report(self, pool: str, surroundings: Surroundings) -> dict[str, Any]:
        plan, schedule = self.plan, self.schedule
        if plan is None or schedule is None:   # planned before any report is asked for
            raise ReflinkError("volume %s was not planned" % self.vid)
        result = volume_report(pool, plan.after, surroundings)
        result.update(changed=bool(plan.actions), actions=list(plan.done), **schedule.report())
        return result


def _labelled(vid: Vid, exc: ReflinkError | OSError) -> ReflinkError:
    """A refusal while planning, naming the volume; nothing was changed yet."""
    text = str(exc) if isinstance(exc, ReflinkError) else "%s%s" % (
        exc.strerror or exc, " (%s)" % exc.filename if exc.filename else "")
    if not text.startswith("volume %s" % vid):
        text = "volume %s: %s" % (vid, text)
    error = exc if isinstance(exc, ReflinkError) else ReflinkError("")
    error.args = ("%s; nothing was changed" % text,)
    return error


def run_pin_schedule_task(params: Params, check_mode: bool, diff: bool) -> Result:
    """reflink_pin with ``schedule``: plan every volume's scheduled pins, then make and remove them."""
    schedule = parse_schedule(params["schedule"])
    vids = schedule_vids(params)
    pool = params["pool"]
    warnings: list[str] = []
    qubes = read_qubes_xml(params.get("qubes_xml"), pool)
    for vid in vids:
        refuse_qubesd_volume(qubes, vid, "pin")
    make_room_for_locks(len(vids))
    volumes: list[_Volume] = []
    surroundings = None
    with open_task_pool(pool, check_mode, warnings) as pool_dir, PrefixDirs(pool_dir) as prefixes:
        try:
            volumes = [_Volume(prefixes.workspace(vid)) for vid in vids]
            if volumes:   # vids: [] is nothing to do, and no lock file to make for it
                # Check mode writes nothing, not even its holder's record into an existing lock file.
                with volume_locks(pool_dir, vids, timeout=params["lock_timeout"], purpose=PURPOSE,
                                  create=not check_mode, record=not check_mode):
                    surroundings = Surroundings.read(pool, qubes.name if qubes is not None else None)
                    for volume in volumes:
                        try:
                            volume.planned(surroundings, qubes, schedule, check_mode, warnings)
                        except (ReflinkError, OSError) as exc:
                            raise _labelled(volume.vid, exc) from None
                    for position, volume in enumerate(volumes):
                        try:
                            volume.carry_out(check_mode)
                        except (ReflinkError, OSError) as exc:
                            raise _stopped_at(volumes, position, exc, pool, surroundings) from None
        finally:
            for volume in volumes:
                volume.workspace.close()
    result: Result = {"changed": any(volume.plan is not None and volume.plan.actions for volume in volumes)}
    reports = [volume.report(pool, surroundings) for volume in volumes] if surroundings is not None else []
    result["actions"] = [text for report in reports for text in report["actions"]]
    result["volumes"] = reports
    if params.get("vid") is not None and reports:
        result["volume"] = reports[0]
    if diff:
        result["diff"] = {
            "before": {str(volume.vid): volume.plan.files.summary() for volume in volumes if volume.plan is not None},
            "after": {str(volume.vid): volume.plan.after.summary() for volume in volumes if volume.plan is not None},
        }
    if warnings:
        result["warnings"] = warnings
    return result


def _stopped_at(volumes: list[_Volume], position: int, exc: ReflinkError | OSError, pool: str,
                surroundings: Surroundings) -> PlanFailed:
    """The failure of volume ``position`` while the pins were made: what was done before it, and the way on."""
    failed = volumes[position]
    done_before = volumes[:position]
    changed_before = [str(volume.vid) for volume in done_before if volume.plan is not None and volume.plan.actions]
    if isinstance(exc, PlanFailed) and failed.plan is not None:
        failed.plan.done = exc.done
    again = "" if "run the task again" in str(exc) else "; run the task again to finish"
    message = "volume %s: %s; %s; the volumes after it were not started%s" % (
        failed.vid, exc, "the volumes before it were done (%s)" % ", ".join(changed_before)
        if changed_before else "no volume before it changed anything", again)
    done = [text for volume in volumes[:position + 1] if volume.plan is not None for text in volume.plan.done]
    changed = bool(changed_before) or (exc.changed if isinstance(exc, PlanFailed) else False)
    error = PlanFailed(message, done, changed)
    error.result = {"volumes": [volume.report(pool, surroundings) for volume in done_before]}
    return error

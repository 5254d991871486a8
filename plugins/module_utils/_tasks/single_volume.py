# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The flow of a task on one volume (reflink_volume with vid, reflink_import, reflink_revert, reflink_pin).

Read qubes.xml (and refuse a volume qubesd owns), open the pool, take the
pool and volume locks, read the volume and plan it (the module's plan
function, see _plans/volume.py), execute the plan with the in-use guard or
simulate it in check mode, and report the volume, with diff output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ansible_collections.dom0.reflink.plugins.module_utils._base.names import parse_vid
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import copy_warnings
from ansible_collections.dom0.reflink.plugins.module_utils._engine.prediction import CloneProbe
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import volume_lock
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import PlanContext, PlanFunction, VolumePlan, plan_volume, read_for_plan
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles, read_volume
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import read_qubes_xml, refuse_qubesd_volume
from ansible_collections.dom0.reflink.plugins.module_utils._state.report import volume_report
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import Params, Result, open_task_pool, run_or_report


def run_single_volume_task(params: Params, check_mode: bool, diff: bool, purpose: str, plan: PlanFunction,
                           extra: Callable[[VolumeFiles], dict[str, Any]] | None = None,
                           changes: str | None = "change") -> Result:
    """Run one volume module's task and return its result dict.

    ``plan(planner, context)`` returns the list of actions (``context``: a
    PlanContext, see _plans/volume.py).  ``extra(after)``, if given, returns
    more result keys from the volume's files after the task (VolumeFiles).
    ``changes`` says what the task does to the volume's data ("import into"),
    for the refusal of a volume that qubes.xml lists as a snapshot or volatile
    one; None for a task that only removes (those files are leftovers then,
    and removing them loses nothing).
    """
    vid = parse_vid(params["vid"])
    pool = params["pool"]
    warnings: list[str] = []
    # Read (and refuse) before any lock file is made: a bad qubes.xml changes nothing.
    qubes = read_qubes_xml(params.get("qubes_xml"), pool)
    if changes is not None:
        refuse_qubesd_volume(qubes, vid, changes)
    with open_task_pool(pool, check_mode, warnings) as pool_dir, Workspace(pool_dir, vid) as workspace:
        # The workspace checked that this is a pool before any lock file is made in it.
        with volume_lock(pool_dir, vid, timeout=params["lock_timeout"], purpose=purpose,
                         create=not check_mode, record=not check_mode):
            workspace.open_vm_dir()
            listing, files = read_for_plan(workspace)
            # After the volume: a VM started in between is new to the plan, so the in-use guard withdraws
            # the plan (test_live_qubesd holds a task at this very read to check that).
            surroundings = Surroundings.read(pool, qubes.name if qubes is not None else None)
            planned = plan_volume(files, surroundings, qubes, plan,
                                  PlanContext(workspace, listing, workspace.vm_dir is not None, warnings))
            carry_out(planned, surroundings, check_mode, CloneProbe(workspace.vm_dir or workspace.prefix_dir), warnings)
            result = {
                "changed": bool(planned.actions),
                "actions": planned.done,
                "volume": volume_report(pool, planned.after, surroundings),
            }
            if extra is not None:
                result.update(extra(planned.after))
            if diff:
                result["diff"] = {"before": planned.files.summary(), "after": planned.after.summary()}
            if warnings:
                result["warnings"] = warnings
            return result


def carry_out(plan: VolumePlan, surroundings: Surroundings, check_mode: bool, probe: CloneProbe,
              warnings: list[str]) -> None:
    """Execute one volume's plan, the in-use guard on (in check mode: report it); read the volume again after it.

    ``probe``: how check mode tells how each clone goes (one per task: a batch shares it).  A clone that was
    (check mode: will be) a copy where a reflink was expected adds a warning naming the cause.
    """
    if not plan.actions:
        return
    workspace = plan.workspace
    # Imported here: a task with nothing to do does not compile the guard.
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.dom0.reflink.plugins.module_utils._engine.inuse_guard import InUseGuard  # noqa: PLC0415
    plan.done = run_or_report(plan.actions, workspace, check_mode,
                              guard=None if check_mode else InUseGuard(plan.files, surroundings), probe=probe)
    warnings.extend(copy_warnings(plan.actions))
    if not check_mode:
        plan.after = read_volume(workspace.vm_dir, workspace.vid)

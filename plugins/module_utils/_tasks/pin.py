# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The task of reflink_pin: make, keep or remove a named copy of one of the volume's images."""

from __future__ import annotations

from ansible_collections.dom0.reflink.plugins.module_utils._base.names import check_pin_name, format_timestamp
from ansible_collections.dom0.reflink.plugins.module_utils._plans.pins import PinPlanner, parse_pin_source
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import Actions, PlanContext, VolumePlanner
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import Params, Result
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.single_volume import run_single_volume_task


def run_pin_task(params: Params, check_mode: bool, diff: bool) -> Result:
    """reflink_pin: the pin's name and source checked, then planned and run like every volume task."""
    name = check_pin_name(params["name"])
    revision = parse_pin_source(params["revision"])
    state = params["state"]
    pinned: dict[str, str] = {}
    replaced = []

    def plan(planner: VolumePlanner, context: PlanContext) -> Actions:
        pins = PinPlanner(planner)
        if state == "absent":
            return pins.absent(name)
        actions, pinned["source"] = pins.present(name, revision, params["force"],
                                                 context.warnings if check_mode else None)
        if actions and name in planner.files.pins:
            replaced.append(name)
        return actions

    def report_pin(after: VolumeFiles) -> dict[str, object]:
        info = after.pins.get(name)
        if state == "absent" or info is None:
            return {"pin": None}
        return {"pin": {"name": name, "size": info.size, "timestamp": format_timestamp(info.mtime_ns // 10 ** 9),
                        "source": pinned["source"]}}

    result = run_single_volume_task(params, check_mode, diff, "reflink_pin %s %s state=%s" % (params["vid"], name, state),
                                    plan, extra=report_pin, changes="pin" if state == "present" else None)
    if "diff" in result and replaced:
        # A forced replacement may keep the pin's size and time: the diff says what changed.
        result["diff"]["before"]["pin"] = {"name": name, "content": "its old content"}
        result["diff"]["after"]["pin"] = {"name": name, "content": "that of %s (replaced, force)" % pinned["source"]}
    return result

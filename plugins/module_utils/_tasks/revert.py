# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The task of reflink_revert: a revision or a pin of the volume becomes its clean image again."""

from __future__ import annotations

from ansible_collections.dom0.reflink.plugins.module_utils._base.names import check_pin_name, parse_revision
from ansible_collections.dom0.reflink.plugins.module_utils._engine.markers import read_revert_marker
from ansible_collections.dom0.reflink.plugins.module_utils._plans.revert import RevertPlanner
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import Actions, PlanContext, VolumePlanner
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import Params, Result
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.single_volume import run_single_volume_task


def run_revert_task(params: Params, check_mode: bool, diff: bool) -> Result:
    """reflink_revert: the revision (or pin) asked for, the mark a previous revert left, then the plan."""
    pin = None if params["pin"] is None else check_pin_name(params["pin"])
    revision = parse_revision("latest" if params["revision"] is None else params["revision"])
    target = "pin %s" % pin if pin is not None else revision

    def plan(planner: VolumePlanner, context: PlanContext) -> Actions:
        workspace = context.workspace
        marker = None
        if planner.files.clean is not None and workspace.vm_dir is not None:
            marker = read_revert_marker(workspace.vm_dir, planner.vid.clean)
        if pin is not None:
            return RevertPlanner(planner).to_pin(pin, params["discard_dirty"], marker)
        return RevertPlanner(planner).to_revision(revision, params["discard_dirty"], marker)

    return run_single_volume_task(params, check_mode, diff, "reflink_revert %s to %s" % (params["vid"], target), plan,
                                  changes="revert")

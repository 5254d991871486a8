# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a module runs: read, plan, execute (or simulate in check mode), report.

Modules hand in their AnsibleModule and a planning function; this file holds
the part every module shares: the common options, the locks, the check-mode
simulation, diff output, and the conversion of errors into ``fail_json``.  It
does not import Ansible: it only calls the module object it is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import parse_vid
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Action, W
from ansible_collections.dom0.reflink.plugins.module_utils._engine.executor import PlanFailed, execute
from ansible_collections.dom0.reflink.plugins.module_utils._engine.inuse_guard import InUseGuard
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import AbsentDirectory, Directory, PoolDirectory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import volume_lock
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import PlanFunction, VolumePlan, plan_volume
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles, read_volume
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import read_qubes_xml, refuse_qubesd_volume
from ansible_collections.dom0.reflink.plugins.module_utils._state.report import volume_report
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings

# A module's options, as AnsibleModule checked them (module.params).
Params = Mapping[str, Any]
# A module's result (the keys of exit_json; "warnings" become module warnings).
Result = dict[str, Any]


class Module(Protocol):
    """What the flow uses of an AnsibleModule (the core imports no Ansible)."""

    def fail_json(self, msg: str, **kwargs: Any) -> NoReturn: ...

    def exit_json(self, **kwargs: Any) -> None: ...

    def warn(self, warning: str) -> None: ...


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
                         create=not check_mode):
            workspace.open_vm_dir()
            surroundings = Surroundings.read(pool, qubes.name if qubes is not None else None)
            planned = plan_volume(workspace, surroundings, qubes, plan, warnings)
            carry_out(planned, surroundings, check_mode)
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


def run_or_report(actions: Sequence[Action[W]], workspace: W, check_mode: bool,
                  guard: Callable[[W], None] | None = None) -> list[str]:
    """What ``actions`` did (executed, see _engine/executor.py), or in check mode what they would do."""
    if check_mode:
        return [action.text for action in actions]
    return execute(actions, workspace, guard=guard)


def carry_out(plan: VolumePlan, surroundings: Surroundings, check_mode: bool) -> None:
    """Execute one volume's plan, the in-use guard on (in check mode: report it); read the volume again after it."""
    if not plan.actions:
        return
    workspace = plan.workspace
    plan.done = run_or_report(plan.actions, workspace, check_mode,
                              guard=None if check_mode else InUseGuard(plan.files, surroundings))
    if not check_mode:
        plan.after = read_volume(workspace.vm_dir, workspace.vid)


def missing_pool_warning(path: str) -> str:
    """The warning of a check-mode task on a pool that does not exist yet."""
    return ("pool %s does not exist: check mode planned this task as if it were an empty pool "
            "(as dom0.reflink.reflink_pool would leave it); a real run needs the pool first" % path)


def open_task_pool(path: str, check_mode: bool, warnings: list[str]) -> PoolDirectory:
    """The pool's Directory; in check mode a pool that does not exist yet is planned as an empty one."""
    if check_mode and not os.path.lexists(path):
        warnings.append(missing_pool_warning(path))
        return AbsentDirectory(path)
    return Directory.open_pool(path)


def main_wrapper(module: Module, work: Callable[[], Result]) -> None:
    """Call ``work()`` and exit the module with its result, or fail with a clear message."""
    try:
        result = work()
    except PlanFailed as exc:
        # A batch's failure also says what each item done before it left (``result``).
        module.fail_json(msg=str(exc), actions=exc.done, changed=exc.changed, **exc.result)
    except ReflinkError as exc:
        module.fail_json(msg=str(exc), actions=[], changed=False)
    except OSError as exc:
        where = " (%s)" % exc.filename if exc.filename else ""
        module.fail_json(msg="%s%s" % (exc.strerror or exc, where), actions=[], changed=False)
    for warning in result.pop("warnings", ()):
        module.warn(warning)
    module.exit_json(**result)

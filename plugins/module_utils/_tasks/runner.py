# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every module's flow shares: its options and result, the check-or-execute switch, the pool it opens.

``main_wrapper`` runs a task and turns its result, or its error, into
``exit_json`` or ``fail_json``; ``run_or_report`` executes a plan's actions,
or in check mode only reports them; ``open_task_pool`` opens the pool (in
check mode, a pool that is not there yet is planned as an empty one).  Nothing
here imports Ansible: the module object is handed in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument, PlanFailed, ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import AbsentDirectory, Directory, PoolDirectory

if TYPE_CHECKING:
    from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Action, Probe, W

# A module's options, as AnsibleModule checked them (module.params).
Params = Mapping[str, Any]
# A module's result (the keys of exit_json; "warnings" become module warnings).
Result = dict[str, Any]


class Module(Protocol):
    """What the flow uses of an AnsibleModule (the core imports no Ansible)."""

    params: dict[str, Any]

    def fail_json(self, msg: str, **kwargs: Any) -> NoReturn:
        """End the module: the task failed with ``msg``."""

    def exit_json(self, **kwargs: Any) -> None:
        """End the module with its result."""

    def warn(self, warning: str) -> None:
        """Add a warning to the task's output."""


def run_or_report(actions: Sequence[Action[W]], workspace: W, check_mode: bool,
                  guard: Callable[[W], None] | None = None, probe: Probe | None = None) -> list[str]:
    """What ``actions`` did (executed, see _engine/executor.py), or in check mode what they would do.

    ``probe``: check mode says how each clone goes, as the real run does (_engine/prediction.py).
    """
    # Imported here: a task with nothing to do (no actions) does not compile the executor and the prediction.
    # pylint: disable=import-outside-toplevel
    if check_mode:
        from ansible_collections.dom0.reflink.plugins.module_utils._engine.prediction import predicted_texts  # noqa: PLC0415
        return predicted_texts(actions, probe) if probe is not None else [action.text for action in actions]
    from ansible_collections.dom0.reflink.plugins.module_utils._engine.executor import execute  # noqa: PLC0415
    return execute(actions, workspace, guard=guard)


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


def check_lock_timeout(value: object) -> None:
    """``lock_timeout`` (None where a module has none): a whole number of seconds, 0 or more."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise InvalidArgument("lock_timeout must be a whole number of seconds, 0 or more (0: do not wait), got %r"
                              % (value,))


def main_wrapper(module: Module, work: Callable[[], Result]) -> None:
    """Call ``work()`` and exit the module with its result, or fail with a clear message."""
    try:
        check_lock_timeout(module.params.get("lock_timeout"))
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

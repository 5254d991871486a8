# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one door from the model-based test into the core: every import of plugins/ is in this file.

Each function takes a module's options (as a playbook gives them; the module's
defaults are filled in here) and runs the task in this process, the way the
module's ``main()`` does: the same ``run_*_task`` of the core (a module file is
its documentation, its argument spec and that one call), through the same
``main_wrapper`` (with a stand-in for AnsibleModule), so that the result, a
failure's ``msg``, ``changed`` and ``actions`` are what Ansible would show
(test_core_api.py compares the defaults below with the modules' argument specs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

# pylint: disable=import-error
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._engine.executor import PlanFailed
from ansible_collections.dom0.reflink.plugins.module_utils._tasks import arguments
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.dedupe import run_dedupe_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.gc import run_gc_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.imports import run_import_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.info import run_info_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.pin import run_pin_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.pin_schedule import run_pin_schedule_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.pool import run_pool_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.revert import run_revert_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import main_wrapper
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.volume import run_volume_task

__all__ = ["DEFAULTS", "Outcome", "PlanFailed", "ReflinkError", "arguments", "run"]

# The defaults of each module's argument spec (None where the option has none).
_SHARED = {"lock_timeout": 60, "qubes_xml": "auto"}
DEFAULTS: dict[str, dict[str, Any]] = {
    "reflink_volume": dict(_SHARED, pool=None, vid=None, volumes=None, state="present", size=None,
                           allow_shrink=False, remove_pins=False, revisions_to_keep=None),
    "reflink_import": dict(_SHARED, pool=None, vid=None, state="present", src=None, src_vid=None, src_pool=None,
                           size=None, checksum=None, force=False, revisions_to_keep=None, fallback="errno"),
    "reflink_revert": dict(_SHARED, pool=None, vid=None, revision=None, pin=None, discard_dirty=False),
    "reflink_pin": dict(_SHARED, pool=None, vid=None, vids=None, name=None, revision="clean", state="present",
                        force=False, schedule=None),
    "reflink_gc": dict(_SHARED, pool=None, vids=None, keep_vids=None, remove_orphans=False, min_age="1h",
                       import_max_age="1d", revisions_to_keep=None, revisions_to_keep_per_volume={},
                       rebuild_precache=False),
    "reflink_info": dict(_SHARED, pool=None, vids=None, space=False, if_removed=None),
    "reflink_pool": dict(_SHARED, path=None, state="present", require_reflink=True),
    "reflink_dedupe": dict(_SHARED, pool=None, vids=None, scope="volume"),
}


@dataclasses.dataclass
class Outcome:
    """What one run of a module gave: its result dict (``failed`` set on a failure) and the exception, if any."""

    result: dict
    error: BaseException | None = None
    warnings: list = dataclasses.field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.result.get("failed"))

    @property
    def refusal(self) -> bool:
        """A failure decided while planning (a ReflinkError that no executed step raised)."""
        return self.failed and isinstance(self.error, ReflinkError) and not isinstance(self.error, PlanFailed)

    @property
    def msg(self) -> str:
        return str(self.result.get("msg", ""))


class _Exit(Exception):
    def __init__(self, result: dict) -> None:
        super().__init__()
        self.result = result


class _Module:
    """What main_wrapper needs of an AnsibleModule: fail_json, exit_json and warn."""

    def __init__(self, params: dict, check_mode: bool, diff: bool) -> None:
        self.params = params
        self.check_mode = check_mode
        self._diff = diff
        self.warnings: list = []

    def fail_json(self, **result: Any) -> None:
        raise _Exit(dict(result, failed=True))

    def exit_json(self, **result: Any) -> None:
        raise _Exit(result)

    def warn(self, warning: str) -> None:
        self.warnings.append(warning)


_WORK: dict[str, Callable[[dict, bool, bool], dict]] = {
    "reflink_volume": run_volume_task,
    "reflink_import": run_import_task,
    "reflink_revert": run_revert_task,
    # As the module's main() does: with schedule, the task of the scheduled pins.
    "reflink_pin": lambda params, check, diff: (run_pin_schedule_task if params["schedule"] is not None
                                                else run_pin_task)(params, check, diff),
    "reflink_gc": lambda params, check, _diff: run_gc_task(params, check),
    "reflink_info": lambda params, check, _diff: run_info_task(params, check),
    "reflink_pool": run_pool_task,
    "reflink_dedupe": run_dedupe_task,
}


def run(module: str, options: dict, check: bool = False, diff: bool = True) -> Outcome:
    """Run ``module`` with ``options`` (the module's defaults fill the rest) in this process.

    An exception that main_wrapper does not turn into a failure (a TypeError, say)
    propagates: Ansible would show it as a module crash.
    """
    unknown = set(options) - set(DEFAULTS[module])
    if unknown:
        raise TypeError("%s has no option %s" % (module, ", ".join(sorted(unknown))))
    params = dict(DEFAULTS[module], **options)
    fake = _Module(params, check, diff)
    caught: list = []

    def work() -> dict:
        try:
            return _WORK[module](params, check, diff)
        except BaseException as exc:
            caught.append(exc)
            raise

    result: dict | None = None
    try:
        main_wrapper(fake, work)
    except _Exit as done:
        result = done.result
    if result is None:
        raise AssertionError("main_wrapper returned without exit_json or fail_json")
    if fake.warnings:
        result["warnings"] = list(fake.warnings)
    return Outcome(result, caught[0] if caught else None, list(fake.warnings))

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one door from the model-based test into the core: every import of plugins/ is in this file.

Each function takes a module's options (as a playbook gives them; the module's
defaults are filled in here) and runs the task in this process, the way the
module's ``main()`` does: the same task function of the core, the same
``main_wrapper`` (through a stand-in for AnsibleModule), so that the result,
a failure's ``msg``, ``changed`` and ``actions`` are what Ansible would show.
``reflink_volume``, ``reflink_revert`` and ``reflink_pin`` build their plan
in the module file; their ``work()`` is rebuilt below from the same core
calls (keep it in step with plugins/modules/*.py: test_core_api.py compares
the defaults below with the modules' argument specs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

# pylint: disable=import-error
from ansible_collections.dom0.reflink.plugins.module_utils._actions import read_revert_marker
from ansible_collections.dom0.reflink.plugins.module_utils._batch import plan_request, run_volume_batch, volume_request
from ansible_collections.dom0.reflink.plugins.module_utils._errors import ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._gc import run_gc_task
from ansible_collections.dom0.reflink.plugins.module_utils._imports import run_import_task
from ansible_collections.dom0.reflink.plugins.module_utils._names import format_timestamp, parse_revision
from ansible_collections.dom0.reflink.plugins.module_utils._pins import PinPlanner, check_pin_name, parse_pin_source
from ansible_collections.dom0.reflink.plugins.module_utils._pool import run_info_task, run_pool_task
from ansible_collections.dom0.reflink.plugins.module_utils._task import PlanFailed, main_wrapper, run_volume_task

__all__ = ["DEFAULTS", "Outcome", "PlanFailed", "ReflinkError", "run"]

# The defaults of each module's argument spec (None where the option has none).
_SHARED = {"lock_timeout": 60, "qubes_xml": "auto"}
DEFAULTS: dict[str, dict[str, Any]] = {
    "reflink_volume": dict(_SHARED, pool=None, vid=None, volumes=None, state="present", size=None,
                           allow_shrink=False, remove_pins=False, revisions_to_keep=None),
    "reflink_import": dict(_SHARED, pool=None, vid=None, state="present", src=None, src_vid=None, src_pool=None,
                           size=None, checksum=None, force=False, revisions_to_keep=None, fallback="errno"),
    "reflink_revert": dict(_SHARED, pool=None, vid=None, revision=None, pin=None, discard_dirty=False),
    "reflink_pin": dict(_SHARED, pool=None, vid=None, name=None, revision="clean", state="present", force=False),
    "reflink_gc": dict(_SHARED, pool=None, vids=None, keep_vids=None, remove_orphans=False, min_age="1h",
                       import_max_age="1d", revisions_to_keep=None, revisions_to_keep_per_volume={},
                       rebuild_precache=False),
    "reflink_info": dict(_SHARED, pool=None, vids=None),
    "reflink_pool": dict(_SHARED, path=None, state="present", require_reflink=True),
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


def _volume_work(params: dict, check: bool, diff: bool) -> dict:
    # As plugins/modules/reflink_volume.py's work().
    if params["volumes"] is not None:
        return run_volume_batch(params, check, diff)
    request = volume_request(params)

    def plan(planner, context):
        return plan_request(request, planner, context["vm_dir_names"],
                            vm_dir_exists=context["workspace"].vm_dir is not None)

    def kept_pins(after):
        return {"kept_pins": sorted(after.pins)} if request.state == "absent" else {}

    return run_volume_task(params, check, diff, "reflink_volume state=%s %s" % (request.state, params["vid"]), plan,
                           extra=kept_pins, changes=request.changes)


def _revert_work(params: dict, check: bool, diff: bool) -> dict:
    # As plugins/modules/reflink_revert.py's work().
    pin = None if params["pin"] is None else check_pin_name(params["pin"])
    revision = parse_revision("latest" if params["revision"] is None else params["revision"])
    target = "pin %s" % pin if pin is not None else revision

    def plan(planner, context):
        workspace = context["workspace"]
        marker = None
        if planner.files.clean is not None:
            marker = read_revert_marker(workspace.vm_dir, planner.vid.clean)
        if pin is not None:
            return PinPlanner(planner).revert(pin, params["discard_dirty"], marker)
        return planner.revert(revision, params["discard_dirty"], marker)

    return run_volume_task(params, check, diff, "reflink_revert %s to %s" % (params["vid"], target), plan,
                           changes="revert")


def _pin_work(params: dict, check: bool, diff: bool) -> dict:
    # As plugins/modules/reflink_pin.py's work().
    name = check_pin_name(params["name"])
    revision = parse_pin_source(params["revision"])
    state = params["state"]
    pinned: dict = {}

    def plan(planner, _context):
        pins = PinPlanner(planner)
        if state == "absent":
            return pins.absent(name)
        actions, pinned["source"] = pins.present(name, revision, params["force"])
        return actions

    def report_pin(after):
        info = after.pins.get(name)
        if state == "absent" or info is None:
            return {"pin": None}
        return {"pin": {"name": name, "size": info.size, "timestamp": format_timestamp(info.mtime_ns // 10 ** 9),
                        "source": pinned["source"]}}

    return run_volume_task(params, check, diff, "reflink_pin %s %s state=%s" % (params["vid"], name, state), plan,
                           extra=report_pin, changes="pin" if state == "present" else None)


_WORK: dict[str, Callable[[dict, bool, bool], dict]] = {
    "reflink_volume": _volume_work,
    "reflink_import": run_import_task,
    "reflink_revert": _revert_work,
    "reflink_pin": _pin_work,
    "reflink_gc": lambda params, check, _diff: run_gc_task(params, check),
    "reflink_info": lambda params, check, _diff: run_info_task(params, check),
    "reflink_pool": run_pool_task,
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

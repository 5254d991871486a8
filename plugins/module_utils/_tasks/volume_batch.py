# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_volume with ``volumes``: the items parsed, planned all before any change, then executed in order.

A batch locks the pool once, then every volume lock in vid order (see
_fs/locks.volume_locks); reads the pool once (qubes.xml, the loop devices and
qubesd's running files for the whole batch, each VM directory listed once for
all its volumes); plans every item before anything changes (_plans/batch.py),
then executes the items in order and reports each.
"""

from __future__ import annotations

import re
import resource
from typing import Any

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument, PlanFailed, ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Vid, parse_vid
from ansible_collections.dom0.reflink.plugins.module_utils._base.units import parse_volume_size
from ansible_collections.dom0.reflink.plugins.module_utils._engine.prediction import CloneProbe
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory, PoolDirectory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import volume_locks
from ansible_collections.dom0.reflink.plugins.module_utils._plans.batch import BatchItem, labelled, plan_all
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import (
    STATES,
    VolumeRequest,
    check_revisions_to_keep,
    unused_size_warning,
)
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import read_qubes_xml, refuse_qubesd_volume
from ansible_collections.dom0.reflink.plugins.module_utils._state.report import volume_report
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import Params, Result, open_task_pool
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.single_volume import carry_out

# The keys of a ``volumes`` item, as the module documents them (suboptions), in the shape of an Ansible option
# spec.  They are checked here, item by item, and not by Ansible: given as suboptions in the module's argument
# spec, Ansible refuses a bad item before the module runs, with messages that name neither the item nor its
# vid and do not say that nothing was changed ("Unsupported parameters for (basic.py) module: volumes.sise",
# "value of state must be one of: present, absent, stopped, got: gone found in volumes"), and a suboption
# spec cannot let an unknown key through.  A key set to null counts as omitted: the task's own value applies.
ITEM_OPTIONS = {
    "vid": {"type": "str", "required": True},
    "state": {"type": "str", "choices": list(STATES)},
    "size": {"type": "raw"},
    "allow_shrink": {"type": "bool"},
    "revisions_to_keep": {"type": "int"},
}
ITEM_KEYS = tuple(ITEM_OPTIONS)
# Ansible's spellings of a boolean, for item values that no argument spec has converted.
_TRUE = frozenset(("yes", "on", "1", "true", "y", "t"))
_FALSE = frozenset(("no", "off", "0", "false", "n", "f"))
# File descriptors a batch needs besides one lock per volume (the pool, its directories, Python's own).
_FD_MARGIN = 64


def batch_requests(params: Params) -> list[VolumeRequest]:
    """The requests of ``volumes``, in the order given; refuses bad items and vids given twice."""
    items = params["volumes"]
    requests = []
    seen: dict[str, int] = {}
    for number, item in enumerate(items, 1):
        label = "volumes item %d" % number
        if not isinstance(item, dict):
            raise InvalidArgument("%s is not a dict with a vid (got %r); nothing was changed" % (label, item))
        if item.get("vid") is not None:
            label = "%s (%s)" % (label, item["vid"])
        unknown = sorted(str(key) for key in item if key not in ITEM_KEYS)
        if unknown:
            raise InvalidArgument("%s: unknown key %s (an item takes %s); nothing was changed"
                                  % (label, ", ".join(unknown), ", ".join(ITEM_KEYS)))
        try:
            request = _item_request(item, params, label)
        except InvalidArgument as exc:
            raise InvalidArgument("%s: %s; nothing was changed" % (label, exc)) from None
        key = str(request.vid)
        if key in seen:
            raise InvalidArgument("%s: vid %s is given twice (also in volumes item %d); nothing was changed"
                                  % (label, key, seen[key]))
        seen[key] = number
        requests.append(request)
    return requests


def _item_request(item: dict[str, Any], params: Params, label: str) -> VolumeRequest:
    def value(key: str) -> Any:
        # A key set to null counts as omitted, so that a role can pass its items as they are.
        return params[key] if item.get(key) is None else item[key]

    if item.get("vid") is None:
        raise InvalidArgument("vid is required")
    if not isinstance(item["vid"], str):
        raise InvalidArgument("vid must be a string (got %r)" % (item["vid"],))
    state = value("state")
    if state not in STATES:
        raise InvalidArgument("state must be one of %s (got %r)" % (", ".join(STATES), state))
    size = value("size")
    size = None if size is None else parse_volume_size(size)
    return VolumeRequest(
        vid=parse_vid(item["vid"]),
        state=state,
        size=size,
        allow_shrink=_boolean(value("allow_shrink"), "allow_shrink"),
        revisions_to_keep=check_revisions_to_keep(_integer(value("revisions_to_keep")), optional=True),
        remove_pins=params["remove_pins"],
        label=label,
        # Only the item's own size: the task's is a default for the items that create or resize.
        warning=unused_size_warning(state, size if item.get("size") is not None else None, label),
    )


def _boolean(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidArgument("%s must be a boolean (got %r)" % (what, value))


def _integer(value: object) -> object:
    """Integers as templating may hand them over: "2" is 2; anything else is left to the check."""
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value.strip())
    return value


class BatchFailed(PlanFailed):
    """An item failed while the batch executed; ``result`` holds the ``volumes`` of the items done."""

    def __init__(self, message: str, done: list[str], changed: bool, result: dict[str, object]) -> None:
        super().__init__(message, done, changed)
        self.result = result


def run_volume_batch(params: Params, check_mode: bool, diff: bool, purpose: str = "reflink_volume volumes") -> Result:
    """Run ``reflink_volume`` with ``volumes`` and return its result dict."""
    requests = batch_requests(params)
    pool = params["pool"]
    warnings: list[str] = []
    qubes = read_qubes_xml(params.get("qubes_xml"), pool)
    for request in requests:
        if request.changes is not None:
            labelled(request, refuse_qubesd_volume, qubes, request.vid, request.changes)
    make_room_for_locks(len(requests))
    with open_task_pool(pool, check_mode, warnings) as pool_dir, PrefixDirs(pool_dir) as prefixes:
        if not requests:   # nothing to do, and no lock file to make for it
            return dict(_result([], pool, None, diff), **({"warnings": warnings} if warnings else {}))
        workspaces = [labelled(request, prefixes.workspace, request.vid) for request in requests]
        try:
            with volume_locks(pool_dir, [request.vid for request in requests], timeout=params["lock_timeout"],
                              purpose=purpose, create=not check_mode, record=not check_mode):
                surroundings = Surroundings.read(pool, qubes.name if qubes is not None else None)
                items = plan_all(requests, workspaces, surroundings, qubes, warnings)
                _carry_out_all(items, surroundings, pool, check_mode,
                               CloneProbe(pool_dir if isinstance(pool_dir, Directory) else None), warnings)
        finally:
            for workspace in workspaces:
                workspace.close()
        result = _result(items, pool, surroundings, diff)
    if warnings:
        result["warnings"] = warnings
    return result


def _carry_out_all(items: list[BatchItem], surroundings: Surroundings, pool: str, check_mode: bool,
                   probe: CloneProbe, warnings: list[str]) -> None:
    """Execute the items' plans in order (in check mode: report them); the first failure stops the batch."""
    for position, item in enumerate(items):
        if not item.plan.actions:
            continue
        workspace = item.plan.workspace
        try:
            # Afresh: an earlier item may have made or removed this VM directory.
            workspace.open_vm_dir()
            carry_out(item.plan, surroundings, check_mode, probe, warnings)
        except (ReflinkError, OSError) as exc:
            raise _stopped_at(items, position, exc, pool, surroundings) from None
        finally:
            workspace.close_vm_dir()


def _stopped_at(items: list[BatchItem], position: int, exc: ReflinkError | OSError, pool: str,
                surroundings: Surroundings) -> BatchFailed:
    """The BatchFailed of item ``position``: what was done before it and by it, and the way on (a rerun converges)."""
    failed = items[position]
    if isinstance(exc, PlanFailed):
        failed.plan.done = exc.done
    changed_before = [item for item in items[:position] if item.plan.actions]
    again = "" if "run the task again" in str(exc) else "; run the task again to finish"
    message = "%s: %s; %s; the items after it were not started%s" % (
        failed.request.label, exc,
        "the items before it were done (%s)" % ", ".join(str(item.request.vid) for item in changed_before)
        if changed_before else "no item before it changed anything", again)
    done = [text for item in items[:position + 1] for text in item.plan.done]
    # The item's own plan ran fully when only reading it afterwards failed.
    changed = bool(changed_before) or (exc.changed if isinstance(exc, PlanFailed) else bool(failed.plan.done))
    reports = [_item_report(item, pool, surroundings) for item in items[:position]]
    return BatchFailed(message, done, changed, {"volumes": reports})


def _item_report(item: BatchItem, pool: str, surroundings: Surroundings) -> dict[str, Any]:
    report = volume_report(pool, item.plan.after, surroundings)
    report["changed"] = bool(item.plan.actions)
    report["actions"] = list(item.plan.done)
    report.update(item.request.kept_pins(item.plan.after))
    return report


def _result(items: list[BatchItem], pool: str, surroundings: Surroundings | None, diff: bool) -> Result:
    volumes = [_item_report(item, pool, surroundings) for item in items] if surroundings is not None else []
    result = {
        "changed": any(item.plan.actions for item in items),
        "actions": [text for report in volumes for text in report["actions"]],
        "volumes": volumes,
    }
    if diff:
        result["diff"] = {
            "before": {str(item.request.vid): item.plan.files.summary() for item in items},
            "after": {str(item.request.vid): item.plan.after.summary() for item in items},
        }
    return result


class PrefixDirs:
    """The pool's prefix directories, opened once for every item of the batch."""

    def __init__(self, pool_dir: PoolDirectory) -> None:
        self.pool_dir = pool_dir
        self.opened: dict[str, Directory | None] = {}

    def workspace(self, vid: Vid) -> Workspace:
        if vid.prefix not in self.opened:
            self.opened[vid.prefix] = self.pool_dir.open_dir(vid.prefix)
        return Workspace(self.pool_dir, vid, prefix_dir=self.opened[vid.prefix])

    def __enter__(self) -> PrefixDirs:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for directory in self.opened.values():
            if directory is not None:
                directory.close()


def make_room_for_locks(count: int) -> None:
    """Raise the soft limit of open files if a batch of ``count`` volume locks needs it (the hard limit allows)."""
    needed = count + _FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise InvalidArgument("a batch of %d volumes holds one lock file open per volume and needs about %d open "
                              "files, but this host allows %d (ulimit -Hn); split volumes into smaller tasks; "
                              "nothing was changed" % (count, needed, hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))

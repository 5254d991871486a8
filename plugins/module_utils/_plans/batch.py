# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Many volumes in one task: ``reflink_volume`` with ``volumes``.

A module process costs about 0.3 s while a no-op volume costs a millisecond,
so a pool is reconciled in one task.  The batch keeps the single task's
promises and adds one: every item is planned before anything changes, so a
refusal of any item leaves the pool as it was.  Locks: the pool lock once,
then every volume lock in vid order (see _locks.volume_locks).  The pool is
read once: qubes.xml, the loop devices and qubesd's running files for the
whole batch, each VM directory listed once for all its volumes.

Nothing here imports Ansible.
"""

from __future__ import annotations

import re
import resource
from dataclasses import dataclass, field

from ansible_collections.dom0.reflink.plugins.module_utils._engine import file_actions as act
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument, PoolError, ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._engine.inuse_guard import InUseGuard
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import volume_locks
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import parse_vid
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import VolumePlanner, check_revisions_to_keep
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import read_qubes_xml, refuse_qubesd_volume
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import (
    PlanFailed,
    _open_task_pool,
    execute,
    planned_texts,
    simulate,
)
from ansible_collections.dom0.reflink.plugins.module_utils._base.units import parse_volume_size
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import Surroundings, read_volume, volume_report

STATES = ("present", "absent", "stopped")
ITEM_KEYS = ("vid", "state", "size", "allow_shrink", "revisions_to_keep")
# What each state does to the volume's data, for the refusal of a qubesd-owned volume (None: only removes).
CHANGES = {"present": "create or resize", "stopped": "commit", "absent": None}
# Ansible's spellings of a boolean, for item values that no argument spec has converted.
_TRUE = frozenset(("yes", "on", "1", "true", "y", "t"))
_FALSE = frozenset(("no", "off", "0", "false", "n", "f"))
# File descriptors a batch needs besides one lock per volume (the pool, its directories, Python's own).
_FD_MARGIN = 64


@dataclass
class VolumeRequest:
    """What one volume should become: a task's options, or one item of ``volumes`` over them."""

    vid: object
    state: str = "present"
    size: int | None = None
    allow_shrink: bool = False
    revisions_to_keep: int | None = None
    remove_pins: bool = False
    label: str = ""       # how an error names the item ("" for a single-volume task)
    warning: str = ""     # what the task should be told about this request, or ""

    @property
    def changes(self):
        return CHANGES[self.state]


def volume_request(params):
    """The request of a single-volume task (options already checked by the module)."""
    size = None if params["size"] is None else parse_volume_size(params["size"])
    return VolumeRequest(
        vid=parse_vid(params["vid"]),
        state=params["state"],
        size=size,
        allow_shrink=params["allow_shrink"],
        revisions_to_keep=check_revisions_to_keep(params["revisions_to_keep"], optional=True),
        remove_pins=params["remove_pins"],
        warning=_unused_size(params["state"], size, ""),
    )


def _unused_size(state: str, size: int | None, label: str) -> str:
    """The warning for a size given with a state that does not use it (never ignored silently), or ""."""
    if size is None or state == "present":
        return ""
    if state == "absent":
        why = "state=absent removes the volume"
    else:
        why = ("state=stopped commits the pending dirty image at its own size; to resize, run state=present "
               "with size after it")
    return "%ssize %d was not used: %s" % ("%s: " % label if label else "", size, why)


def batch_requests(params):
    """The requests of ``volumes``, in the order given; refuses bad items and vids given twice."""
    items = params["volumes"]
    requests = []
    seen = {}
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


def _item_request(item, params, label):
    def value(key):
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
        warning=_unused_size(state, size if item.get("size") is not None else None, label),
    )


def _boolean(value, what):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidArgument("%s must be a boolean (got %r)" % (what, value))


def _integer(value):
    """Integers as templating may hand them over: "2" is 2; anything else is left to the check."""
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value.strip())
    return value


def plan_request(request, planner, vm_dir_names, vm_dir_exists):
    """The actions that bring one volume to ``request`` (the one place for what each state means)."""
    keep = planner.revisions_to_keep(request.revisions_to_keep)
    if request.state == "absent":
        return planner.absent(vm_dir_names, remove_pins=request.remove_pins)
    if request.state == "stopped":
        return planner.stopped(keep)
    return planner.present(request.size, request.allow_shrink, keep, vm_dir_exists=vm_dir_exists)


@dataclass
class _VmDirState:
    """A VM directory as the items planned so far leave it: whether it exists and what it holds."""

    listing: list          # its names on disk when the batch first looked (never changes)
    names: set             # its names after the items planned so far
    exists: bool


@dataclass
class _Planned:
    request: VolumeRequest
    workspace: act.Workspace
    files: object          # VolumeFiles the plan was made from
    actions: list
    after: object          # VolumeFiles the plan leaves (simulated, then read after execution)
    done: list = field(default_factory=list)   # what it did (check mode: what it would do)


class BatchFailed(PlanFailed):
    """An item failed while the batch executed; ``result`` holds the ``volumes`` of the items done."""

    def __init__(self, message, done, changed, result):
        super().__init__(message, done, changed)
        self.result = result


def run_volume_batch(params, check_mode, diff, purpose="reflink_volume volumes"):
    """Run ``reflink_volume`` with ``volumes`` and return its result dict."""
    requests = batch_requests(params)
    pool = params["pool"]
    warnings = [request.warning for request in requests if request.warning]
    qubes = read_qubes_xml(params.get("qubes_xml"), pool)
    for request in requests:
        if request.changes is not None:
            _labelled(request, refuse_qubesd_volume, qubes, request.vid, request.changes)
    _make_room_for_locks(len(requests))
    with _open_task_pool(pool, check_mode, warnings) as pool_dir, _PrefixDirs(pool_dir) as prefixes:
        if not requests:   # nothing to do, and no lock file to make for it
            return dict(_result([], pool, None, diff), **({"warnings": warnings} if warnings else {}))
        workspaces = [_labelled(request, prefixes.workspace, request.vid) for request in requests]
        try:
            with volume_locks(pool_dir, [request.vid for request in requests], timeout=params["lock_timeout"],
                              purpose=purpose, create=not check_mode):
                surroundings = Surroundings.read(pool, qubes.name if qubes is not None else None)
                plans = _plan_all(requests, workspaces, surroundings, qubes)
                if check_mode:
                    probed = {}
                    for plan in plans:
                        plan.done = planned_texts(plan.actions, plan.workspace.prefix_dir, probed)
                else:
                    _execute_all(plans, surroundings, pool)
        finally:
            for workspace in workspaces:
                workspace.close()
        result = _result(plans, pool, surroundings, diff)
    if warnings:
        result["warnings"] = warnings
    return result


def _labelled(request, function, *args):
    """``function(*args)`` while planning; its refusal names the item that caused it (nothing changed yet)."""
    try:
        return function(*args)
    except (ReflinkError, OSError) as exc:
        if isinstance(exc, ReflinkError):
            error, text = exc, str(exc)
        else:   # a directory or image that could not be read: refused like any other item
            error = PoolError("")
            text = "%s%s" % (exc.strerror or exc, " (%s)" % exc.filename if exc.filename else "")
        if "nothing was changed" not in text:
            text += "; nothing was changed"
        # The same error (its class and attributes, a way_out say), with the item in front of its message.
        error.args = ("%s: %s" % (request.label, text),)
        raise error from None


def _plan_all(requests, workspaces, surroundings, qubes):
    """Plan every item in order, each against the VM directories the earlier ones leave."""
    vm_dirs = {}
    return [_labelled(request, _plan_one, request, workspace, vm_dirs, surroundings, qubes)
            for request, workspace in zip(requests, workspaces, strict=True)]


def _plan_one(request, workspace, vm_dirs, surroundings, qubes):
    """One item's plan; ``vm_dirs`` (vm_dir -> _VmDirState) records what it leaves for the items after it."""
    workspace.open_vm_dir()
    state = vm_dirs.get(request.vid.vm_dir)
    if state is None:
        listing = workspace.vm_dir.names() if workspace.vm_dir is not None else []
        state = vm_dirs[request.vid.vm_dir] = _VmDirState(listing, set(listing), workspace.vm_dir is not None)
    files = read_volume(workspace.vm_dir, request.vid, state.listing)
    planner = VolumePlanner(files, surroundings, workspace.rel, workspace.vm_dir, workspace.prefix_dir,
                            qubes=qubes.volume(request.vid) if qubes is not None else None)
    actions = plan_request(request, planner, sorted(state.names), state.exists)
    after = simulate(files, actions) if actions else files
    if actions:
        state.names.difference_update(info.name for info in files.all_with_pins())
        state.names.update(info.name for info in after.all_with_pins())
    if any(isinstance(action, act.MakeVmDir) for action in actions):
        state.exists = True
    elif any(isinstance(action, act.RemoveVmDirIfEmpty) for action in actions) and not state.names:
        state.exists = False
    # One descriptor per volume would be too many for a large batch: opened again to execute.
    workspace.close_vm_dir()
    return _Planned(request, workspace, files, actions, after)


def _execute_all(plans, surroundings, pool):
    """Execute the plans in order; the first failure stops the batch (a rerun converges)."""
    for position, plan in enumerate(plans):
        if not plan.actions:
            continue
        workspace = plan.workspace
        try:
            # Afresh: an earlier item may have made or removed this VM directory.
            workspace.open_vm_dir()
            plan.done = execute(plan.actions, workspace, guard=InUseGuard(plan.files, surroundings))
            plan.after = read_volume(workspace.vm_dir, plan.request.vid)
        except (ReflinkError, OSError) as exc:
            raise _stopped_at(plans, position, exc, pool, surroundings) from None
        finally:
            workspace.close_vm_dir()


def _stopped_at(plans, position, exc, pool, surroundings):
    """The BatchFailed of item ``position``: what was done before it and by it, and the way on."""
    plan = plans[position]
    if isinstance(exc, PlanFailed):
        plan.done = exc.done
    changed_before = [item for item in plans[:position] if item.actions]
    again = "" if "run the task again" in str(exc) else "; run the task again to finish"
    message = "%s: %s; %s; the items after it were not started%s" % (
        plan.request.label, exc,
        "the items before it were done (%s)" % ", ".join(str(item.request.vid) for item in changed_before)
        if changed_before else "no item before it changed anything", again)
    done = [text for item in plans[:position + 1] for text in item.done]
    # The item's own plan ran fully when only reading it afterwards failed.
    changed = bool(changed_before) or (exc.changed if isinstance(exc, PlanFailed) else bool(plan.done))
    reports = [_item_report(item, pool, surroundings) for item in plans[:position]]
    return BatchFailed(message, done, changed, {"volumes": reports})


def _item_report(plan, pool, surroundings):
    report = volume_report(pool, plan.after, surroundings)
    report["changed"] = bool(plan.actions)
    report["actions"] = list(plan.done)
    if plan.request.state == "absent":
        report["kept_pins"] = sorted(plan.after.pins)
    return report


def _result(plans, pool, surroundings, diff):
    volumes = [_item_report(plan, pool, surroundings) for plan in plans]
    result = {
        "changed": any(plan.actions for plan in plans),
        "actions": [text for report in volumes for text in report["actions"]],
        "volumes": volumes,
    }
    if diff:
        result["diff"] = {
            "before": {str(plan.request.vid): plan.files.summary() for plan in plans},
            "after": {str(plan.request.vid): plan.after.summary() for plan in plans},
        }
    return result


class _PrefixDirs:
    """The pool's prefix directories, opened once for every item of the batch."""

    def __init__(self, pool_dir):
        self.pool_dir = pool_dir
        self.opened = {}

    def workspace(self, vid):
        if vid.prefix not in self.opened:
            self.opened[vid.prefix] = self.pool_dir.open_dir(vid.prefix)
        return act.Workspace(self.pool_dir, vid, prefix_dir=self.opened[vid.prefix])

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        for directory in self.opened.values():
            if directory is not None:
                directory.close()


def _make_room_for_locks(count):
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

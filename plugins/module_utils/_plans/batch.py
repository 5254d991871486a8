# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Many volumes planned in one go: ``reflink_volume`` with ``volumes``.

A module process costs about 0.3 s while a no-op volume costs a millisecond,
so a pool is reconciled in one task.  The batch keeps the single task's
promises and adds one: every item is planned before anything changes, so a
refusal of any item leaves the pool as it was.  Each item is planned against
the VM directories the items before it leave; the flow around it (locks,
execution, the result) is in _tasks/volume_batch.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import PoolError, ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._engine import file_actions as act
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import PlanContext, VolumePlan, VolumeRequest, plan_request, plan_volume
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import read_volume
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import QubesPool
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings


T = TypeVar("T")


@dataclass
class _VmDirState:
    """A VM directory as the items planned so far leave it: whether it exists and what it holds."""

    listing: list[str]     # its names on disk when the batch first looked (never changes)
    names: set[str]        # its names after the items planned so far
    exists: bool


@dataclass
class BatchItem:
    """One item of the batch: what it asked for, and its plan."""

    request: VolumeRequest
    plan: VolumePlan


def labelled(request: VolumeRequest, function: Callable[..., T], *args: object) -> T:
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


def plan_all(requests: list[VolumeRequest], workspaces: list[Workspace], surroundings: Surroundings,
             qubes: QubesPool | None, warnings: list[str]) -> list[BatchItem]:
    """Plan every item in order, each against the VM directories the earlier ones leave."""
    vm_dirs: dict[str, _VmDirState] = {}
    return [labelled(request, _plan_one, request, workspace, vm_dirs, surroundings, qubes, warnings)
            for request, workspace in zip(requests, workspaces, strict=True)]


def _plan_one(request: VolumeRequest, workspace: Workspace, vm_dirs: dict[str, _VmDirState], surroundings: Surroundings,
              qubes: QubesPool | None, warnings: list[str]) -> BatchItem:
    """One item's plan; ``vm_dirs`` (vm_dir -> _VmDirState) records what it leaves for the items after it."""
    workspace.open_vm_dir()
    state = vm_dirs.get(request.vid.vm_dir)
    if state is None:
        listing = workspace.vm_dir.names() if workspace.vm_dir is not None else []
        state = vm_dirs[request.vid.vm_dir] = _VmDirState(listing, set(listing), workspace.vm_dir is not None)
    files = read_volume(workspace.vm_dir, request.vid, state.listing)
    context = PlanContext(workspace, sorted(state.names), state.exists, warnings)
    plan = plan_volume(files, surroundings, qubes, functools.partial(plan_request, request), context)
    if plan.actions:
        state.names.difference_update(info.name for info in plan.files.all_with_pins())
        state.names.update(info.name for info in plan.after.all_with_pins())
    if any(isinstance(action, act.MakeVmDir) for action in plan.actions):
        state.exists = True
    elif any(isinstance(action, act.RemoveVmDirIfEmpty) for action in plan.actions) and not state.names:
        state.exists = False
    # One descriptor per volume would be too many for a large batch: opened again to execute.
    workspace.close_vm_dir()
    return BatchItem(request, plan)

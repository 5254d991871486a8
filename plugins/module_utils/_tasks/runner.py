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
from typing import Any

from ansible_collections.dom0.reflink.plugins.module_utils._engine.file_actions import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs.clone import clone_probe
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument, ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import AbsentDirectory, Directory
from ansible_collections.dom0.reflink.plugins.module_utils._engine.inuse_guard import InUseGuard, VolumeBecameInUse
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import volume_lock
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import parse_vid
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import VolumePlanner
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import read_qubes_xml, refuse_qubesd_volume
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import (
    Surroundings,
    VolumeFiles,
    read_volume,
    volume_report,
)

# The option every module has (documented in the doc fragment dom0.reflink.qubes_xml).
QUBES_XML_ARGUMENT_SPEC = {
    "qubes_xml": {"type": "str", "default": "auto"},
}

# The options shared by the volume modules (documented in the doc fragments
# dom0.reflink.volume and dom0.reflink.qubes_xml).
VOLUME_ARGUMENT_SPEC = {
    "pool": {"type": "path", "required": True},
    "vid": {"type": "str", "required": True},
    "lock_timeout": {"type": "int", "default": 60},
    **QUBES_XML_ARGUMENT_SPEC,
}


def volume_argument_spec(**extra):
    """The shared options plus the module's own."""
    spec = dict(VOLUME_ARGUMENT_SPEC)
    spec.update(extra)
    return spec


class PlanFailed(ReflinkError):
    """An action of a plan failed; ``done`` lists the actions that completed before it."""

    def __init__(self, message, done, changed=None):
        super().__init__(message)
        self.done = done
        self.changed = bool(done) if changed is None else changed


class PlanWithdrawn(PlanFailed):
    """The volume became in use while the plan ran; what it had done is taken back where it should be."""

    def __init__(self, message, done, changed, reasons):
        super().__init__(message, done, changed)
        self.reasons = reasons


def execute(actions, workspace, guard=None):
    """Run ``actions`` in order; on failure undo what can be undone and raise PlanFailed.

    Undoing is best effort and only for steps whose effect would otherwise
    outlive a failed task for no use (a staged import image, a new empty VM
    directory, a removed precache); a crash cannot undo, and the next run of
    the task converges instead.

    ``guard(workspace)``, if given, is called after each long step and right
    before each destructive one (see _inuse_guard.py); when it raises
    VolumeBecameInUse the plan is withdrawn and PlanWithdrawn is raised.
    """
    done = []
    ran = []
    for action in actions:
        if guard is not None and (action.destructive or (ran and ran[-1].long)):
            try:
                guard(workspace)
            except VolumeBecameInUse as exc:
                raise _withdrawn(exc, ran, done, workspace) from None
            except (ReflinkError, OSError) as exc:
                undone, taken_back = _undo(list(reversed(ran)), workspace)
                raise PlanFailed("could not check whether the volume became in use before step '%s' (%s); "
                                 "completed steps are listed in actions%s; run the task again"
                                 % (action.text, exc, undone), done, _left_changed(ran, taken_back)) from None
        try:
            action.run(workspace)
        except (ReflinkError, OSError, OverflowError) as exc:
            # The failed step may have done part of its work (a rename whose directory fsync
            # failed): it is undone first, with the steps before it.
            undone, taken_back = _undo([action, *reversed(ran)], workspace)
            raise PlanFailed("%s; completed steps are listed in actions%s; %s"
                             % (_failure_text(action, exc), undone, _way_out(exc)), done,
                             _left_changed(ran, taken_back)) from None
        done.append(action.done)
        ran.append(action)
        if action.completes:
            guard = None
    return done


def _withdrawn(exc, ran, done, workspace):
    taken_back = []
    kept = []
    for action in reversed(ran):
        if getattr(action, "kept_after_pruning", False) and any(getattr(step, "prunes", False) for step in kept):
            kept.append(action)   # a revision was pruned to make room for this one: it stays
            continue
        try:
            text = action.withdraw(workspace)
        except (ReflinkError, OSError):
            text = None   # the next run of the task, or reflink_gc, deals with it
        if text:
            taken_back.append(text)
        elif action.changes_disk:
            kept.append(action)
    if any(action.destructive for action in kept):
        outcome = "the steps listed in actions were done before it"
    else:
        outcome = "nothing of the volume was replaced or removed"
    message = "%s; %s%s; run the task again once the VM has stopped, and it will do the job" % (
        exc, outcome, "; undone: %s" % ", ".join(taken_back) if taken_back else "")
    return PlanWithdrawn(message, done, bool(kept), exc.reasons)


def _way_out(exc):
    """What the user does next: the error's own advice where it has one (a rerun alone would fail the same way)."""
    return getattr(exc, "way_out", None) or "run the task again to finish, or fix the cause first"


def _failure_text(action, exc):
    if isinstance(exc, ReflinkError):
        return "%s; failed at step '%s'" % (exc, action.text)
    if isinstance(exc, OverflowError):
        return "step '%s' failed: the size is too large for this system" % action.text
    where = " (%s)" % exc.filename if exc.filename else ""
    return "step '%s' failed: %s%s" % (action.text, exc.strerror or exc, where)


def _undo(actions, workspace):
    """Undo ``actions`` (best effort): the text for the message, and the actions that were taken back."""
    undone = []
    taken_back = []
    for action in actions:
        try:
            text = action.undo(workspace)
        except (ReflinkError, OSError):
            continue  # the next run of the task, or reflink_gc, deals with it
        if text:
            undone.append(text)
            taken_back.append(action)
    return ("; undone: %s" % ", ".join(undone) if undone else ""), taken_back


def _left_changed(ran: list[Any], taken_back: list[Any]) -> bool:
    """Whether a failed plan left a change: a step that ran, changes the disk, and was not taken back."""
    return any(action.changes_disk and action not in taken_back for action in ran)


def planned_texts(actions: list[Any], directory: Any, found: dict[Any, Any] | None = None) -> list[str]:
    """Check mode: each action's text as the real run reports it, where the plan can tell how a clone goes.

    ``directory``: one on the pool's file system.  A clone between two images of the pool is a
    reflink where a probe of that file system succeeds (probed once, and only for a plan with a
    clone); a staged source is probed by cloning it into an unnamed file there.  ``found``: a
    dict of the probes made so far, shared by the calls of one task (a batch, gc).
    """
    found = {} if found is None else found

    def probe(src_fd: int | None = None) -> tuple[str | None, int | None]:
        if src_fd not in found:
            found[src_fd] = clone_probe(directory, src_fd)
        return found[src_fd]

    for action in actions:
        action.predict_how(probe)
    return [action.done for action in actions]


def simulate(files, actions):
    """The VolumeFiles that ``actions`` would leave, computed without touching the disk."""
    listing = {info.name: info for info in files.all_with_pins()}
    for action in actions:
        action.simulate(listing)
    return VolumeFiles.from_infos(files.vid, listing.values())


def run_volume_task(params, check_mode, diff, purpose, plan, extra=None, changes="change"):
    """Run one volume module's task and return its result dict.

    ``plan(planner, context)`` returns the list of actions; ``context`` is a
    dict with ``workspace``, ``vm_dir_names`` (the VM directory's entries) and
    ``warnings`` (a list the plan may add to; each becomes a module warning).
    ``extra(after)``, if given, returns more result keys from the volume's
    files after the task (VolumeFiles).  ``changes`` says what the task does
    to the volume's data ("import into"), for the refusal of a volume that
    qubes.xml lists as a snapshot or volatile one; None for a task that only
    removes (those files are leftovers then, and removing them loses nothing).
    """
    vid = parse_vid(params["vid"])
    pool = params["pool"]
    warnings = []
    # Read (and refuse) before any lock file is made: a bad qubes.xml changes nothing.
    qubes = read_qubes_xml(params.get("qubes_xml"), pool)
    if changes is not None:
        refuse_qubesd_volume(qubes, vid, changes)
    with _open_task_pool(pool, check_mode, warnings) as pool_dir, Workspace(pool_dir, vid) as workspace:
        # The workspace checked that this is a pool before any lock file is made in it.
        with volume_lock(pool_dir, vid, timeout=params["lock_timeout"], purpose=purpose,
                         create=not check_mode):
            workspace.open_vm_dir()
            vm_dir_names = workspace.vm_dir.names() if workspace.vm_dir else []
            files = read_volume(workspace.vm_dir, vid)
            surroundings = Surroundings.read(pool, qubes.name if qubes is not None else None)
            planner = VolumePlanner(files, surroundings, workspace.rel, workspace.vm_dir, workspace.prefix_dir,
                                    qubes=qubes.volume(vid) if qubes is not None else None)
            actions = plan(planner, {"workspace": workspace, "vm_dir_names": vm_dir_names, "warnings": warnings})
            if check_mode:
                reported = planned_texts(actions, workspace.vm_dir or workspace.prefix_dir)
                after = simulate(files, actions)
            else:
                reported = execute(actions, workspace, guard=InUseGuard(files, surroundings))
                after = read_volume(workspace.vm_dir, vid)
            result = {
                "changed": bool(actions),
                "actions": reported,
                "volume": volume_report(pool, after, surroundings),
            }
            if extra is not None:
                result.update(extra(after))
            if diff:
                result["diff"] = {"before": files.summary(), "after": after.summary()}
            if warnings:
                result["warnings"] = warnings
            return result


def missing_pool_warning(path):
    """The warning of a check-mode task on a pool that does not exist yet."""
    return ("pool %s does not exist: check mode planned this task as if it were an empty pool "
            "(as dom0.reflink.reflink_pool would leave it); a real run needs the pool first" % path)


def _open_task_pool(path, check_mode, warnings):
    """The pool's Directory; in check mode a pool that does not exist yet is planned as an empty one."""
    if check_mode and not os.path.lexists(path):
        warnings.append(missing_pool_warning(path))
        return AbsentDirectory(path)
    return Directory.open_pool(path)


def check_lock_timeout(value: object) -> object:
    """``lock_timeout`` (None where a module has none): a whole number of seconds, 0 or more."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise InvalidArgument("lock_timeout must be a whole number of seconds, 0 or more (0: do not wait), got %r"
                              % (value,))
    return value


def main_wrapper(module, work):
    """Call ``work()`` and exit the module with its result, or fail with a clear message."""
    try:
        check_lock_timeout(module.params.get("lock_timeout"))
        result = work()
    except PlanFailed as exc:
        # A batch's failure also says what each item done before it left (``result``).
        module.fail_json(msg=str(exc), actions=exc.done, changed=exc.changed, **getattr(exc, "result", {}))
    except ReflinkError as exc:
        module.fail_json(msg=str(exc), actions=[], changed=False)
    except OSError as exc:
        where = " (%s)" % exc.filename if exc.filename else ""
        module.fail_json(msg="%s%s" % (exc.strerror or exc, where), actions=[], changed=False)
    for warning in result.pop("warnings", ()):
        module.warn(warning)
    module.exit_json(**result)

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a plan runs: execute it in order (undoing or withdrawing on failure), or simulate it in check mode.

``execute`` runs the actions of a plan one after the other; a step that fails
stops the plan, and what the steps before it left that is useless alone is
undone.  ``simulate`` computes, without touching the disk, the volume's files
as the plan would leave them, for check mode and diff mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import PlanFailed, PlanWithdrawn, ReflinkError, VolumeBecameInUse
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Action, W
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles


def execute(actions: Sequence[Action[W]], workspace: W, guard: Callable[[W], None] | None = None) -> list[str]:
    """Run ``actions`` in order; on failure undo what can be undone and raise PlanFailed.

    Undoing is best effort and only for steps whose effect would otherwise
    outlive a failed task for no use (a staged import image, a new empty VM
    directory, a removed precache); a crash cannot undo, and the next run of
    the task converges instead.

    ``guard(workspace)``, if given, is called after each long step and right
    before each destructive one (see inuse_guard.py); when it raises
    VolumeBecameInUse the plan is withdrawn and PlanWithdrawn is raised.
    """
    done: list[str] = []
    ran: list[Action[W]] = []
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


def _withdrawn(exc: VolumeBecameInUse, ran: list[Action[W]], done: list[str], workspace: W) -> PlanWithdrawn:
    taken_back = []
    kept: list[Action[W]] = []
    for action in reversed(ran):
        if action.kept_after_pruning and any(step.prunes for step in kept):
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


def _way_out(exc: BaseException) -> str:
    """What the user does next: the error's own advice where it has one (a rerun alone would fail the same way)."""
    way_out = exc.way_out if isinstance(exc, ReflinkError) else None
    return way_out or "run the task again to finish, or fix the cause first"


def _failure_text(action: Action[W], exc: ReflinkError | OSError | OverflowError) -> str:
    if isinstance(exc, ReflinkError):
        return "%s; failed at step '%s'" % (exc, action.text)
    if isinstance(exc, OverflowError):
        return "step '%s' failed: the size is too large for this system" % action.text
    where = " (%s)" % exc.filename if exc.filename else ""
    return "step '%s' failed: %s%s" % (action.text, exc.strerror or exc, where)


def _undo(actions: Sequence[Action[W]], workspace: W) -> tuple[str, list[Action[W]]]:
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


def _left_changed(ran: list[Action[W]], taken_back: list[Action[W]]) -> bool:
    """Whether a failed plan left a change: a step that ran, changes the disk, and was not taken back."""
    return any(action.changes_disk and action not in taken_back for action in ran)


def simulate(files: VolumeFiles, actions: Sequence[Action[W]]) -> VolumeFiles:
    """The VolumeFiles that ``actions`` would leave, computed without touching the disk."""
    listing = {info.name: info for info in files.all_with_pins()}
    for action in actions:
        action.simulate(listing)
    return VolumeFiles.from_infos(files.vid, listing.values())

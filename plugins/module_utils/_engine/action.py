# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The steps a plan is made of: the Action every step is, and Step, a pool-level one.

A module first plans (a list of actions computed from what is on disk), then
either executes the plan or, in check mode, simulates it on the listing of the
volume's files.  Each action is one durable step of the contract; a plan that
stops half-way (error, crash) leaves a state that the next run reads and
finishes.  Each action says in plain words what it does (``text``), and after
it ran, how (``done``: e.g. whether a clone was a reflink or a copy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from ansible_collections.dom0.reflink.plugins.module_utils._fs.copy_cause import CopyCause
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo

# Where an action runs: a volume's Workspace (file actions), or nothing (a pool-level Step).
W = TypeVar("W")
# A file of the VM directory as a path relative to the pool, for the texts of actions (Vid.rel).
Rel = Callable[[str], str]


class Probe(Protocol):
    """Check mode's probe of how a clone would go (see prediction.py)."""

    def __call__(self, src_fd: int | None = None) -> tuple[str | None, int | None]:
        """How a clone from the open file ``src_fd`` (None: between two images of the pool) would go.

        (clone.REFLINK, clone.COPY, or None where it cannot be told; the errno that rules out a reflink, or None)
        """


class Action(Generic[W]):
    """One step of a plan.  Subclasses set ``text`` and implement run/simulate.

    ``destructive``: the step replaces or removes an image, so the executor checks
    right before it that the volume has not become in use (see inuse_guard.py);
    ``long``: the step may take long enough for a VM to start meanwhile, so the
    executor checks after it; ``changes_disk``: whether its effect outlives it;
    ``completes``: once it ran, the new clean image is in place and the plan's
    job is done, so the executor checks no more (what follows, a new precache or
    a record of the commit, only finishes; withdrawing it would take back the
    revision that now holds the old data).  When a plan is withdrawn, a step
    that is ``kept_after_pruning`` (the new revision a commit makes) stays if a
    later step ``prunes`` an older revision to make room for it.  ``copy_cause``:
    for a step that clones, why it was (check mode: will be) a copy, where it was.
    """

    text = ""
    destructive = False
    long = False
    changes_disk = True
    completes = False
    prunes = False
    kept_after_pruning = False
    copy_cause: CopyCause | None = None

    def note_copy(self, cause: CopyCause) -> None:
        """Record why this step's clone is a copy (the ``copied`` callback of clone.fill_from)."""
        self.copy_cause = cause

    def run(self, workspace: W) -> None:
        raise NotImplementedError

    def simulate(self, files: dict[str, FileInfo]) -> None:
        """Apply the action to ``files`` (a dict name -> FileInfo of the VM directory)."""

    def undo(self, workspace: W) -> str | None:
        """After a later step failed: take back what is useless alone; return what was done, or None."""
        return None

    def withdraw(self, workspace: W) -> str | None:
        """The plan stopped because the volume became in use: take back what should not stay; like undo."""
        return self.undo(workspace)

    def predict_how(self, probe: Probe) -> None:
        """Check mode: say how the step would go, where the plan can tell (``probe``: see planned_texts)."""

    @property
    def done(self) -> str:
        return self.text


def copy_warnings(actions: Sequence[Action[W]]) -> list[str]:
    """The warnings of the steps whose clone was (check mode: will be) a copy where a reflink was expected."""
    return [action.copy_cause.warning("the step '%s'" % action.text) for action in actions
            if action.copy_cause is not None and not action.copy_cause.expected]


class Step(Action[None]):
    """A pool-level step: a sentence and the function that does it."""

    def __init__(self, text: str, function: Callable[[], object]) -> None:
        self.text = text
        self.function = function

    def run(self, workspace: None) -> None:
        self.function()

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check mode's texts as the real run reports them: how each clone would go, from a probe of the pool's file system.

A real run appends to a clone's text how it went ("(reflink)", or "(sparse copy:
reflink not possible here)"); check mode predicts it where the plan can tell: a
clone between two images of the pool from one probe of the file system (two
unnamed files), a staged source from a clone of it into an unnamed file of the
pool.  Nothing shows in the pool and nothing is written to the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Action, Probe, W
    from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory


class CloneProbe:
    """The probe of one task (see action.Probe), made at most once per source; called only for a plan with a clone."""

    def __init__(self, directory: Directory | None) -> None:
        """``directory``: one on the pool's file system (None: a pool that does not exist yet, nothing can be told)."""
        self.directory = directory
        self.found: dict[int | None, tuple[str | None, int | None]] = {}

    def __call__(self, src_fd: int | None = None) -> tuple[str | None, int | None]:
        if src_fd not in self.found:
            # Imported here: every task on a volume makes its probe, few call it (check mode, a plan with a clone).
            # pylint: disable-next=import-outside-toplevel
            from ansible_collections.dom0.reflink.plugins.module_utils._fs.filesystem import clone_probe  # noqa: PLC0415
            self.found[src_fd] = clone_probe(self.directory, src_fd)
        return self.found[src_fd]


def predicted_texts(actions: Sequence[Action[W]], probe: Probe) -> list[str]:
    """Check mode: each action's text as the real run reports it, where the plan can tell how a clone goes."""
    for action in actions:
        action.predict_how(probe)
    return [action.done for action in actions]

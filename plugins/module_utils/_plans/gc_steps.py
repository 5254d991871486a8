# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The steps of a gc run: its removals, its reading of the journals, and their execution.

``gc.py`` plans (what goes, and why); this file holds what a plan is made of
and how one volume's part of it is executed and reported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import PlanFailed, PlanWithdrawn
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Vid
from ansible_collections.dom0.reflink.plugins.module_utils._engine import file_actions as act
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Action, Step
from ansible_collections.dom0.reflink.plugins.module_utils._engine.executor import execute
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._plans.journal import JOURNALS_DIR, JournalRecord, journal_name, journals_dir, load_record
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo


class Removal(act.Remove):
    """A gc removal: the Remove action plus what the report says about it."""

    def __init__(self, vid: Vid, info: FileInfo, reason: str) -> None:
        super().__init__(vid.rel, info.name, reason)
        self.identity = (info.dev, info.ino)   # to match against the files processes hold open
        self.entry: dict[str, Any] = {
            "file": vid.rel(info.name),
            "reason": reason,
            "bytes": info.usage,
        }
        self.replaced = False

    def set_exclusive(self, exclusive: int | None) -> None:
        """What removing this file alone frees (None: the file was gone or replaced when the pool's map was read)."""
        if exclusive is not None:
            self.entry["exclusive_bytes"] = exclusive

    def run(self, workspace: Workspace) -> None:
        # Remove the file the scan saw, not whatever has its name now (qubesd may have begun a new
        # import of the volume since, and that file may be held open by its writer).
        st = workspace.vm().lstat(self.name)
        if st is not None and (st.st_dev, st.st_ino) != self.identity:
            self.replaced = True
            return
        super().run(workspace)

    @property
    def done(self) -> str:
        if self.replaced:
            return "left %s alone: it was replaced by another file since gc read the pool" % self.entry["file"]
        return self.text


_JOURNAL_TEMPFILE_RE = re.compile(r".+\.json~[a-z0-9_]{8}\Z")


def read_journals(pool_dir: Directory, only_vids: Iterable[Vid] | None = None
                  ) -> tuple[dict[str, tuple[JournalRecord | None, float]], dict[str, float]]:
    """The journals of ``.reflink/imports/``: ({name: (record or None if unreadable, mtime)}, {tempfile: mtime}).

    ``only_vids``: only the journals of these volumes (found by name: an unreadable journal of
    another volume is not this run's to remove).
    """
    found: dict[str, tuple[JournalRecord | None, float]] = {}
    tempfiles: dict[str, float] = {}
    wanted = None if only_vids is None else {journal_name(vid) for vid in only_vids}
    with journals_dir(pool_dir) as journals:
        if journals is None:
            return found, tempfiles
        for name in journals.names():
            if wanted is not None and name.partition("~")[0] not in wanted:
                continue
            st = journals.lstat(name)
            if st is not None and _JOURNAL_TEMPFILE_RE.match(name):
                tempfiles[name] = st.st_mtime  # a journal write killed between its link and rename
            if st is None or not name.endswith(".json"):
                continue
            try:
                record = load_record(journals, name)
            except (OSError, ValueError):
                record = None
            found[name] = (record, st.st_mtime)
    return found, tempfiles


def remove_vm_dir_step(pool_dir: Directory, prefix: str, vm: str) -> Step:
    def remove() -> None:
        prefix_dir = pool_dir.open_dir(prefix)   # never through a symlink planted since the scan
        if prefix_dir is None:
            return
        with prefix_dir:
            prefix_dir.rmdir_if_empty(vm)   # something appeared meanwhile: it stays
    return Step("remove empty VM directory %s/%s" % (prefix, vm), remove)


def remove_journal_step(pool_dir: Directory, name: str, reason: str) -> Step:
    def remove() -> None:
        with journals_dir(pool_dir) as journals:
            if journals is not None:
                journals.unlink(name, missing_ok=True)
    return Step("remove journal .reflink/%s/%s (%s)" % (JOURNALS_DIR, name, reason), remove)


def execute_reporting(volume_actions: list[Action[Workspace]], workspace: Workspace, removed: list[dict[str, Any]],
                      actions: list[str], skipped: list[dict[str, Any]], guard: Callable[[Workspace], None]) -> None:
    """Execute one volume's actions, adding what was done to ``actions`` and ``removed``.

    A volume whose VM qubesd started meanwhile is left as it is now and reported in ``skipped``.
    """
    try:
        done = execute(volume_actions, workspace, guard=guard)
    except PlanWithdrawn as exc:
        actions.extend(exc.done)
        removed.extend(_entries(volume_actions[:len(exc.done)]))
        skipped.append({"vid": str(workspace.vid), "reason": "became in use while gc ran: %s"
                        % "; ".join(exc.reasons)})
        return
    except PlanFailed as exc:
        actions.extend(exc.done)
        removed.extend(_entries(volume_actions[:len(exc.done)]))
        raise PlanFailed(str(exc), actions) from None
    actions.extend(done)
    removed.extend(_entries(volume_actions))


def _entries(volume_actions: list[Action[Workspace]]) -> list[dict[str, Any]]:
    """The report entries of the removals among ``volume_actions`` that did remove their file."""
    return [action.entry for action in volume_actions if isinstance(action, Removal) and not action.replaced]

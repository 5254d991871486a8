# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The import image: staging it, and what a one-shot import does about a two-phase import's journal.

Data is always staged in ``<volume>-import.img`` and committed like a VM's
stop commits its dirty image (``VolumePlanner.commit``).  The two-phase flow
around the import image (begin, commit, abort) is in two_phase.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import VolumeStateError
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Action, Probe, Rel
from ansible_collections.dom0.reflink.plugins.module_utils._engine.file_actions import MakeVmDir
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs import clone
from ansible_collections.dom0.reflink.plugins.module_utils._plans.journal import BEGUN, CORRUPT, JournalRecord, RemoveJournal, corrupt_journal, journal_state
from ansible_collections.dom0.reflink.plugins.module_utils._plans.sources import Source
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import Actions, VolumePlanner
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo


@dataclass(frozen=True)
class ImportOptions:
    """What reflink_import is asked to do, parsed from its options (see _tasks/imports.py).

    The one-shot plan (imports.py) and the two-phase plans (two_phase.py) read it.
    """

    state: str                        # present (one shot), begin, commit or abort
    size: int | None                  # bytes; None: the source's (or the begun import's) size
    checksum: str | None              # the expected sha256 in hex, or None
    force: bool
    revisions_to_keep: int            # as the planner resolved it for this volume
    fallback: str                     # errno: copy where a reflink is impossible; never: fail


class Stage(Action[Workspace]):
    """Write the import image: the source's data at the wanted size, or an all-zero sparse image."""

    long = True

    def __init__(self, rel: Rel, name: str, source: Source | None, size: int, allow_copy: bool) -> None:
        self.name = name
        self.source = source
        self.size = size
        self.allow_copy = allow_copy
        self.how: str | None = None
        self.found_before: tuple[int, int] | None = None   # (st_dev, st_ino) of an import image there before this step
        # What the plan found of the clone (imports.foresee_clone), as a Probe gives it: check mode probes no further.
        self.foreseen: tuple[str | None, int | None] | None = None
        if source is None:
            self.text = "stage an empty (all-zero) sparse image %s of %d bytes" % (rel(name), size)
        else:
            self.text = "stage %s in %s, size %d bytes" % (source.description, rel(name), size)

    def run(self, workspace: Workspace) -> None:
        vm_dir = workspace.vm()
        destination = vm_dir.join(self.name)
        self.copy_cause = None   # check mode's prediction (plan_import) gives way to what happens

        def fill(fd: int) -> str:
            if self.source is None:
                os.ftruncate(fd, self.size)
                return clone.EMPTY
            return clone.fill_from(fd, self.source.fd, dst_size=self.size, allow_copy=self.allow_copy,
                                   describe=(self.source.description, destination), dst_dir_fd=vm_dir.fd,
                                   copied=self.note_copy)

        found = workspace.vm().lstat(self.name)
        self.found_before = (found.st_dev, found.st_ino) if found is not None else None
        self.how = workspace.vm().write_new_file(self.name, fill)

    def undo(self, workspace: Workspace) -> str | None:
        # Until the commit renames it, the staged image is of no use alone.  A Stage that failed
        # before its rename leaves the import image that was there before it (it may be qubesd's).
        if workspace.vm_dir is None:
            return None
        if self.how is None:
            found = workspace.vm_dir.lstat(self.name)
            if found is None or (found.st_dev, found.st_ino) == self.found_before:
                return None
        if workspace.vm_dir.unlink(self.name, missing_ok=True):
            return "removed the staged image %s" % self.name
        return None

    def simulate(self, files: dict[str, FileInfo]) -> None:
        usage = 0 if self.source is None else min(self.source.usage, self.size)
        files[self.name] = FileInfo(self.name, self.size, usage)

    def predict_how(self, probe: Probe) -> None:
        if self.source is None:
            self.how = clone.EMPTY
            return
        how = (self.foreseen or probe(self.source.fd))[0]
        self.how = how if how != clone.COPY or self.allow_copy else None

    @property
    def done(self) -> str:
        if self.how == clone.COPY:
            return self.text + " (sparse copy: reflink not possible here)"
        if self.how == clone.REFLINK:
            return self.text + " (reflink)"
        return self.text


def new_volume_actions(planner: VolumePlanner, workspace: Workspace, keep_import: bool = False) -> Actions:
    """For a volume that does not exist yet: clear leftovers of an earlier one, make its VM directory."""
    actions: Actions = []
    for action in planner.remove_everything("leftover of an earlier volume with this vid"):
        if not (keep_import and action.name == planner.vid.import_):
            actions.append(action)
    if workspace.vm_dir is None:
        actions.append(MakeVmDir(planner.vid))
    return actions


def one_shot_journal_actions(planner: VolumePlanner, workspace: Workspace, journal: JournalRecord | None) -> Actions:
    """What a one-shot import does about a two-phase import's journal: refuse, or drop a stale one."""
    vid, files = planner.vid, planner.files
    state = journal_state(journal)
    if state == CORRUPT:
        raise VolumeStateError(corrupt_journal(vid, "a one-shot import cannot tell whether a begun import is "
                                                    "pending") + "; then import again")
    if state != BEGUN or journal is None:   # (a state comes from a journal)
        return []
    if files.import_ is not None:
        raise VolumeStateError(
            "a two-phase import of %s was begun at %s and its import image %s may hold data another program "
            "wrote: end it first with state=commit (keeps that data) or state=abort (discards it), then "
            "import again" % (vid, journal.get("written", "?"), planner.rel(vid.import_)))
    return [RemoveJournal(workspace.pool_dir, vid, "stale: the import begun at %s has lost its import image"
                          % journal.get("written", "?"))]

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The two-phase import: begin (an empty import image another program writes), then commit or abort.

Every state the flow can be left in (by a failed task, a crash, qubesd or a
person removing the import image, a wrong checksum) is one that a named next
step gets out of: each refusal below says which (commit, abort or begin), and
that step works from there.  A two-phase commit that fails its checks changes
nothing: the import image holds another program's work.
"""

from __future__ import annotations

import os

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import (
    ChecksumMismatch,
    InvalidArgument,
    ReflinkError,
    VolumeInUse,
    VolumeStateError,
)
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Vid
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Action, Rel
from ansible_collections.dom0.reflink.plugins.module_utils._engine.file_actions import Fsync, MakeVmDir, Remove, RemoveVmDirIfEmpty, ResizeInPlace
from ansible_collections.dom0.reflink.plugins.module_utils._engine.markers import MarkImported, read_import_marker
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs.inode_identity import generation_of
from ansible_collections.dom0.reflink.plugins.module_utils._plans.checksum import VerifyChecksum, sha256_of
from ansible_collections.dom0.reflink.plugins.module_utils._plans.journal import (
    BEGUN,
    COMMITTED,
    CORRUPT,
    JournalRecord,
    RemoveJournal,
    WriteJournal,
    corrupt_journal,
    journal_state,
)
from ansible_collections.dom0.reflink.plugins.module_utils._plans.staging import ImportOptions, Stage, new_volume_actions
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import Actions, VolumePlanner
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo, VolumeFiles


class AssumeImportImage(Action[Workspace]):
    """Check mode only: the import image that a begin planned earlier in the same check-mode run would make."""

    def __init__(self, rel: Rel, name: str, size: int) -> None:
        self.name = name
        self.size = size
        # Check mode cannot know the size that begin was given: the commit's size, else the volume's.
        self.text = ("take %s as a state=begin planned earlier in this check-mode run leaves it, at %d bytes "
                     "(the size given to commit, else the volume's current size)" % (rel(name), size))

    def run(self, workspace: Workspace) -> None:
        raise ReflinkError("internal error: a check-mode assumption was executed")

    def simulate(self, files: dict[str, FileInfo]) -> None:
        files[self.name] = FileInfo(self.name, self.size, 0)


def _planned_only(vid: Vid, state: str) -> str:
    return ("no two-phase import of %s is begun: check mode planned this %s as if a state=begin earlier in "
            "this check-mode run had made the import image (check mode records nothing); a real run does "
            "this after a real begin, and fails without one" % (vid, state))


def plan_two_phase(planner: VolumePlanner, workspace: Workspace, options: ImportOptions, journal: JournalRecord | None,
                   warnings: list[str], check_mode: bool) -> Actions:
    """The plan of reflink_import with state begin, commit or abort."""
    state = options.state
    if state == "abort":
        return _plan_abort(planner, workspace, journal, warnings, check_mode)
    if state == "commit":
        return _plan_commit(planner, workspace, options, journal, warnings, check_mode)
    return _plan_begin(planner, workspace, options, journal)


def _plan_abort(planner: VolumePlanner, workspace: Workspace, journal: JournalRecord | None, warnings: list[str],
                check_mode: bool) -> Actions:
    vid, files, rel = planner.vid, planner.files, planner.rel
    state = journal_state(journal)
    if state == CORRUPT:
        why = "import aborted; its journal could not be read"
    elif state == BEGUN:
        why = "import aborted"
    elif journal is None and check_mode:
        warnings.append(_planned_only(vid, "abort"))
        return [Remove(rel, vid.import_, "import aborted"), RemoveJournal(workspace.pool_dir, vid)]
    else:
        # Only an import this collection began is aborted: an import image no journal claims may be
        # qubesd's own import in progress (reflink_gc removes a stale one).  A committed import's
        # record stays: it is what makes a rerun of commit a no-op.
        if files.import_ is not None:
            warnings.append(
                "no two-phase import of %s is begun, so abort left the import image %s alone: no journal "
                "claims it (it may be qubesd's own import in progress); reflink_gc removes it once it is "
                "older than min_age" % (vid, rel(vid.import_)))
        return []
    planner.refuse_if_import_held("abort the import into")
    actions: Actions = [Remove(rel, vid.import_, why)] if files.import_ is not None else []
    actions.append(RemoveJournal(workspace.pool_dir, vid))
    # begin made it for the import (the journal says so; one that cannot be read cannot, and a directory that
    # holds nothing but the import image is then taken to be begin's): nothing else is in it.
    made_vm_dir = state == CORRUPT or (journal is not None and bool(journal.get("made_vm_dir")))
    if made_vm_dir and workspace.vm_dir is not None and set(workspace.vm_dir.names()) <= {vid.import_}:
        actions.append(RemoveVmDirIfEmpty(vid))
    return actions


def _plan_commit(planner: VolumePlanner, workspace: Workspace, options: ImportOptions, journal: JournalRecord | None,
                 warnings: list[str], check_mode: bool) -> Actions:
    vid, files, rel = planner.vid, planner.files, planner.rel
    keep = options.revisions_to_keep
    state = journal_state(journal)
    if state == CORRUPT:
        raise VolumeStateError(corrupt_journal(vid, "commit cannot check that the import image is the one begun")
                               + "; then begin again")
    if state != BEGUN or journal is None:   # (a state comes from a journal)
        marked = read_import_marker(workspace.vm_dir, vid.clean) is not None
        if state == COMMITTED or marked:
            # This commit happened: a rerun changes nothing, once what it is given matches what was committed
            # (checked while clean is still that image: marked, or the inode the journal recorded).
            if marked or (journal is not None and _is_recorded(planner, files.clean, journal, "clean")):
                _check_committed(planner, workspace, options)
            return planner.finish_precache(keep)
        if journal is None and check_mode:
            warnings.append(_planned_only(vid, "commit"))
            assumed_size = options.size if options.size is not None else files.size
            assumed = AssumeImportImage(rel, vid.import_, assumed_size)
            return _commit_actions(planner, workspace, options, assumed, [], assumed_size, None)
        raise VolumeStateError(
            "no two-phase import of %s is begun (none was, state=abort ended it, or reflink_gc removed one "
            "begun longer ago than its import_max_age): run state=begin first, have the data written into "
            "the import_image it returns, then commit" % vid)
    begun_at = journal.get("written", "?")
    if files.import_ is None and _is_recorded(planner, files.clean, journal, "import") \
            and read_import_marker(workspace.vm_dir, vid.clean) is not None:
        # The commit's rename happened and the task died before it recorded it: finish.  The mark is what
        # MarkImported set on the import image before that rename; without it, clean is another file that
        # got the import image's freed inode number (ext4 gives it to the next file made), and the import
        # image is gone.
        _check_committed(planner, workspace, options)
        return planner.finish_precache(keep) + [
            WriteJournal(workspace.pool_dir, vid, {"vid": str(vid), "state": COMMITTED},
                         "record the import of %s as committed" % vid)]
    if files.import_ is None:
        raise VolumeStateError(
            "the import image %s begun at %s is gone: something removed it after the begin (qubesd deletes "
            "an uncommitted import image when the VM starts, or when the volume is created or removed; or a "
            "person did), so there is nothing to commit and the volume is unchanged; run state=begin again "
            "(it starts afresh) and have the data written again, or state=abort to just clear the record"
            % (rel(vid.import_), begun_at))
    _refuse_replaced(planner, journal)
    try:
        planner.refuse_if_in_use("commit an import into")
        planner.refuse_if_import_held("commit an import into")
    except VolumeInUse as exc:
        raise VolumeInUse("%s (the begun import stays as it is; state=abort discards it)" % exc) from None
    size = options.size
    if size is None and files.import_.size != journal.get("size"):
        raise VolumeStateError(
            "the import image %s is %d bytes, but the import was begun with %s bytes (the writer wrote past "
            "its end or truncated it); nothing was changed: run state=commit with size (%d to keep all of "
            "it) to commit it at that size, or state=abort to discard it"
            % (rel(vid.import_), files.import_.size, journal.get("size"), files.import_.size))
    target = files.import_.size if size is None else size
    checks: Actions = []
    if options.checksum:
        # Before any change: the data is checked as it will be at the size committed.
        checks.append(VerifyChecksum(rel, vid.import_, options.checksum,
                                     size=None if target == files.import_.size else target,
                                     staged_by_task=False))
    if target != files.import_.size:
        planner.check_size(target)
    return _commit_actions(planner, workspace, options, None, checks, target, begun_at)


def _check_committed(planner: VolumePlanner, workspace: Workspace, options: ImportOptions) -> None:
    """A rerun of a finished commit: the ``size`` and ``checksum`` it is given must match the committed image."""
    vid, committed, rel = planner.vid, planner.files.clean, planner.rel
    if committed is None:
        return
    way_out = ("nothing was changed; to import other data, begin a new import (state=begin, write the data, "
               "state=commit)")
    if options.size is not None and options.size != committed.size:
        raise VolumeStateError(
            "the import of %s was committed already, at %d bytes (%s), but this commit gives size %d; "
            "give the committed size (or none) to confirm it; %s"
            % (vid, committed.size, rel(vid.clean), options.size, way_out))
    if options.checksum:
        fd = workspace.vm().open_file(vid.clean, os.O_RDONLY)
        try:
            actual = sha256_of(fd)
        finally:
            os.close(fd)
        if actual != options.checksum:
            way_out = "check the checksum; " + way_out
            raise ChecksumMismatch(
                "checksum mismatch: the import of %s was committed already, and the committed image %s has "
                "sha256:%s, not the expected sha256:%s; %s"
                % (vid, rel(vid.clean), actual, options.checksum, way_out), way_out)


def _commit_actions(planner: VolumePlanner, workspace: Workspace, options: ImportOptions,
                    assumed: AssumeImportImage | None, checks: Actions, target: int, begun_at: str | None) -> Actions:
    """The actions of a two-phase commit of the import image at size ``target``."""
    vid, files, rel = planner.vid, planner.files, planner.rel
    keep = options.revisions_to_keep
    actions: Actions = [assumed] if assumed is not None else []
    actions.extend(checks)
    if not files.exists:
        actions.extend(new_volume_actions(planner, workspace, keep_import=True))
    current = files.import_.size if files.import_ is not None and assumed is None else target
    if target != current:
        actions.append(ResizeInPlace(rel, vid.import_, target))
    actions.append(MarkImported(rel, vid.import_, begun_at))
    actions.append(Fsync(rel, vid.import_))
    actions.extend(planner.commit(vid.import_, keep, files=None if files.exists else VolumeFiles(vid)))
    actions.append(WriteJournal(workspace.pool_dir, vid, {"vid": str(vid), "state": COMMITTED},
                                "record the import of %s as committed" % vid))
    return actions


def _is_recorded(planner: VolumePlanner, info: FileInfo | None, journal: JournalRecord, what: str) -> bool:
    """Whether ``info`` is the file the journal recorded as ``what`` ("import" or "clean").

    The same inode number, and the same generation where the journal recorded one (a journal
    written before generations were recorded has only the number): a file made after the
    recorded one was removed may have its number (_fs/inode_identity.py).
    """
    if info is None or journal.get(what + "_ino") != info.ino:
        return False
    recorded = journal.get(what + "_gen")
    if recorded is None or planner.vm_dir is None:
        return True
    return generation_of(planner.vm_dir, info.name) in (recorded, None)


def _refuse_replaced(planner: VolumePlanner, journal: JournalRecord) -> None:
    vid, files, rel = planner.vid, planner.files, planner.rel
    begun_ino = journal.get("import_ino")
    if begun_ino is not None and files.import_ is not None and not _is_recorded(planner, files.import_, journal, "import"):
        found = "inode %d, begun as inode %d" % (files.import_.ino, begun_ino)
        if files.import_.ino == begun_ino:
            found = "inode %d of another generation: a new file got the begun file's freed inode number" % begun_ino
        raise VolumeStateError(
            "the import image %s is not the file that state=begin created (%s): it "
            "was replaced, perhaps by another program's import (qubesd's qvm-volume import makes its own), so "
            "it is left alone and the volume is unchanged. Once that other import is over, state=abort removes "
            "the image and the journal and state=begin starts afresh; have the writer write into the begun "
            "file in place (for example dd conv=notrunc) instead of replacing it"
            % (rel(vid.import_), found))


def _plan_begin(planner: VolumePlanner, workspace: Workspace, options: ImportOptions,
                journal: JournalRecord | None) -> Actions:
    vid, files, rel = planner.vid, planner.files, planner.rel
    size = options.size
    if size is None:
        raise InvalidArgument("state=begin needs size: the size of the image the other program will write")
    state = journal_state(journal)
    if state == CORRUPT:
        raise VolumeStateError(corrupt_journal(vid, "begin cannot tell whether an import is pending")
                               + "; then begin again")
    journal_text = "record the begun import of %s in the pool's journal" % vid
    if state == BEGUN and journal is not None:   # (a state comes from a journal)
        if files.import_ is not None:
            _refuse_replaced(planner, journal)
            if journal.get("size") == size:
                return []
            raise VolumeStateError(
                "an import of %s (%s bytes) was begun at %s and its import image %s exists (data may have been "
                "written into it): end it first with state=commit (keeps the data; with size to commit it at "
                "another size) or state=abort (discards it), then begin again"
                % (vid, journal.get("size"), journal.get("written", "?"), rel(vid.import_)))
        journal_text = ("replace the stale import journal of %s (its import image, begun at %s, is gone) with "
                        "a record of this begin" % (vid, journal.get("written", "?")))
    planner.refuse_if_in_use("import into")
    planner.refuse_if_import_held("begin an import into")
    planner.check_size(size)
    actions: Actions = [] if workspace.vm_dir is not None else [MakeVmDir(vid)]
    actions.append(Stage(rel, vid.import_, None, size, allow_copy=True))
    record: JournalRecord = {"vid": str(vid), "state": BEGUN, "size": size}
    if workspace.vm_dir is None:
        record["made_vm_dir"] = True   # so that state=abort removes it again
    actions.append(WriteJournal(workspace.pool_dir, vid, record, journal_text))
    return actions

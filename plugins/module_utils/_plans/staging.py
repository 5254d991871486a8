# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The import image: staging it, and the two-phase flow around it (begin, commit, abort).

Every state the flow can be left in (by a failed task, a crash, qubesd or a
person removing the import image, a wrong checksum) is one that a named next
step gets out of: each refusal below says which (commit, abort or begin), and
that step works from there.  A two-phase commit that fails its checks changes
nothing: the import image holds another program's work.
"""

from __future__ import annotations

import os
from typing import Any

from ansible_collections.dom0.reflink.plugins.module_utils._fs import clone
from ansible_collections.dom0.reflink.plugins.module_utils._engine.file_actions import (
    Action,
    Fsync,
    MakeVmDir,
    Remove,
    RemoveVmDirIfEmpty,
    ResizeInPlace,
)
from ansible_collections.dom0.reflink.plugins.module_utils._plans.checksum import VerifyChecksum, sha256_of
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import (
    ChecksumMismatch,
    InvalidArgument,
    ReflinkError,
    VolumeInUse,
    VolumeStateError,
)
from ansible_collections.dom0.reflink.plugins.module_utils._plans.journal import (
    BEGUN,
    COMMITTED,
    CORRUPT,
    JOURNALS_DIR,
    MarkImported,
    RemoveJournal,
    WriteJournal,
    journal_name,
    read_import_marker,
)
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo, VolumeFiles


class Stage(Action):
    """Write the import image: the source's data at the wanted size, or an all-zero sparse image."""

    long = True

    def __init__(self, rel, name, source, size, allow_copy):
        self.name = name
        self.source = source
        self.size = size
        self.allow_copy = allow_copy
        self.how = None
        self.found_before = None   # (st_dev, st_ino) of an import image there before this step
        if source is None:
            self.text = "stage an empty (all-zero) sparse image %s of %d bytes" % (rel(name), size)
        else:
            self.text = "stage %s in %s, size %d bytes" % (source.description, rel(name), size)

    def run(self, workspace):
        destination = workspace.vm_dir.join(self.name)

        def fill(fd):
            if self.source is None:
                os.ftruncate(fd, self.size)
                return clone.EMPTY
            return clone.fill_from(fd, self.source.fd, dst_size=self.size, allow_copy=self.allow_copy,
                                   describe=(self.source.description, destination))

        found = workspace.vm_dir.lstat(self.name)
        self.found_before = (found.st_dev, found.st_ino) if found is not None else None
        self.how = workspace.vm_dir.write_new_file(self.name, fill)

    def undo(self, workspace):
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

    def simulate(self, files):
        usage = 0 if self.source is None else min(self.source.usage, self.size)
        files[self.name] = FileInfo(self.name, self.size, usage)

    def predict_how(self, probe: Any) -> None:
        if self.source is None:
            self.how = clone.EMPTY
            return
        how = probe(self.source.fd)[0]
        self.how = how if how != clone.COPY or self.allow_copy else None

    @property
    def done(self):
        if self.how == clone.COPY:
            return self.text + " (sparse copy: reflink not possible here)"
        if self.how == clone.REFLINK:
            return self.text + " (reflink)"
        return self.text


def new_volume_actions(planner, workspace, keep_import=False):
    """For a volume that does not exist yet: clear leftovers of an earlier one, make its VM directory."""
    actions = []
    for action in planner.remove_everything("leftover of an earlier volume with this vid"):
        if not (keep_import and action.name == planner.vid.import_):
            actions.append(action)
    if workspace.vm_dir is None:
        actions.append(MakeVmDir(planner.vid))
    return actions


class AssumeImportImage(Action):
    """Check mode only: the import image that a begin planned earlier in the same check-mode run would make."""

    def __init__(self, rel, name, size):
        self.name = name
        self.size = size
        # Check mode cannot know the size that begin was given: the commit's size, else the volume's.
        self.text = ("take %s as a state=begin planned earlier in this check-mode run leaves it, at %d bytes "
                     "(the size given to commit, else the volume's current size)" % (rel(name), size))

    def run(self, workspace):
        raise ReflinkError("internal error: a check-mode assumption was executed")

    def simulate(self, files):
        files[self.name] = FileInfo(self.name, self.size, 0)


def _journal_state(journal):
    return journal.get("state") if journal is not None else None


def _corrupt(vid, what):
    return ("the journal of a two-phase import of %s (.reflink/%s/%s) cannot be read, so %s: state=abort "
            "removes it and the import image" % (vid, JOURNALS_DIR, journal_name(vid), what))


def _planned_only(vid, state):
    return ("no two-phase import of %s is begun: check mode planned this %s as if a state=begin earlier in "
            "this check-mode run had made the import image (check mode records nothing); a real run does "
            "this after a real begin, and fails without one" % (vid, state))


def one_shot_journal_actions(planner, workspace, journal):
    """What a one-shot import does about a two-phase import's journal: refuse, or drop a stale one."""
    vid, files = planner.vid, planner.files
    state = _journal_state(journal)
    if state == CORRUPT:
        raise VolumeStateError(_corrupt(vid, "a one-shot import cannot tell whether a begun import is "
                                             "pending") + "; then import again")
    if state != BEGUN:
        return []
    if files.import_ is not None:
        raise VolumeStateError(
            "a two-phase import of %s was begun at %s and its import image %s may hold data another program "
            "wrote: end it first with state=commit (keeps that data) or state=abort (discards it), then "
            "import again" % (vid, journal.get("written", "?"), planner.rel(vid.import_)))
    return [RemoveJournal(workspace.pool_dir, vid, "stale: the import begun at %s has lost its import image"
                          % journal.get("written", "?"))]


def plan_two_phase(planner, workspace, options, journal, warnings, check_mode):
    """The plan of reflink_import with state begin, commit or abort."""
    state = options["state"]
    if state == "abort":
        return _plan_abort(planner, workspace, journal, warnings, check_mode)
    if state == "commit":
        return _plan_commit(planner, workspace, options, journal, warnings, check_mode)
    return _plan_begin(planner, workspace, options, journal)


def _plan_abort(planner, workspace, journal, warnings, check_mode):
    vid, files, rel = planner.vid, planner.files, planner.rel
    state = _journal_state(journal)
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
    actions = [Remove(rel, vid.import_, why)] if files.import_ is not None else []
    actions.append(RemoveJournal(workspace.pool_dir, vid))
    if state == BEGUN and journal.get("made_vm_dir") and workspace.vm_dir is not None \
            and set(workspace.vm_dir.names()) <= {vid.import_}:
        actions.append(RemoveVmDirIfEmpty(vid))   # begin made it for the import: nothing else is in it
    return actions


def _plan_commit(planner, workspace, options, journal, warnings, check_mode):
    vid, files, rel = planner.vid, planner.files, planner.rel
    keep = options["revisions_to_keep"]
    state = _journal_state(journal)
    if state == CORRUPT:
        raise VolumeStateError(_corrupt(vid, "commit cannot check that the import image is the one begun")
                               + "; then begin again")
    if state != BEGUN:
        marked = read_import_marker(workspace.vm_dir, vid.clean) is not None
        if state == COMMITTED or marked:
            # This commit happened: a rerun changes nothing, once what it is given matches what was committed.
            if marked or (files.clean is not None and files.clean.ino == journal.get("clean_ino")):
                _check_committed(planner, workspace, options)
            return planner.finish_precache(keep)
        if journal is None and check_mode:
            warnings.append(_planned_only(vid, "commit"))
            size = options["size"] if options["size"] is not None else files.size
            assumed = AssumeImportImage(rel, vid.import_, size)
            return _commit_actions(planner, workspace, options, assumed, [], size, None)
        raise VolumeStateError(
            "no two-phase import of %s is begun (none was, state=abort ended it, or reflink_gc removed one "
            "begun longer ago than its import_max_age): run state=begin first, have the data written into "
            "the import_image it returns, then commit" % vid)
    begun_at = journal.get("written", "?")
    if files.import_ is None and files.clean is not None and files.clean.ino == journal.get("import_ino"):
        # The commit's rename happened and the task died before it recorded it: finish.
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
    size = options["size"]
    if size is None and files.import_.size != journal.get("size"):
        raise VolumeStateError(
            "the import image %s is %d bytes, but the import was begun with %s bytes (the writer wrote past "
            "its end or truncated it); nothing was changed: run state=commit with size (%d to keep all of "
            "it) to commit it at that size, or state=abort to discard it"
            % (rel(vid.import_), files.import_.size, journal.get("size"), files.import_.size))
    target = files.import_.size if size is None else size
    checks = []
    if options["checksum"]:
        # Before any change: the data is checked as it will be at the size committed.
        checks.append(VerifyChecksum(rel, vid.import_, options["checksum"],
                                     size=None if target == files.import_.size else target,
                                     staged_by_task=False))
    if target != files.import_.size:
        planner.check_size(target)
    return _commit_actions(planner, workspace, options, None, checks, target, begun_at)


def _check_committed(planner: Any, workspace: Any, options: dict[str, Any]) -> None:
    """A rerun of a finished commit: the ``size`` and ``checksum`` it is given must match the committed image."""
    vid, files, rel = planner.vid, planner.files, planner.rel
    committed = files.clean
    if committed is None:
        return
    way_out = ("nothing was changed; to import other data, begin a new import (state=begin, write the data, "
               "state=commit)")
    if options["size"] is not None and options["size"] != committed.size:
        raise VolumeStateError(
            "the import of %s was committed already, at %d bytes (%s), but this commit gives size %d; "
            "give the committed size (or none) to confirm it; %s"
            % (vid, committed.size, rel(vid.clean), options["size"], way_out))
    if options["checksum"]:
        fd = workspace.vm_dir.open_file(vid.clean, os.O_RDONLY)
        try:
            actual = sha256_of(fd)
        finally:
            os.close(fd)
        if actual != options["checksum"]:
            way_out = "check the checksum; " + way_out
            raise ChecksumMismatch(
                "checksum mismatch: the import of %s was committed already, and the committed image %s has "
                "sha256:%s, not the expected sha256:%s; %s"
                % (vid, rel(vid.clean), actual, options["checksum"], way_out), way_out)


def _commit_actions(planner, workspace, options, assumed, checks, target, begun_at):
    """The actions of a two-phase commit of the import image at size ``target``."""
    vid, files, rel = planner.vid, planner.files, planner.rel
    keep = options["revisions_to_keep"]
    actions = [assumed] if assumed is not None else []
    actions.extend(checks)
    if not files.exists:
        actions.extend(new_volume_actions(planner, workspace, keep_import=True))
    current = files.import_.size if assumed is None else target
    if target != current:
        actions.append(ResizeInPlace(rel, vid.import_, target))
    actions.append(MarkImported(rel, vid.import_, begun_at))
    actions.append(Fsync(rel, vid.import_))
    actions.extend(planner.commit(vid.import_, keep, files=None if files.exists else VolumeFiles(vid)))
    actions.append(WriteJournal(workspace.pool_dir, vid, {"vid": str(vid), "state": COMMITTED},
                                "record the import of %s as committed" % vid))
    return actions


def _refuse_replaced(planner, journal):
    vid, files, rel = planner.vid, planner.files, planner.rel
    begun_ino = journal.get("import_ino")
    if begun_ino is not None and begun_ino != files.import_.ino:
        raise VolumeStateError(
            "the import image %s is not the file that state=begin created (inode %d, begun as inode %d): it "
            "was replaced, perhaps by another program's import (qubesd's qvm-volume import makes its own), so "
            "it is left alone and the volume is unchanged. Once that other import is over, state=abort removes "
            "the image and the journal and state=begin starts afresh; have the writer write into the begun "
            "file in place (for example dd conv=notrunc) instead of replacing it"
            % (rel(vid.import_), files.import_.ino, begun_ino))


def _plan_begin(planner, workspace, options, journal):
    vid, files, rel = planner.vid, planner.files, planner.rel
    size = options["size"]
    if size is None:
        raise InvalidArgument("state=begin needs size: the size of the image the other program will write")
    state = _journal_state(journal)
    if state == CORRUPT:
        raise VolumeStateError(_corrupt(vid, "begin cannot tell whether an import is pending")
                               + "; then begin again")
    journal_text = "record the begun import of %s in the pool's journal" % vid
    if state == BEGUN:
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
    actions = [] if workspace.vm_dir is not None else [MakeVmDir(vid)]
    actions.append(Stage(rel, vid.import_, None, size, allow_copy=True))
    record = {"vid": str(vid), "state": BEGUN, "size": size}
    if workspace.vm_dir is None:
        record["made_vm_dir"] = True   # so that state=abort removes it again
    actions.append(WriteJournal(workspace.pool_dir, vid, record, journal_text))
    return actions

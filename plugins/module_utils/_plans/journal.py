# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Journals of two-phase imports: ``<pool>/.reflink/imports/<escaped vid>.json``.

A begun import is recorded so that each phase can be run again without effect,
so that a commit can check that it commits the file that ``begin`` made, and so
that gc leaves a begun import's file alone.  A record is a small JSON object
written like every new file (tempfile, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Vid
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import escape_vid
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Action
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory, PoolDirectory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.inode_identity import generation_of
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import metadata_dir, metadata_subdir

JOURNALS_DIR = "imports"
BEGUN = "begun"
COMMITTED = "committed"
# A journal record: a JSON object.
JournalRecord = dict[str, Any]

CORRUPT = "corrupt"  # never written: what read_journal returns for a record it cannot parse


def journal_name(vid: Vid) -> str:
    return escape_vid(str(vid)) + ".json"


def journals_dir(pool_dir: PoolDirectory, create: bool = False) -> contextlib.AbstractContextManager[Directory | None]:
    """``<pool>/.reflink/imports`` as a Directory for the ``with`` block (None if missing and not ``create``)."""
    return metadata_subdir(pool_dir, JOURNALS_DIR, create)


def load_record(journals: Directory, name: str) -> Any:
    """The JSON record in ``journals/name`` (OSError if unreadable, ValueError if corrupt)."""
    fd = journals.open_file(name, os.O_RDONLY)
    try:
        return json.loads(os.read(fd, 65536))
    finally:
        os.close(fd)


def read_journal(pool_dir: PoolDirectory, vid: Vid) -> JournalRecord | None:
    """The journal record of ``vid``'s two-phase import, or None.

    A journal that cannot be parsed reads as ``{"state": CORRUPT}``: the plans
    refuse to commit or begin over it, and an abort removes it.
    """
    with journals_dir(pool_dir) as journals:
        if journals is None or journals.regular_lstat(journal_name(vid)) is None:
            return None
        try:
            record = load_record(journals, journal_name(vid))
        except ValueError:
            record = None
    return record if isinstance(record, dict) else {"state": CORRUPT}


def journal_state(journal: JournalRecord | None) -> str | None:
    """The state a journal record says (BEGUN, COMMITTED or CORRUPT), None without a record."""
    return journal.get("state") if journal is not None else None


def corrupt_journal(vid: Vid, what: str) -> str:
    """The start of a refusal over a journal that cannot be read: what cannot be done, and the way out (abort)."""
    return ("the journal of a two-phase import of %s (.reflink/%s/%s) cannot be read, so %s: state=abort "
            "removes it and the import image" % (vid, JOURNALS_DIR, journal_name(vid), what))


class WriteJournal(Action[Workspace]):
    def __init__(self, pool_dir: PoolDirectory, vid: Vid, record: JournalRecord, text: str) -> None:
        self.pool_dir = pool_dir
        self.vid = vid
        self.record = record
        self.text = text

    def run(self, workspace: Workspace) -> None:
        record = dict(self.record)
        record["written"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # The image the record is about, by inode number and generation (_fs/inode_identity.py: ext4
        # and XFS give a freed number to the next file made).
        if record.get("state") == BEGUN and workspace.vm_dir is not None:
            found = workspace.vm().lstat(self.vid.import_)
            record["import_ino"] = found.st_ino if found else None
            record["import_gen"] = generation_of(workspace.vm(), self.vid.import_) if found else None
        if record.get("state") == COMMITTED and workspace.vm_dir is not None:
            found = workspace.vm().lstat(self.vid.clean)
            record["clean_ino"] = found.st_ino if found else None
            record["clean_gen"] = generation_of(workspace.vm(), self.vid.clean) if found else None
        data = json.dumps(record, sort_keys=True).encode()
        with journals_dir(self.pool_dir) as journals:
            made_dir = journals is None
        try:
            with journals_dir(self.pool_dir, create=True) as journals:
                if journals is not None:   # always: it is made when missing
                    journals.write_new_file(journal_name(self.vid), lambda fd: os.write(fd, data))
        except OSError:
            # A full file system: the journal directory this step made goes again with the failed step
            # (the plan's undo reports the task unchanged, so nothing of it may stay).
            if made_dir:
                with contextlib.suppress(OSError):
                    meta = metadata_dir(self.pool_dir, create=False)
                    if meta is not None:
                        with meta:
                            meta.rmdir_if_empty(JOURNALS_DIR)
            raise


class RemoveJournal(Action[Workspace]):
    def __init__(self, pool_dir: PoolDirectory, vid: Vid, why: str | None = None) -> None:
        self.pool_dir = pool_dir
        self.vid = vid
        self.text = "remove the import journal of %s" % vid
        if why:
            self.text += " (%s)" % why

    def run(self, workspace: Workspace) -> None:
        with journals_dir(self.pool_dir) as journals:
            if journals is not None:
                journals.unlink(journal_name(self.vid), missing_ok=True)

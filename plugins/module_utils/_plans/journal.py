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

import json
import os
import time

from ansible_collections.dom0.reflink.plugins.module_utils._engine.file_actions import Action
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import read_xattr, set_xattr
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import metadata_subdir
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import escape_vid

JOURNALS_DIR = "imports"
BEGUN = "begun"
COMMITTED = "committed"
CORRUPT = "corrupt"  # never written: what read_journal returns for a record it cannot parse

# Extended attribute on the import image, set just before the commit renames it
# over the clean image; its value is always "committed" (a value that varies
# from one import to the next would tell nothing more, and would make the same
# task's system calls differ between runs, which the crash matrix compares).  It records the
# commit on the inode that the commit made clean: reflink_gc never removes it
# (gc drops the journal's "committed" record after import_max_age), and the next
# commit of the volume (qubesd's stop, an import, a revert) makes a new clean
# inode without it.  So "clean carries the marker" means "the clean image is
# still the one a two-phase commit made", which is what a rerun of that commit
# needs to know, however long afterwards.
IMPORT_MARKER = "user.dom0-reflink.imported"


def journal_name(vid):
    return escape_vid(str(vid)) + ".json"


def journals_dir(pool_dir, create=False):
    """``<pool>/.reflink/imports`` as a Directory for the ``with`` block (None if missing and not ``create``)."""
    return metadata_subdir(pool_dir, JOURNALS_DIR, create)


def load_record(journals, name):
    """The JSON record in ``journals/name`` (OSError if unreadable, ValueError if corrupt)."""
    fd = journals.open_file(name, os.O_RDONLY)
    try:
        return json.loads(os.read(fd, 65536))
    finally:
        os.close(fd)


def read_journal(pool_dir, vid):
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


class WriteJournal(Action):
    def __init__(self, pool_dir, vid, record, text):
        self.pool_dir = pool_dir
        self.vid = vid
        self.record = record
        self.text = text

    def run(self, workspace):
        record = dict(self.record)
        record["written"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if record.get("state") == BEGUN and workspace.vm_dir is not None:
            found = workspace.vm_dir.lstat(self.vid.import_)
            record["import_ino"] = found.st_ino if found else None
        if record.get("state") == COMMITTED and workspace.vm_dir is not None:
            found = workspace.vm_dir.lstat(self.vid.clean)
            record["clean_ino"] = found.st_ino if found else None
        data = json.dumps(record, sort_keys=True).encode()
        with journals_dir(self.pool_dir, create=True) as journals:
            journals.write_new_file(journal_name(self.vid), lambda fd: os.write(fd, data))


class RemoveJournal(Action):
    def __init__(self, pool_dir, vid, why=None):
        self.pool_dir = pool_dir
        self.vid = vid
        self.text = "remove the import journal of %s" % vid
        if why:
            self.text += " (%s)" % why

    def run(self, workspace):
        with journals_dir(self.pool_dir) as journals:
            if journals is not None:
                journals.unlink(journal_name(self.vid), missing_ok=True)


def read_import_marker(vm_dir, name):
    """The value recorded on ``vm_dir/name`` by a two-phase commit ("committed"), or None."""
    if vm_dir is None or vm_dir.regular_lstat(name) is None:
        return None
    value = read_xattr(vm_dir, name, IMPORT_MARKER)
    return None if value is None else value.decode("ascii", "replace")


class MarkImported(Action):
    """Mark the import image, before it becomes clean, as a committed two-phase import."""

    def __init__(self, rel, name, begun_at=None):
        self.name = name
        self.text = "mark %s as a committed two-phase import" % rel(name)
        if begun_at:
            self.text += " (begun at %s)" % begun_at

    def run(self, workspace):
        # No fsync of its own: the commit flushes the import image right after this step.
        fd = workspace.vm_dir.open_file(self.name, os.O_RDONLY)
        try:
            # Without xattrs only the journal's record (until gc drops it) recognises a rerun.
            set_xattr(fd, IMPORT_MARKER, b"committed")
        finally:
            os.close(fd)

    def undo(self, workspace):
        # The commit did not happen: the image is not a committed import.
        if workspace.vm_dir is not None:
            fd = workspace.vm_dir.open_file(self.name, os.O_RDONLY)
            try:
                os.removexattr(fd, IMPORT_MARKER)
            except OSError:
                pass
            finally:
                os.close(fd)
            return "removed the commit mark from %s" % self.name
        return None

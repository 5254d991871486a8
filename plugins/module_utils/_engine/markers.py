# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The marks a revert and a two-phase commit leave on an image's inode (extended attributes).

Both live on the inode that becomes the clean image: any later commit (ours or
qubesd's) makes a new clean inode without them, so a mark on the clean image
means "still the image that this revert or commit made", which is what a rerun
of the same task needs to know.
"""

from __future__ import annotations

import os

from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Action, Rel
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.xattrs import read_xattr, set_xattr

# Extended attribute that marks a clean image as the result of a revert, so
# that the same revert task run again recognises it.  It lives on the inode:
# any later commit (ours or qubesd's) makes a new clean inode without it.
REVERT_MARKER = "user.dom0-reflink.reverted-to"


PIN_MARKER_PREFIX = "pin-"


def pin_marker(name: str) -> str:
    """What a revert to pin ``name`` records on the clean image it makes."""
    return PIN_MARKER_PREFIX + name


def read_revert_marker(directory: Directory, name: str) -> int | str | None:
    """What a revert recorded on ``directory/name``: a revision id, ``"pin-<name>"``, or None."""
    try:
        value = (read_xattr(directory, name, REVERT_MARKER) or b"").decode("ascii")
    except UnicodeDecodeError:
        return None
    if value.isdigit():
        return int(value)
    return value if value.startswith(PIN_MARKER_PREFIX) else None


def write_revert_marker(fd: int, value: int | str) -> bool:
    """Record ``value`` (a revision id or ``"pin-<name>"``) on the open file ``fd``; False without xattrs."""
    # Without xattrs a rerun of the same revert is not recognised; the revert itself is unaffected.
    return set_xattr(fd, REVERT_MARKER, str(value).encode("ascii"))


class MarkReverted(Action[Workspace]):
    """Record on the revision file (before it becomes clean) which revision it was."""

    def __init__(self, rel: Rel, name: str, revision: int) -> None:
        self.name = name
        self.revision = revision
        self.text = "mark %s as revision %d restored" % (rel(name), revision)

    def run(self, workspace: Workspace) -> None:
        fd = workspace.vm().open_file(self.name, os.O_RDONLY)
        try:
            if write_revert_marker(fd, self.revision):
                os.fsync(fd)
        finally:
            os.close(fd)

    def withdraw(self, workspace: Workspace) -> str | None:
        # The file stays a revision: it must not claim to be a restored one.
        fd = workspace.vm().open_file(self.name, os.O_RDONLY)
        try:
            os.removexattr(fd, REVERT_MARKER)
        except OSError:
            return None
        finally:
            os.close(fd)
        return "removed the revert mark from %s" % self.name


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


def read_import_marker(vm_dir: Directory | None, name: str) -> str | None:
    """The value recorded on ``vm_dir/name`` by a two-phase commit ("committed"), or None."""
    if vm_dir is None or vm_dir.regular_lstat(name) is None:
        return None
    value = read_xattr(vm_dir, name, IMPORT_MARKER)
    return None if value is None else value.decode("ascii", "replace")


class MarkImported(Action[Workspace]):
    """Mark the import image, before it becomes clean, as a committed two-phase import."""

    def __init__(self, rel: Rel, name: str, begun_at: str | None = None) -> None:
        self.name = name
        self.text = "mark %s as a committed two-phase import" % rel(name)
        if begun_at:
            self.text += " (begun at %s)" % begun_at

    def run(self, workspace: Workspace) -> None:
        # No fsync of its own: the commit flushes the import image right after this step.
        fd = workspace.vm().open_file(self.name, os.O_RDONLY)
        try:
            # Without xattrs only the journal's record (until gc drops it) recognises a rerun.
            set_xattr(fd, IMPORT_MARKER, b"committed")
        finally:
            os.close(fd)

    def undo(self, workspace: Workspace) -> str | None:
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

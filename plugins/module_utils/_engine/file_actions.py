# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The actions on a volume's image files that plans are made of (create, clone, rename, remove, ...)."""

from __future__ import annotations

import errno
import fcntl
import os

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import CloneError, NoRoomForCopy, ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Vid
from ansible_collections.dom0.reflink.plugins.module_utils._base.units import format_size
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Action, Probe, Rel
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo

LOOP_SET_CAPACITY = 0x4C07


class MakeVmDir(Action[Workspace]):
    def __init__(self, vid: Vid) -> None:
        self.vid = vid
        self.text = "create VM directory %s" % vid.vm_dir

    def run(self, workspace: Workspace) -> None:
        workspace.ensure_vm_dir()

    def undo(self, workspace: Workspace) -> str | None:
        if workspace.vm_dir is not None and not workspace.vm_dir.names():
            workspace.remove_vm_dir_if_empty()
            return "removed the new, empty VM directory %s" % self.vid.vm_dir
        return None


class RemoveVmDirIfEmpty(Action[Workspace]):
    def __init__(self, vid: Vid) -> None:
        self.vid = vid
        self.text = "remove VM directory %s (now empty)" % vid.vm_dir

    def run(self, workspace: Workspace) -> None:
        workspace.remove_vm_dir_if_empty()


class CreateSparse(Action[Workspace]):
    def __init__(self, rel: Rel, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.text = "create sparse image %s of %d bytes" % (rel(name), size)

    def run(self, workspace: Workspace) -> None:
        workspace.vm().write_new_file(self.name, lambda fd: os.ftruncate(fd, self.size))

    def simulate(self, files: dict[str, FileInfo]) -> None:
        files[self.name] = FileInfo(self.name, self.size, 0)


class Clone(Action[Workspace]):
    """A new inode ``dst`` with ``src``'s content (reflink, or sparse copy where the gate allows)."""

    long = True

    def __init__(self, rel: Rel, src: str, dst: str, why: str, size: int | None = None, copy_mtime: bool = False) -> None:
        self.destructive = self.completes = src == dst   # a new inode of clean replaces the old one (resize)
        self.src = src
        self.dst = dst
        self.size = size
        self.copy_mtime = copy_mtime
        self.how: str | None = None
        self.text = "%s: %s from %s" % (why, rel(dst), rel(src))
        if size is not None:
            self.text += ", size %d bytes" % size

    def run(self, workspace: Workspace) -> None:
        # Imported here, as below: a plan that is only made (a no-op, check mode) does not compile the clone code.
        # pylint: disable-next=import-outside-toplevel
        from ansible_collections.dom0.reflink.plugins.module_utils._fs import clone  # noqa: PLC0415
        self.copy_cause = None
        self.how = clone.clone_file(workspace.vm(), self.src, workspace.vm(), self.dst,
                                    dst_size=self.size, copy_mtime=self.copy_mtime, copied=self.note_copy)

    def simulate(self, files: dict[str, FileInfo]) -> None:
        source = files[self.src]
        size = source.size if self.size is None else self.size
        mtime = source.mtime_ns if self.copy_mtime else -1
        files[self.dst] = FileInfo(self.dst, size, source.usage, mtime)

    def predict_how(self, probe: Probe) -> None:
        # Between two images of the pool: a reflink where the pool's file system shares blocks.
        self.how = probe()[0]

    @property
    def done(self) -> str:
        # pylint: disable-next=import-outside-toplevel
        from ansible_collections.dom0.reflink.plugins.module_utils._fs import clone  # noqa: PLC0415
        if self.how == clone.COPY:
            return self.text + " (sparse copy: reflink not possible here)"
        return self.text + (" (%s)" % self.how if self.how else "")


class MakePrecache(Clone):
    """The precache: a clone of clean with its mtime.  Without room for it, the way out is named."""

    def run(self, workspace: Workspace) -> None:
        try:
            super().run(workspace)
        except (OSError, ReflinkError) as exc:
            code = exc.errno if isinstance(exc, (OSError, CloneError)) else None
            if code not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # A copy refused before it began (clone.require_room_for_copy) knows both figures: they are kept.
            why = os.strerror(code)
            if isinstance(exc, NoRoomForCopy):
                why += ": the copy needs %d bytes (%s) where the file system has %d bytes (%s) free; nothing was written" \
                    % (exc.needed, format_size(exc.needed), exc.free, format_size(exc.free))
            raise CloneError(
                "no space left for the precache %s (%s): it is a reflink of the clean image where the file "
                "system shares blocks, and a full (sparse) copy of its data where it cannot"
                % (self.dst, why), code,
                "a rerun fails the same way until there is room: free some space (dom0.reflink.reflink_gc), or set "
                "revisions_to_keep: -1 for this volume (snapshots disabled: it then keeps no precache and no "
                "revisions; qubesd starts the VM on its clean image itself, so what the VM writes cannot be "
                "reverted)") from None


class KeepAsRevision(Clone):
    """The clone of clean that a commit or revert keeps as the next revision."""

    # Once a later step pruned an older revision, this one counts in its place: it stays.
    kept_after_pruning = True

    def withdraw(self, workspace: Workspace) -> str | None:
        # Left behind, it would be a duplicate of clean that qubesd's next commit adds to again,
        # pushing a real revision out.
        if self.how is not None and workspace.vm_dir is not None and workspace.vm_dir.unlink(self.dst, missing_ok=True):
            return "removed the new revision %s" % self.dst
        return None


class Rename(Action[Workspace]):
    destructive = True
    completes = True   # every Rename of a plan puts the new clean image in place (commit, revert)

    def __init__(self, rel: Rel, src: str, dst: str, why: str) -> None:
        self.src = src
        self.dst = dst
        self.text = "%s: rename %s to %s" % (why, rel(src), rel(dst))

    def run(self, workspace: Workspace) -> None:
        workspace.vm().rename(self.src, self.dst)

    def simulate(self, files: dict[str, FileInfo]) -> None:
        info = files.pop(self.src)
        files[self.dst] = FileInfo(self.dst, info.size, info.usage, info.mtime_ns, info.ino, info.dev)


class Remove(Action[Workspace]):
    destructive = True

    def __init__(self, rel: Rel, name: str, why: str) -> None:
        self.name = name
        self.text = "remove %s (%s)" % (rel(name), why)

    def run(self, workspace: Workspace) -> None:
        workspace.vm().unlink(self.name, missing_ok=True)

    def simulate(self, files: dict[str, FileInfo]) -> None:
        files.pop(self.name, None)


class Prune(Remove):
    """Remove a revision beyond revisions_to_keep (a commit makes room for the one it adds)."""

    prunes = True


class RemovePrecache(Remove):
    """Remove a precache that is about to go stale; if the task fails, make it anew from clean."""

    def __init__(self, rel: Rel, vid: Vid) -> None:
        super().__init__(rel, vid.precache, "the precache is about to go stale")
        self.vid = vid

    def undo(self, workspace: Workspace) -> str | None:
        if workspace.vm_dir is None or workspace.vm_dir.lstat(self.vid.clean) is None:
            return None
        # pylint: disable-next=import-outside-toplevel
        from ansible_collections.dom0.reflink.plugins.module_utils._fs import clone  # noqa: PLC0415
        clone.clone_file(workspace.vm_dir, self.vid.clean, workspace.vm_dir, self.vid.precache, copy_mtime=True)
        return "made the precache %s anew" % self.vid.precache

    def withdraw(self, workspace: Workspace) -> str | None:
        # A started VM has no precache (qubesd renamed it to its dirty image): do not make one under it.
        if workspace.vm_dir is not None and workspace.vm_dir.lstat(self.vid.dirty) is not None:
            return None
        return self.undo(workspace)


class Fsync(Action[Workspace]):
    long = True
    changes_disk = False

    def __init__(self, rel: Rel, name: str) -> None:
        self.name = name
        self.text = "flush %s to disk" % rel(name)

    def run(self, workspace: Workspace) -> None:
        fd = workspace.vm().open_file(self.name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class ResizeInPlace(Action[Workspace]):
    def __init__(self, rel: Rel, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.text = "resize %s in place to %d bytes" % (rel(name), size)

    def run(self, workspace: Workspace) -> None:
        workspace.vm().truncate(self.name, self.size)

    def simulate(self, files: dict[str, FileInfo]) -> None:
        info = files[self.name]
        files[self.name] = FileInfo(self.name, self.size, min(info.usage, self.size), info.mtime_ns, info.ino, info.dev)


class SetLoopCapacity(Action[Workspace]):
    def __init__(self, device: str) -> None:
        self.device = device
        self.text = "tell loop device %s its backing file's new size" % device

    def run(self, workspace: Workspace) -> None:
        fd = os.open(self.device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, LOOP_SET_CAPACITY, 0)
        finally:
            os.close(fd)

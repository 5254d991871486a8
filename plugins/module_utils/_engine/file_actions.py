# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The file operations a plan is made of.

A module first plans (a list of actions computed from what is on disk), then
either executes the plan or, in check mode, simulates it on the listing of the
volume's files.  Each action is one durable step of the contract; a plan that
stops half-way (error, crash) leaves a state that the next run reads and
finishes.  Each action says in plain words what it does (``text``), and after
it ran, how (``done``: e.g. whether a clone was a reflink or a copy).
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any

from ansible_collections.dom0.reflink.plugins.module_utils._fs import clone
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import CloneError, PoolError, ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import read_xattr, set_xattr
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo

LOOP_SET_CAPACITY = 0x4C07


class Action:
    """One step of a plan.  Subclasses set ``text`` and implement run/simulate.

    ``destructive``: the step replaces or removes an image, so the executor checks
    right before it that the volume has not become in use (see _inuse_guard.py);
    ``long``: the step may take long enough for a VM to start meanwhile, so the
    executor checks after it; ``changes_disk``: whether its effect outlives it;
    ``completes``: once it ran, the new clean image is in place and the plan's
    job is done, so the executor checks no more (what follows, a new precache or
    a record of the commit, only finishes; withdrawing it would take back the
    revision that now holds the old data).
    """

    text = ""
    destructive = False
    long = False
    changes_disk = True
    completes = False

    def run(self, workspace):
        raise NotImplementedError

    def simulate(self, files):
        """Apply the action to ``files`` (a dict name -> FileInfo of the VM directory)."""

    def undo(self, workspace):
        """After a later step failed: take back what is useless alone; return what was done, or None."""
        return None

    def withdraw(self, workspace):
        """The plan stopped because the volume became in use: take back what should not stay; like undo."""
        return self.undo(workspace)

    def predict_how(self, probe: Any) -> None:
        """Check mode: say how the step would go, where the plan can tell (``probe``: see planned_texts)."""

    @property
    def done(self):
        return self.text


class MakeVmDir(Action):
    def __init__(self, vid):
        self.vid = vid
        self.text = "create VM directory %s" % vid.vm_dir

    def run(self, workspace):
        workspace.ensure_vm_dir()

    def undo(self, workspace):
        if workspace.vm_dir is not None and not workspace.vm_dir.names():
            workspace.remove_vm_dir_if_empty()
            return "removed the new, empty VM directory %s" % self.vid.vm_dir
        return None


class RemoveVmDirIfEmpty(Action):
    def __init__(self, vid):
        self.vid = vid
        self.text = "remove VM directory %s (now empty)" % vid.vm_dir

    def run(self, workspace):
        workspace.remove_vm_dir_if_empty()


class CreateSparse(Action):
    def __init__(self, rel, name, size):
        self.name = name
        self.size = size
        self.text = "create sparse image %s of %d bytes" % (rel(name), size)

    def run(self, workspace):
        workspace.vm_dir.write_new_file(self.name, lambda fd: os.ftruncate(fd, self.size))

    def simulate(self, files):
        files[self.name] = FileInfo(self.name, self.size, 0)


class Clone(Action):
    """A new inode ``dst`` with ``src``'s content (reflink, or sparse copy where the gate allows)."""

    long = True

    def __init__(self, rel, src, dst, why, size=None, copy_mtime=False):
        self.destructive = self.completes = src == dst   # a new inode of clean replaces the old one (resize)
        self.src = src
        self.dst = dst
        self.size = size
        self.copy_mtime = copy_mtime
        self.how = None
        self.text = "%s: %s from %s" % (why, rel(dst), rel(src))
        if size is not None:
            self.text += ", size %d bytes" % size

    def run(self, workspace):
        self.how = clone.clone_file(workspace.vm_dir, self.src, workspace.vm_dir, self.dst,
                                    dst_size=self.size, copy_mtime=self.copy_mtime)

    def simulate(self, files):
        source = files[self.src]
        size = source.size if self.size is None else self.size
        mtime = source.mtime_ns if self.copy_mtime else -1
        files[self.dst] = FileInfo(self.dst, size, source.usage, mtime)

    def predict_how(self, probe: Any) -> None:
        # Between two images of the pool: a reflink where the pool's file system shares blocks.
        self.how = probe()[0]

    @property
    def done(self):
        if self.how == clone.COPY:
            return self.text + " (sparse copy: reflink not possible here)"
        return self.text + (" (%s)" % self.how if self.how else "")


class MakePrecache(Clone):
    """The precache: a clone of clean with its mtime.  Without room for it, the way out is named."""

    def run(self, workspace: Any) -> None:
        try:
            super().run(workspace)
        except (OSError, ReflinkError) as exc:
            code = getattr(exc, "errno", None)
            if code not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise CloneError(
                "no space left for the precache %s (%s): it is a reflink of the clean image where the file "
                "system shares blocks, and a full (sparse) copy of its data where it cannot"
                % (self.dst, os.strerror(code)), code,
                "a rerun fails the same way until there is room: free some space (dom0.reflink.reflink_gc), or set "
                "revisions_to_keep: -1 for this volume (snapshots disabled: it then keeps no precache and no "
                "revisions; qubesd starts the VM on its clean image itself, so what the VM writes cannot be "
                "reverted)") from None


class KeepAsRevision(Clone):
    """The clone of clean that a commit or revert keeps as the next revision."""

    # Once a later step pruned an older revision, this one counts in its place: it stays.
    kept_after_pruning = True

    def withdraw(self, workspace):
        # Left behind, it would be a duplicate of clean that qubesd's next commit adds to again,
        # pushing a real revision out.
        if self.how is not None and workspace.vm_dir is not None and workspace.vm_dir.unlink(self.dst, missing_ok=True):
            return "removed the new revision %s" % self.dst
        return None


class Rename(Action):
    destructive = True
    completes = True   # every Rename of a plan puts the new clean image in place (commit, revert)

    def __init__(self, rel, src, dst, why):
        self.src = src
        self.dst = dst
        self.text = "%s: rename %s to %s" % (why, rel(src), rel(dst))

    def run(self, workspace):
        workspace.vm_dir.rename(self.src, self.dst)

    def simulate(self, files):
        info = files.pop(self.src)
        files[self.dst] = FileInfo(self.dst, info.size, info.usage, info.mtime_ns, info.ino, info.dev)


class Remove(Action):
    destructive = True

    def __init__(self, rel, name, why):
        self.name = name
        self.text = "remove %s (%s)" % (rel(name), why)

    def run(self, workspace):
        workspace.vm_dir.unlink(self.name, missing_ok=True)

    def simulate(self, files):
        files.pop(self.name, None)


class Prune(Remove):
    """Remove a revision beyond revisions_to_keep (a commit makes room for the one it adds)."""

    prunes = True


class RemovePrecache(Remove):
    """Remove a precache that is about to go stale; if the task fails, make it anew from clean."""

    def __init__(self, rel, vid):
        super().__init__(rel, vid.precache, "the precache is about to go stale")
        self.vid = vid

    def undo(self, workspace):
        if workspace.vm_dir is None or workspace.vm_dir.lstat(self.vid.clean) is None:
            return None
        clone.clone_file(workspace.vm_dir, self.vid.clean, workspace.vm_dir, self.vid.precache, copy_mtime=True)
        return "made the precache %s anew" % self.vid.precache

    def withdraw(self, workspace):
        # A started VM has no precache (qubesd renamed it to its dirty image): do not make one under it.
        if workspace.vm_dir is not None and workspace.vm_dir.lstat(self.vid.dirty) is not None:
            return None
        return self.undo(workspace)


class Fsync(Action):
    long = True
    changes_disk = False

    def __init__(self, rel, name):
        self.name = name
        self.text = "flush %s to disk" % rel(name)

    def run(self, workspace):
        fd = workspace.vm_dir.open_file(self.name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class ResizeInPlace(Action):
    def __init__(self, rel, name, size):
        self.name = name
        self.size = size
        self.text = "resize %s in place to %d bytes" % (rel(name), size)

    def run(self, workspace):
        workspace.vm_dir.truncate(self.name, self.size)

    def simulate(self, files):
        info = files[self.name]
        files[self.name] = FileInfo(self.name, self.size, min(info.usage, self.size), info.mtime_ns, info.ino, info.dev)


class SetLoopCapacity(Action):
    def __init__(self, device):
        self.device = device
        self.text = "tell loop device %s its backing file's new size" % device

    def run(self, workspace):
        fd = os.open(self.device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, LOOP_SET_CAPACITY, 0)
        finally:
            os.close(fd)


class Workspace:
    """Where a volume plan runs: the pool, the prefix directory and the VM directory."""

    def __init__(self, pool_dir, vid, prefix_dir=None):
        """``prefix_dir``: the open prefix directory, lent by the caller (a batch shares one), or None."""
        self.pool_dir = pool_dir
        self.vid = vid
        self.owns_prefix_dir = prefix_dir is None
        self.prefix_dir = pool_dir.open_dir(vid.prefix) if prefix_dir is None else prefix_dir
        if self.prefix_dir is None and pool_dir.exists:   # an AbsentDirectory is planned as an empty pool
            raise PoolError("%s has no %s/ directory: it is not a set-up pool; "
                            "create it with dom0.reflink.reflink_pool" % (pool_dir.path, vid.prefix))
        self.vm_dir = None

    def open_vm_dir(self):
        """Open the VM directory (if it exists) afresh; done under the volume lock."""
        self.close_vm_dir()
        self.vm_dir = self.prefix_dir.open_dir(self.vid.vm) if self.prefix_dir is not None else None
        return self

    def close_vm_dir(self):
        if self.vm_dir is not None:
            self.vm_dir.close()
            self.vm_dir = None

    def rel(self, name):
        """``name`` as a path relative to the pool, for messages."""
        return "%s/%s" % (self.vid.vm_dir, name)

    def ensure_vm_dir(self):
        if self.vm_dir is None:
            self.vm_dir = self.prefix_dir.open_dir(self.vid.vm, create=True)

    def remove_vm_dir_if_empty(self):
        self.close_vm_dir()
        try:
            self.prefix_dir.rmdir(self.vid.vm)
        except OSError as exc:
            # Something appeared in the meantime (qubesd's firewall.xml, say): keep it.
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise

    def close(self):
        self.close_vm_dir()
        if self.prefix_dir is not None and self.owns_prefix_dir:
            self.prefix_dir.close()
        self.prefix_dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class Step(Action):
    """A pool-level step: a sentence and the function that does it."""

    def __init__(self, text, function):
        self.text = text
        self.function = function

    def run(self, workspace):
        self.function()


# Extended attribute that marks a clean image as the result of a revert, so
# that the same revert task run again recognises it.  It lives on the inode:
# any later commit (ours or qubesd's) makes a new clean inode without it.
REVERT_MARKER = "user.dom0-reflink.reverted-to"


PIN_MARKER_PREFIX = "pin-"


def read_revert_marker(directory, name):
    """What a revert recorded on ``directory/name``: a revision id, ``"pin-<name>"``, or None."""
    try:
        value = (read_xattr(directory, name, REVERT_MARKER) or b"").decode("ascii")
    except UnicodeDecodeError:
        return None
    if value.isdigit():
        return int(value)
    return value if value.startswith(PIN_MARKER_PREFIX) else None


def write_revert_marker(fd, value):
    """Record ``value`` (a revision id or ``"pin-<name>"``) on the open file ``fd``; False without xattrs."""
    # Without xattrs a rerun of the same revert is not recognised; the revert itself is unaffected.
    return set_xattr(fd, REVERT_MARKER, str(value).encode("ascii"))


class MarkReverted(Action):
    """Record on the revision file (before it becomes clean) which revision it was."""

    def __init__(self, rel, name, revision):
        self.name = name
        self.revision = revision
        self.text = "mark %s as revision %d restored" % (rel(name), revision)

    def run(self, workspace):
        fd = workspace.vm_dir.open_file(self.name, os.O_RDONLY)
        try:
            if write_revert_marker(fd, self.revision):
                os.fsync(fd)
        finally:
            os.close(fd)

    def withdraw(self, workspace):
        # The file stays a revision: it must not claim to be a restored one.
        fd = workspace.vm_dir.open_file(self.name, os.O_RDONLY)
        try:
            os.removexattr(fd, REVERT_MARKER)
        except OSError:
            return None
        finally:
            os.close(fd)
        return "removed the revert mark from %s" % self.name

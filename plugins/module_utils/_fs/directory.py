# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Durable file operations inside a pool, never through a symlink below the pool.

Every directory below the pool is opened relative to its parent's file
descriptor with ``O_NOFOLLOW``, and every file operation names a single
component relative to such a descriptor.  A symlink planted anywhere below the
pool therefore cannot redirect an operation, whatever races with us: opening
it fails with ELOOP and is reported as :class:`UnsafePath`; a rename or unlink
acts on the link itself, never on its target.

Each operation that changes a directory is followed by an ``fsync`` of that
directory, so that once a function returns its effect survives a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from typing import TypeVar, Union

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import PoolError, UnsafePath
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import TEMPFILE_SUFFIX_LEN

FILE_MODE = 0o600
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_O_TMPFILE: int | None = getattr(os, "O_TMPFILE", None)
# linkat(2) of an unnamed file without CAP_DAC_READ_SEARCH goes through /proc.
_PROC_FD = "/proc/self/fd"

T = TypeVar("T")


def _kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file"


class AbsentDirectory:
    """A pool directory that does not exist yet, read as an empty one.

    Check mode plans a volume task against it where an earlier task of the same
    run (reflink_pool) would have created the pool: Ansible's check mode reports
    what a run would do, and the real run makes the pool before the volume.
    Nothing can be created in it.
    """

    exists = False

    def __init__(self, path: str) -> None:
        self.path = path

    def open_dir(self, name: str, create: bool = False, mode: int = 0o755) -> Directory | None:
        """None: nothing exists below a missing pool (and nothing can be made there)."""
        if not create:
            return None
        raise PoolError("pool directory %s does not exist; create it with dom0.reflink.reflink_pool" % self.path)

    def __enter__(self) -> AbsentDirectory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class Directory:
    """An open directory of the pool; all names given to its methods are single components."""

    exists = True

    def __init__(self, fd: int, path: str) -> None:
        self.fd: int | None = fd
        self.path = path

    # -- opening ----------------------------------------------------------

    @classmethod
    def open_pool(cls, path: str) -> Directory:
        """Open the pool directory itself (symlinks in ``path`` are followed, as qubesd does)."""
        try:
            fd = os.open(path, _DIR_FLAGS)
        except FileNotFoundError:
            raise PoolError("pool directory %s does not exist; create it with dom0.reflink.reflink_pool" % path) from None
        except NotADirectoryError:
            raise PoolError("pool %s is not a directory" % path) from None
        except OSError as exc:
            raise PoolError("cannot open pool directory %s: %s" % (path, exc.strerror)) from None
        return cls(fd, path)

    def open_dir(self, name: str, create: bool = False, mode: int = 0o755) -> Directory | None:
        """Open subdirectory ``name``; with ``create`` make it first if it is missing.

        Returns None when it is missing and ``create`` is false.
        """
        for _attempt in range(3):
            try:
                fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=self.fd)
                return Directory(fd, self.join(name))
            except FileNotFoundError:
                if not create:
                    return None
                with contextlib.suppress(FileExistsError):  # another task made it meanwhile: open it
                    self.mkdir(name, mode)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                found = self.lstat(name)
                raise UnsafePath(
                    "%s is %s, expected a directory; refusing to go through it"
                    % (self.join(name), _kind_of(found.st_mode) if found else "not a directory")) from None
        raise PoolError("directory %s vanished while it was being created" % self.join(name))

    def has_subdir(self, name: str) -> bool:
        """Whether subdirectory ``name`` exists (UnsafePath if it is a symlink or a file)."""
        directory = self.open_dir(name)
        if directory is None:
            return False
        directory.close()
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def open_fd(self) -> int:
        """The directory's descriptor (for a *at() call or an ioctl); ValueError once it is closed."""
        if self.fd is None:
            raise ValueError("directory %s is closed" % self.path)
        return self.fd

    # -- reading ----------------------------------------------------------

    def names(self) -> list[str]:
        """Names in the directory (one getdents pass, no stat)."""
        # listdir(fd) reads through a duplicate that shares the directory
        # offset: rewind, or a second listing of the same fd comes back empty.
        fd = self.open_fd()
        os.lseek(fd, 0, os.SEEK_SET)
        return os.listdir(fd)

    def lstat(self, name: str) -> os.stat_result | None:
        """``lstat`` of ``name``, or None if it does not exist."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def regular_lstat(self, name: str) -> os.stat_result | None:
        """Like :meth:`lstat`, but anything other than a regular file is an UnsafePath error."""
        found = self.lstat(name)
        if found is not None and not stat.S_ISREG(found.st_mode):
            raise UnsafePath("%s is %s, expected a regular image file; remove it by hand after checking it"
                             % (self.join(name), _kind_of(found.st_mode)))
        return found

    def open_file(self, name: str, flags: int, mode: int = FILE_MODE) -> int:
        """``open`` a regular file with O_NOFOLLOW; a symlink is reported as UnsafePath."""
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath("%s is a symlink; refusing to follow it" % self.join(name)) from None
            raise

    # -- durable changes --------------------------------------------------

    def fsync(self) -> None:
        os.fsync(self.open_fd())

    def rename(self, src: str, dst: str, sync: bool = True) -> None:
        os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        if sync:
            self.fsync()

    def unlink(self, name: str, sync: bool = True, missing_ok: bool = False) -> bool:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            if not missing_ok:
                raise
            return False
        if sync:
            self.fsync()
        return True

    def mkdir(self, name: str, mode: int = 0o755, sync: bool = True) -> None:
        os.mkdir(name, mode, dir_fd=self.fd)
        if sync:
            self.fsync()

    def rmdir(self, name: str, sync: bool = True) -> None:
        os.rmdir(name, dir_fd=self.fd)
        if sync:
            self.fsync()

    def rmdir_if_empty(self, name: str) -> bool:
        """Remove subdirectory ``name`` if it is empty; False, and nothing done, if it is not (or is gone)."""
        try:
            self.rmdir(name)
        except OSError as exc:
            # Something appeared in the meantime (qubesd's firewall.xml, say): keep it.
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise
            return False
        return True

    def link_open_file(self, fd: int, name: str) -> None:
        """Give the open file ``fd`` (e.g. an unnamed O_TMPFILE file) the name ``name``."""
        os.link(os.path.join(_PROC_FD, str(fd)), name, dst_dir_fd=self.fd, follow_symlinks=True)

    def truncate(self, name: str, size: int) -> None:
        """Change the size of an existing file in place and make it durable."""
        fd = self.open_file(name, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def file_size_fits(self, size: int) -> bool:
        """Whether a file in this directory can have ``size`` bytes (tried on an unnamed file).

        True also when it cannot be told (no O_TMPFILE, a read-only filesystem):
        the real operation then reports what is wrong.
        """
        if _O_TMPFILE is None:
            return True
        try:
            fd = os.open(".", _O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, FILE_MODE, dir_fd=self.fd)
        except OSError:
            return True
        try:
            os.ftruncate(fd, size)
        except OverflowError:
            return False
        except OSError as exc:
            return exc.errno not in (errno.EFBIG, errno.EINVAL)
        finally:
            os.close(fd)
        return True

    def write_new_file(self, name: str, fill: Callable[[int], T], mode: int = FILE_MODE) -> T:
        """Atomically (re)place ``name`` by a new file whose content ``fill(fd)`` writes.

        The file is written unnamed (O_TMPFILE) where the filesystem allows it,
        else under a ``<name>~XXXXXXXX`` tempfile; it gets ``mode``, is fsynced,
        linked to a tempfile name and renamed over ``name``, and the directory is
        fsynced.  On any error nothing is left behind and an existing ``name`` is
        untouched.  Returns what ``fill`` returned.
        """
        fd, tmp_name = self.open_unnamed(name, mode)
        try:
            result = fill(fd)
            os.fchmod(fd, mode)
            os.fsync(fd)
            if tmp_name is None:
                tmp_name = self._link_to_temp_name(fd, name)
            self.rename(tmp_name, name)
            tmp_name = None
            return result
        finally:
            os.close(fd)
            if tmp_name is not None:
                self.unlink(tmp_name, sync=False, missing_ok=True)

    def open_unnamed(self, name: str, mode: int = FILE_MODE) -> tuple[int, str | None]:
        """Open a new file for writing that will be called ``name``.

        Returns ``(fd, None)`` for an unnamed O_TMPFILE file, or ``(fd,
        tempfile_name)`` where the filesystem has no O_TMPFILE.
        """
        if _O_TMPFILE is not None:
            try:
                return os.open(".", _O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode, dir_fd=self.fd), None
            except OSError as exc:
                # Filesystems without O_TMPFILE say EOPNOTSUPP (or EISDIR on old kernels).
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
        while True:
            tmp_name = temp_name(name)
            try:
                return self.open_file(tmp_name, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode), tmp_name
            except FileExistsError:
                continue

    def _link_to_temp_name(self, fd: int, name: str) -> str:
        while True:
            tmp_name = temp_name(name)
            try:
                self.link_open_file(fd, tmp_name)
                return tmp_name
            except FileExistsError:
                continue


def temp_name(final_name: str) -> str:
    """A fresh tempfile name for ``final_name``: ``<final_name>~`` and 8 random characters."""
    # Hex digits are a subset of the alphabet qubesd's tempfiles use (TEMPFILE_ALPHABET), and
    # take one getrandom call where picking eight characters takes about twenty.  secrets is imported
    # here: it pulls in base64 and hmac, which a task that writes no tempfile (a no-op) does not need.
    import secrets  # noqa: PLC0415  pylint: disable=import-outside-toplevel
    return "%s~%s" % (final_name, secrets.token_hex(TEMPFILE_SUFFIX_LEN // 2))


def allocated_bytes(st: os.stat_result) -> int:
    """Bytes the filesystem allocated to a file (``st_blocks`` is in 512-byte units)."""
    return st.st_blocks * 512


# A pool's directory: open, or one that does not exist yet (check mode plans a task against it as an empty pool).
PoolDirectory = Union[Directory, AbsentDirectory]  # noqa: UP007  (see names.Revision)


def remove_tree(parent: Directory, name: str) -> None:
    """Remove the directory ``parent/name`` and everything in it, without following symlinks."""
    directory = parent.open_dir(name)
    if directory is None:
        return
    with directory:
        for entry in directory.names():
            st = directory.lstat(entry)
            if st is not None and stat.S_ISDIR(st.st_mode):
                remove_tree(directory, entry)
            else:
                directory.unlink(entry, sync=False, missing_ok=True)
    parent.rmdir(name)

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading the extent maps of a set of files below the pool: who holds which disk bytes.

Directories are opened one component at a time below the pool, never
through a symlink (their parents once); each file goes to the domain of its
filesystem (``btrfs_sharing`` on btrfs, as root; ``block_sharing``
elsewhere), which turns the extent maps into the :class:`Sharing` table.
"""

from __future__ import annotations

import errno
import gc
import os
import stat
from collections.abc import Sequence
from typing import TypeAlias

from ansible_collections.dom0.reflink.plugins.module_utils._inspect import btrfs_tree
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.block_sharing import BlockDomain
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.btrfs_sharing import BtrfsDomain
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.sharing import Sharing

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DIRECTORY
_Domain: TypeAlias = "BtrfsDomain | BlockDomain"


def read_sharing(pool_fd: int, names: Sequence[str], inodes: Sequence[int] | None = None,
                 units: bool = False) -> Sharing:
    """Read the extent maps of the files ``names`` (paths relative to the open pool directory ``pool_fd``).

    Read-only; no symlink below the pool is followed (a file or directory
    reached through one counts as missing).  A btrfs holding any of them has
    its transaction committed first.  Every name is a file of the set: bytes
    that a file outside ``names`` also holds count as kept.  ``inodes``: the
    files' inode numbers where the caller has just read them (a scan's
    lstat), 0 for one to read here; on btrfs the extent items are found by
    inode number, and a stat less per file is a tenth of the work.
    ``units``: also keep where each unit lies (``Sharing.units``).
    """
    sharing = Sharing(units=[] if units else None)
    # Hundreds of thousands of tuples and lists that never form cycles: the cyclic collector would only
    # walk them over and over.
    collecting = gc.isenabled()
    gc.disable()
    try:
        _read_all(pool_fd, names, inodes or [0] * len(names), sharing)
    finally:
        if collecting:
            gc.enable()
    return sharing


def _read_all(pool_fd: int, names: Sequence[str], inodes: Sequence[int], sharing: Sharing) -> None:
    by_directory: dict[str, list[tuple[int, str, int]]] = {}
    for index, (name, inode) in enumerate(zip(names, inodes, strict=True)):
        directory, _sep, base = name.rpartition("/")
        by_directory.setdefault(directory, []).append((index, base, inode))
    reader = _Reader(pool_fd, sharing)
    try:
        for directory, entries in by_directory.items():
            dir_fd = reader.open_dir(directory)
            if dir_fd is None:
                sharing.missing.extend(entry[0] for entry in entries)
                continue
            try:
                reader.read_directory(dir_fd, entries)
            finally:
                os.close(dir_fd)
        for domain in reader.domains.values():
            domain.finish(sharing)
    finally:
        reader.close()


class _Reader:
    """Opens the directories below the pool (their parents once) and sends each file to its filesystem's domain."""

    def __init__(self, pool_fd: int, sharing: Sharing) -> None:
        self.pool_fd = pool_fd
        self.sharing = sharing
        self.parents: dict[str, int | None] = {}
        self.domains: dict[tuple[str, int], _Domain] = {}
        self.places: dict[int, tuple[_Domain, int]] = {}   # st_dev -> (domain, btrfs subvolume or 0)

    def close(self) -> None:
        for fd in self.parents.values():
            if fd is not None:
                os.close(fd)
        for domain in self.domains.values():
            domain.close()

    def open_dir(self, relative: str) -> int | None:
        """A new descriptor of the directory ``relative`` below the pool (never through a symlink), or None."""
        parent_path, _sep, last = relative.rpartition("/")
        parent = self._parent(parent_path) if last else self.pool_fd
        if parent is None:
            return None
        return _open_dir(parent, last or ".")

    def _parent(self, relative: str) -> int | None:
        if not relative:
            return self.pool_fd
        if relative not in self.parents:
            self.parents[relative] = self.open_dir(relative)
        return self.parents[relative]

    def _place(self, dir_fd: int) -> tuple[_Domain, int]:
        """The domain of the filesystem holding ``dir_fd``, and its btrfs subvolume (0 elsewhere)."""
        device = os.fstat(dir_fd).st_dev   # on btrfs, each subvolume has a device number of its own
        place = self.places.get(device)
        if place is None:
            tree = btrfs_tree.subvolume_of(dir_fd)
            key = ("fiemap", device) if tree is None else ("btrfs", btrfs_tree.filesystem_key(dir_fd, tree))
            domain = self.domains.get(key)
            if domain is None:
                domain = self.domains[key] = BlockDomain.open(dir_fd) if tree is None else BtrfsDomain.open(dir_fd)
            place = self.places[device] = (domain, tree or 0)
        return place

    def read_directory(self, dir_fd: int, entries: list[tuple[int, str, int]]) -> None:
        """Send the files ``entries`` (index, name, inode number or 0) of the open directory to their domain."""
        domain, tree = self._place(dir_fd)
        missing = self.sharing.missing
        if isinstance(domain, BtrfsDomain):
            for index, base, known in entries:
                inode = known or _regular_inode(dir_fd, base)
                if inode:
                    domain.add_file(index, tree, inode)
                else:
                    missing.append(index)
            return
        for index, base, _inode in entries:
            try:
                fd = os.open(base, _OPEN_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
                    missing.append(index)
                    continue
                raise
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    domain.add_file(index, fd, self.sharing)
                else:
                    missing.append(index)
            finally:
                os.close(fd)


def _open_dir(parent: int, name: str) -> int | None:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return None
        raise


def _regular_inode(dir_fd: int, base: str) -> int:
    """The inode number of the regular file ``base`` in the directory, 0 when it is missing or something else."""
    try:
        st = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return 0
    return st.st_ino if stat.S_ISREG(st.st_mode) else 0

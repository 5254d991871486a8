# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who holds which disk bytes: a set of files' extent maps, grouped by the files that share them.

The result is a small table: for each set of files ("owners") that together
hold some disk bytes, how many bytes, how many of them no file references
any more (stranded, btrfs), and whether something outside the set also holds
them ("kept": then removing files of the set never frees them).  Every
question of ``space`` is a sum over this table.

How a byte is counted depends on the filesystem:

- btrfs (the tree search, as root): a unit is an on-disk extent, counted
  whole (disk_num_bytes, compressed size for a compressed extent), since
  btrfs frees an extent only when its last reference goes.  Kept when the
  extent tree counts more references than the set's files hold, or when a
  reference lies in a leaf shared with a snapshot that the backward walk
  resolves to an inode outside the set.  Holes and inline extents (stored
  with the metadata) take no data space.
- any other filesystem (FIEMAP): a unit is a run of physical blocks mapped by
  the same files.  Kept when FIEMAP flags it shared but only one mapping of
  the set holds it.  A run that two mappings of the set hold and a file
  outside also holds cannot be told apart from one that only the set holds:
  it counts as freed (GETFSMAP could tell, where the filesystem has a
  reverse map).  On a filesystem without reflinks nothing is shared, so a
  file's exclusive bytes are its allocated bytes.
- a file that FIEMAP cannot map: its st_blocks, held by it alone.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import gc
import os
import stat
from collections import Counter, defaultdict
from collections.abc import Sequence
from operator import itemgetter
from typing import Union

from ansible_collections.dom0.reflink.plugins.module_utils._inspect import btrfs_tree
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.extents import (EXTENT_NOT_COMPARABLE, EXTENT_SHARED,
                                                                                    FiemapReader, sync_filesystem)

# How a filesystem's bytes were counted.
BTRFS_EXTENTS = "btrfs extents"
FIEMAP_BLOCKS = "fiemap blocks"
ALLOCATED_BLOCKS = "st_blocks"

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DIRECTORY

_BYTENR = itemgetter(btrfs_tree.REF_BYTENR)

# (owners: distinct file indexes, in the order read, kept) -> [bytes, stranded bytes]
Groups = dict[tuple[tuple[int, ...], bool], list[int]]


@dataclasses.dataclass
class Sharing:
    """The disk bytes of a set of files, grouped by the files that hold them (indexes into the names read)."""

    groups: Groups = dataclasses.field(default_factory=dict)
    missing: list[int] = dataclasses.field(default_factory=list)   # files that were not there (or not regular)
    methods: set[str] = dataclasses.field(default_factory=set)     # how the bytes were counted

    def add(self, owners: tuple[int, ...], kept: bool, size: int, stranded: int = 0) -> None:
        entry = self.groups.get((owners, kept))
        if entry is None:
            self.groups[(owners, kept)] = [size, stranded]
        else:
            entry[0] += size
            entry[1] += stranded


def read_sharing(pool_fd: int, names: Sequence[str]) -> Sharing:
    """Read the extent maps of the files ``names`` (paths relative to the open pool directory ``pool_fd``).

    Read-only; no symlink below the pool is followed (a file or directory
    reached through one counts as missing).  A btrfs holding any of them has
    its transaction committed first.  Every name is a file of the set: bytes
    that a file outside ``names`` also holds count as kept.
    """
    sharing = Sharing()
    # Hundreds of thousands of tuples and lists that never form cycles: the cyclic collector would only
    # walk them over and over.
    collecting = gc.isenabled()
    gc.disable()
    try:
        _read_all(pool_fd, names, sharing)
    finally:
        if collecting:
            gc.enable()
    return sharing


_Domain = Union["_BtrfsDomain", "_FiemapDomain"]


def _read_all(pool_fd: int, names: Sequence[str], sharing: Sharing) -> None:
    by_directory: dict[str, list[tuple[int, str]]] = {}
    for index, name in enumerate(names):
        directory, _sep, base = name.rpartition("/")
        by_directory.setdefault(directory, []).append((index, base))
    reader = _Reader(pool_fd, sharing)
    try:
        for directory, entries in by_directory.items():
            dir_fd = reader.open_dir(directory)
            if dir_fd is None:
                sharing.missing.extend(index for index, _base in entries)
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
                domain = self.domains[key] = _FiemapDomain.open(dir_fd) if tree is None else _BtrfsDomain.open(dir_fd)
            place = self.places[device] = (domain, tree or 0)
        return place

    def read_directory(self, dir_fd: int, entries: list[tuple[int, str]]) -> None:
        domain, tree = self._place(dir_fd)
        missing = self.sharing.missing
        if isinstance(domain, _BtrfsDomain):
            for index, base in entries:
                st = _regular_lstat(dir_fd, base)
                if st is None:
                    missing.append(index)
                else:
                    domain.add_file(index, tree, st.st_ino)
            return
        for index, base in entries:
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


def _regular_lstat(dir_fd: int, base: str) -> os.stat_result | None:
    try:
        st = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


class _BtrfsDomain:
    """The files of one btrfs: their extent items, then each extent as one unit.

    Per file only C-level bulk operations on its list of references (a pool
    has hundreds of thousands of them); the per-extent work is done once, in
    :meth:`finish`.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.search = btrfs_tree.TreeSearch(fd)
        self.files: dict[int, dict[int, list[int]]] = {}   # subvolume -> inode -> its names (file indexes)
        self.owners: defaultdict[int, list[int]] = defaultdict(list)   # disk_bytenr -> files, each once
        self.repeated: Counter[int] = Counter()        # disk_bytenr -> references beyond one per inode
        # distinct (ram_bytes, compression, type, disk_bytenr, disk_num_bytes, offset, num_bytes) references
        self.uses: set[btrfs_tree.ExtentRef] = set()
        self.old_leaves: set[int] = set()               # extents referenced from a leaf a snapshot may share
        self.inodes: set[tuple[int, int]] = set()       # (subvolume, inode) of the set

    @classmethod
    def open(cls, fd: int) -> _BtrfsDomain | _FiemapDomain:
        """A domain reading the btrfs of ``fd``; a FIEMAP domain when the tree search is not allowed."""
        own_fd = os.dup(fd)
        try:
            btrfs_tree.commit(own_fd)
            btrfs_tree.TreeSearch(own_fd).last_snapshot(btrfs_tree.ROOT_TREE)
        except PermissionError:
            os.close(own_fd)
            return _FiemapDomain.open(fd)
        except BaseException:
            os.close(own_fd)
            raise
        return cls(own_fd)

    def close(self) -> None:
        os.close(self.fd)

    def add_file(self, index: int, tree: int, inode: int) -> None:
        """Note file ``index``: inode ``inode`` of subvolume ``tree`` (read in :meth:`finish`)."""
        self.files.setdefault(tree, {}).setdefault(inode, []).append(index)
        self.inodes.add((tree, inode))

    def _read(self) -> None:
        """Every file's extent items, subvolume by subvolume, neighbouring inodes in one search."""
        owners, repeated, uses = self.owners, self.repeated, self.uses
        for tree, inodes in self.files.items():
            snapshot = self.search.last_snapshot(tree)
            for inode, refs in self.search.inode_extents(tree, sorted(inodes), snapshot, self.old_leaves):
                names = inodes[inode]
                bytenrs = list(map(_BYTENR, refs))
                distinct = set(bytenrs)
                if len(distinct) != len(bytenrs):   # an extent referenced twice by the file, or explicit holes
                    repeated.update(bytenrs)
                    repeated.subtract(distinct)
                uses.update(refs)
                if len(names) == 1:
                    index = names[0]
                    for bytenr in distinct:
                        owners[bytenr].append(index)
                else:   # hard links: one inode, several names; the extent tree counts its items once
                    for bytenr in distinct:
                        owners[bytenr].extend(names)
                        repeated[bytenr] -= len(names) - 1

    def finish(self, sharing: Sharing) -> None:
        sharing.methods.add(BTRFS_EXTENTS)
        self._read()
        extent_bytes, stranded = self._extents()
        counts = self.search.extent_reference_counts(extent_bytes)
        repeated, old_leaves, groups = self.repeated, self.old_leaves, sharing.groups
        for bytenr, holders in self.owners.items():
            if not bytenr:
                continue   # holes and inline data: no data extent
            kept = counts.get(bytenr) != len(holders) + repeated.get(bytenr, 0) or \
                (bytenr in old_leaves and self._held_outside(bytenr))
            size = extent_bytes[bytenr]
            strand = 0 if kept else stranded.get(bytenr, 0)
            key = (tuple(holders), kept)
            entry = groups.get(key)
            if entry is None:
                groups[key] = [size, strand]
            else:
                entry[0] += size
                entry[1] += strand

    def _extents(self) -> tuple[dict[int, int], dict[int, int]]:
        """{disk_bytenr: disk_num_bytes} of every extent, and {disk_bytenr: stranded bytes} of those that
        no reference of the set covers whole."""
        extent_bytes: dict[int, int] = {}
        whole: set[int] = set()
        partial: dict[int, list[tuple[int, int]]] = {}
        ram_bytes: dict[int, int] = {}
        for ram, _compression, _kind, bytenr, disk_bytes, offset, num_bytes in self.uses:
            if not bytenr:
                continue
            extent_bytes[bytenr] = disk_bytes
            if offset == 0 and num_bytes >= ram:
                whole.add(bytenr)
            else:
                partial.setdefault(bytenr, []).append((offset, offset + num_bytes))
                ram_bytes[bytenr] = ram
        stranded = {bytenr: _stranded(extent_bytes[bytenr], ram_bytes[bytenr], ranges)
                    for bytenr, ranges in partial.items() if bytenr not in whole}
        return extent_bytes, stranded

    def _held_outside(self, bytenr: int) -> bool:
        found = btrfs_tree.extent_owners(self.fd, bytenr)
        return found is None or any(owner not in self.inodes for owner in found)


def _stranded(disk_bytes: int, ram_bytes: int, ranges: list[tuple[int, int]]) -> int:
    """Disk bytes of an extent that no reference covers; ``ranges`` are (offset, end) in its uncompressed data.

    Only for an extent that no reference covers whole.
    """
    covered = 0
    reach = 0
    for start, end in sorted(ranges):
        begin = max(start, reach)
        if end > begin:
            covered += end - begin
            reach = end
    if covered >= ram_bytes:
        return 0
    if ram_bytes == disk_bytes:
        return disk_bytes - covered
    return disk_bytes * (ram_bytes - covered) // ram_bytes   # compressed: in proportion


class _FiemapDomain:
    """The files of one non-btrfs filesystem (or a btrfs read without privileges): physical block runs."""

    def __init__(self) -> None:
        self.reader = FiemapReader()
        self.pieces: list[tuple[int, int, int, int]] = []   # (physical, length, file, shared flag)

    @classmethod
    def open(cls, fd: int) -> _FiemapDomain:
        """A domain for the filesystem of ``fd``, synced first (see :func:`sync_filesystem`)."""
        sync_filesystem(fd)
        return cls()

    def close(self) -> None:
        pass

    def add_file(self, index: int, fd: int, sharing: Sharing) -> None:
        try:
            mappings = self.reader.mappings(fd)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                raise
            sharing.methods.add(ALLOCATED_BLOCKS)
            sharing.add((index,), False, os.fstat(fd).st_blocks * 512)
            return
        for _logical, physical, length, flags in mappings:
            if flags & EXTENT_NOT_COMPARABLE:
                sharing.add((index,), False, length)
            else:
                self.pieces.append((physical, length, index, flags & EXTENT_SHARED))

    def finish(self, sharing: Sharing) -> None:
        sharing.methods.add(FIEMAP_BLOCKS)
        self.pieces.sort()
        cluster: list[tuple[int, int, int, int]] = []
        reach = -1
        for piece in self.pieces:
            if piece[0] >= reach and cluster:
                _add_cluster(cluster, sharing)
                cluster = []
            cluster.append(piece)
            reach = max(reach, piece[0] + piece[1])
        if cluster:
            _add_cluster(cluster, sharing)
        self.pieces = []


def _add_cluster(cluster: list[tuple[int, int, int, int]], sharing: Sharing) -> None:
    """Add overlapping mappings as runs of blocks that the same mappings hold."""
    first = cluster[0]
    if all(piece[0] == first[0] and piece[1] == first[1] for piece in cluster):
        _add_run(first[1], [(piece[2], piece[3]) for piece in cluster], sharing)
        return
    bounds = sorted({piece[0] for piece in cluster} | {piece[0] + piece[1] for piece in cluster})
    holders: list[list[tuple[int, int]]] = [[] for _bound in bounds]
    for physical, length, index, shared in cluster:
        for position in range(bisect.bisect_left(bounds, physical), bisect.bisect_left(bounds, physical + length)):
            holders[position].append((index, shared))
    for position, held in enumerate(holders[:-1]):
        if held:
            _add_run(bounds[position + 1] - bounds[position], held, sharing)


def _add_run(length: int, held: list[tuple[int, int]], sharing: Sharing) -> None:
    """A run of ``length`` bytes mapped by ``held`` (file, shared flag) mappings."""
    kept = len(held) == 1 and bool(held[0][1])
    owners = tuple(sorted({index for index, _shared in held}))
    sharing.add(owners, kept, length)

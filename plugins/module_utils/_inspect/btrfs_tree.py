# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""btrfs's own records of a file's data: its extent items and the extent tree.

A btrfs file is a list of EXTENT_DATA items in its subvolume's tree, each
pointing into an on-disk extent (disk_bytenr, disk_num_bytes) at an offset,
for num_bytes.  The extent is allocated whole until its last reference goes,
however little of it the references still cover.  The extent tree holds, for
every extent, the count of all references to it from any file of any
subvolume: more than the pool's own references means that something outside
the pool keeps it.

Read with root's tree-search ioctl (BTRFS_IOC_TREE_SEARCH_V2, CAP_SYS_ADMIN),
as compsize and ``btrfs inspect-internal`` read them.  The extent tree is
current only after a transaction commit: call :func:`commit` first.

One exception the count cannot see: a leaf of a subvolume's tree shared with
a snapshot (a leaf not rewritten since the snapshot) counts once for both
trees.  Items in leaves written before the subvolume's last snapshot are
therefore reported, and their extents checked with BTRFS_IOC_LOGICAL_INO_V2,
which resolves every reference to its subvolume and inode
(:func:`extent_owners`).
"""

from __future__ import annotations

import array
import errno
import fcntl
import itertools
import operator
import os
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence

# Read+write ioctls of fewer than 8 KiB encode alike on every Linux architecture.
BTRFS_IOC_SYNC = 0x9408                # _IO(0x94, 8): flush delalloc, commit the transaction
BTRFS_IOC_TREE_SEARCH_V2 = 0xC0709411  # _IOWR(0x94, 17, struct btrfs_ioctl_search_args_v2)
BTRFS_IOC_INO_LOOKUP = 0xD0009412      # _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args)
BTRFS_IOC_LOGICAL_INO_V2 = 0xC038943B  # _IOWR(0x94, 59, struct btrfs_ioctl_logical_ino_args)

ROOT_TREE = 1
EXTENT_TREE = 2
FIRST_FREE_OBJECTID = 256
INODE_ITEM_KEY = 1
EXTENT_DATA_KEY = 108
ROOT_ITEM_KEY = 132
EXTENT_ITEM_KEY = 168
LOGICAL_INO_IGNORE_OFFSET = 1

# btrfs_file_extent_item.type
INLINE = 0
REGULAR = 1
PREALLOC = 2

# One reference of a file to an extent, as its item says (a plain tuple: a pool has hundreds of thousands):
# (ram_bytes, compression, type, disk_bytenr, disk_num_bytes, offset, num_bytes).  disk_bytenr 0 is a
# hole; an inline extent has type INLINE, disk_bytenr 0 and num_bytes its length (its data is metadata).
ExtentRef = tuple[int, int, int, int, int, int, int]
REF_RAM_BYTES, REF_COMPRESSION, REF_TYPE, REF_BYTENR, REF_DISK_BYTES, REF_OFFSET, REF_NUM_BYTES = range(7)

_U64 = 0xFFFFFFFFFFFFFFFF
_U32 = 0xFFFFFFFF
# search key: tree_id, min/max objectid, min/max offset, min/max transid, min/max type, nr_items, unused
_SEARCH_KEY = struct.Struct("=QQQQQQQIII4x32x")
_NR_ITEMS = struct.Struct("=64xI")
_ARGS_SIZE = _SEARCH_KEY.size + 8      # the key, then buf_size
_HEADER = struct.Struct("=QQQII")      # transid (of the leaf), objectid, offset, type, len: host order
_HEADER_SIZE = _HEADER.size
_KEY_LEN = struct.Struct("=8xQQII")    # a header without its transid
_FILE_EXTENT = struct.Struct("<8xQBxxxBQQQQ")   # a regular item: ram_bytes, compression, type, disk_bytenr,
#                                                 disk_num_bytes, offset, num_bytes (disk order: little-endian)
_FILE_EXTENT_SIZE = 53
_INLINE_HEAD = struct.Struct("<8xQB")  # an inline item's ram_bytes and compression; its data follows at 21
_TYPE_AT = 20
_INODE_FLAGS = struct.Struct("<64xQ")   # btrfs_inode_item.flags (disk order)
INODE_NODATACOW = 1 << 1               # btrfs's No_COW (chattr +C)
# A header and a regular item read as one record, on little-endian hosts (where the header's host order and
# the item's disk order agree): an inode's items after the first are all regular ones.
_RECORD = struct.Struct("<32x8xQBxxxBQQQQ")
_RECORD_SIZE = _RECORD.size            # 85
_TYPE_COLUMN = 24                      # the low byte of a header's type
_LEN_AT = 28
_OFFSET_AT = 16
_EXTENT_DATA_TYPE = bytes((EXTENT_DATA_KEY,))
_RECORDS = sys.byteorder == "little"
_U64_AT = struct.Struct("=Q")
_REFS = struct.Struct("<Q")            # btrfs_extent_item.refs, btrfs_root_item.last_snapshot
_LAST_SNAPSHOT_AT = 200                # in btrfs_root_item: after the inode item and five u64
_SEARCH_BUFFER = 160 * 1024
_MAX_ITEM = 64 * 1024                  # no item is larger than a leaf (nodesize is at most 64 KiB)
_INODE_GAP = 64                        # inodes further apart are read by separate searches
_EXTENT_GAP = 8 * 1024 * 1024          # so are extents that start further apart than this (bytes)
_LOGICAL_INO_ARGS = struct.Struct("=QQ24xQQ")   # logical, size, reserved, flags, inodes (a user address)
_CONTAINER = struct.Struct("=IIII")    # bytes_left, bytes_missing, elem_cnt, elem_missed
_OWNERS_BUFFER = 64 * 1024
_OWNERS_BUFFER_MAX = 16 * 1024 * 1024


def commit(fd: int) -> None:
    """Write back dirty data and commit the transaction of the btrfs holding ``fd`` (BTRFS_IOC_SYNC).

    Until then new data may have no extent item yet, and the extent tree's
    counts lag behind the files: delayed references are applied at the commit.
    """
    fcntl.ioctl(fd, BTRFS_IOC_SYNC)


def subvolume_of(fd: int) -> int | None:
    """The id of the btrfs subvolume (tree) that ``fd`` lies in, or None when it is not on btrfs.

    BTRFS_IOC_INO_LOOKUP of objectid 256 with tree 0 answers without
    privileges.
    """
    args = bytearray(4096)
    struct.pack_into("=QQ", args, 0, 0, FIRST_FREE_OBJECTID)
    try:
        fcntl.ioctl(fd, BTRFS_IOC_INO_LOOKUP, args)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
            return None
        raise
    tree: int = _U64_AT.unpack_from(args, 0)[0]
    return tree


def filesystem_key(fd: int, tree: int) -> int:
    """A number that is the same for every subvolume of one btrfs and differs between two of them.

    statvfs's f_fsid of btrfs mixes the filesystem's UUID with the subvolume's
    id; the id is known, so the mix is undone.
    """
    fsid = os.fstatvfs(fd).f_fsid
    if sys.maxsize < _U32 << 32:   # a 32-bit f_fsid holds the first half only
        return fsid ^ ((tree >> 32) & _U32)
    return fsid ^ ((tree & _U32) << 32) ^ (tree >> 32)


class TreeSearch:
    """Root's read access to btrfs's trees through one reusable buffer; ``fd`` is anything on the filesystem."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # 8 bytes beyond the buffer the kernel is told about: a record read never runs off the end.
        self._args = bytearray(_ARGS_SIZE + _SEARCH_BUFFER + 8)
        _U64_AT.pack_into(self._args, _SEARCH_KEY.size, _SEARCH_BUFFER)
        self._view = memoryview(self._args)
        self._end = _ARGS_SIZE + _SEARCH_BUFFER

    def _search(self, tree: int, low: tuple[int, int, int], high: tuple[int, int, int]) -> int:
        """One search from key ``low`` to ``high`` (objectid, type, offset); the number of items found."""
        _SEARCH_KEY.pack_into(self._args, 0, tree, low[0], high[0], low[2], high[2], 0, _U64, low[1], high[1], _U32)
        fcntl.ioctl(self.fd, BTRFS_IOC_TREE_SEARCH_V2, self._args)
        found: int = _NR_ITEMS.unpack_from(self._args)[0]
        return found

    def _complete(self, position: int, key: tuple[int, int, int], high: tuple[int, int, int]) -> bool:
        """Whether a search that filled the buffer up to ``position`` and ended at ``key`` saw the whole range."""
        return self._end - position >= _HEADER_SIZE + _MAX_ITEM or key >= high

    def items(self, tree: int, low: tuple[int, int, int],
              high: tuple[int, int, int]) -> Iterator[tuple[int, int, int, int, memoryview]]:
        """Every item with a key from ``low`` to ``high``: (leaf transid, objectid, type, offset, data).

        ``data`` is valid only until the next item is asked for.
        """
        while True:
            found = self._search(tree, low, high)
            if found == 0:
                return
            position = _ARGS_SIZE
            key = low
            for _index in range(found):
                transid, objectid, offset, kind, length = _HEADER.unpack_from(self._args, position)
                position += _HEADER_SIZE
                yield transid, objectid, kind, offset, self._view[position:position + length]
                position += length
                key = (objectid, kind, offset)
            if self._complete(position, key, high):
                return
            low = _next_key(key)

    def inode_extents(self, tree: int, inodes: Sequence[int], snapshot: int = 0, old_leaves: set[int] | None = None,
                      nocow: set[int] | None = None) -> Iterator[tuple[int, list[ExtentRef]]]:
        """(inode, its EXTENT_DATA items in file order) for each of the sorted ``inodes`` of subvolume ``tree``.

        Neighbouring inodes are read by one range search (as few ioctls as the
        buffer allows, rather than one per file).  An inode with no data is
        not reported.  With ``snapshot`` (the subvolume's last snapshot), the
        disk_bytenr of every item in a leaf written no later is added to
        ``old_leaves``: a snapshot may share that leaf.  With ``nocow``, the
        inodes whose inode item carries No_COW are added to it (the inode item
        precedes the extent items: a range search reads it anyway).
        """
        wanted = set(inodes)
        first_key = EXTENT_DATA_KEY if nocow is None else INODE_ITEM_KEY
        for first, last in _runs(inodes, _INODE_GAP):
            current = -1
            refs: list[ExtentRef] = []
            low = (first, 0 if first != last else first_key, 0)
            high = (last, EXTENT_DATA_KEY, _U64)
            while True:
                found = self._search(tree, low, high)
                position = _ARGS_SIZE
                key = low
                while found:
                    objectid, offset, kind, length = _KEY_LEN.unpack_from(self._args, position)
                    count = 1
                    batch: list[ExtentRef] = []
                    if kind == EXTENT_DATA_KEY and length == _FILE_EXTENT_SIZE and _RECORDS:
                        # This item and the regular items after it: a run of records, as long as the
                        # type column says EXTENT_DATA (the next inode starts with its inode item).
                        column = self._args[position + _TYPE_COLUMN:position + found * _RECORD_SIZE:_RECORD_SIZE]
                        count = len(column) - len(column.lstrip(_EXTENT_DATA_TYPE))
                        stop = position + count * _RECORD_SIZE
                        if objectid in wanted:
                            batch = list(_RECORD.iter_unpack(self._view[position:stop]))
                        offset = _U64_AT.unpack_from(self._args, stop - _RECORD_SIZE + _OFFSET_AT)[0]
                        length = count * _RECORD_SIZE - _HEADER_SIZE
                    elif kind == EXTENT_DATA_KEY and objectid in wanted:
                        batch = [_file_extent_ref(self._view[position + _HEADER_SIZE:position + _HEADER_SIZE + length])]
                    elif kind == INODE_ITEM_KEY and nocow is not None and objectid in wanted and \
                            length >= _INODE_FLAGS.size and \
                            _INODE_FLAGS.unpack_from(self._args, position + _HEADER_SIZE)[0] & INODE_NODATACOW:
                        nocow.add(objectid)
                    if batch:
                        if snapshot and old_leaves is not None:
                            self._note_old_leaves(position, count, batch, snapshot, old_leaves)
                        if objectid != current:
                            if refs:
                                yield current, refs
                            current, refs = objectid, batch
                        else:
                            refs += batch
                    position += _HEADER_SIZE + length
                    found -= count
                    key = (objectid, kind, offset)
                if position == _ARGS_SIZE or self._complete(position, key, high):
                    break
                low = _next_key(key)
            if refs:
                yield current, refs

    def _note_old_leaves(self, position: int, count: int, batch: list[ExtentRef], snapshot: int,
                         old_leaves: set[int]) -> None:
        size = _RECORD_SIZE if count > 1 else 0
        for index, ref in enumerate(batch):
            if _U64_AT.unpack_from(self._args, position + index * size)[0] <= snapshot:
                old_leaves.add(ref[REF_BYTENR])

    def file_extents(self, tree: int, inode: int) -> list[ExtentRef]:
        """The EXTENT_DATA items of one inode of subvolume ``tree``, in file order (holes included)."""
        for _inode, refs in self.inode_extents(tree, (inode,)):
            return refs
        return []

    def extent_reference_counts(self, bytenrs: Iterable[int]) -> dict[int, int]:
        """{disk_bytenr: the extent tree's reference count} of the extents at ``bytenrs``.

        Extents close to each other are read by one range search; an extent
        missing from the tree (freed meanwhile) is missing from the answer.
        """
        counts: dict[int, int] = {}
        for first, last in _runs(sorted(bytenrs), _EXTENT_GAP):
            low = (first, EXTENT_ITEM_KEY, 0)
            high = (last, EXTENT_ITEM_KEY, _U64)
            while True:
                found = self._search(EXTENT_TREE, low, high)
                position = _ARGS_SIZE
                key = low
                for _index in range(found):
                    objectid, offset, kind, length = _KEY_LEN.unpack_from(self._args, position)
                    if kind == EXTENT_ITEM_KEY:
                        counts[objectid] = _REFS.unpack_from(self._args, position + _HEADER_SIZE)[0]
                    position += _HEADER_SIZE + length
                    key = (objectid, kind, offset)
                if found == 0 or self._complete(position, key, high):
                    break
                low = _next_key(key)
        return counts

    def last_snapshot(self, tree: int) -> int:
        """The transaction of the last snapshot taken of subvolume ``tree`` (or that made it); 0 if none."""
        for _transid, _objectid, kind, _offset, data in self.items(ROOT_TREE, (tree, ROOT_ITEM_KEY, 0),
                                                                   (tree, ROOT_ITEM_KEY, _U64)):
            if kind == ROOT_ITEM_KEY and len(data) >= _LAST_SNAPSHOT_AT + 8:
                snapshot: int = _REFS.unpack_from(data, _LAST_SNAPSHOT_AT)[0]
                return snapshot
        return 0


def _file_extent_ref(data: memoryview) -> ExtentRef:
    """One EXTENT_DATA item read field by field (an inline item, or any item on a big-endian host)."""
    if len(data) >= _FILE_EXTENT_SIZE and data[_TYPE_AT] != INLINE:
        found: ExtentRef = _FILE_EXTENT.unpack_from(data, 0)
        return found
    ram, compression = _INLINE_HEAD.unpack_from(data, 0)
    return (ram, compression, INLINE, 0, 0, 0, ram)


def _next_key(key: tuple[int, int, int]) -> tuple[int, int, int]:
    objectid, kind, offset = key
    if offset < _U64:
        return (objectid, kind, offset + 1)
    if kind < 255:
        return (objectid, kind + 1, 0)
    return (objectid + 1, 0, 0)


def _runs(starts: Sequence[int], gap: int) -> Iterator[tuple[int, int]]:
    """(first, last) of the runs of the sorted ``starts`` in which each lies within ``gap`` of the one before.

    The gaps are found with C-level maps: a pool has tens of thousands of
    extents.
    """
    if not starts:
        return
    breaks = itertools.compress(range(1, len(starts)),
                                map(operator.gt, starts[1:], map(operator.add, starts, itertools.repeat(gap))))
    first = 0
    for index in breaks:
        yield starts[first], starts[index - 1]
        first = index
    yield starts[first], starts[-1]


def extent_owners(fd: int, bytenr: int) -> list[tuple[int, int]] | None:
    """Every (subvolume, inode) that references the extent at ``bytenr``, however (BTRFS_IOC_LOGICAL_INO_V2).

    The backward walk resolves references through leaves shared with
    snapshots, which the extent tree's count does not tell apart.  An inode
    appears once per reference.  None when there are too many to list
    (more than half a million).
    """
    size = _OWNERS_BUFFER
    while True:
        container = array.array("Q", bytes(size))
        address = container.buffer_info()[0]
        args = bytearray(_LOGICAL_INO_ARGS.pack(bytenr, size, LOGICAL_INO_IGNORE_OFFSET, address))
        fcntl.ioctl(fd, BTRFS_IOC_LOGICAL_INO_V2, args)
        _left, missing, count, _missed = _CONTAINER.unpack_from(container, 0)
        if not missing:
            values = container[2:2 + count]
            # (inode, offset, root) triples
            return list(zip(values[2::3], values[0::3], strict=True))
        if size >= _OWNERS_BUFFER_MAX:
            return None
        size = min(_OWNERS_BUFFER_MAX, size + missing + 4096)

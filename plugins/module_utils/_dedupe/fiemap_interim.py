# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""TEMPORARY: the extent map of an open file by FIEMAP, until ``_inspect/extents.py`` exists.

The dedupe engine takes extent maps as data (dedupe_input.MappedExtent); this
file is the one place where it reads them itself.  The pool's extent
inspection (``_inspect/extents.py``: FIEMAP, and on btrfs the extent tree,
which also tells the true on-disk extents and every reference to them) will
replace it: delete this file then and feed the engine from there.
"""

from __future__ import annotations

import fcntl
import struct

from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.inputs import EXTENT_LAST, MappedExtent

# _IOWR('f', 11, struct fiemap): the same number on every Linux architecture.
FS_IOC_FIEMAP = 0xC020660B
_FLAG_SYNC = 0x1     # write dirty pages back first, so that the map is the one on disk
_HEADER = struct.Struct("=QQIIII")       # start, length, flags, mapped, count, reserved
_EXTENT = struct.Struct("=QQQQQIIII")    # logical, physical, length, 2 reserved, flags, 3 reserved
_BATCH = 512


def read_extent_map(fd: int) -> list[MappedExtent]:
    """Every extent of ``fd`` as FIEMAP lists it (OSError where the file system has no FIEMAP)."""
    extents: list[MappedExtent] = []
    start = 0
    while True:
        request = bytearray(_HEADER.size + _BATCH * _EXTENT.size)
        _HEADER.pack_into(request, 0, start, 0xFFFFFFFFFFFFFFFF - start, _FLAG_SYNC, 0, _BATCH, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, request)
        mapped = _HEADER.unpack_from(request, 0)[3]
        if mapped == 0:
            return extents
        for index in range(mapped):
            fields = _EXTENT.unpack_from(request, _HEADER.size + index * _EXTENT.size)
            extents.append(MappedExtent(fields[0], fields[1], fields[2], fields[5]))
        last = extents[-1]
        if last.flags & EXTENT_LAST:
            return extents
        start = last.logical + last.length


# BTRFS_IOC_TREE_SEARCH, _IOWR(0x94, 17, struct btrfs_ioctl_search_args) (4096 bytes): root only.
BTRFS_IOC_TREE_SEARCH = 0xD0009411
_SEARCH_KEY = struct.Struct("=QQQQQQQIIII32x")   # tree, objectid min/max, offset min/max, transid min/max, type min/max, nr
_SEARCH_HEADER = struct.Struct("=QQQII")          # transid, objectid, offset, type, len
_FILE_EXTENT = struct.Struct("<QQBBHBQQQQ")       # generation, ram_bytes, compression, encryption, other, type, disk...
_EXTENT_DATA_KEY = 108
_REGULAR = 1


def read_btrfs_disk_extents(fd: int, ino: int) -> list[tuple[int, int]]:
    """The on-disk extents (start, size) that btrfs file ``fd`` (inode ``ino``) references; [] elsewhere.

    FIEMAP shows the ranges a file references, not the extents they lie in:
    an extent stays allocated whole while any part of it is referenced, which
    only its true size (``disk_num_bytes`` of each file extent item, from the
    file system tree) lets the engine see.
    """
    found: dict[int, int] = {}
    offset = 0
    while True:
        request = bytearray(4096)
        _SEARCH_KEY.pack_into(request, 0, 0, ino, ino, offset, 0xFFFFFFFFFFFFFFFF, 0, 0xFFFFFFFFFFFFFFFF,
                              _EXTENT_DATA_KEY, _EXTENT_DATA_KEY, 4096, 0)
        try:
            fcntl.ioctl(fd, BTRFS_IOC_TREE_SEARCH, request)
        except OSError:
            return []   # not btrfs (ENOTTY), or not allowed: the engine falls back to FIEMAP's ranges
        count = struct.unpack_from("=I", request, 64)[0]
        if count == 0:
            break
        position = _SEARCH_KEY.size
        for _index in range(count):
            _transid, _objectid, key_offset, key_type, length = _SEARCH_HEADER.unpack_from(request, position)
            position += _SEARCH_HEADER.size
            if key_type == _EXTENT_DATA_KEY and length >= _FILE_EXTENT.size:
                fields = _FILE_EXTENT.unpack_from(request, position)
                if fields[5] == _REGULAR and fields[6]:
                    found[fields[6]] = fields[7]
            position += length
            offset = key_offset + 1
    return sorted(found.items())

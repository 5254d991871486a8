# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is the content of two images the same?  Cheap answers first.

1. Sizes differ: no.  The same inode: yes.
2. FIEMAP says both files map the same logical ranges to the same physical
   blocks (a reflink of one another that neither side has rewritten): yes,
   without reading a byte.  Costs one ioctl per 512 extents of each file.
3. Otherwise read both, but only where at least one of them has data
   (SEEK_DATA/SEEK_HOLE): a hole in both is equal without reading.  Costs a
   read of the data of both files, at disk speed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from ansible_collections.dom0.reflink.plugins.module_utils._fs.clone import data_segments, file_size

# _IOWR('f', 11, struct fiemap): the same number on every Linux architecture.
FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_HEADER = struct.Struct("=QQIIII")          # start, length, flags, mapped, count, reserved
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")       # logical, physical, length, 2x reserved, flags, 3x reserved
_EXTENT_LAST = 0x1
# Extents whose physical address does not identify the data on its own.
_EXTENT_UNTRUSTED = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400
_BATCH = 512
_READ_CHUNK = 4 * 1024 * 1024


def extent_map(fd):
    """Merged (logical, physical, length) extents of ``fd``, or None if FIEMAP cannot vouch for them."""
    extents = []
    start = 0
    while True:
        request = bytearray(_FIEMAP_HEADER.size + _BATCH * _FIEMAP_EXTENT.size)
        _FIEMAP_HEADER.pack_into(request, 0, start, 0xFFFFFFFFFFFFFFFF - start, _FIEMAP_FLAG_SYNC, 0, _BATCH, 0)
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, request)
        except OSError:
            return None
        mapped = _FIEMAP_HEADER.unpack_from(request, 0)[3]
        if mapped == 0:
            return extents
        for index in range(mapped):
            fields = _FIEMAP_EXTENT.unpack_from(request, _FIEMAP_HEADER.size + index * _FIEMAP_EXTENT.size)
            logical, physical, length, flags = fields[0], fields[1], fields[2], fields[5]
            if flags & _EXTENT_UNTRUSTED:
                return None
            if extents and extents[-1][0] + extents[-1][2] == logical and \
                    extents[-1][1] + extents[-1][2] == physical:
                last = extents.pop()
                extents.append((last[0], last[1], last[2] + length))
            else:
                extents.append((logical, physical, length))
            if flags & _EXTENT_LAST:
                return extents
            start = logical + length


def _ranges_with_data(fd, length):
    return list(data_segments(fd, length))


def _union(left, right):
    merged = []
    for start, end in sorted(left + right):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _equal_reads(left_fd, right_fd, start, end):
    offset = start
    while offset < end:
        want = min(_READ_CHUNK, end - offset)
        left = os.pread(left_fd, want, offset)
        right = os.pread(right_fd, want, offset)
        if left != right or len(left) != want:
            return False
        offset += want
    return True


def same_content(left_fd, right_fd):
    """Whether the two open files have the same size and bytes."""
    left_st, right_st = os.fstat(left_fd), os.fstat(right_fd)
    size = file_size(left_fd)
    if size != file_size(right_fd):  # st_size is 0 for a block device
        return False
    if (left_st.st_dev, left_st.st_ino) == (right_st.st_dev, right_st.st_ino):
        return True
    if left_st.st_dev == right_st.st_dev:
        left_map = extent_map(left_fd)
        if left_map is not None and left_map == extent_map(right_fd):
            return True
    ranges = _union(_ranges_with_data(left_fd, size), _ranges_with_data(right_fd, size))
    return all(_equal_reads(left_fd, right_fd, start, end) for start, end in ranges)


def prefix_matches(image_fd, source_fd, length):
    """Whether the first ``length`` bytes of both files are equal (for an import with a size)."""
    ranges = _union(_ranges_with_data(image_fd, length), _ranges_with_data(source_fd, length))
    return all(_equal_reads(image_fd, source_fd, start, end) for start, end in ranges)


def all_zero(fd, start, end):
    """Whether bytes [start, end) of ``fd`` read as zeros (holes count as zeros, unread)."""
    for data_start, data_end in data_segments(fd, end, start):
        offset = data_start
        while offset < data_end:
            chunk = os.pread(fd, min(_READ_CHUNK, data_end - offset), offset)
            if chunk.count(0) != len(chunk):
                return False
            if not chunk:
                break
            offset += len(chunk)
    return True


def data_is_absent(fd):
    """True when ``fd`` has no data extent at all (SEEK_DATA finds none)."""
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return True
        raise
    return False


_EXTENT_SHARED = 0x2000


def exclusive_bytes(fd):
    """Bytes of ``fd``'s extents that FIEMAP does not flag as shared (what removing it frees)."""
    total = 0
    start = 0
    while True:
        request = bytearray(_FIEMAP_HEADER.size + _BATCH * _FIEMAP_EXTENT.size)
        _FIEMAP_HEADER.pack_into(request, 0, start, 0xFFFFFFFFFFFFFFFF - start, 0, 0, _BATCH, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, request)
        mapped = _FIEMAP_HEADER.unpack_from(request, 0)[3]
        if mapped == 0:
            return total
        for index in range(mapped):
            fields = _FIEMAP_EXTENT.unpack_from(request, _FIEMAP_HEADER.size + index * _FIEMAP_EXTENT.size)
            logical, length, flags = fields[0], fields[2], fields[5]
            if not flags & _EXTENT_SHARED:
                total += length
            if flags & _EXTENT_LAST:
                return total
            start = logical + length

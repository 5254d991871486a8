# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where each file's bytes lie on disk: FIEMAP on any filesystem.

FIEMAP gives a file's mapped ranges: logical offset, physical address, length
and flags (shared, unwritten, delayed, ...).  Two files that map the same
physical block share it.  On btrfs the physical address is a position inside
an extent, and an extent is freed only whole: there the tree search of
``btrfs_tree`` is the truth, and FIEMAP only the fallback for an unprivileged
reader.

Extents are plain tuples, not objects: a pool holds hundreds of thousands of
them, and only their numbers matter.
"""

from __future__ import annotations

import fcntl
import os
import struct

# _IOWR('f', 11, struct fiemap): one number on every Linux architecture
# (read+write ioctls of fewer than 8 KiB encode alike everywhere).
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1

# fiemap_extent.fe_flags
EXTENT_LAST = 0x1
EXTENT_UNKNOWN = 0x2        # the physical address is not known (yet)
EXTENT_DELALLOC = 0x4       # not written yet: no physical block at all
EXTENT_ENCODED = 0x8        # compressed or otherwise encoded: length is not disk bytes
EXTENT_NOT_ALIGNED = 0x100
EXTENT_DATA_INLINE = 0x200  # stored with the metadata
EXTENT_DATA_TAIL = 0x400
EXTENT_UNWRITTEN = 0x800    # allocated, reads as zeros (fallocate)
EXTENT_SHARED = 0x2000      # another reference to these blocks exists (any file, any place)

# Flags of a mapping whose physical address cannot be compared with another
# file's: such bytes count as the file's own.
EXTENT_NOT_COMPARABLE = EXTENT_UNKNOWN | EXTENT_DELALLOC | EXTENT_ENCODED | EXTENT_DATA_INLINE | EXTENT_DATA_TAIL

_HEADER = struct.Struct("=QQIIII")           # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, reserved
_ENTRY = struct.Struct("=QQQ16xI12x")        # fe_logical, fe_physical, fe_length, (reserved), fe_flags, (reserved)
_ENTRIES_PER_CALL = 1024
_ALL = 0xFFFFFFFFFFFFFFFF

# One mapped range: (logical, physical, length, flags), bytes.
Mapping = tuple[int, int, int, int]
MAP_LOGICAL, MAP_PHYSICAL, MAP_LENGTH, MAP_FLAGS = range(4)


class FiemapReader:
    """Reads files' mappings with one reusable request buffer."""

    def __init__(self) -> None:
        self._request = bytearray(_HEADER.size + _ENTRIES_PER_CALL * _ENTRY.size)
        self._entries = memoryview(self._request)[_HEADER.size:]

    def mappings(self, fd: int, sync: bool = True) -> list[Mapping]:
        """Every mapped range of the open file ``fd``, in logical order; holes are absent.

        ``sync`` writes the file's dirty pages back first (FIEMAP_FLAG_SYNC),
        so that data not yet on disk has its final address.  OSError when
        the filesystem has no FIEMAP (EOPNOTSUPP).
        """
        found: list[Mapping] = []
        start = 0
        flags = FIEMAP_FLAG_SYNC if sync else 0
        while True:
            _HEADER.pack_into(self._request, 0, start, _ALL - start, flags, 0, _ENTRIES_PER_CALL, 0)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, self._request)
            mapped = _HEADER.unpack_from(self._request, 0)[3]
            if mapped == 0:
                return found
            batch = list(_ENTRY.iter_unpack(self._entries[:mapped * _ENTRY.size]))
            found.extend(batch)
            last = batch[-1]
            if last[MAP_FLAGS] & EXTENT_LAST or mapped < _ENTRIES_PER_CALL:
                return found
            start = last[MAP_LOGICAL] + last[MAP_LENGTH]
            flags = 0


def fiemap(fd: int, sync: bool = True) -> list[Mapping]:
    """The mappings of one open file (see :meth:`FiemapReader.mappings`)."""
    return FiemapReader().mappings(fd, sync)


def sync_filesystem(fd: int) -> None:
    """syncfs(2) of the filesystem holding ``fd`` (sync(2) where libc cannot be reached).

    Before FIEMAP: XFS inactivates unlinked files in the background, and until
    then their blocks still count as shared with the files they were cloned
    from; the sync finishes that work (and writes delayed allocations).
    """
    try:
        import ctypes  # noqa: PLC0415  (only here: the rest of the core has no use for it)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) == 0:
            return
        code = ctypes.get_errno()
    except (ImportError, OSError, AttributeError):
        os.sync()
        return
    raise OSError(code, os.strerror(code))


def allocated_bytes(fd: int) -> int:
    """What the file's blocks take on disk by its own count (st_blocks): the fallback without FIEMAP."""
    return os.fstat(fd).st_blocks * 512

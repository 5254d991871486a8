# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A file's inode flags (what ``lsattr`` shows), read with FS_IOC_GETFLAGS.

The one flag the collection asks about is btrfs's No_COW (``chattr +C``): a
reflink between a No_COW file and one without it fails with EINVAL, so the
errno gate falls back to a full copy without a word.  The findings of
reflink_info and the import's warning name it as the cause.
"""

from __future__ import annotations

import fcntl
import platform
import struct

# FS_NOCOW_FL of <linux/fs.h>: btrfs's No_COW attribute.
NOCOW = 0x00800000

# FS_IOC_GETFLAGS is _IOR('f', 1, long): the size field holds sizeof(long), and the "read"
# direction bits sit where the architecture's ioctl encoding puts them (as for FICLONE).
_READ_HIGH = 2 << 30   # asm-generic
_READ_LOW = 2 << 29    # powerpc, mips, sparc
_LOW_FAMILIES = ("ppc", "mips", "sparc")
_LONG = struct.calcsize("l")
# The kernel writes an int, whatever the size field says.
_FLAGS = struct.Struct("=i")


def read_long_request(kind: str, number: int, machine: str | None = None) -> int:
    """The number of the ioctl request _IOR(``kind``, ``number``, long) on ``machine`` (default: this one)."""
    machine = platform.machine() if machine is None else machine
    direction = _READ_LOW if machine.startswith(_LOW_FAMILIES) else _READ_HIGH
    return direction | (_LONG << 16) | (ord(kind) << 8) | number


def getflags_request(machine: str | None = None) -> int:
    """The FS_IOC_GETFLAGS request number of ``machine`` (default: this one)."""
    return read_long_request("f", 1, machine)


def file_flags(fd: int) -> int | None:
    """The inode flags of the open file or directory ``fd``; None where the filesystem has none to tell."""
    buffer = bytearray(max(_LONG, _FLAGS.size))
    try:
        fcntl.ioctl(fd, getflags_request(), buffer)
    except OSError:
        return None   # ENOTTY or EOPNOTSUPP: no inode flags here (tmpfs, a FUSE filesystem)
    flags: int = _FLAGS.unpack_from(buffer)[0]
    return flags


def has_nocow(fd: int) -> bool:
    """Whether ``fd`` carries btrfs's No_COW attribute (chattr +C)."""
    flags = file_flags(fd)
    return flags is not None and bool(flags & NOCOW)

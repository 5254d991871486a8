# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which file an inode number names: the number with the inode's generation (FS_IOC_GETVERSION).

A file that is removed frees its inode number, and ext4 gives it to the next file made:
measured on a 64 MiB ext4, four files made and removed in turn in one directory all got
inode 12, with four different generations.  XFS may reuse a number too, also with a new
(random) generation; btrfs does not reuse numbers, and reports the transaction that made the
inode.  A record of a file by its inode number alone takes such a new file for the old one;
the number and the generation together tell them apart.
"""

from __future__ import annotations

import fcntl
import os
import struct

from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.file_flags import read_long_request

_LONG = struct.calcsize("l")
# The kernel writes an int (the inode's i_generation), whatever the size field says.
_GENERATION = struct.Struct("=I")


def inode_generation(fd: int) -> int | None:
    """The generation of the open file ``fd``'s inode; None where the filesystem does not tell it."""
    buffer = bytearray(max(_LONG, _GENERATION.size))
    try:
        fcntl.ioctl(fd, read_long_request("v", 1), buffer)
    except OSError:
        return None   # ENOTTY or EOPNOTSUPP: no generation here (tmpfs, a FUSE filesystem)
    generation: int = _GENERATION.unpack_from(buffer)[0]
    return generation


def generation_of(directory: Directory, name: str) -> int | None:
    """The generation of the regular file ``name`` of ``directory``; None if it is gone or cannot be told."""
    try:
        fd = directory.open_file(name, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        return inode_generation(fd)
    finally:
        os.close(fd)

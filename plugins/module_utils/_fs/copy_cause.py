# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Why a clone had to be a copy, and whether that was to be expected.

The errno gate (clone.py) copies where FICLONE says a reflink is not possible
here.  Two causes are by design: the source lies on another file system
(EXDEV), or the file system cannot share blocks at all (EOPNOTSUPP: ext4, XFS
made without reflink=1).  Any other refusal between two files of one file
system that shares blocks is a surprise the user should hear about, since
every such clone silently costs the full data: btrfs refuses a reflink between
a file with its No_COW attribute (``chattr +C``; a new file gets it from its
directory) and one without (EINVAL), or between files with and without data
checksums (written under the ``nodatasum``/``nodatacow`` mount options, which
``lsattr`` does not show); kernels before 5.18 refuse a reflink across two
mounts of one file system (EXDEV).  The VFS checks the file system first, so
an EINVAL between two files of one file system comes from a file system that
implements sharing.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import platform
from collections.abc import Callable

from ansible_collections.dom0.reflink.plugins.module_utils._fs.file_flags import has_nocow

# BTRFS_IOC_FS_INFO is _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args), 1024 bytes, the fsid at offset 16.
# Only btrfs answers it, without privileges; it names the file system whatever subvolume a file lies in.
# The "read" direction bits sit where the architecture's ioctl encoding puts them (as for FICLONE).
_FS_INFO_SIZE = 1024
_FSID = slice(16, 32)


def _fs_info_request(machine: str | None = None) -> int:
    machine = platform.machine() if machine is None else machine
    direction = (2 << 29) if machine.startswith(("ppc", "mips", "sparc")) else (2 << 30)
    return direction | (_FS_INFO_SIZE << 16) | (0x94 << 8) | 31

EXPECTED_ERRNOS = frozenset((errno.EOPNOTSUPP, errno.ENOTSUP))

_NOCOW_CLEARS_WITH_A_COPY = (
    "btrfs cannot clear the attribute of a file that holds data, so the file keeps it until it is gone (an old "
    "revision once it is pruned); to end the copies now, copy it once into a file without it (cp --reflink=never "
    "into a directory without +C) and use that copy (for a volume's image: import the copy with "
    "dom0.reflink.reflink_import)")


@dataclasses.dataclass(frozen=True)
class CopyCause:
    """Why a clone from a source into a new file is (or was) a copy.

    ``expected``: no reflink was possible by design (another file system, or
    one that cannot share blocks), so a copy is no news; otherwise a reflink
    was expected and ``reason`` names the likely cause.  ``way_out``: what
    makes the next one a reflink.
    """

    expected: bool
    reason: str
    way_out: str
    errno: int | None = None

    def warning(self, what: str) -> str:
        """The warning of an unexpected copy done (or planned) by the step ``what``."""
        return ("%s copied the data (a full, sparse copy) where a reflink was expected: the file system shares "
                "blocks and both files are on it, yet the reflink was refused (%s); likely cause: %s; way out: %s"
                % (what, errno.errorcode.get(self.errno or 0, self.errno), self.reason, self.way_out))


def btrfs_fsid(fd: int) -> bytes | None:
    """The UUID of the btrfs holding ``fd``, or None where it is not on btrfs."""
    args = bytearray(_FS_INFO_SIZE)
    try:
        fcntl.ioctl(fd, _fs_info_request(), args)
    except OSError:
        return None
    return bytes(args[_FSID])


def same_filesystem(fd: int, other_fd: int) -> bool:
    """Whether two open files lie on one file system (each btrfs subvolume has a device number of its own)."""
    if os.fstat(fd).st_dev == os.fstat(other_fd).st_dev:
        return True
    fsid = btrfs_fsid(fd)
    return fsid is not None and fsid == btrfs_fsid(other_fd)


def other_filesystem(source: str, destination: str) -> CopyCause:
    return CopyCause(True, "%s is on another file system than %s" % (source, destination),
                     "put the source on the pool's file system, where that one shares blocks (btrfs, XFS made with "
                     "reflink=1): a reflink there costs no space", errno.EXDEV)


def no_sharing(destination: str) -> CopyCause:
    return CopyCause(True, "the file system of %s cannot share blocks (ext4, or XFS made without reflink=1)"
                     % destination, "a pool on btrfs, or on XFS made with reflink=1, shares blocks: a reflink there "
                     "costs no space", errno.EOPNOTSUPP)


def nocow_mismatch(src_fd: int, nocow_destination: bool, source: str, destination: str,
                   dst_dir_fd: int | None) -> CopyCause | None:
    """The cause when exactly one side carries No_COW (``nocow_destination``: the new file's flag), else None."""
    if has_nocow(src_fd) == nocow_destination:
        return None
    directory = os.path.dirname(destination) or "."
    if nocow_destination:
        if dst_dir_fd is None or has_nocow(dst_dir_fd):
            return CopyCause(False, "the directory %s has btrfs's No_COW attribute (chattr +C, lsattr shows C), "
                                    "which every new file in it gets, and the source %s has not; btrfs refuses a "
                                    "reflink between a No_COW file and one without" % (directory, source),
                             "chattr -C %s, then run the task again (new files then lack it)" % directory, errno.EINVAL)
        return CopyCause(False, "%s has btrfs's No_COW attribute (chattr +C) and the source %s has not; btrfs "
                                "refuses a reflink between a No_COW file and one without" % (destination, source),
                         "chattr -C the directory that gives it, then run the task again", errno.EINVAL)
    return CopyCause(False, "the source %s has btrfs's No_COW attribute (chattr +C, lsattr shows C) and the new "
                            "file %s has not; btrfs refuses a reflink between a No_COW file and one without"
                     % (source, destination), _NOCOW_CLEARS_WITH_A_COPY, errno.EINVAL)


def copy_cause(src_fd: int, dst_fd: int, code: int | None, source: str = "the source",
               destination: str = "the destination", dst_dir_fd: int | None = None) -> CopyCause:
    """Why FICLONE from ``src_fd`` into the new, empty ``dst_fd`` failed with ``code`` (an errno of the gate).

    ``dst_dir_fd``: the destination's directory, to tell whether the new file
    got No_COW from it.  Reads the files' flags and file systems only.
    """
    if not same_filesystem(src_fd, dst_fd):
        return other_filesystem(source, destination)
    if code in EXPECTED_ERRNOS:
        return no_sharing(destination)
    nocow = nocow_mismatch(src_fd, has_nocow(dst_fd), source, destination, dst_dir_fd)
    if nocow is not None:
        return dataclasses.replace(nocow, errno=code)
    if code == errno.EXDEV:
        return CopyCause(False, "%s and %s are on two mounts of the same file system, and kernels before 5.18 "
                                "refuse a reflink across mounts" % (source, destination),
                         "give the source's path below the pool's own mount", code)
    return CopyCause(False, "btrfs refuses a reflink between a file with data checksums and one without (a file "
                            "written while the file system was mounted with nodatasum or nodatacow, which lsattr "
                            "does not show), XFS one involving a realtime or DAX file",
                     "copy the source once to a new file on the pool's file system and use that copy", code)


def predict_copy(src_fd: int, dir_fd: int, shares_blocks: Callable[[], bool | None], source: str,
                 destination: str) -> CopyCause | None:
    """Why a clone from ``src_fd`` into a new file of the directory ``dir_fd`` will be a copy, where that is known.

    Without trying it: another file system, one that cannot share blocks
    (``shares_blocks()`` False: a probe, asked only for a source on the same
    file system), or a No_COW attribute on one side only (a new file gets its
    directory's).  None: a reflink, or it cannot be told before the clone.
    """
    if not same_filesystem(src_fd, dir_fd):
        return other_filesystem(source, destination)
    if shares_blocks() is False:
        return no_sharing(destination)
    return nocow_mismatch(src_fd, has_nocow(dir_fd), source, destination, dir_fd)

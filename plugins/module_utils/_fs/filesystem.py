# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The filesystem a pool is on: its type (from the mount table), its size and usage (statvfs), reflinks or not."""

from __future__ import annotations

import errno
import os

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import CloneError
from ansible_collections.dom0.reflink.plugins.module_utils._fs.clone import COPY, FALLBACK_ERRNOS, REFLINK, ficlone
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory

_MOUNTINFO = "/proc/self/mountinfo"


def filesystem_type(path: str) -> str:
    """Type of the filesystem holding ``path`` (from the longest matching mount point)."""
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        with open(_MOUNTINFO, encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                left, _separator, right = line.partition(" - ")
                mount_point = left.split()[4].replace("\\040", " ")
                inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, fstype = mount_point, right.split()[0]
    except (OSError, IndexError):
        pass
    return fstype


def filesystem_report(path: str, reflink: bool | None) -> dict[str, object]:
    """The ``pool`` dict: path, filesystem type, reflink support, size and usage in bytes."""
    st = os.statvfs(path)
    return {
        "path": path,
        "fstype": filesystem_type(path),
        "reflink": reflink,
        "size": st.f_blocks * st.f_frsize,
        "usage": (st.f_blocks - st.f_bfree) * st.f_frsize,
    }


def probe_reflink(directory: Directory) -> bool:
    """Whether files in ``directory`` (a Directory) can be reflinked.

    Two unnamed files (named tempfiles where O_TMPFILE is missing, removed
    again); the source gets a few bytes, written out before the ioctl, because
    some filesystems refuse to clone data still in the page cache only.
    Errors outside the errno gate are raised.
    """
    created = []

    def new_file() -> int:
        fd, name = directory.open_unnamed(".reflink-probe")
        if name is not None:
            created.append(name)
        return fd

    src_fd = dst_fd = None
    try:
        src_fd = new_file()
        dst_fd = new_file()
        os.write(src_fd, b"dom0.reflink probe\n" * 256)
        os.fsync(src_fd)
        try:
            ficlone(dst_fd, src_fd)
        except OSError as exc:
            if exc.errno in FALLBACK_ERRNOS:
                return False
            raise CloneError("reflink probe in %s failed: %s" % (directory.path, exc.strerror), exc.errno) from None
        return True
    finally:
        for fd in (src_fd, dst_fd):
            if fd is not None:
                os.close(fd)
        for name in created:
            directory.unlink(name, sync=False, missing_ok=True)


# File systems that cannot share blocks at all (FICLONE fails with EOPNOTSUPP on them).
NO_SHARING = frozenset(("ext2", "ext3", "ext4", "tmpfs", "vfat", "exfat", "ntfs3"))


def shares_blocks(directory: Directory) -> bool | None:
    """Whether the file system of ``directory`` can share blocks, from its type: True, False, or None (unknown).

    Told without any clone: btrfs always can, the types of NO_SHARING never
    can; XFS can only when made with reflink=1, which its type does not say,
    and other types may or may not (None: the clone itself finds out).
    """
    fstype = filesystem_type(directory.path)
    if fstype == "btrfs":
        return True
    return False if fstype in NO_SHARING else None


def clone_probe(directory: Directory | None, src_fd: int | None = None) -> tuple[str | None, int | None]:
    """How a clone into a new file of ``directory`` would go, for a plan: ``(REFLINK, None)``, ``(COPY, errno)`` or ``(None, None)``.

    From the open file ``src_fd``, or (None) between two files of the directory (probe_reflink).
    COPY: the errno gate says a reflink is not possible (errno says why), so a copy is needed.
    None: it cannot be told here (a pool that does not exist yet, no O_TMPFILE, a full file
    system, an error the real run reports).  A source is cloned into an unnamed file (O_TMPFILE)
    that vanishes when closed: nothing shows in the directory, nothing is written to the source.
    """
    if directory is None or directory.fd is None:
        return None, None
    if src_fd is None:
        try:
            return (REFLINK, None) if probe_reflink(directory) else (COPY, errno.EOPNOTSUPP)
        except (OSError, CloneError):
            return None, None
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=directory.fd)
    except (OSError, AttributeError):
        return None, None
    try:
        ficlone(fd, src_fd)
    except OSError as exc:
        return (COPY, exc.errno) if exc.errno in FALLBACK_ERRNOS else (None, None)
    except CloneError:   # FICLONE's number is unknown here: the real run says so
        return None, None
    finally:
        os.close(fd)
    return REFLINK, None

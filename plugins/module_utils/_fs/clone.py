# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cloning with FICLONE, the errno gate, and the sparse copy it may fall back to.

The errno gate: only EBADF, EINVAL, EOPNOTSUPP (= ENOTSUP on Linux) and EXDEV
mean "a reflink is not possible between these two files" (see ioctl_ficlone(2)).
Any other errno (EIO, ENOSPC, EPERM, ENOTTY, EAGAIN, ...) is a real error of the
system or the storage and is raised: a fallback copy could mask it.

Where the gate decides to copy, the copy is checked first against the free
space: data that cannot fit is refused before a byte is written (the message
names both figures, why no reflink was possible and the way out; see
copy_cause.py), rather than written until ENOSPC.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import platform
import stat
from collections.abc import Callable, Iterator

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import CloneError, NoRoomForCopy
from ansible_collections.dom0.reflink.plugins.module_utils._base.units import format_size
from ansible_collections.dom0.reflink.plugins.module_utils._fs.copy_cause import CopyCause, copy_cause
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory

FALLBACK_ERRNOS = frozenset((errno.EBADF, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV))

# What to do when a reflink is not possible and fallback: never forbids the copy (a rerun fails the same way).
NO_REFLINK_WAY_OUT = ("a rerun fails the same way: put the source on the pool's file system (one that shares blocks: "
                      "btrfs, or XFS with reflink=1), or set fallback: errno to allow a sparse copy")

# How the result of a fill came about.
REFLINK = "reflink"
COPY = "copy"
EMPTY = "empty"

# FICLONE is _IOW(0x94, 9, int).  Architectures differ in where the "write"
# direction bit sits; the value for each family is what <linux/fs.h> gives.
_FICLONE_IOC_WRITE_HIGH = 0x40049409   # asm-generic encoding
_FICLONE_IOC_WRITE_LOW = 0x80049409    # powerpc, mips, sparc encoding
_FICLONE_BY_MACHINE = {
    "x86_64": _FICLONE_IOC_WRITE_HIGH, "i386": _FICLONE_IOC_WRITE_HIGH, "i686": _FICLONE_IOC_WRITE_HIGH,
    "aarch64": _FICLONE_IOC_WRITE_HIGH, "arm64": _FICLONE_IOC_WRITE_HIGH,
    "riscv64": _FICLONE_IOC_WRITE_HIGH, "s390x": _FICLONE_IOC_WRITE_HIGH,
    "loongarch64": _FICLONE_IOC_WRITE_HIGH,
    "ppc": _FICLONE_IOC_WRITE_LOW, "ppc64": _FICLONE_IOC_WRITE_LOW, "ppc64le": _FICLONE_IOC_WRITE_LOW,
    "mips": _FICLONE_IOC_WRITE_LOW, "mips64": _FICLONE_IOC_WRITE_LOW,
    "sparc": _FICLONE_IOC_WRITE_LOW, "sparc64": _FICLONE_IOC_WRITE_LOW,
}

# The fallback copy reads data in chunks of this size and leaves a hole where
# a whole chunk is zero.  Detecting 4 KiB zero blocks as cp does fragments the
# image into tens of thousands of extents for no real saving (see
# docs/performance.md); 1 MiB keeps the saving and the layout.
COPY_CHUNK = 1024 * 1024
_ZERO_CHUNK = bytes(COPY_CHUNK)
# Data is written in pieces of this size, as cp does: on the kernels measured,
# single 1 MiB or 256 KiB writes into ext4 were 2-5x slower to write and to
# write back than 128 KiB ones (docs/performance.md, fix E).
WRITE_PIECE = 128 * 1024

# Indirection that the fault-injection tests replace: the lowest level at
# which the ioctl can fail on demand from within the process.
_ioctl = fcntl.ioctl


def file_size(fd: int) -> int:
    """Size of an open regular file or block device (whose st_size is 0)."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    return st.st_size


def ficlone_request() -> int:
    """The FICLONE ioctl request number for this machine; CloneError if unknown."""
    value: int | None = getattr(fcntl, "FICLONE", None)
    if value is not None:
        return value
    machine = platform.machine()
    if machine in _FICLONE_BY_MACHINE:
        return _FICLONE_BY_MACHINE[machine]
    if machine.startswith("arm"):  # armv7l, armv8l, ...
        return _FICLONE_IOC_WRITE_HIGH
    raise CloneError(
        "FICLONE's ioctl number is not known for the architecture %r; "
        "use Python 3.12 or newer, whose fcntl module provides it" % machine)


@functools.cache
def _ficlone_number() -> int:
    # Looked up once per process: with it, a clone is one syscall and no Python to speak of.
    return ficlone_request()


def ficlone(dst_fd: int, src_fd: int) -> None:
    """Make ``dst_fd`` share all of ``src_fd``'s extents (raises OSError as the ioctl does)."""
    _ioctl(dst_fd, _ficlone_number(), src_fd)


def data_segments(fd: int, end: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """The ``(start, end)`` ranges of ``fd`` below ``end`` that hold data, via SEEK_DATA/SEEK_HOLE.

    A file (or block device) that cannot say where its holes are is one data range.
    """
    position = start
    while position < end:
        try:
            data_start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole up to the end of the file
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield position, end
                return
            raise
        if data_start >= end:
            return
        data_end = min(os.lseek(fd, data_start, os.SEEK_HOLE), end)
        yield data_start, data_end
        position = data_end


def sparse_copy(src_fd: int, dst_fd: int, length: int) -> int:
    """Copy the first ``length`` bytes of ``src_fd`` into the empty ``dst_fd``, sparsely.

    Only data segments (SEEK_DATA/SEEK_HOLE) are read; within them a chunk that
    is entirely zero is not written, so it stays a hole.  ``dst_fd`` gets its
    final size first: XFS otherwise preallocates far beyond what is written.
    Returns the number of bytes written.
    """
    os.ftruncate(dst_fd, length)
    view = memoryview(bytearray(COPY_CHUNK))
    written = 0
    for data_start, data_end in data_segments(src_fd, length):
        written += _copy_segment(src_fd, dst_fd, data_start, data_end, view)
    return written


def _copy_segment(src_fd: int, dst_fd: int, start: int, end: int, view: memoryview) -> int:
    written = 0
    offset = start
    while offset < end:
        # Chunks are aligned to COPY_CHUNK in the file, so skipped chunks leave aligned holes.
        want = min(COPY_CHUNK - offset % COPY_CHUNK, end - offset)
        got = os.preadv(src_fd, [view[:want]], offset)
        if got == 0:  # the source shrank under us; the rest stays a hole
            break
        chunk = view[:got]
        if not _ZERO_CHUNK.startswith(chunk):  # memcmp; comparing memoryviews goes byte by byte
            done = 0
            while done < got:
                done += os.pwritev(dst_fd, [chunk[done:done + WRITE_PIECE]], offset + done)
            written += got
        offset += got
    return written


def copy_need(src_fd: int, length: int) -> int | None:
    """At most how many bytes of data a sparse copy of the first ``length`` bytes of ``src_fd`` writes.

    The bytes in its data ranges (SEEK_DATA/SEEK_HOLE), and no more than the
    file's allocated bytes (where the file system cannot tell its holes).
    All-zero chunks in them are not written, so this may overstate.  None for
    a block device: its zeros are found only by reading it all.
    """
    st = os.fstat(src_fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    data = sum(end - start for start, end in data_segments(src_fd, length))
    return min(data, st.st_blocks * 512)


def free_bytes(fd: int) -> int:
    """The free space of the file system of ``fd`` that an unprivileged writer may use (statvfs)."""
    st = os.fstatvfs(fd)
    return st.f_bavail * st.f_frsize


def require_room_for_copy(src_fd: int, dst_fd: int, length: int, cause: CopyCause, describe: tuple[str, str],
                          planning: bool = False) -> None:
    """Refuse (NoRoomForCopy) a copy of ``length`` bytes of ``src_fd`` whose data does not fit where ``dst_fd`` is.

    ``dst_fd``: the new file or its directory; ``cause``: why it is a copy;
    ``planning``: refused while a task plans, before it changed anything (the
    message then holds the way out itself).
    """
    need = copy_need(src_fd, length)
    free = free_bytes(dst_fd)
    if need is None or need <= free:
        return
    source, destination = describe
    message = ("no room for a copy of %s: %s, so its data is copied into %s, and the copy needs %d bytes (%s) where "
               "the file system has %d bytes (%s) free; %s"
               % (source, cause.reason, destination, need, format_size(need), free, format_size(free),
                  "nothing was changed" if planning else "nothing was written"))
    way_out = ("%s; or free at least %d bytes (%s) on that file system (dom0.reflink.reflink_gc removes old revisions "
               "and leftovers) and run the task again; all-zero blocks of the source count unless they are holes "
               "(fallocate --dig-holes makes them holes)" % (cause.way_out, need - free, format_size(need - free)))
    if planning:
        raise NoRoomForCopy("%s; way out: %s" % (message, way_out), need, free, None)
    raise NoRoomForCopy(message, need, free, way_out)


def fill_from(dst_fd: int, src_fd: int, *, dst_size: int | None = None, allow_copy: bool = True,
              describe: tuple[str, str] | None = None, dst_dir_fd: int | None = None,
              copied: Callable[[CopyCause], object] | None = None) -> str:
    """Fill the new, empty file ``dst_fd`` with the content of ``src_fd``.

    Clone when the filesystem can (FICLONE); where the errno gate allows, copy
    sparsely instead, unless ``allow_copy`` is false, or the data does not fit
    in the free space (NoRoomForCopy, before anything is written).
    ``dst_size`` None keeps the source's size, 0 gives an empty file without
    touching the source, any other value truncates or extends the result.
    ``describe`` is a ``(source, destination)`` pair of paths for messages;
    ``dst_dir_fd`` the destination's directory (to name a No_COW attribute
    the new file got from it); ``copied(cause)`` is called with the CopyCause
    before a copy.  Returns REFLINK, COPY or EMPTY.
    """
    if dst_size == 0:
        return EMPTY
    try:
        ficlone(dst_fd, src_fd)
    except OSError as exc:
        source, destination = describe or ("source", "destination")
        if exc.errno not in FALLBACK_ERRNOS:
            raise CloneError(
                "cloning %s to %s failed: %s (errno %s); this is not a 'reflink not supported' "
                "error, so no copy was attempted" % (source, destination, exc.strerror,
                                                     _errno_name(exc.errno)),
                exc.errno) from None
        if not allow_copy:
            raise CloneError(
                "cannot reflink %s to %s (%s) and copying is not allowed (fallback: never)"
                % (source, destination, _errno_name(exc.errno)), exc.errno, NO_REFLINK_WAY_OUT) from None
        src_size = file_size(src_fd)
        length = src_size if dst_size is None else min(src_size, dst_size)
        cause = copy_cause(src_fd, dst_fd, exc.errno, source, destination, dst_dir_fd)
        require_room_for_copy(src_fd, dst_fd, length, cause, (source, destination))
        if copied is not None:
            copied(cause)
        sparse_copy(src_fd, dst_fd, length)
        how = COPY
    else:
        how = REFLINK
    # A clone has the source's size, a copy was truncated to it; only a size asked for
    # needs a look at the result (not at the source: the clone path stays one ioctl).
    if dst_size is not None and os.fstat(dst_fd).st_size != dst_size:
        os.ftruncate(dst_fd, dst_size)
    return how


def _errno_name(number: int | None) -> object:
    """``EIO`` for 5: the symbolic name of an errno, for messages (the number where it has none)."""
    return errno.errorcode.get(number, number) if number is not None else None


def copy_times(src_fd: int, dst_fd: int) -> None:
    """Give ``dst_fd`` the access and modification times of ``src_fd`` (nanoseconds)."""
    st = os.fstat(src_fd)
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def clone_file(src_dir: Directory, src_name: str, dst_dir: Directory, dst_name: str, *, dst_size: int | None = None,
               copy_mtime: bool = False, allow_copy: bool = True, finish: Callable[[int], object] | None = None,
               copied: Callable[[CopyCause], object] | None = None) -> str:
    """Make ``dst_dir/dst_name`` a new inode with the content of ``src_dir/src_name``.

    The destination is written by :meth:`Directory.write_new_file` (atomic,
    durable, 0600).  ``finish(dst_fd)``, if given, runs once the data is in,
    before the flush and the rename (a fixed mtime, an extended attribute).
    ``copied`` as for fill_from.  Returns REFLINK, COPY or EMPTY.
    """
    src_fd = src_dir.open_file(src_name, os.O_RDONLY)
    try:
        def fill(dst_fd: int) -> str:
            how = fill_from(dst_fd, src_fd, dst_size=dst_size, allow_copy=allow_copy,
                            describe=(src_dir.join(src_name), dst_dir.join(dst_name)), dst_dir_fd=dst_dir.fd,
                            copied=copied)
            if copy_mtime:
                copy_times(src_fd, dst_fd)
            if finish is not None:
                finish(dst_fd)
            return how
        return dst_dir.write_new_file(dst_name, fill)
    finally:
        os.close(src_fd)

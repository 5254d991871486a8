# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""FIDEDUPERANGE: let the kernel make equal ranges of two files share one copy.

The kernel locks both ranges, compares them byte for byte and remaps the
destination onto the source's blocks only if they are equal; otherwise it
changes nothing and says "differs".  The destination's content therefore
never changes, whatever races with us, and (measured on btrfs and XFS, kernel
6.18) neither do its mtime and ctime.  As root a destination opened read-only
is accepted (otherwise it must be open for writing or owned by the caller).

What the kernel wants, measured on btrfs and XFS:

- offsets a multiple of the file system's block size, else the destination's
  status is -EINVAL (so is a range past the destination's end); a length that
  is not a multiple is reported as done in full but only its whole blocks are
  remapped (6000 bytes at 4096: one block), unless the range ends at the end
  of both files.  Callers pass whole blocks.
- one call may cover hundreds of MiB (300 MiB in one call worked on both; the
  kernel splits internally) but it holds both ranges locked meanwhile, so
  :func:`dedupe_fully` asks for at most ``MAX_CALL_BYTES`` at a time.
- at most ``MAX_DESTINATIONS`` (127) destinations per call: the argument must
  fit in one page (128 failed the whole call with ENOMEM).
- a file system without the operation (ext4, tmpfs) fails the whole call with
  EOPNOTSUPP; EINVAL of the whole call means the same for our purposes.
- deduping ranges that already share the same blocks costs nothing on btrfs
  but a lot on XFS (300 MiB took 1.8 s): callers skip ranges that FIEMAP
  shows as already shared.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import ReflinkError

# _IOWR(0x94, 54, struct file_dedupe_range): with both direction bits set the
# number is the same in the asm-generic and the powerpc/mips/sparc encodings.
FIDEDUPERANGE = 0xC0189436

# Per-destination status (struct file_dedupe_range_info.status); a negative
# value is -errno for that destination alone.
FILE_DEDUPE_RANGE_SAME = 0
FILE_DEDUPE_RANGE_DIFFERS = 1

_HEADER = struct.Struct("=QQHHI")   # src_offset, src_length, dest_count, reserved1, reserved2
_INFO = struct.Struct("=qQQiI")     # dest_fd, dest_offset, bytes_deduped, status, reserved
MAX_DESTINATIONS = (4096 - _HEADER.size) // _INFO.size
MAX_CALL_BYTES = 16 * 1024 * 1024

# Errnos (of the call, or as a destination's status) that mean "this file
# system, or this pair of files, cannot dedupe": not a fault of the data.
UNSUPPORTED_ERRNOS = frozenset((errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOTTY, errno.EXDEV))

# Indirection that fault-injection tests replace (the lowest level the ioctl can fail at).
_ioctl: Callable[[int, int, bytearray], object] = fcntl.ioctl


class DedupeUnsupported(ReflinkError):
    """The file system (or this pair of files) does not support FIDEDUPERANGE."""


@dataclass(frozen=True)
class Destination:
    """One destination of a dedupe: an open file and the offset its range starts at."""

    fd: int
    offset: int


@dataclass(frozen=True)
class DestinationResult:
    """What the kernel did to one destination.

    ``status``: FILE_DEDUPE_RANGE_SAME (``deduped`` bytes now share the
    source's blocks), FILE_DEDUPE_RANGE_DIFFERS (nothing changed: the bytes
    differ), or a negative errno (nothing changed).
    """

    destination: Destination
    deduped: int
    status: int

    @property
    def same(self) -> bool:
        return self.status == FILE_DEDUPE_RANGE_SAME

    @property
    def differs(self) -> bool:
        return self.status == FILE_DEDUPE_RANGE_DIFFERS

    @property
    def unsupported(self) -> bool:
        return self.status < 0 and -self.status in UNSUPPORTED_ERRNOS

    def describe(self) -> str:
        if self.same:
            return "deduped %d bytes" % self.deduped
        if self.differs:
            return "the data differs"
        return os.strerror(-self.status)


def dedupe_range(src_fd: int, src_offset: int, length: int,
                 destinations: Sequence[Destination]) -> list[DestinationResult]:
    """One FIDEDUPERANGE call: ``length`` bytes of ``src_fd`` at ``src_offset`` into each destination.

    A destination may come back with fewer bytes done than asked (the kernel
    may stop early); :func:`dedupe_fully` goes on from there.  Raises
    DedupeUnsupported when the call as a whole fails with an errno of
    UNSUPPORTED_ERRNOS, OSError for any other.
    """
    if not 0 < len(destinations) <= MAX_DESTINATIONS:
        raise ValueError("a dedupe call takes 1 to %d destinations, not %d" % (MAX_DESTINATIONS, len(destinations)))
    request = bytearray(_HEADER.size + _INFO.size * len(destinations))
    _HEADER.pack_into(request, 0, src_offset, length, len(destinations), 0, 0)
    for index, destination in enumerate(destinations):
        _INFO.pack_into(request, _HEADER.size + index * _INFO.size, destination.fd, destination.offset, 0, 0, 0)
    try:
        _ioctl(src_fd, FIDEDUPERANGE, request)
    except OSError as exc:
        if exc.errno in UNSUPPORTED_ERRNOS:
            raise DedupeUnsupported("FIDEDUPERANGE is not supported here: %s" % exc.strerror) from None
        raise
    results = []
    for index, destination in enumerate(destinations):
        _fd, _offset, deduped, status, _reserved = _INFO.unpack_from(request, _HEADER.size + index * _INFO.size)
        results.append(DestinationResult(destination, deduped, status))
    return results


def dedupe_fully(src_fd: int, src_offset: int, length: int,
                 destinations: Sequence[Destination]) -> list[DestinationResult]:
    """Dedupe the whole range into every destination, in as many calls as it takes.

    Calls cover at most MAX_CALL_BYTES and MAX_DESTINATIONS.  A destination
    that differs or fails is dropped from the later calls: its result says
    how many bytes (from the start of the range) were deduped before that and
    the status that stopped it.  The results are in the order of
    ``destinations``.
    """
    done = [0] * len(destinations)
    status = [FILE_DEDUPE_RANGE_SAME] * len(destinations)
    active = list(range(len(destinations)))
    while active:
        # Destinations of one call share the source range: one call per position reached.
        by_position: dict[int, list[int]] = {}
        for index in active:
            by_position.setdefault(done[index], []).append(index)
        active = []
        for position, members in sorted(by_position.items()):
            step = min(MAX_CALL_BYTES, length - position)
            for first in range(0, len(members), MAX_DESTINATIONS):
                batch = members[first:first + MAX_DESTINATIONS]
                results = dedupe_range(src_fd, src_offset + position, step,
                                       [Destination(destinations[index].fd, destinations[index].offset + position)
                                        for index in batch])
                for index, result in zip(batch, results, strict=True):
                    if not result.same:
                        status[index] = result.status
                    elif result.deduped > 0:
                        done[index] += min(result.deduped, step)
                        if done[index] < length:
                            active.append(index)
    return [DestinationResult(destination, done[index], status[index])
            for index, destination in enumerate(destinations)]


def probe_dedupe(dir_fd: int, block_size: int = 4096) -> bool:
    """Whether files in the directory ``dir_fd`` can be deduped: two unnamed files with one equal block.

    Nothing is left behind (O_TMPFILE).  False where the file system refuses
    (EOPNOTSUPP, EINVAL, ...) or has no O_TMPFILE; other errors are raised.
    """
    flags = getattr(os, "O_TMPFILE", 0)
    if not flags:
        return False
    fds: list[int] = []
    try:
        for _index in range(2):
            try:
                fds.append(os.open(".", flags | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dir_fd))
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    return False
                raise
            os.write(fds[-1], b"dom0.reflink dedupe probe\n".ljust(block_size, b"."))
            os.fsync(fds[-1])
        try:
            result = dedupe_range(fds[0], 0, block_size, [Destination(fds[1], 0)])[0]
        except DedupeUnsupported:
            return False
        return result.same
    finally:
        for fd in fds:
            os.close(fd)

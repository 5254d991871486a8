# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading ahead for the kernel's comparison, on a thread of its own.

FIDEDUPERANGE compares the two ranges in the page cache and reads missing
pages one at a time, without readahead: on a cold cache a dedupe of a
restored pool then waited on thousands of small reads.  The walk therefore
names the ranges it will dedupe (and the blocks it will sample) a chunk or
two ahead, and this thread asks the kernel to read them
(POSIX_FADV_WILLNEED), while the main thread's dedupe runs on the other
core.  The kernel reads at most one readahead window per request (128 KiB
on many disks), so ranges are asked for in such pieces; each request still
costs tens of microseconds (pages are allocated and the reads queued), which
is why it is not done on the main thread, and why the pieces are as large as
the file system's readahead window allows (sysfs says: 4 MiB for btrfs, the
block device's ``read_ahead_kb`` elsewhere; 128 KiB when it cannot be told).

A hint only: nothing here changes data, and an error is ignored (the
dedupe then reads the pages itself).  :meth:`Prefetcher.close` waits for the
thread, so that no request can reach a descriptor the caller closes later.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import queue
import threading
import uuid

PIECE = 128 * 1024
MAX_PIECE = 16 * 1024 * 1024
# BTRFS_IOC_FS_INFO, _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args): 1 KiB, the fsid at offset 16.
_BTRFS_IOC_FS_INFO = 0x8400941F


def _sysfs_kib(path: str) -> int | None:
    # os.read, not open(): Python's file layer asks isatty() (an ioctl) of every file it opens.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return int(os.read(fd, 64).strip())
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=64)
def _window_of(device: int, fd_for_btrfs: int) -> int:
    major, minor = os.major(device), os.minor(device)
    found = None
    if major:   # a block device: its bdi is the whole disk's (a partition has none of its own)
        base = "/sys/dev/block/%d:%d" % (major, minor)
        if os.path.exists(base + "/partition"):
            found = _sysfs_kib(os.path.realpath(base + "/..") + "/queue/read_ahead_kb")
        else:
            found = _sysfs_kib("/sys/class/bdi/%d:%d/read_ahead_kb" % (major, minor))
    else:       # btrfs gives its files an anonymous device; its bdi is under its fsid
        request = bytearray(1024)
        try:
            fcntl.ioctl(fd_for_btrfs, _BTRFS_IOC_FS_INFO, request)
            found = _sysfs_kib("/sys/fs/btrfs/%s/bdi/read_ahead_kb" % uuid.UUID(bytes=bytes(request[16:32])))
        except OSError:
            found = None
    return min(MAX_PIECE, max(PIECE, (found or 0) * 1024))


def readahead_window(fd: int) -> int:
    """The most one POSIX_FADV_WILLNEED on ``fd`` reads (the file system's readahead window), at least PIECE."""
    return _window_of(os.fstat(fd).st_dev, fd)


class Prefetcher:
    """Asks the kernel to read ranges into the page cache, in the order given, on a background thread.

    :meth:`want` returns a ticket; :meth:`wait` returns once the request of
    that ticket (and every earlier one) was made.  The walk waits for a
    chunk's requests before its dedupe: on XFS the dedupe holds the files'
    invalidate lock, which readahead needs too, so a request still running
    would stall and leave the kernel's comparison to read page by page.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[int, int, int] | None] = queue.SimpleQueue()
        self._done = threading.Condition()
        self._finished = 0
        self._issued = 0
        self._thread = threading.Thread(target=self._run, name="dedupe-prefetch", daemon=True)
        self._thread.start()

    def want(self, fd: int, start: int, length: int) -> int:
        self._queue.put((fd, start, length))
        self._issued += 1
        return self._issued

    def wait(self, ticket: int) -> None:
        with self._done:
            self._done.wait_for(lambda: self._finished >= ticket)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fd, start, length = item
            # A hint only; and the walk must never wait for a request that died.
            with contextlib.suppress(Exception):
                piece = readahead_window(fd)
                for position in range(start, start + length, piece):
                    os.posix_fadvise(fd, position, min(piece, start + length - position), os.POSIX_FADV_WILLNEED)
            with self._done:
                self._finished += 1
                self._done.notify_all()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

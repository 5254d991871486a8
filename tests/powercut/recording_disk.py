# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A disk that records every write and every flush: a FUSE daemon serving one file.

Run as a process of its own (``python recording_disk.py MOUNTPOINT IMAGE LOG``), it
mounts a FUSE file system with one file, ``disk.img``, whose contents are ``IMAGE``
(a copy of the base image: the daemon reads and writes it in place).  A loop device
attached to ``MOUNTPOINT/disk.img`` then sends the daemon each write of the file
system on it (the mount uses ``direct_io``, so nothing waits in a page cache between
the loop device and the daemon) and each cache flush as an ``fsync`` of the file.

The daemon appends to ``LOG`` one record per event (see write_log.py), in the
order it served them (it runs single-threaded, so that order is total).  Each
record goes to ``LOG`` in one ``write`` before the daemon answers the request, so
once an fsync of the loop device returns, its flush marker is in the log.  The
base image is not touched: any prefix (or any subset between two flushes) of the
log can be replayed onto a copy of it.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import mfusepy

from write_log import FLUSH, HEADER, WRITE, ZERO

DISK_NAME = "disk.img"

# fallocate(2) modes the loop driver uses for discard and write-zeroes requests.
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_ZERO_RANGE = 0x10


class RecordingFile(mfusepy.Operations):
    """The root directory with ``disk.img`` in it; see the module docstring."""

    use_ns = True

    def __init__(self, image, log):
        self.image_fd = os.open(image, os.O_RDWR)
        self.size = os.fstat(self.image_fd).st_size
        self.log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        self.mtime_ns = os.fstat(self.image_fd).st_mtime_ns

    def _record(self, kind, offset=0, length=0, data=b""):
        record = HEADER.pack(kind, offset, length) + data
        written = os.write(self.log_fd, record)
        if written != len(record):
            raise mfusepy.FuseOSError(errno.EIO)

    def getattr(self, path, fh=None):
        times = {"st_atime": self.mtime_ns, "st_mtime": self.mtime_ns, "st_ctime": self.mtime_ns}
        if path == "/":
            return dict(times, st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path == "/" + DISK_NAME:
            return dict(times, st_mode=stat.S_IFREG | 0o600, st_nlink=1, st_size=self.size)
        raise mfusepy.FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", DISK_NAME]

    def open(self, path, fi):
        if path != "/" + DISK_NAME:
            raise mfusepy.FuseOSError(errno.ENOENT)
        # Every read and write of the loop device reaches the daemon at once, in order.
        fi.direct_io = 1
        return 0

    def read(self, path, size, offset, fh):
        return os.pread(self.image_fd, size, offset)

    def write(self, path, data, offset, fh):
        if offset + len(data) > self.size:
            raise mfusepy.FuseOSError(errno.ENOSPC)
        self._record(WRITE, offset, len(data), data)
        os.pwrite(self.image_fd, data, offset)
        return len(data)

    def fsync(self, path, datasync, fh):
        self._record(FLUSH)
        return 0

    def flush(self, path, fh):
        # close(2) of a file descriptor, not a cache flush: nothing to record.
        return 0

    def fallocate(self, path, mode, offset, size, fh):
        if not mode & (_FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_ZERO_RANGE):
            return 0   # preallocation: the file is fully there already
        end = min(offset + size, self.size)
        if end > offset:
            self._record(ZERO, offset, end - offset)
            os.pwrite(self.image_fd, bytes(end - offset), offset)
        return 0

    def truncate(self, path, length, fh=None):
        raise mfusepy.FuseOSError(errno.EPERM)

    def statfs(self, path):
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": self.size // 4096, "f_namemax": 255}


def main(argv):
    mountpoint, image, log = argv[1:4]
    # nothreads: one request at a time, so the log has one total order.
    mfusepy.FUSE(RecordingFile(image, log), mountpoint, raw_fi=True, foreground=True, nothreads=True,
                 direct_io=True, fsname="dom0-reflink-recording-disk")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the data of an import comes from (a file, a block device, another volume), and whether it changes anything."""

from __future__ import annotations

import os
import stat

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Vid
from ansible_collections.dom0.reflink.plugins.module_utils._fs import clone, compare
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles


class Source:
    """Open data to import: a file or block device on the host, or a volume's clean image."""

    def __init__(self, fd: int, description: str) -> None:
        self.fd = fd   # -1 once closed
        self.description = description
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)
        self.size = clone.file_size(fd)
        self.usage = st.st_blocks * 512

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_source_path(path: str) -> Source:
    """Open ``path`` for reading; only a regular file or a block device is accepted."""
    try:
        # O_NONBLOCK: a FIFO must be refused, not waited on.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InvalidArgument("source %s does not exist" % path) from None
    except PermissionError:
        raise InvalidArgument("source %s is not readable (permission denied)" % path) from None
    except OSError as exc:
        kind = ""
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                kind = " (it is a socket)"
        except OSError:
            pass
        raise InvalidArgument("cannot open source %s%s: %s" % (path, kind, exc.strerror)) from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a socket" if stat.S_ISSOCK(mode) else "a character device" if stat.S_ISCHR(mode) else "not a file"
        raise InvalidArgument("source %s is %s; give a regular file or a block device" % (path, kind))
    return Source(fd, path)


def open_source_volume(pool_path: str, vid: Vid) -> Source:
    """Open the clean image of volume ``vid`` of the pool at ``pool_path``."""
    with Directory.open_pool(pool_path) as pool_dir:
        prefix = pool_dir.open_dir(vid.prefix)
        vm_dir = prefix.open_dir(vid.vm) if prefix is not None else None
        try:
            if vm_dir is None or vm_dir.lstat(vid.clean) is None:
                raise InvalidArgument("source volume %s of pool %s has no clean image" % (vid, pool_path))
            fd = vm_dir.open_file(vid.clean, os.O_RDONLY)
        finally:
            for directory in (vm_dir, prefix):
                if directory is not None:
                    directory.close()
    return Source(fd, "%s (volume %s)" % (os.path.join(pool_path, vid.vm_dir, vid.clean), vid))


# -- comparing with the current clean image -------------------------------

def unchanged(vm_dir: Directory | None, files: VolumeFiles, source: Source | None, size: int) -> bool:
    """Whether importing ``source`` (None: zeros) at ``size`` would give the current clean image."""
    if vm_dir is None or files.clean is None or files.dirty is not None or files.clean.size != size:
        return False
    clean_fd = vm_dir.open_file(files.vid.clean, os.O_RDONLY)
    try:
        if source is None:
            return compare.data_is_absent(clean_fd) or compare.all_zero(clean_fd, 0, size)
        if source.size == size:
            return compare.same_content(clean_fd, source.fd)
        common = min(size, source.size)
        return compare.prefix_matches(clean_fd, source.fd, common) and compare.all_zero(clean_fd, common, size)
    finally:
        os.close(clean_fd)

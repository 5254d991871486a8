# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The space figures of a whole pool, from one scan: every image file it found, read once.

The files given to :class:`SpaceMap` must be the whole pool (a file left out
counts as outside, and what it shares as kept), so this always takes the
scan of every volume, whatever part of it a report then shows.  A file that
qubesd renames or removes while its extents are read (a VM starting or
stopping) is not an error: it counts as empty and is named in ``vanished``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument, ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.sharing import ALLOCATED_BLOCKS, BTRFS_EXTENTS
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.space import ImageFile, SpaceMap, filesystem_space
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo, VolumeFiles
from ansible_collections.dom0.reflink.plugins.module_utils._state.scan import PoolScan

# A volume with no file in the map (an absent vid the user named): nothing allocated, nothing to free.
_NO_SPACE = {"allocated": 0, "exclusive": 0, "revisions_exclusive": 0, "stranded": 0, "files": []}


class SpaceReadError(ReflinkError):
    """The extent maps could not be read (an I/O error, a filesystem that refuses the ioctl)."""


def volume_image_files(files: VolumeFiles) -> list[tuple[ImageFile, FileInfo]]:
    """Every image file of one volume (pins, tempfiles, junk revisions included), as the space map takes them."""
    directory = files.vid.vm_dir
    revisions = {id(info) for _number, info in files.revisions} | {id(info) for info in files.junk_revisions}
    return [(ImageFile("%s/%s" % (directory, info.name), str(files.vid), id(info) in revisions, info.ino), info)
            for info in files.all_with_pins()]


@dataclasses.dataclass
class PoolSpaceReport:
    """A pool's space map, with the files that changed while it was read; the report's dicts."""

    space: SpaceMap
    vanished: list[str]   # pool-relative names of files that were gone or replaced by the time they were read

    @classmethod
    def read(cls, pool_dir: Directory, scan: PoolScan) -> PoolSpaceReport:
        """Read the extent maps of every image file of ``scan`` (a scan of the whole pool)."""
        pairs = [pair for files in scan.sorted_volumes() for pair in volume_image_files(files)]
        try:
            space = SpaceMap.read(pool_dir, [image for image, _info in pairs])
        except OSError as exc:
            where = " (%s)" % exc.filename if exc.filename else ""
            raise SpaceReadError("cannot read the extent maps of the images of pool %s: %s%s; nothing was changed"
                                 % (pool_dir.path, exc.strerror or exc, where)) from None
        vanished = set(space.missing)
        # On btrfs a file is read by its inode number: one that is gone has no extent items, like an empty one.
        allocated = {entry.file: entry.allocated for volume in space.volumes.values() for entry in volume.files}
        vanished.update(image.file for image, info in pairs
                        if image.file not in vanished and allocated.get(image.file, 0) == 0
                        and not _still_there(pool_dir, image.file, info))
        return cls(space, sorted(vanished))

    def volume(self, vid: str) -> dict[str, object]:
        """The ``space`` dict of one volume."""
        found = self.space.volumes.get(vid)
        return dict(_NO_SPACE, files=[]) if found is None else found.as_dict()

    def pool(self, pool_dir: Directory) -> dict[str, int]:
        """The ``pool.space`` dict: the pool's figures and its filesystem's size and free bytes."""
        return dict(self.space.pool.as_dict(), **filesystem_space(pool_dir.open_fd()))

    def if_removed(self, items: Iterable[str]) -> dict[str, object]:
        """The ``if_removed`` dict: what removing the vids and files ``items`` frees, as one set."""
        try:
            return self.space.if_removed(items).as_dict()
        except InvalidArgument as exc:
            raise InvalidArgument("if_removed: %s (give vids such as appvms/work/private, or image files relative to "
                                  "the pool such as appvms/work/private.img); nothing was changed" % exc) from None

    def warnings(self, fstype: str) -> list[str]:
        """What the user should know about how exact the figures are."""
        found = []
        if self.vanished:
            more = len(self.vanished) - 10
            shown = ", ".join(self.vanished[:10]) + (" and %d more" % more if more > 0 else "")
            found.append("%d image file(s) were removed or replaced while their extents were read (qubesd started or "
                         "stopped a VM meanwhile?): %s; the space figures count them as empty: run reflink_info again "
                         "for exact figures" % (len(self.vanished), shown))
        if fstype == "btrfs" and BTRFS_EXTENTS not in self.space.sharing.methods:
            found.append("the space figures of this btrfs pool were counted in blocks (FIEMAP), not in whole extents: "
                         "reading btrfs's extent tree needs root (CAP_SYS_ADMIN); btrfs frees an extent only whole, so "
                         "exclusive and if_removed may overstate what a removal frees")
        if ALLOCATED_BLOCKS in self.space.sharing.methods:
            found.append("some images could not be mapped (no FIEMAP on this filesystem): each counts with its own "
                         "allocated blocks, as if it shared nothing")
        return found


def empty_pool_space(path: str) -> dict[str, int]:
    """``pool.space`` of a pool with no images, on the filesystem of the directory ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return dict(referenced=0, allocated=0, saved=0, stranded=0, **filesystem_space(fd))
    finally:
        os.close(fd)


def _still_there(pool_dir: Directory, relative: str, info: FileInfo) -> bool:
    try:
        st = os.stat(relative, dir_fd=pool_dir.open_fd(), follow_symlinks=False)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (info.dev, info.ino)

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image files of a pool scan, as the space accounting (space.py) takes them.

A SpaceMap must be given every image file of the pool: a file left out counts
as outside the pool, so the blocks it shares count as kept.  A scan limited to
some volumes is therefore completed by a scan of the whole pool, whose other
volumes join the list.
"""

from __future__ import annotations

from collections.abc import Iterable

from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.space import ImageFile
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles
from ansible_collections.dom0.reflink.plugins.module_utils._state.scan import PoolScan


def image_files(volumes: Iterable[VolumeFiles]) -> list[ImageFile]:
    """Every file of ``volumes`` (pins, tempfiles and junk revisions included), with the inode the scan read."""
    found: list[ImageFile] = []
    for files in volumes:
        vid = str(files.vid)
        revisions = {info.name for _number, info in files.revisions}
        revisions.update(info.name for info in files.junk_revisions)
        found.extend(ImageFile(files.vid.rel(info.name), vid, info.name in revisions, info.ino)
                     for info in files.all_with_pins())
    return found


def whole_pool_files(pool_dir: Directory, scan: PoolScan) -> list[ImageFile]:
    """The image files of the whole pool: those of ``scan``, and where it was limited, those of a scan of the rest.

    The files of the volumes ``scan`` read are taken from it (their inode
    numbers are the ones a plan made from it acts on).
    """
    volumes = dict(scan.volumes)
    if not scan.complete:
        for key, files in PoolScan.read(pool_dir).volumes.items():
            volumes.setdefault(key, files)
    return image_files(volumes[key] for key in sorted(volumes))

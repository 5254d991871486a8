# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What gc's removals free: one SpaceMap of every image file of the pool, read before anything is removed.

A run's ``reclaimed_bytes`` is computed for the removed files as one set:
bytes that several of them share are freed once all of them go, and bytes
that a file gc keeps (or a file outside the pool) also holds are not freed
at all.  Summing each file's own figure would miss the first and a sum of
allocated bytes would count the second.  The map is read once, before the
first removal, so check mode (which removes nothing) gets the same figures as
the real run; the real run's figure is for the files it did remove.
"""

from __future__ import annotations

from collections.abc import Iterable

from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.pool_images import whole_pool_files
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.space import SpaceMap
from ansible_collections.dom0.reflink.plugins.module_utils._state.scan import PoolScan


class RemovalSpace:
    """The space figures gc reports, from the SpaceMap of the whole pool."""

    def __init__(self, space: SpaceMap) -> None:
        self.space = space
        self._exclusive = {entry.file: entry.exclusive for volume in space.volumes.values() for entry in volume.files}
        self._missing = set(space.missing)

    @classmethod
    def read(cls, pool_dir: Directory, scan: PoolScan) -> RemovalSpace:
        """Read the extent maps of every image file of the pool (``scan``'s, completed where it was limited)."""
        return cls(SpaceMap.read(pool_dir, whole_pool_files(pool_dir, scan)))

    def exclusive(self, file: str) -> int | None:
        """What removing the pool-relative ``file`` alone frees; None for a file gone (or replaced) since the scan."""
        if file in self._missing:
            return None
        return self._exclusive.get(file)

    def freed(self, files: Iterable[str]) -> int:
        """What removing exactly ``files`` (pool-relative) frees, as one set."""
        return self.space.freed_by(self.space.select(files))

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the dedupe engine is given: open images and their extent maps, as plain data.

The engine never looks for files or reads extent maps itself: the caller
opens the images (images.py does it safely for a volume) and hands each
one's extent map in, as FIEMAP describes it (logical offset, physical
address, length, flags), read through the pool's extent inspection
(extent_maps.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# FIEMAP extent flags (linux/fiemap.h).
EXTENT_LAST = 0x1
EXTENT_UNKNOWN = 0x2
EXTENT_DELALLOC = 0x4
EXTENT_ENCODED = 0x8
EXTENT_DATA_ENCRYPTED = 0x80
EXTENT_NOT_ALIGNED = 0x100
EXTENT_DATA_INLINE = 0x200
EXTENT_DATA_TAIL = 0x400
EXTENT_UNWRITTEN = 0x800
EXTENT_MERGED = 0x1000
EXTENT_SHARED = 0x2000

# Extents the engine leaves alone: their physical address does not name the
# data block for block (compressed, inline, not yet allocated), or they read
# as zeros without holding data (unwritten: deduping into them would turn a
# preallocated range into data, and SEEK_HOLE would see a change).
NOT_DEDUPABLE = (EXTENT_UNKNOWN | EXTENT_DELALLOC | EXTENT_ENCODED | EXTENT_DATA_ENCRYPTED | EXTENT_NOT_ALIGNED
                 | EXTENT_DATA_INLINE | EXTENT_DATA_TAIL | EXTENT_UNWRITTEN)


@dataclass(frozen=True)
class MappedExtent:
    """One range of a file that maps to disk: ``length`` bytes at ``logical`` are at ``physical``."""

    logical: int
    physical: int
    length: int
    flags: int = 0

    @property
    def dedupable(self) -> bool:
        return not self.flags & NOT_DEDUPABLE

    @property
    def shared(self) -> bool:
        """The file system says something else references (part of) this extent too."""
        return bool(self.flags & EXTENT_SHARED)


@dataclass(frozen=True)
class DedupeImage:
    """One image given to the engine.

    ``name``: the pool-relative file name (reports); ``group``: what figures
    are summed by (the vid); ``fd``: open for reading (root may dedupe into a
    read-only descriptor); ``dir_fd``: its directory, where a scratch file may
    be made (btrfs); ``identity``: (st_dev, st_ino); ``extents``: its map,
    sorted by logical offset (holes are simply not listed); ``disk_extents``:
    on btrfs, (start, size) of each on-disk extent it references, whose whole
    size stays allocated while any part is referenced (empty: not known, the
    engine then takes the map's ranges for the extents); ``held_elsewhere``:
    bytes of its blocks that files outside the set also hold (they stay
    allocated whatever the dedupe does: its copy is the one to keep; the
    caller knows it from the pool's space accounting).
    """

    name: str
    group: str
    fd: int
    dir_fd: int
    size: int
    identity: tuple[int, int]
    extents: Sequence[MappedExtent] = ()
    disk_extents: Sequence[tuple[int, int]] = ()
    held_elsewhere: int = 0


@dataclass(frozen=True)
class Skipped:
    """An image left alone, and why (the ``skipped`` list of the module's result)."""

    file: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who holds which disk bytes: a set of files' extent maps, grouped by the files that share them.

The result is a small table: for each set of files ("owners") that together
hold some disk bytes, how many bytes, how many of them no file references
any more (stranded, btrfs), and whether something outside the set also holds
them ("kept": then removing files of the set never frees them).  Every
question of ``space`` is a sum over this table.

How a byte is counted depends on the filesystem:

- btrfs (the tree search, as root): a unit is an on-disk extent, counted
  whole (disk_num_bytes, compressed size for a compressed extent), since
  btrfs frees an extent only when its last reference goes.  Kept when the
  extent tree counts more references than the set's files hold, or when a
  reference lies in a leaf shared with a snapshot that the backward walk
  resolves to an inode outside the set.  Holes and inline extents (stored
  with the metadata) take no data space.
- any other filesystem (FIEMAP): a unit is a run of physical blocks mapped by
  the same files.  Kept when FIEMAP flags it shared but only one mapping of
  the set holds it.  A run that two mappings of the set hold and a file
  outside also holds cannot be told apart from one that only the set holds:
  it counts as freed (GETFSMAP could tell, where the filesystem has a
  reverse map).  On a filesystem without reflinks nothing is shared, so a
  file's exclusive bytes are its allocated bytes.
- a file that FIEMAP cannot map: its st_blocks, held by it alone.

Where each unit lies can be kept too (``units``, when the reader is asked
for it): the dedupe compares two readings of the same files unit by unit.
"""

from __future__ import annotations

import dataclasses

# How a filesystem's bytes were counted.
BTRFS_EXTENTS = "btrfs extents"
FIEMAP_BLOCKS = "fiemap blocks"
ALLOCATED_BLOCKS = "st_blocks"

# (owners: distinct file indexes, in the order read, kept) -> [bytes, stranded bytes]
Groups = dict[tuple[tuple[int, ...], bool], list[int]]
# Where a unit lies: (start, size, owners, kept).  btrfs: an extent (its disk_bytenr and disk size, whole);
# elsewhere: a run of physical blocks.  Bytes whose place FIEMAP cannot tell (st_blocks, delayed or
# inline data) have no unit.
Unit = tuple[int, int, tuple[int, ...], bool]


@dataclasses.dataclass
class Sharing:
    """The disk bytes of a set of files, grouped by the files that hold them (indexes into the names read)."""

    groups: Groups = dataclasses.field(default_factory=dict)
    missing: list[int] = dataclasses.field(default_factory=list)   # files that were not there (or not regular)
    methods: set[str] = dataclasses.field(default_factory=set)     # how the bytes were counted
    # file index -> its data extents as read (btrfs: extent items with data; elsewhere: FIEMAP mappings);
    # absent when none were read (no data, or counted by its st_blocks)
    extents: dict[int, int] = dataclasses.field(default_factory=dict)
    # files with btrfs's No_COW attribute (read with their extents: the inode item, or the file's flags)
    nocow: set[int] = dataclasses.field(default_factory=set)
    units: list[Unit] | None = None                                # where each unit lies, when asked for

    def add(self, owners: tuple[int, ...], kept: bool, size: int, stranded: int = 0) -> None:
        entry = self.groups.get((owners, kept))
        if entry is None:
            self.groups[(owners, kept)] = [size, stranded]
        else:
            entry[0] += size
            entry[1] += stranded

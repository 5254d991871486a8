# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sharing of files on a filesystem without btrfs's records: runs of physical blocks (FIEMAP).

A unit is a run of physical blocks that the same mappings of the set hold.
It is kept (never freed by removing files of the set) when FIEMAP flags it
shared but only one mapping of the set holds it: the other holder is outside.
A run that two mappings of the set hold and a file outside holds too cannot
be told apart from one that only the set holds, and counts as freed (the
reverse map, GETFSMAP, could tell where the filesystem has one:
``mkfs.xfs -m rmapbt=1``).  Nothing is shared on a filesystem without
reflinks: there a file's exclusive bytes are its allocated bytes.  A file
that FIEMAP cannot map counts with its st_blocks, held by it alone.
"""

from __future__ import annotations

import bisect
import errno
import os

from ansible_collections.dom0.reflink.plugins.module_utils._fs.file_flags import has_nocow
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.extents import (EXTENT_NOT_COMPARABLE, EXTENT_SHARED,
                                                                                    FiemapReader, sync_filesystem)
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.sharing import (ALLOCATED_BLOCKS, FIEMAP_BLOCKS,
                                                                                    Sharing)


class BlockDomain:
    """The files of one non-btrfs filesystem (or a btrfs read without privileges): physical block runs."""

    def __init__(self, nocow_flags: bool = False) -> None:
        self.reader = FiemapReader()
        self.pieces: list[tuple[int, int, int, int]] = []   # (physical, length, file, shared flag)
        self.nocow_flags = nocow_flags

    @classmethod
    def open(cls, fd: int, nocow_flags: bool = False) -> BlockDomain:
        """A domain for the filesystem of ``fd``, synced first (see :func:`sync_filesystem`).

        ``nocow_flags``: read each file's No_COW attribute too (a btrfs read
        without the privilege of its tree search).
        """
        sync_filesystem(fd)
        return cls(nocow_flags)

    def close(self) -> None:
        pass

    def add_file(self, index: int, fd: int, sharing: Sharing) -> None:
        try:
            mappings = self.reader.mappings(fd)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                raise
            sharing.methods.add(ALLOCATED_BLOCKS)
            sharing.add((index,), False, os.fstat(fd).st_blocks * 512)
            return
        sharing.extents[index] = len(mappings)
        if self.nocow_flags and has_nocow(fd):
            sharing.nocow.add(index)
        for _logical, physical, length, flags in mappings:
            if flags & EXTENT_NOT_COMPARABLE:
                sharing.add((index,), False, length)
            else:
                self.pieces.append((physical, length, index, flags & EXTENT_SHARED))

    def finish(self, sharing: Sharing) -> None:
        sharing.methods.add(FIEMAP_BLOCKS)
        self.pieces.sort()
        cluster: list[tuple[int, int, int, int]] = []
        reach = -1
        for piece in self.pieces:
            if piece[0] >= reach and cluster:
                _add_cluster(cluster, sharing)
                cluster = []
            cluster.append(piece)
            reach = max(reach, piece[0] + piece[1])
        if cluster:
            _add_cluster(cluster, sharing)
        self.pieces = []


def _add_cluster(cluster: list[tuple[int, int, int, int]], sharing: Sharing) -> None:
    """Add overlapping mappings as runs of blocks that the same mappings hold."""
    first = cluster[0]
    if all(piece[0] == first[0] and piece[1] == first[1] for piece in cluster):
        _add_run(first[0], first[1], [(piece[2], piece[3]) for piece in cluster], sharing)
        return
    bounds = sorted({piece[0] for piece in cluster} | {piece[0] + piece[1] for piece in cluster})
    holders: list[list[tuple[int, int]]] = [[] for _bound in bounds]
    for physical, length, index, shared in cluster:
        for position in range(bisect.bisect_left(bounds, physical), bisect.bisect_left(bounds, physical + length)):
            holders[position].append((index, shared))
    for position, held in enumerate(holders[:-1]):
        if held:
            _add_run(bounds[position], bounds[position + 1] - bounds[position], held, sharing)


def _add_run(start: int, length: int, held: list[tuple[int, int]], sharing: Sharing) -> None:
    """A run of ``length`` bytes at ``start`` mapped by ``held`` (file, shared flag) mappings."""
    kept = len(held) == 1 and bool(held[0][1])
    owners = tuple(sorted({index for index, _shared in held}))
    sharing.add(owners, kept, length)
    if sharing.units is not None:
        sharing.units.append((start, length, owners, kept))

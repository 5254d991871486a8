# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sharing of files on btrfs: each on-disk extent, whole, with the files that reference it.

A unit is an extent, counted whole (disk_num_bytes: the compressed size of a
compressed extent), since btrfs frees an extent only when its last reference
goes.  It is kept when the extent tree counts more references than the set's
files hold, or when a reference lies in a leaf a snapshot may share and the
backward walk resolves the extent to an inode outside the set.  Its stranded
bytes are those no reference of the set covers (only for an extent the set
alone holds).  Holes and inline extents (stored with the metadata) take no
data space.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from operator import itemgetter

from ansible_collections.dom0.reflink.plugins.module_utils._inspect import btrfs_tree
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.block_sharing import BlockDomain
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.sharing import BTRFS_EXTENTS, Sharing

_BYTENR = itemgetter(btrfs_tree.REF_BYTENR)


class BtrfsDomain:
    """The files of one btrfs: their extent items, then each extent as one unit.

    Per file only C-level bulk operations on its list of references (a pool
    has hundreds of thousands of them); the per-extent work is done once, in
    :meth:`finish`.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.search = btrfs_tree.TreeSearch(fd)
        self.files: dict[int, dict[int, list[int]]] = {}   # subvolume -> inode -> its names (file indexes)
        self.owners: defaultdict[int, list[int]] = defaultdict(list)   # disk_bytenr -> files, each once
        self.repeated: Counter[int] = Counter()        # disk_bytenr -> references beyond one per inode
        # distinct (ram_bytes, compression, type, disk_bytenr, disk_num_bytes, offset, num_bytes) references
        self.uses: set[btrfs_tree.ExtentRef] = set()
        self.old_leaves: set[int] = set()               # extents referenced from a leaf a snapshot may share
        self.inodes: set[tuple[int, int]] = set()       # (subvolume, inode) of the set

    @classmethod
    def open(cls, fd: int) -> BtrfsDomain | BlockDomain:
        """A domain reading the btrfs of ``fd``; a FIEMAP domain when the tree search is not allowed."""
        domain = cls(os.dup(fd))
        try:
            btrfs_tree.commit(domain.fd)
            domain.search.last_snapshot(btrfs_tree.ROOT_TREE)   # the tree search needs CAP_SYS_ADMIN
        except PermissionError:
            domain.close()
            return BlockDomain.open(fd, nocow_flags=True)
        except BaseException:
            domain.close()
            raise
        return domain

    def close(self) -> None:
        os.close(self.fd)

    def add_file(self, index: int, tree: int, inode: int) -> None:
        """Note file ``index``: inode ``inode`` of subvolume ``tree`` (read in :meth:`finish`)."""
        self.files.setdefault(tree, {}).setdefault(inode, []).append(index)
        self.inodes.add((tree, inode))

    def _read(self, sharing: Sharing) -> None:
        """Every file's extent items, subvolume by subvolume, neighbouring inodes in one search.

        ``sharing`` gets each file's count of items with data (a file without
        data is not reported) and the files with the No_COW attribute.
        """
        owners, repeated, uses, extents = self.owners, self.repeated, self.uses, sharing.extents
        for tree, inodes in self.files.items():
            snapshot = self.search.last_snapshot(tree)
            nocow: set[int] = set()
            for inode, refs in self.search.inode_extents(tree, sorted(inodes), snapshot, self.old_leaves, nocow):
                names = inodes[inode]
                bytenrs = list(map(_BYTENR, refs))
                data_extents = len(bytenrs) - bytenrs.count(0)
                for index in names:
                    extents[index] = data_extents
                distinct = set(bytenrs)
                if len(distinct) != len(bytenrs):   # an extent referenced twice by the file, or explicit holes
                    repeated.update(bytenrs)
                    repeated.subtract(distinct)
                uses.update(refs)
                if len(names) == 1:
                    index = names[0]
                    for bytenr in distinct:
                        owners[bytenr].append(index)
                else:   # hard links: one inode, several names; the extent tree counts its items once
                    for bytenr in distinct:
                        owners[bytenr].extend(names)
                        repeated[bytenr] -= len(names) - 1
            for inode in nocow:
                sharing.nocow.update(inodes[inode])

    def finish(self, sharing: Sharing) -> None:
        sharing.methods.add(BTRFS_EXTENTS)
        self._read(sharing)
        extent_bytes, stranded = self._extents()
        counts = self.search.extent_reference_counts(extent_bytes)
        repeated, old_leaves, groups, units = self.repeated, self.old_leaves, sharing.groups, sharing.units
        for bytenr, holders in self.owners.items():
            if not bytenr:
                continue   # holes and inline data: no data extent
            kept = counts.get(bytenr) != len(holders) + repeated.get(bytenr, 0) or \
                (bytenr in old_leaves and self._held_outside(bytenr))
            size = extent_bytes[bytenr]
            strand = 0 if kept else stranded.get(bytenr, 0)
            key = (tuple(holders), kept)
            entry = groups.get(key)
            if entry is None:
                groups[key] = [size, strand]
            else:
                entry[0] += size
                entry[1] += strand
            if units is not None:
                units.append((bytenr, size, key[0], kept))

    def _extents(self) -> tuple[dict[int, int], dict[int, int]]:
        """{disk_bytenr: disk_num_bytes} of every extent, and {disk_bytenr: stranded bytes} of those that
        no reference of the set covers whole."""
        extent_bytes: dict[int, int] = {}
        whole: set[int] = set()
        partial: dict[int, list[tuple[int, int]]] = {}
        ram_bytes: dict[int, int] = {}
        for ram, _compression, _kind, bytenr, disk_bytes, offset, num_bytes in self.uses:
            if not bytenr:
                continue
            extent_bytes[bytenr] = disk_bytes
            if offset == 0 and num_bytes >= ram:
                whole.add(bytenr)
            else:
                partial.setdefault(bytenr, []).append((offset, offset + num_bytes))
                ram_bytes[bytenr] = ram
        stranded = {bytenr: _stranded(extent_bytes[bytenr], ram_bytes[bytenr], ranges)
                    for bytenr, ranges in partial.items() if bytenr not in whole}
        return extent_bytes, stranded

    def _held_outside(self, bytenr: int) -> bool:
        found = btrfs_tree.extent_owners(self.fd, bytenr)
        return found is None or any(owner not in self.inodes for owner in found)


def _stranded(disk_bytes: int, ram_bytes: int, ranges: list[tuple[int, int]]) -> int:
    """Disk bytes of an extent that no reference covers; ``ranges`` are (offset, end) in its uncompressed data.

    Only for an extent that no reference covers whole.
    """
    covered = 0
    reach = 0
    for start, end in sorted(ranges):
        begin = max(start, reach)
        if end > begin:
            covered += end - begin
            reach = end
    if covered >= ram_bytes:
        return 0
    if ram_bytes == disk_bytes:
        return disk_bytes - covered
    return disk_bytes * (ram_bytes - covered) // ram_bytes   # compressed: in proportion

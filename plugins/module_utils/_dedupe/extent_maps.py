# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine's extent maps, read through the pool's extent inspection (``_inspect``).

The engine takes maps as data (inputs.MappedExtent); this file only turns
what ``_inspect/extents.py`` (FIEMAP) and ``_inspect/btrfs_tree.py`` (btrfs's
file extent items) read into that form, so that one place in the core reads
extents.  On btrfs the true on-disk extents matter: an extent stays allocated
whole while any part of it is referenced, and FIEMAP shows only the
referenced ranges.
"""

from __future__ import annotations

import errno

from ansible_collections.dom0.reflink.plugins.module_utils._inspect import btrfs_tree
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.extents import FiemapReader
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.inputs import MappedExtent

# Errnos of the tree search that mean "not available here" (not btrfs, not root): the engine then takes
# FIEMAP's ranges for the extents.
_NO_TREE_SEARCH = (errno.EPERM, errno.EACCES, errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP)


def read_extent_map(fd: int) -> list[MappedExtent]:
    """Every extent of the open file ``fd`` as FIEMAP lists it, dirty pages written first (OSError without FIEMAP)."""
    return [MappedExtent(logical, physical, length, flags)
            for logical, physical, length, flags in FiemapReader().mappings(fd)]


def read_disk_extents(fd: int, inode: int) -> list[tuple[int, int]]:
    """(start, size) of each on-disk extent that the btrfs file ``fd`` (inode ``inode``) references; [] elsewhere.

    Sizes are btrfs's ``disk_num_bytes`` (what stays allocated while any part
    is referenced), from the file's extent items; holes and inline data have
    no extent.  Not btrfs, or no CAP_SYS_ADMIN for the tree search: [].
    """
    try:
        tree = btrfs_tree.subvolume_of(fd)
        if tree is None:
            return []
        refs = btrfs_tree.TreeSearch(fd).file_extents(tree, inode)
    except OSError as exc:
        if exc.errno in _NO_TREE_SEARCH:
            return []
        raise
    found = {ref[btrfs_tree.REF_BYTENR]: ref[btrfs_tree.REF_DISK_BYTES] for ref in refs
             if ref[btrfs_tree.REF_BYTENR] and ref[btrfs_tree.REF_TYPE] != btrfs_tree.INLINE}
    return sorted(found.items())

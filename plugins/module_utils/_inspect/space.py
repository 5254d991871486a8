# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What each image costs, and what removing any set of images frees.

Every figure is a sum over the table of ``sharing`` (disk bytes grouped by
the files that hold them):

- a file's or a volume's ``allocated``: the bytes that any of its files
  holds, each once (on btrfs whole extents, so stranded bytes included);
- ``exclusive`` (of a file, a volume) and ``freed_by``/``if_removed`` (of any
  set): the bytes whose holders all lie in the set and that nothing outside
  the pool holds: exactly what the filesystem gets back when the set goes;
- ``revisions_exclusive``: the same for the set of a volume's revisions;
- ``stranded`` (btrfs): bytes of extents the files keep allocated though no
  file references them any more;
- the pool's ``referenced`` (every file's allocated, summed: what du says),
  ``allocated`` (all the pool's bytes, each once) and ``saved`` (the
  difference).

Metadata (inode and extent items, inline data, checksums) is not counted.
The files given are the whole pool: bytes that any other file also holds are
kept, never freed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.pool_extents import read_sharing
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.sharing import Sharing

if TYPE_CHECKING:
    from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """A file of the pool: its pool-relative path, the volume (vid) it belongs to, whether it is a revision.

    ``inode``: its inode number if the caller has just read it (the scan's
    lstat); 0 to have it read again.
    """

    file: str
    volume: str
    revision: bool = False
    inode: int = 0


@dataclasses.dataclass(frozen=True)
class FileSpace:
    file: str
    allocated: int
    exclusive: int

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "allocated": self.allocated, "exclusive": self.exclusive}


@dataclasses.dataclass(frozen=True)
class VolumeSpace:
    allocated: int
    exclusive: int
    revisions_exclusive: int
    stranded: int
    files: tuple[FileSpace, ...]

    def as_dict(self) -> dict[str, object]:
        return {"allocated": self.allocated, "exclusive": self.exclusive,
                "revisions_exclusive": self.revisions_exclusive, "stranded": self.stranded,
                "files": [entry.as_dict() for entry in self.files]}


@dataclasses.dataclass(frozen=True)
class PoolSpace:
    referenced: int
    allocated: int
    saved: int
    stranded: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Removal:
    """What removing a set of files frees (``bytes``), and the files of the set."""

    bytes: int
    files: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"bytes": self.bytes, "files": list(self.files)}


def filesystem_space(fd: int) -> dict[str, int]:
    """``fs_size`` and ``fs_free`` (what an unprivileged writer may still use) of the filesystem of ``fd``."""
    st = os.fstatvfs(fd)
    return {"fs_size": st.f_blocks * st.f_frsize, "fs_free": st.f_bavail * st.f_frsize}


class SpaceMap:
    """The space figures of a pool's files, computed once; any set can then be asked about."""

    def __init__(self, files: Sequence[ImageFile], sharing: Sharing) -> None:
        self.files = tuple(files)
        self.sharing = sharing
        self._index = {entry.file: index for index, entry in enumerate(self.files)}
        if len(self._index) != len(self.files):
            raise ValueError("a file is listed twice")
        self._volume_files: dict[str, list[int]] = {}
        for index, entry in enumerate(self.files):
            self._volume_files.setdefault(entry.volume, []).append(index)
        self.missing = tuple(self.files[index].file for index in sorted(sharing.missing))
        self.volumes, self.pool = self._figures()

    @classmethod
    def read(cls, pool_dir: Directory, files: Sequence[ImageFile], units: bool = False) -> SpaceMap:
        """Read the extent maps of ``files`` (every file of the pool) below the open Directory ``pool_dir``.

        ``units``: also keep where each unit of the table lies (``sharing.units``).
        """
        return cls(files, read_sharing(pool_dir.open_fd(), [entry.file for entry in files],
                                       [entry.inode for entry in files], units))

    def _figures(self) -> tuple[dict[str, VolumeSpace], PoolSpace]:
        """Every file's, volume's and the pool's figures in one pass over the table."""
        count = len(self.files)
        volume_names = list(self._volume_files)
        volume_number = {name: number for number, name in enumerate(volume_names)}
        volume_of = [volume_number[entry.volume] for entry in self.files]
        revision = [entry.revision for entry in self.files]
        file_allocated, file_exclusive = [0] * count, [0] * count
        allocated, exclusive = [0] * len(volume_names), [0] * len(volume_names)
        revisions_exclusive, stranded = [0] * len(volume_names), [0] * len(volume_names)
        pool_allocated = pool_stranded = 0
        for (owners, kept), (size, strand) in self.sharing.groups.items():
            pool_allocated += size
            pool_stranded += strand
            for index in owners:
                file_allocated[index] += size
            if len(owners) == 1:
                volumes = {volume_of[owners[0]]}
                if not kept:
                    file_exclusive[owners[0]] += size
            else:
                volumes = {volume_of[index] for index in owners}
            for number in volumes:
                allocated[number] += size
                stranded[number] += strand
            if not kept and len(volumes) == 1:
                only = next(iter(volumes))
                exclusive[only] += size
                if all(revision[index] for index in owners):
                    revisions_exclusive[only] += size
        volumes_space = {}
        for number, name in enumerate(volume_names):
            files = tuple(FileSpace(self.files[index].file, file_allocated[index], file_exclusive[index])
                          for index in self._volume_files[name])
            volumes_space[name] = VolumeSpace(allocated[number], exclusive[number], revisions_exclusive[number],
                                              stranded[number], files)
        referenced = sum(file_allocated)
        return volumes_space, PoolSpace(referenced, pool_allocated, referenced - pool_allocated, pool_stranded)

    def select(self, items: Iterable[str]) -> list[int]:
        """The files that ``items`` name: a vid means all its files, anything else one pool-relative file."""
        chosen: set[int] = set()
        for item in items:
            if item in self._volume_files:
                chosen.update(self._volume_files[item])
            elif item in self._index:
                chosen.add(self._index[item])
            else:
                raise InvalidArgument("%s is neither a volume nor an image file of the pool" % item)
        return sorted(chosen)

    def freed_by(self, indexes: Iterable[int]) -> int:
        """Bytes that removing exactly the files ``indexes`` frees: those held by files of the set alone."""
        chosen = set(indexes)
        return sum(size for (owners, kept), (size, _strand) in self.sharing.groups.items()
                   if not kept and chosen.issuperset(owners))

    def if_removed(self, items: Iterable[str]) -> Removal:
        """What removing the vids and files ``items`` would free, as one set."""
        chosen = self.select(items)
        return Removal(self.freed_by(chosen), tuple(self.files[index].file for index in chosen))

    def extents_of(self, file: str) -> int:
        """The number of data extents read for ``file`` (btrfs: extent items; elsewhere: FIEMAP mappings)."""
        index = self._index.get(file)
        return 0 if index is None else self.sharing.extents.get(index, 0)

    def nocow_files(self) -> list[str]:
        """The files read with btrfs's No_COW attribute, in the order given."""
        return [self.files[index].file for index in sorted(self.sharing.nocow)]

    def shared_bytes(self, partners: Mapping[str, str]) -> dict[str, int]:
        """For each file of ``partners`` (file -> partner file), the bytes it holds together with its partner.

        One pass over the table, however many pairs.  A file or partner that
        is not in the map shares nothing.
        """
        partner_of = {self._index[file]: self._index[partner] for file, partner in partners.items()
                      if file in self._index and partner in self._index}
        shared = dict.fromkeys(partner_of, 0)
        for (owners, _kept), (size, _strand) in self.sharing.groups.items():
            if len(owners) < 2:
                continue
            for index in owners:
                partner = partner_of.get(index)
                if partner is not None and partner in owners:
                    shared[index] += size
        found = dict.fromkeys(partners, 0)
        for index, total in shared.items():
            found[self.files[index].file] = total
        return found

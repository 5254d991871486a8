# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a dedupe frees, exactly: the pool's space accounting read before and after, compared unit by unit.

Both readings (``_inspect/space.py``, with where each unit lies) cover the
same files: first the *members*, the images the dedupe may change, then the
*witnesses*, the pool's other image files, read only to know who else holds
a block (they may change meanwhile: a running VM writes its dirty image; a
unit that no member holds is never counted).  A unit is an on-disk extent on
btrfs (freed only whole) and a run of physical blocks elsewhere.

- freed: bytes of units that members held before, that nothing outside the
  pool held (btrfs's extent tree counts every reference; elsewhere FIEMAP's
  shared flag of a block only one file of the pool maps) and that no file
  holds afterwards;
- allocated: bytes of units members hold afterwards that did not exist
  before (btrfs: the extents that the rewrite of partly used extents made);
- reclaimed = freed - allocated: what the file system got back.

Per volume, a freed unit counts for the volumes whose files held it (split
evenly where several did); the new extents count against the volumes the
engine wrote them for, in proportion to what it wrote for each (a scratch
file's extent may hold the rewrites of several volumes): the volumes'
figures add up to the total.

In check mode nothing is read afterwards: :func:`predict_after` makes the
reading after from the one before and the references of each image the
engine (would have) changed (``DedupeReport.after_maps``).  Bytes whose place
FIEMAP cannot tell (no unit) are taken as unchanged.  Metadata is not
counted.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ansible_collections.dom0.reflink.plugins.module_utils._inspect.block_sharing import BlockDomain
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.sharing import BTRFS_EXTENTS, Sharing, Unit
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.space import SpaceMap
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.model import SCRATCH_BASE

Ranges = Sequence[tuple[int, int]]


def _split(amount: int, weights: Mapping[str, int]) -> dict[str, int]:
    """``amount`` split in proportion to ``weights`` (all > 0); the rounding's remainder to the heaviest."""
    total = sum(weights.values())
    shares = {name: amount * weight // total for name, weight in weights.items()}
    heaviest = min(weights, key=lambda name: (-weights[name], name))
    shares[heaviest] += amount - sum(shares.values())
    return shares


@dataclass
class SpaceChange:
    """What the file system got back: ``freed`` minus ``allocated``, in total and per volume (vid)."""

    freed: int = 0
    allocated: int = 0
    freed_per_volume: dict[str, int] = field(default_factory=dict)
    allocated_per_volume: dict[str, int] = field(default_factory=dict)

    @property
    def reclaimed(self) -> int:
        return self.freed - self.allocated

    @property
    def per_volume(self) -> dict[str, int]:
        names = set(self.freed_per_volume) | set(self.allocated_per_volume)
        return {name: self.freed_per_volume.get(name, 0) - self.allocated_per_volume.get(name, 0) for name in names}

    @staticmethod
    def _count(into: dict[str, int], amount: int, volumes: Iterable[str]) -> None:
        for name, share in _split(amount, dict.fromkeys(volumes, 1)).items():
            into[name] = into.get(name, 0) + share

    def gone(self, amount: int, volumes: Iterable[str]) -> None:
        if amount:
            self.freed += amount
            self._count(self.freed_per_volume, amount, volumes)

    def made(self, amount: int, volumes: Iterable[str]) -> None:
        if amount:
            self.allocated += amount
            self._count(self.allocated_per_volume, amount, volumes)

    def made_for(self, written: Mapping[str, int]) -> None:
        """Count the new extents against the volumes in proportion to the bytes ``written`` for each."""
        written = {name: amount for name, amount in written.items() if amount > 0}
        if self.allocated and written:
            self.allocated_per_volume = _split(self.allocated, written)


def whole_extents(space: SpaceMap) -> bool:
    """Whether the reading counted btrfs extents (freed only whole) rather than runs of blocks."""
    return BTRFS_EXTENTS in space.sharing.methods


def _units(space: SpaceMap) -> list[Unit]:
    if space.sharing.units is None:
        raise ValueError("the space map was read without the places of its units (SpaceMap.read(..., units=True))")
    return sorted(space.sharing.units)


def _merged(units: Iterable[Unit]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, size, _owners, _kept in sorted(units):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], start + size))
        else:
            merged.append((start, start + size))
    return merged


def _covered(merged: Sequence[tuple[int, int]], starts: Sequence[int], start: int, end: int) -> int:
    """Bytes of [start, end) that the sorted, disjoint ``merged`` ranges (``starts``: their starts) cover."""
    position = max(bisect.bisect_right(starts, start) - 1, 0)
    covered = 0
    while position < len(merged) and merged[position][0] < end:
        covered += max(0, min(merged[position][1], end) - max(merged[position][0], start))
        position += 1
    return covered


def measure_change(before: SpaceMap, after: SpaceMap, members: int,
                   written: Mapping[str, int] | None = None) -> SpaceChange:
    """The change between two readings of the same files, the first ``members`` of them the dedupe's own.

    ``written``: per volume, the bytes the engine wrote anew for it (what the
    new extents count against); without it, the volumes whose files hold them.
    """
    volumes = [entry.volume for entry in before.files]
    change = SpaceChange()
    old, new = _units(before), _units(after)

    def of_members(owners: tuple[int, ...]) -> list[str]:
        return [volumes[index] for index in owners if index < members]

    if whole_extents(before):
        old_keys = {(start, size) for start, size, _owners, _kept in old}
        new_keys = {(start, size) for start, size, _owners, _kept in new}
        for start, size, owners, kept in old:
            if not kept and of_members(owners) and (start, size) not in new_keys:
                change.gone(size, of_members(owners))
        for start, size, owners, kept in new:
            if not kept and of_members(owners) and (start, size) not in old_keys:
                change.made(size, of_members(owners))
    else:
        for units, others, count in ((old, new, change.gone), (new, old, change.made)):
            merged = _merged(others)
            starts = [start for start, _end in merged]
            for start, size, owners, kept in units:
                if not kept and of_members(owners):
                    count(size - _covered(merged, starts, start, start + size), of_members(owners))
    change.made_for(written or {})
    return change


def held_elsewhere(space: SpaceMap, set_of: Sequence[str]) -> dict[int, int]:
    """Per member (index into ``set_of``, its set's name), the bytes of its units a file outside its set holds too.

    Outside: a witness, a member of another set, or (``kept``) a file
    outside the pool.  The engine keeps such an image's copy first: those
    blocks stay allocated whatever the dedupe does.
    """
    found: dict[int, int] = {}
    for _start, size, owners, kept in _units(space):
        for index in owners:
            if index < len(set_of) and (kept or any(other >= len(set_of) or set_of[other] != set_of[index]
                                                    for other in owners)):
                found[index] = found.get(index, 0) + size
    return found


def predict_after(before: SpaceMap, after_maps: Mapping[int, Ranges]) -> SpaceMap:
    """The reading after the dedupe, made from ``before`` and the physical ranges each changed file references.

    ``after_maps``: file index (in ``before.files``) -> (start, end) ranges;
    ranges from model.SCRATCH_BASE on are data written anew (new units).
    The units of unchanged files stay as they were; a changed file holds the
    units its ranges reach (btrfs: any part of an extent holds it whole).
    On XFS the kept flag of a run follows the units before it: a run that
    one file of the set and something outside held stays kept.
    """
    units = _units(before)
    changed = set(after_maps)
    placed: list[Unit] = []
    sharing = Sharing(methods=set(before.sharing.methods), units=placed)
    scratch = [(start, end, index) for index, ranges in after_maps.items() for start, end in ranges
               if start >= SCRATCH_BASE]
    if whole_extents(before):
        starts = [start for start, _size, _owners, _kept in units]
        holders = [{index for index in owners if index not in changed} for _start, _size, owners, _kept in units]
        for index, ranges in after_maps.items():
            for start, end in ranges:
                position = max(bisect.bisect_right(starts, start) - 1, 0)
                while position < len(units) and units[position][0] < end:
                    if units[position][0] + units[position][1] > start:
                        holders[position].add(index)
                    position += 1
        for (start, size, _owners, kept), found in zip(units, holders, strict=True):
            if found:
                sharing.add(tuple(sorted(found)), kept, size)
                placed.append((start, size, tuple(sorted(found)), kept))
    else:
        domain = BlockDomain()
        domain.pieces = [(start, size, index, int(kept)) for start, size, owners, kept in units
                         for index in owners if index not in changed]
        domain.pieces += [(start, end - start, index, 0) for index, ranges in after_maps.items()
                          for start, end in ranges if start < SCRATCH_BASE]
        domain.finish(sharing)
    for start, end, owners in _elementary(scratch):
        sharing.add(owners, False, end - start)
        placed.append((start, end - start, owners, False))
    _keep_unplaced(before.sharing, sharing)
    return SpaceMap(before.files, sharing)


def _elementary(ranges: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, tuple[int, ...]]]:
    """(start, end, holders) of each stretch between the boundaries of the (start, end, holder) ``ranges``."""
    events = sorted([(start, 1, index) for start, _end, index in ranges] + [(end, -1, index) for _start, end, index in ranges])
    found: list[tuple[int, int, tuple[int, ...]]] = []
    if not events:
        return found
    active: dict[int, int] = {}
    for (point, change, index), following in zip(events, events[1:] + [(None, 0, 0)], strict=True):
        active[index] = active.get(index, 0) + change
        if not active[index]:
            del active[index]
        if following[0] is not None and following[0] > point and active:
            found.append((point, following[0], tuple(sorted(active))))
    return found


def _keep_unplaced(before: Sharing, after: Sharing) -> None:
    """Carry over the bytes of ``before`` that have no unit (their place unknown): no dedupe moved them."""
    placed: dict[tuple[tuple[int, ...], bool], int] = {}
    for _start, size, owners, kept in before.units or ():
        placed[(owners, kept)] = placed.get((owners, kept), 0) + size
    for key, (size, _stranded) in before.groups.items():
        rest = size - placed.get(key, 0)
        if rest > 0:
            after.add(key[0], key[1], rest)


def volume_figures(space: SpaceMap, vids: Iterable[str]) -> dict[str, dict[str, int]]:
    """What diff mode shows of each volume: the disk bytes its images take together, and its own (exclusive) ones."""
    found = {}
    for vid in vids:
        volume = space.volumes.get(vid)
        found[vid] = {"allocated": volume.allocated if volume else 0, "exclusive": volume.exclusive if volume else 0}
    return found

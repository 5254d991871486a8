# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The images' mappings before and after the dedupes, and the space that frees (an estimate).

Each dedupe done (or planned, in check mode) is recorded as "this range of
that image now maps like the source's range"; a rewrite into a scratch file
as "this range now maps to new blocks".  From the maps before and after:

- on XFS (``whole_extents`` false) a block is freed when no image of the set
  references it any more;
- on btrfs (``whole_extents`` true) an extent is freed only when nothing
  references any part of it: here an extent is approximated by the union of
  the FIEMAP ranges of the set that overlap on disk.  An extent that keeps a
  reference is *stranded* (kept whole), which is what the rewrite of
  rescue.py is for.

Blocks FIEMAP flags as shared although only one image of the set references
them are referenced from outside the set and never counted as freed.

This is FIEMAP arithmetic over one set, not the pool's space accounting: it
steers the rescue and gives the engine's own estimate.  The exact figure
(btrfs's extent tree, every reference, true extent sizes, every set of the
run together) is the module's, from two readings of ``_inspect/space.py``
(accounting.py); in check mode from the reading before and each changed
image's references afterwards (:func:`after_references`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.inputs import (
    EXTENT_DATA_INLINE, EXTENT_DATA_TAIL, EXTENT_DELALLOC, EXTENT_ENCODED, EXTENT_UNKNOWN, DedupeImage)
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.sweep import Piece

# Physical addresses of rewritten data: above anything a disk has, one range per rewrite.
SCRATCH_BASE = 1 << 62
# Extents whose physical address names no data block (not allocated yet, or stored with the metadata).
_NO_ADDRESS = EXTENT_UNKNOWN | EXTENT_DELALLOC | EXTENT_DATA_INLINE | EXTENT_DATA_TAIL


@dataclass(frozen=True)
class Unit:
    """A stretch of disk the set references: an extent (btrfs) or a run of blocks (XFS)."""

    start: int
    end: int
    images: frozenset[int]
    outside: bool           # also referenced from outside the set (as far as FIEMAP tells)
    kept: int = 0           # bytes of it still referenced after the dedupes

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class Estimate:
    """Bytes freed by what the model holds, in total and per group, and the stranded extents."""

    freed: int = 0
    per_group: dict[str, int] = field(default_factory=dict)
    stranded: list[Unit] = field(default_factory=list)

    def add(self, group: str, amount: int) -> None:
        self.freed += amount
        self.per_group[group] = self.per_group.get(group, 0) + amount


def _slice(pieces: Sequence[Piece], starts: Sequence[int], start: int, end: int) -> list[Piece]:
    """The parts of ``pieces`` (sorted, ``starts`` their start offsets) within [start, end)."""
    found = []
    position = max(bisect.bisect_right(starts, start) - 1, 0)
    while position < len(pieces) and pieces[position].start < end:
        piece = pieces[position]
        if piece.end > start:
            found.append(Piece(max(piece.start, start), min(piece.end, end), piece.delta, piece.shared))
        position += 1
    return found


def _replace(pieces: list[Piece], starts: list[int], start: int, end: int, new: Sequence[Piece]) -> None:
    """In the sorted, disjoint ``pieces`` (``starts``: their starts), the range [start, end) becomes ``new``."""
    first = bisect.bisect_right(starts, start) - 1
    if first < 0 or pieces[first].end <= start:
        first += 1
    last = first
    while last < len(pieces) and pieces[last].start < end:
        last += 1
    kept: list[Piece] = []
    if first < last and pieces[first].start < start:
        head = pieces[first]
        kept.append(Piece(head.start, start, head.delta, head.shared))
    kept.extend(new)
    if first < last and pieces[last - 1].end > end:
        tail = pieces[last - 1]
        kept.append(Piece(end, tail.end, tail.delta, tail.shared))
    pieces[first:last] = kept
    starts[first:last] = [piece.start for piece in kept]


def overlay(base: Sequence[Piece], overrides: Sequence[Piece]) -> list[Piece]:
    """``base`` with the ranges of ``overrides`` (sorted, not overlapping) replaced by them."""
    result: list[Piece] = []
    position = 0
    for piece in base:
        cursor = piece.start
        while position < len(overrides) and overrides[position].end <= cursor:
            position += 1
        scan = position
        while cursor < piece.end:
            if scan < len(overrides) and overrides[scan].start < piece.end:
                cut = overrides[scan]
                if cut.start > cursor:
                    result.append(Piece(cursor, cut.start, piece.delta, piece.shared))
                cursor = max(cursor, cut.end)
                scan += 1
            else:
                result.append(Piece(cursor, piece.end, piece.delta, piece.shared))
                cursor = piece.end
    result.extend(overrides)
    result.sort(key=lambda item: item.start)
    return result


class SharingModel:
    """Mappings of a set of images, before and after the dedupes recorded so far."""

    def __init__(self, layouts: Sequence[Sequence[Piece]], groups: Sequence[str], whole_extents: bool,
                 disk_extents: Sequence[tuple[int, int]] = ()) -> None:
        self.before = [list(pieces) for pieces in layouts]
        self.disk_extents = sorted(set(disk_extents))
        self._starts = [[piece.start for piece in pieces] for pieces in self.before]
        self.groups = list(groups)
        self.whole_extents = whole_extents
        # What each image maps to instead of its own blocks: sorted, disjoint; a later dedupe of a range
        # replaces an earlier one (images that shared a copy follow it when it shares a better one).
        self._deduped: list[list[Piece]] = [[] for _pieces in layouts]
        self._deduped_starts: list[list[int]] = [[] for _pieces in layouts]
        self._rewritten: list[list[Piece]] = [[] for _pieces in layouts]
        self._scratch_next = SCRATCH_BASE
        self.rewritten_bytes = 0
        self.rewritten_per_group: dict[str, int] = {}

    def deduped(self, dest: int, start: int, end: int, source: int) -> None:
        """Range [start, end) of image ``dest`` now shares the source's blocks at the same offset."""
        _replace(self._deduped[dest], self._deduped_starts[dest], start, end,
                 _slice(self.before[source], self._starts[source], start, end))

    def rewritten(self, refs: Sequence[tuple[int, int]], length: int) -> None:
        """``length`` bytes of data were written anew once and every (image, offset) in ``refs`` maps to them."""
        physical = self._scratch_next
        self._scratch_next += length
        for image, start in refs:
            self._rewritten[image].append(Piece(start, start + length, physical - start))
        self.rewritten_bytes += length
        group = self.groups[refs[0][0]]
        self.rewritten_per_group[group] = self.rewritten_per_group.get(group, 0) + length

    def rewritten_by_image(self) -> list[int]:
        """Bytes of each image that now lie in rewritten (new) extents."""
        return [sum(piece.end - piece.start for piece in pieces) for pieces in self._rewritten]

    def after(self) -> list[list[Piece]]:
        """Every image's mapping after what was recorded."""
        layouts = []
        for index, pieces in enumerate(self.before):
            step = overlay(pieces, self._deduped[index])
            layouts.append(overlay(step, sorted(self._rewritten[index], key=lambda item: item.start)))
        return layouts

    def estimate(self) -> Estimate:
        """What the recorded changes free, net of rewritten data."""
        units = self._units()
        after = self.after()
        kept = _kept_bytes(units, [(piece.start + piece.delta, piece.end + piece.delta)
                                   for pieces in after for piece in pieces
                                   if piece.start + piece.delta < SCRATCH_BASE])
        estimate = Estimate()
        for unit, still in zip(units, kept, strict=True):
            if unit.outside:
                continue
            group = self.groups[min(unit.images)]
            if not self.whole_extents:
                estimate.add(group, unit.size - still)
            elif still == 0:
                estimate.add(group, unit.size)
            elif still < unit.size:
                estimate.stranded.append(Unit(unit.start, unit.end, unit.images, unit.outside, still))
        for group, amount in self.rewritten_per_group.items():
            estimate.add(group, -amount)
        return estimate

    def _units(self) -> list[Unit]:
        """Extents (whole_extents) or runs of blocks with the same referencing images (else), before."""
        events: list[tuple[int, int, int, bool]] = []
        for image, pieces in enumerate(self.before):
            for piece in pieces:
                events.append((piece.start + piece.delta, piece.end + piece.delta, image, piece.shared))
        events.sort()
        if not self.whole_extents:
            return _block_units(events)
        if not self.disk_extents:
            return _merged_units(events)
        return _disk_units(events, self.disk_extents)


def after_references(image: DedupeImage, before: Sequence[Piece], after: Sequence[Piece]) -> list[tuple[int, int]]:
    """The physical ranges (start, end) that ``image`` references once its usable pieces went from ``before`` to
    ``after``: those pieces, and every part of its extents the engine does not use (left as they were).

    A compressed extent names only where its data starts (FIEMAP's length is
    the uncompressed one): one byte there stands for it.
    """
    covered = sorted((piece.start, piece.end) for piece in before)
    found = []
    position = 0
    for extent in image.extents:
        if extent.flags & _NO_ADDRESS:
            continue
        if extent.flags & EXTENT_ENCODED:
            found.append((extent.physical, extent.physical + 1))
            continue
        delta = extent.physical - extent.logical
        cursor, end = extent.logical, extent.logical + extent.length
        while position < len(covered) and covered[position][1] <= cursor:
            position += 1
        scan = position
        while cursor < end:
            if scan < len(covered) and covered[scan][0] < end:
                if covered[scan][0] > cursor:
                    found.append((cursor + delta, covered[scan][0] + delta))
                cursor = max(cursor, covered[scan][1])
                scan += 1
            else:
                found.append((cursor + delta, end + delta))
                cursor = end
    found.extend((piece.start + piece.delta, piece.end + piece.delta) for piece in after)
    found.sort()
    return found


def _merged_units(intervals: Sequence[tuple[int, int, int, bool]]) -> list[Unit]:
    units: list[Unit] = []
    start = end = -1
    images: set[int] = set()
    shared = False
    for begin, finish, image, flag in intervals:
        if begin >= end:
            if images:
                units.append(Unit(start, end, frozenset(images), shared and len(images) < 2))
            start, end, images, shared = begin, finish, set(), False
        end = max(end, finish)
        images.add(image)
        shared = shared or flag
    if images:
        units.append(Unit(start, end, frozenset(images), shared and len(images) < 2))
    return units


def _disk_units(intervals: Sequence[tuple[int, int, int, bool]], disk: Sequence[tuple[int, int]]) -> list[Unit]:
    """The on-disk extents the intervals lie in; intervals outside every known extent form merged units."""
    starts = [start for start, _size in disk]
    found: dict[int, tuple[set[int], list[bool]]] = {}
    leftover: list[tuple[int, int, int, bool]] = []
    for begin, finish, image, flag in intervals:
        cursor = begin
        while cursor < finish:
            position = bisect.bisect_right(starts, cursor) - 1
            if position >= 0 and cursor < disk[position][0] + disk[position][1]:
                images, shared = found.setdefault(position, (set(), [False]))
                images.add(image)
                shared[0] = shared[0] or flag
                cursor = min(finish, disk[position][0] + disk[position][1])
                continue
            following = disk[position + 1][0] if position + 1 < len(disk) else finish
            leftover.append((cursor, min(finish, following), image, flag))
            cursor = min(finish, following)
    units = [Unit(disk[position][0], disk[position][0] + disk[position][1], frozenset(images),
                  shared[0] and len(images) < 2)
             for position, (images, shared) in found.items()]
    units.extend(_merged_units(sorted(leftover)))
    units.sort(key=lambda unit: unit.start)
    return units


def _block_units(intervals: Sequence[tuple[int, int, int, bool]]) -> list[Unit]:
    points: list[tuple[int, int, int, bool]] = []
    for begin, finish, image, flag in intervals:
        points.append((begin, 1, image, flag))
        points.append((finish, -1, image, flag))
    points.sort(key=lambda item: (item[0], item[1]))
    units: list[Unit] = []
    active: dict[int, int] = {}
    shared = 0
    previous = None
    for position, change, image, flag in points:
        if previous is not None and position > previous and active:
            images = frozenset(active)
            unit = Unit(previous, position, images, shared > 0 and len(images) < 2)
            last = units[-1] if units else None
            if last is not None and last.end == previous and last.images == images and last.outside == unit.outside:
                units[-1] = Unit(last.start, position, images, last.outside)
            else:
                units.append(unit)
        active[image] = active.get(image, 0) + change
        if not active[image]:
            del active[image]
        shared += change if flag else 0
        previous = position
    return units


def _kept_bytes(units: Sequence[Unit], references: list[tuple[int, int]]) -> list[int]:
    """For each unit (sorted, disjoint), how many of its bytes ``references`` cover (each byte once)."""
    references.sort()
    merged: list[tuple[int, int]] = []
    for begin, finish in references:
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], finish))
        else:
            merged.append((begin, finish))
    kept = []
    position = 0
    for unit in units:
        while position < len(merged) and merged[position][1] <= unit.start:
            position += 1
        scan = position
        covered = 0
        while scan < len(merged) and merged[scan][0] < unit.end:
            covered += min(merged[scan][1], unit.end) - max(merged[scan][0], unit.start)
            scan += 1
        kept.append(covered)
    return kept

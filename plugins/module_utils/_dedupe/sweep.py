# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where images hold data at the same offset in more than one physical copy: a sweep over extent maps.

Only the maps are read here, no data.  At each offset every image is a hole
(or an extent we leave alone) or maps to a physical address; images mapping
the same address already share that block and form one *copy*.  A range
where two or more copies exist is a :class:`Segment`: the only ranges the
engine reads and compares.  Ranges where all images already share one copy
are never read, which is what makes a rerun cheap.

Within an extent the physical address grows with the offset, so "same
address" is "same ``physical - logical``" (the extent's *delta*) for as long
as neither image crosses an extent boundary: the sweep goes from boundary to
boundary and groups the images by delta.

Images are ranked once for the whole set: the image whose blocks files
outside the set also hold comes first (those blocks stay allocated anyway: a
running AppVM's dirty image holds its template's), then the image whose data
is already shared with the most others (it is most likely the original the
others were copied from, and keeping its blocks leaves its extents whole),
then the caller's order.  Each segment's copies are ordered by their best
image, and the first copy of a set of equal copies is the one kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.inputs import DedupeImage


@dataclass(frozen=True)
class Piece:
    """A range of one image mapped to disk: bytes ``start`` to ``end`` are at ``start + delta``."""

    start: int
    end: int
    delta: int
    shared: bool = False


@dataclass(frozen=True)
class Segment:
    """A range where the images form two or more physical copies.

    ``copies``: the images of each copy (a copy being images that share the
    same blocks there), best ranked first; the copies in rank order too.
    """

    start: int
    end: int
    copies: tuple[tuple[int, ...], ...]

    @property
    def length(self) -> int:
        return self.end - self.start


def usable_pieces(image: DedupeImage, block_size: int) -> list[Piece]:
    """The image's dedupable extents as pieces, clipped to its whole blocks.

    A partial last block is left out: the kernel dedupes a partial block only
    where both ranges end at the end of both files, which images of different
    sizes do not.
    """
    limit = image.size - image.size % block_size
    pieces: list[Piece] = []
    for extent in image.extents:
        if not extent.dedupable:
            continue
        start = extent.logical
        end = min(extent.logical + extent.length, limit)
        if end <= start:
            continue
        delta = extent.physical - extent.logical
        last = pieces[-1] if pieces else None
        if last is not None and last.end == start and last.delta == delta and last.shared == extent.shared:
            pieces[-1] = Piece(last.start, end, delta, last.shared)
        else:
            pieces.append(Piece(start, end, delta, extent.shared))
    return pieces


def _boundaries(layouts: Sequence[Sequence[Piece]]) -> list[int]:
    points = set()
    for pieces in layouts:
        for piece in pieces:
            points.add(piece.start)
            points.add(piece.end)
    return sorted(points)


def _walk(layouts: Sequence[Sequence[Piece]]) -> list[tuple[int, int, dict[int, list[int]]]]:
    """(start, end, {delta: images}) for each range between boundaries where some image has data."""
    cursor = [0] * len(layouts)
    found = []
    points = _boundaries(layouts)
    for start, end in pairwise(points):
        by_delta: dict[int, list[int]] = {}
        for index, pieces in enumerate(layouts):
            position = cursor[index]
            while position < len(pieces) and pieces[position].end <= start:
                position += 1
            cursor[index] = position
            if position < len(pieces) and pieces[position].start <= start:
                by_delta.setdefault(pieces[position].delta, []).append(index)
        if by_delta:
            found.append((start, end, by_delta))
    return found


def rank_images(layouts: Sequence[Sequence[Piece]], walked: Sequence[tuple[int, int, dict[int, list[int]]]],
                held_elsewhere: Sequence[int] = ()) -> list[int]:
    """Rank of each image (0 = best): most bytes held outside the set too, then most bytes already shared with
    another image of the set, then given order."""
    shared = [0] * len(layouts)
    for start, end, by_delta in walked:
        for members in by_delta.values():
            if len(members) > 1:
                for index in members:
                    shared[index] += end - start
    elsewhere = list(held_elsewhere) or [0] * len(layouts)
    order = sorted(range(len(layouts)), key=lambda index: (-elsewhere[index], -shared[index], index))
    rank = [0] * len(layouts)
    for position, index in enumerate(order):
        rank[index] = position
    return rank


def find_segments(images: Sequence[DedupeImage], block_size: int) -> tuple[list[list[Piece]], list[Segment]]:
    """The usable pieces of every image, and the segments where two or more copies exist, in offset order."""
    layouts = [usable_pieces(image, block_size) for image in images]
    walked = _walk(layouts)
    rank = rank_images(layouts, walked, [image.held_elsewhere for image in images])
    segments: list[Segment] = []
    previous: dict[int, list[int]] | None = None
    for start, end, by_delta in walked:
        if len(by_delta) < 2:
            previous = None
            continue
        if previous == by_delta and segments and segments[-1].end == start:
            # The same copies on both sides of a boundary of some other image's map.
            segments[-1] = Segment(segments[-1].start, end, segments[-1].copies)
            continue
        copies = sorted((tuple(sorted(members, key=rank.__getitem__)) for members in by_delta.values()),
                        key=lambda members: rank[members[0]])
        segments.append(Segment(start, end, tuple(copies)))
        previous = by_delta
    return layouts, segments

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The dedupe engine: make identical blocks at the same offsets of a set of images share one copy.

Input: open images with their extent maps (inputs.DedupeImage); a set
is what may share with each other (one volume's clean, revisions, pins and
precache; with scope ``pool`` the images of several volumes).  Steps:

1. sweep the extent maps (sweep.py): only offsets where the images hold
   two or more physical copies are looked at; what already shares is never
   read again, so a rerun reads (almost) nothing;
2. read each copy there once and compare exactly (compare.py); the copy
   of the best ranked image is kept, the others become destinations;
3. FIDEDUPERANGE each (the kernel compares again under its lock: no content
   changes, ever; nor size, mode, inode or mtime);
4. btrfs: rewrite the still-referenced parts of extents that step 3 left
   stranded, through a scratch file and FIDEDUPERANGE (rescue.py), so
   that they are freed;
5. report what now shares (``deduped_bytes``), what that frees
   (``reclaimed_bytes``: the engine's estimate from the maps, see model.py;
   the module measures the exact figure, see accounting.py) and where each
   changed image's blocks now lie (``after_maps``, for check mode's
   prediction of the exact figure).

In check mode (``execute`` false) steps 1, 2 and the arithmetic of 4 and 5
run, the ioctls and the scratch writes do not: the same figures, nothing
changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ansible_collections.dom0.reflink.plugins.module_utils._fs.dedupe_range import (
    Destination, DedupeUnsupported, dedupe_fully, probe_dedupe)
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.compare import DedupeOp, Reader
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.inputs import DedupeImage
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.model import SharingModel, after_references
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.prefetch import Prefetcher
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.rescue import plan_rescue, run_rescue
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.search import search
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.sweep import find_segments


@dataclass(frozen=True)
class DedupeSettings:
    """How the engine works on a file system.

    ``whole_extents``: the file system frees an extent only when nothing
    references any part of it (btrfs: true; XFS: false).  ``rewrite_ratio``:
    a stranded extent is rewritten when that frees at least 1/ratio of the
    bytes it writes.
    """

    block_size: int = 4096
    whole_extents: bool = False
    rewrite_ratio: int = 4


@dataclass
class GroupFigures:
    """The figures of one group (a vid)."""

    deduped_bytes: int = 0
    reclaimed_bytes: int = 0
    rewritten_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"deduped_bytes": self.deduped_bytes, "reclaimed_bytes": self.reclaimed_bytes,
                "rewritten_bytes": self.rewritten_bytes}


@dataclass
class DedupeReport:
    """What a run did (or would do, in check mode).

    ``deduped_bytes``: bytes of a copy that now share another copy's blocks
    (a copy that several images shared counts once); ``reclaimed_bytes``: the
    space that frees, net of ``rewritten_bytes`` (the engine's estimate from
    the extent maps, see model.py); ``bytes_read``: data read to compare and
    to rewrite; ``refused``: dedupes the kernel refused (the data changed
    meanwhile, or an error), nothing changed by those.  Per image:
    ``shared_with`` ((destination, source) names -> bytes of the destination
    that now share the source's blocks), ``rewritten_files`` (name -> bytes
    moved to new extents) and ``after_maps`` (identity -> the physical ranges
    the image references afterwards, for each image whose mapping changed;
    rewritten data at addresses from model.SCRATCH_BASE on).
    """

    deduped_bytes: int = 0
    reclaimed_bytes: int = 0
    rewritten_bytes: int = 0
    bytes_read: int = 0
    dedupe_calls: int = 0
    groups: dict[str, GroupFigures] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    shared_with: dict[tuple[str, str], int] = field(default_factory=dict)
    rewritten_files: dict[str, int] = field(default_factory=dict)
    after_maps: dict[tuple[int, int], list[tuple[int, int]]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.deduped_bytes > 0 or self.rewritten_bytes > 0

    def group(self, name: str) -> GroupFigures:
        return self.groups.setdefault(name, GroupFigures())

    def merge(self, other: DedupeReport) -> None:
        """Add the figures of another set's report (scope ``volume``: one report per volume)."""
        self.deduped_bytes += other.deduped_bytes
        self.reclaimed_bytes += other.reclaimed_bytes
        self.rewritten_bytes += other.rewritten_bytes
        self.bytes_read += other.bytes_read
        self.dedupe_calls += other.dedupe_calls
        for name, figures in other.groups.items():
            mine = self.group(name)
            mine.deduped_bytes += figures.deduped_bytes
            mine.reclaimed_bytes += figures.reclaimed_bytes
            mine.rewritten_bytes += figures.rewritten_bytes
        self.refused.extend(other.refused)
        for pair, amount in other.shared_with.items():
            self.shared_with[pair] = self.shared_with.get(pair, 0) + amount
        for name, amount in other.rewritten_files.items():
            self.rewritten_files[name] = self.rewritten_files.get(name, 0) + amount
        self.after_maps.update(other.after_maps)


def require_dedupe(dir_fd: int, where: str, block_size: int = 4096) -> None:
    """Raise DedupeUnsupported, with a message for the user, where the file system cannot share extents."""
    if not probe_dedupe(dir_fd, block_size):
        raise DedupeUnsupported(
            "the file system of %s cannot share blocks between files (FIDEDUPERANGE is not supported there, as on "
            "ext4): there is nothing to dedupe; nothing was changed" % where)


class _Attempts:
    """Does each proposed dedupe (or predicts it, in check mode) and records it in the model and the report."""

    def __init__(self, images: Sequence[DedupeImage], model: SharingModel, reader: Reader, report: DedupeReport,
                 execute: bool) -> None:
        self.images = images
        self.model = model
        self.reader = reader
        self.report = report
        self.execute = execute

    def __call__(self, op: DedupeOp, exact: bool) -> list[int]:
        destinations = op.destinations
        if self.execute:
            done = self._dedupe(op, destinations, exact)
        elif exact:
            done = [op.length] * len(destinations)
        else:
            # Check mode: the comparison the kernel would make.
            source = self.reader.read(op.source, op.start, op.length)
            equal = {copy: self.reader.read(copy[0], op.start, op.length) == source for copy in op.copies}
            done = [op.length if equal[copy] else 0 for copy in op.copies for _index in copy]
        per_image = dict(zip(destinations, done, strict=True))
        for index in destinations:
            if per_image[index]:
                self.model.deduped(index, op.start, op.start + per_image[index], op.source)
                pair = (self.images[index].name, self.images[op.source].name)
                self.report.shared_with[pair] = self.report.shared_with.get(pair, 0) + per_image[index]
        per_copy = [min(per_image[index] for index in copy) for copy in op.copies]
        for copy, amount in zip(op.copies, per_copy, strict=True):
            self.report.deduped_bytes += amount
            self.report.group(self.images[copy[0]].group).deduped_bytes += amount
        return per_copy

    def _dedupe(self, op: DedupeOp, destinations: Sequence[int], exact: bool) -> list[int]:
        # One destination per call: XFS holds the locks of every file of a call while it compares, and
        # readahead of those files (the prefetch of the next chunks) waits for them meanwhile.
        results = []
        for index in destinations:
            results.extend(dedupe_fully(self.images[op.source].fd, op.start, op.length,
                                        [Destination(self.images[index].fd, op.start)]))
            self.report.dedupe_calls += 1
        for index, result in zip(destinations, results, strict=True):
            # "Differs" after a proposal from samples is the walk's way of finding differences; after an
            # exact comparison it means the data changed meanwhile (nothing was changed by the dedupe).
            if result.deduped != op.length and (exact or not result.differs):
                self.report.refused.append("%s at %d: dedupe of %d bytes from %s: %s"
                                           % (self.images[index].name, op.start, op.length,
                                              self.images[op.source].name, result.describe()))
        return [result.deduped for result in results]


def dedupe_set(images: Sequence[DedupeImage], settings: DedupeSettings, execute: bool) -> DedupeReport:
    """Dedupe one set of images (or, with ``execute`` false, only work out what that would do)."""
    report = DedupeReport()
    for image in images:
        report.group(image.group)
    if len(images) < 2:
        return report
    layouts, segments = find_segments(images, settings.block_size)
    model = SharingModel(layouts, [image.group for image in images], settings.whole_extents,
                         [extent for image in images for extent in image.disk_extents])
    prefetcher = Prefetcher() if execute else None
    try:
        reader = Reader(images, prefetcher)
        search(segments, reader, settings.block_size, _Attempts(images, model, reader, report, execute))
    finally:
        if prefetcher is not None:
            prefetcher.close()
    reader.prefetcher = None
    estimate = model.estimate()
    if estimate.stranded:
        runs = plan_rescue(model, estimate.stranded, settings.rewrite_ratio)
        if runs:
            report.refused.extend(run_rescue(runs, images, model, reader, execute))
            estimate = model.estimate()
    report.reclaimed_bytes = estimate.freed
    report.rewritten_bytes = model.rewritten_bytes
    report.bytes_read = reader.bytes_read
    for name, amount in estimate.per_group.items():
        report.group(name).reclaimed_bytes += amount
    for name, amount in model.rewritten_per_group.items():
        report.group(name).rewritten_bytes += amount
    for index, (before, after) in enumerate(zip(model.before, model.after(), strict=True)):
        if before != after:
            report.after_maps[images[index].identity] = after_references(images[index], before, after)
    for index, amount in enumerate(model.rewritten_by_image()):
        if amount:
            report.rewritten_files[images[index].name] = amount
    return report

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""btrfs: free the extents a dedupe left *stranded*, without changing a byte or an mtime.

btrfs frees an extent only when no file references any part of it.  After a
copy of a template has been deduped against the template everywhere but in
the 4 MiB it changed, its 96 MiB extent is still referenced by those 4 MiB
and nothing is freed (measured: 0 bytes).  The way out that keeps every
image's content, size, inode and mtime: write the still-referenced bytes
once more into a scratch file (an O_TMPFILE in the image's directory,
fsynced), then FIDEDUPERANGE from the scratch file into every image range
that references them.  The kernel compares the bytes (equal: they are a copy)
and points those ranges at the new extent; the old extent loses its last
reference and is freed (measured: 92.2 MiB freed for 4 MiB written).  The
scratch file has no name; closing it drops its own references, the images
keep the new extent.

A stranded extent is rewritten only when that frees at least 1/ratio of what
it writes (``rewrite_ratio``), and never when something outside the set
references it (it would not be freed).  XFS frees block by block: nothing is
ever stranded there, nothing is rewritten.
"""

from __future__ import annotations

import bisect
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from ansible_collections.dom0.reflink.plugins.module_utils._fs.dedupe_range import Destination, dedupe_fully
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.compare import Reader
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.inputs import DedupeImage
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.model import SharingModel, Unit

_COPY_PIECE = 4 * 1024 * 1024


@dataclass(frozen=True)
class RescueRun:
    """``length`` bytes of data referenced at each (image, offset) of ``refs``: to be written anew once."""

    length: int
    refs: tuple[tuple[int, int], ...]


def plan_rescue(model: SharingModel, stranded: Sequence[Unit], rewrite_ratio: int) -> list[RescueRun]:
    """The rewrites that free the stranded extents worth freeing."""
    worth = [unit for unit in stranded if not unit.outside and (unit.size - unit.kept) * rewrite_ratio >= unit.kept]
    if not worth:
        return []
    starts = [unit.start for unit in worth]
    per_unit: list[list[tuple[int, int, int, int]]] = [[] for _unit in worth]
    for image, pieces in enumerate(model.after()):
        for piece in pieces:
            # A piece may run over several extents (FIEMAP joins extents that lie next to each other on disk):
            # each gets its part.
            physical, end = piece.start + piece.delta, piece.end + piece.delta
            position = max(bisect.bisect_right(starts, physical) - 1, 0)
            while position < len(worth) and worth[position].start < end:
                low, high = max(physical, worth[position].start), min(end, worth[position].end)
                if low < high:
                    per_unit[position].append((low, high, image, piece.start + low - physical))
                position += 1
    runs: list[RescueRun] = []
    for references in per_unit:
        runs.extend(_runs_of(references))
    return runs


def _runs_of(references: Sequence[tuple[int, int, int, int]]) -> list[RescueRun]:
    """Cut the (physical start, end, image, offset) references at every boundary; one run per stretch of disk."""
    if not references:
        return []   # a stranded unit that no piece of the images maps any more: nothing to write anew
    events = sorted([(start, 1, index) for index, (start, _end, _image, _offset) in enumerate(references)]
                    + [(end, -1, index) for index, (_start, end, _image, _offset) in enumerate(references)])
    runs: list[RescueRun] = []
    active: set[int] = set()
    previous: tuple[int, int, tuple[tuple[int, int], ...]] | None = None
    for (start, change, index), (end, _change, _index) in zip(events, events[1:] + [(-1, 0, 0)], strict=True):
        if change > 0:
            active.add(index)
        else:
            active.discard(index)
        if end <= start or not active:
            continue
        refs = tuple(sorted((references[item][2], references[item][3] + start - references[item][0])
                            for item in active))
        if previous is not None and previous[1] == start and \
                [(image, offset + previous[1] - previous[0]) for image, offset in previous[2]] == list(refs):
            previous = (previous[0], end, previous[2])
            runs[-1] = RescueRun(end - previous[0], previous[2])
            continue
        previous = (start, end, refs)
        runs.append(RescueRun(end - start, refs))
    return runs


class ScratchFiles:
    """One unnamed scratch file per directory, written in order; closed (and so gone) at the end."""

    def __init__(self) -> None:
        self._files: dict[int, list[int]] = {}   # dir_fd -> [fd, next offset]

    def append(self, dir_fd: int, reader: Reader, image: int, offset: int, length: int) -> tuple[int, int]:
        """Copy ``length`` bytes of ``image`` at ``offset`` to the end of the directory's scratch file."""
        entry = self._files.get(dir_fd)
        if entry is None:
            fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            entry = self._files[dir_fd] = [fd, 0]
        fd, start = entry
        done = 0
        while done < length:
            data = reader.read(image, offset + done, min(_COPY_PIECE, length - done))
            if not data:
                raise OSError(errno.EIO, "image shrank while its data was being rewritten")
            os.pwrite(fd, data, start + done)
            done += len(data)
        entry[1] = start + length
        return fd, start

    def sync(self) -> None:
        for fd, _end in self._files.values():
            os.fsync(fd)

    def close(self) -> None:
        for fd, _end in self._files.values():
            os.close(fd)
        self._files.clear()


def run_rescue(runs: Sequence[RescueRun], images: Sequence[DedupeImage], model: SharingModel, reader: Reader,
               execute: bool) -> list[str]:
    """Rewrite the runs (or only record them, in check mode); returns what the kernel refused."""
    refused: list[str] = []
    if not execute:
        for run in runs:
            model.rewritten(run.refs, run.length)
        return refused
    scratch = ScratchFiles()
    try:
        placed = []
        for run in runs:
            image, offset = run.refs[0]
            try:
                placed.append(scratch.append(images[image].dir_fd, reader, image, offset, run.length))
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                refused.append("%s: no unnamed scratch file here (%s): stranded extents not rewritten"
                               % (images[image].name, exc.strerror))
                runs = runs[:len(placed)]
                break
        scratch.sync()
        for run, (fd, start) in zip(runs[:len(placed)], placed, strict=True):
            results = dedupe_fully(fd, start, run.length,
                                   [Destination(images[image].fd, offset) for image, offset in run.refs])
            done = [(ref, result.deduped) for ref, result in zip(run.refs, results, strict=True)]
            whole = tuple(ref for ref, amount in done if amount == run.length)
            if whole:
                model.rewritten(whole, run.length)
            for (image, offset), result in zip(run.refs, results, strict=True):
                if result.deduped != run.length:
                    refused.append("%s at %d: rewrite of %d bytes: %s"
                                   % (images[image].name, offset, run.length, result.describe()))
    finally:
        scratch.close()
    return refused

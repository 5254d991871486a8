# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading image data, and the exact comparison of copies read in full.

Comparison is exact (bytes against bytes: memcmp, tens of GB/s), not by
digest: hashing costs more than the comparison it would save at these sizes,
and an exact answer lets check mode predict what the kernel will do.  The
kernel compares again under its lock before remapping anything, so a file
changed meanwhile is never harmed: the dedupe then simply says "differs".

:func:`compare_chunk` takes the data of several copies of one chunk: copies
that are equal as a whole are grouped, the first (best ranked) copy of a
group is the one kept and every image of the other copies becomes a
destination.  Where the chunk holds two or more different groups, their
blocks are matched one by one (two sampled words per block propose a match,
the bytes decide it), so that a copy that differs from the original in one
block still shares the rest of the chunk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.inputs import DedupeImage
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.prefetch import Prefetcher, readahead_window

_SAMPLE = 32


@dataclass(frozen=True)
class DedupeOp:
    """Make ``copies`` (each a tuple of images sharing one physical copy) share ``source``'s blocks.

    Same offset in the source and every destination.
    """

    source: int
    start: int
    length: int
    copies: tuple[tuple[int, ...], ...]

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def destinations(self) -> tuple[int, ...]:
        return tuple(index for copy in self.copies for index in copy)


class Reader:
    """Reads image data and counts what it read; hands read-ahead requests to a Prefetcher, if given one.

    The descriptors are told that access is random (POSIX_FADV_RANDOM): a
    sample of one block then reads one block from disk, not a readahead
    window, while a read of a whole chunk still goes to disk in large requests.
    """

    def __init__(self, images: Sequence[DedupeImage], prefetcher: Prefetcher | None = None) -> None:
        self.images = images
        self.prefetcher = prefetcher
        self.bytes_read = 0
        for image in images:
            os.posix_fadvise(image.fd, 0, 0, os.POSIX_FADV_RANDOM)
            if prefetcher is not None:
                # Known before the prefetch thread needs it: its ioctl (btrfs) is then made here, in the same
                # order in every run, not interleaved with the walk's by the thread's timing.
                readahead_window(image.fd)

    def read(self, index: int, start: int, length: int) -> bytes:
        """``length`` bytes of image ``index`` at ``start``; shorter only if the file shrank meanwhile."""
        fd = self.images[index].fd
        parts = []
        done = 0
        while done < length:
            data = os.pread(fd, length - done, start + done)
            if not data:
                break
            parts.append(data)
            done += len(data)
        self.bytes_read += done
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def samples(self, index: int, positions: Sequence[int], block_size: int) -> tuple[bytes, ...]:
        """The block of image ``index`` at each of ``positions``."""
        return tuple(self.read(index, position, block_size) for position in positions)

    def prefetch_samples(self, index: int, positions: Sequence[int], block_size: int) -> None:
        if self.prefetcher is not None:
            for position in positions:
                self.prefetcher.want(self.images[index].fd, position, block_size)

    def prefetch(self, indices: Sequence[int], start: int, length: int) -> int:
        """Have these ranges read into the page cache ahead of the kernel's comparison; a ticket for :meth:`wait`."""
        ticket = 0
        if self.prefetcher is not None:
            for index in indices:
                ticket = self.prefetcher.want(self.images[index].fd, start, length)
        return ticket

    def wait(self, ticket: int, indices: Sequence[int], start: int, length: int) -> None:
        """Wait until the prefetch of ``ticket`` was asked for and its reads of these ranges are done.

        A read of one byte at the end of each readahead piece waits for that
        piece's I/O, here, without a lock: the dedupe would otherwise wait for
        it holding both files' locks (XFS), which readahead of the next
        chunks needs too.
        """
        if self.prefetcher is None or not ticket:
            return
        self.prefetcher.wait(ticket)
        for index in indices:
            fd = self.images[index].fd
            piece = readahead_window(fd)
            for position in range(start, start + length, piece):
                os.pread(fd, 1, min(position + piece, start + length) - 1)


def _group_whole(datas: Sequence[bytes]) -> list[list[int]]:
    """Indices of ``datas`` grouped by equal content, groups in order of their first member."""
    groups: list[list[int]] = []
    buckets: dict[bytes, list[int]] = {}
    for index, data in enumerate(datas):
        middle = len(data) // 2
        key = data[:_SAMPLE] + data[middle:middle + _SAMPLE]
        for group_index in buckets.get(key, ()):
            if datas[groups[group_index][0]] == data:
                groups[group_index].append(index)
                break
        else:
            buckets.setdefault(key, []).append(len(groups))
            groups.append([index])
    return groups


def _samples(data: bytes, block_size: int) -> list[tuple[int, int]]:
    """Two 8-byte words of each block (its first and its middle one)."""
    words = memoryview(data).cast("Q")
    step = block_size // 8
    return list(zip(words[::step].tolist(), words[step // 2::step].tolist(), strict=True))


def _leaders(datas: Sequence[bytes], block_size: int) -> list[list[int]]:
    """For each of ``datas`` and each block: the index of the first data with an equal block."""
    blocks = len(datas[0]) // block_size
    samples = [_samples(data, block_size) for data in datas]
    leaders = [[index] * blocks for index in range(len(datas))]
    for block in range(blocks):
        start = block * block_size
        seen: dict[tuple[int, int], list[int]] = {}
        for index, own in enumerate(samples):
            candidates = seen.setdefault(own[block], [])
            for earlier in candidates:
                if datas[earlier][start:start + block_size] == datas[index][start:start + block_size]:
                    leaders[index][block] = earlier
                    break
            else:
                candidates.append(index)
    return leaders


def _runs(values: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """(first, end, value) of each run of equal values."""
    first = 0
    for position in range(1, len(values) + 1):
        if position == len(values) or values[position] != values[first]:
            yield first, position, values[first]
            first = position


def compare_chunk(copies: Sequence[tuple[int, ...]], start: int, datas: Sequence[bytes],
                  block_size: int) -> Iterator[DedupeOp]:
    """The dedupes that make equal data of ``copies`` (read into ``datas``) share one copy."""
    groups = _group_whole(datas)
    length = len(datas[0])
    firsts = [group[0] for group in groups]
    blocks = length // block_size
    # Different groups may still hold equal blocks: match them block by block.
    leaders = _leaders([datas[index] for index in firsts], block_size) if len(groups) > 1 else [[0] * blocks]
    for group_index, group in enumerate(groups):
        for first, end, leader in _runs(leaders[group_index]):
            run_start, run_length = start + first * block_size, (end - first) * block_size
            if leader != group_index:
                yield DedupeOp(copies[firsts[leader]][0], run_start, run_length, tuple(copies[index] for index in group))
            elif len(group) > 1:
                yield DedupeOp(copies[group[0]][0], run_start, run_length, tuple(copies[index] for index in group[1:]))

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The walk over the segments: propose dedupes from samples, let the kernel compare, look closer where it differs.

Per chunk of a segment (at most CHUNK_BYTES), for each physical copy:

1. read its first and last block and one every SAMPLE_STRIDE (a sample:
   about 0.5 % of the data); chunks are cut on a fixed grid;
2. copies whose samples are all equal are proposed to share the whole
   chunk: one FIDEDUPERANGE from the best ranked of them into the images of
   the others.  The kernel compares every byte (it reads the pages, which
   the walk asked it to prefetch); the walk itself reads no more;
3. a copy the kernel found different, or one whose samples match another
   copy's only in part, is read in full with the copies it may share with,
   and compared block by block (compare.compare_chunk);
4. a copy whose samples match no other copy's is left alone: data that
   differs at every sampled block is taken as different.  This is what keeps
   a rerun cheap: ranges that differ are sampled, not read again.

``attempt(op, exact)`` does (or, in check mode, predicts) one dedupe and
returns the bytes done per destination copy; ``exact`` says that the data
was already compared in full.  In check mode an attempt that is not exact
compares the bytes itself, so that both modes take the same path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.compare import DedupeOp, Reader, compare_chunk
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.sweep import Segment

CHUNK_BYTES = 4 * 1024 * 1024
SAMPLE_STRIDE = 1024 * 1024
# How many chunks ahead the samples and the proposed data are asked for.
SAMPLE_AHEAD = 3
DATA_AHEAD = 2
# Data read at once for the close look at one chunk (all copies together).
READ_BUDGET = 64 * 1024 * 1024

Attempt = Callable[[DedupeOp, bool], Sequence[int]]


def _chunk_size(copies: int, block_size: int) -> int:
    size = min(CHUNK_BYTES, READ_BUDGET // max(copies, 1))
    return max(block_size, size - size % block_size)


def _chunks(segment: Segment, size: int) -> list[tuple[int, int]]:
    """(start, length) of the segment's chunks, cut on a grid of ``size`` (the same cuts in every run)."""
    cuts = [segment.start]
    cuts.extend(range(segment.start - segment.start % size + size, segment.end, size))
    cuts.append(segment.end)
    return [(start, end - start) for start, end in pairwise(cuts)]


def sample_positions(start: int, length: int, block_size: int) -> list[int]:
    """The chunk's first and last block and every block at a multiple of SAMPLE_STRIDE between."""
    last = start + length - block_size
    inner = range(start - start % SAMPLE_STRIDE + SAMPLE_STRIDE, last, SAMPLE_STRIDE)
    return sorted({start, last, *inner})


def _sample_groups(samples: Sequence[tuple[bytes, ...]]) -> list[list[int]]:
    """Copies with all samples equal, grouped (in order of their first member)."""
    groups: dict[tuple[bytes, ...], list[int]] = {}
    for index, vector in enumerate(samples):
        groups.setdefault(vector, []).append(index)
    return list(groups.values())


def _related(samples: Sequence[tuple[bytes, ...]], among: Sequence[int]) -> set[int]:
    """Those of ``among`` that share at least one sample (same block, same bytes) with another of them."""
    related: set[int] = set()
    for position in range(len(samples[0]) if samples else 0):
        by_value: dict[bytes, list[int]] = {}
        for index in among:
            by_value.setdefault(samples[index][position], []).append(index)
        for members in by_value.values():
            if len(members) > 1:
                related.update(members)
    return related


@dataclass(frozen=True)
class _Proposal:
    """A chunk, sampled: which copies look equal as a whole, which share at least a sample with another."""

    copies: Sequence[tuple[int, ...]]
    start: int
    length: int
    samples: list[tuple[bytes, ...]]
    groups: list[list[int]]

    def proposed_images(self) -> list[int]:
        # The kept copy last: every dedupe of the chunk locks it, each destination only during its own.
        images = [image for group in self.groups if len(group) > 1 for index in group[1:] for image in self.copies[index]]
        return images + [image for group in self.groups if len(group) > 1 for image in self.copies[group[0]]]


def _propose(segment: Segment, start: int, length: int, reader: Reader, block_size: int) -> _Proposal | None:
    positions = sample_positions(start, length, block_size)
    samples = [reader.samples(copy[0], positions, block_size) for copy in segment.copies]
    if any(len(block) != block_size for vector in samples for block in vector):
        return None   # a file shrank under us: nothing here is safe to propose
    if not _related(samples, range(len(samples))):
        return None
    return _Proposal(segment.copies, start, length, samples, _sample_groups(samples))


def _settle(proposal: _Proposal, reader: Reader, block_size: int, attempt: Attempt) -> None:
    copies, start, length = list(proposal.copies), proposal.start, proposal.length
    remaining = set(range(len(copies)))
    for group in proposal.groups:
        if len(group) < 2:
            continue
        op = DedupeOp(copies[group[0]][0], start, length, tuple(copies[index] for index in group[1:]))
        for index, done in zip(group[1:], attempt(op, False), strict=True):
            if done == length:
                # It shares the keeper's blocks now: the keeper stands for it, and takes its images along
                # wherever the keeper's copy is made to share a better one below.
                remaining.discard(index)
                copies[group[0]] = copies[group[0]] + copies[index]
    chosen = sorted(_related(proposal.samples, sorted(remaining)))
    if len(chosen) < 2:
        return
    datas = [reader.read(copies[index][0], start, length) for index in chosen]
    if any(len(data) != length for data in datas):
        return
    for op in compare_chunk([copies[index] for index in chosen], start, datas, block_size):
        attempt(op, True)


def search(segments: Sequence[Segment], reader: Reader, block_size: int, attempt: Attempt) -> None:
    """Walk every segment chunk by chunk (see the module's docstring).

    A pipeline, for a reader with a prefetcher: the samples of a chunk are
    asked for SAMPLE_AHEAD chunks before it is sampled, its proposed ranges
    DATA_AHEAD chunks before it is settled (the kernel's comparison reads
    missing pages one at a time, without readahead).
    """
    chunks: list[tuple[Segment, int, int]] = []
    for segment in segments:
        size = _chunk_size(len(segment.copies), block_size)
        chunks.extend((segment, start, length) for start, length in _chunks(segment, size))
    for segment, start, length in chunks[:SAMPLE_AHEAD]:
        for copy in segment.copies:
            reader.prefetch_samples(copy[0], sample_positions(start, length, block_size), block_size)
    pending: deque[tuple[_Proposal, int]] = deque()
    for position, (segment, start, length) in enumerate(chunks):
        for ahead, ahead_start, ahead_length in chunks[position + SAMPLE_AHEAD:position + SAMPLE_AHEAD + 1]:
            for copy in ahead.copies:
                reader.prefetch_samples(copy[0], sample_positions(ahead_start, ahead_length, block_size), block_size)
        proposal = _propose(segment, start, length, reader, block_size)
        if proposal is not None:
            pending.append((proposal, reader.prefetch(proposal.proposed_images(), start, length)))
        if len(pending) > DATA_AHEAD:
            settled, ticket = pending.popleft()
            reader.wait(ticket, settled.proposed_images(), settled.start, settled.length)
            _settle(settled, reader, block_size, attempt)
    while pending:
        settled, ticket = pending.popleft()
        reader.wait(ticket, settled.proposed_images(), settled.start, settled.length)
        _settle(settled, reader, block_size, attempt)

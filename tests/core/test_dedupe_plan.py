# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The dedupe engine's arithmetic on extent maps and data given as values (no file system)."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.compare import DedupeOp, compare_chunk
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.inputs import (
    EXTENT_SHARED, EXTENT_UNWRITTEN, DedupeImage, MappedExtent)
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.model import SharingModel, overlay
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.rescue import RescueRun, _runs_of, plan_rescue
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.sweep import Piece, Segment, find_segments

B = 4096


def image(name, extents, size=64 * B):
    return DedupeImage(name, name.split(":")[0], -1, -1, size, (0, hash(name)), tuple(extents))


def pieces_strategy():
    """Sorted, non-overlapping pieces on a grid of 16 blocks."""
    return st.lists(st.tuples(st.booleans(), st.integers(0, 1000)), min_size=16, max_size=16).map(
        lambda cells: [Piece(index * B, (index + 1) * B, delta * B) for index, (present, delta) in enumerate(cells)
                       if present])


def mapping_at(pieces, offset):
    for piece in pieces:
        if piece.start <= offset < piece.end:
            return piece.delta
    return None


@given(pieces_strategy(), pieces_strategy())
def test_overlay_takes_the_overrides_where_they_are_and_the_base_elsewhere(base, overrides):
    result = overlay(base, overrides)
    assert all(left.end <= right.start for left, right in pairwise(result))
    for block in range(16):
        offset = block * B
        expected = mapping_at(overrides, offset)
        if expected is None:
            expected = mapping_at(base, offset)
        assert mapping_at(result, offset) == expected


def test_segments_are_where_images_hold_different_copies_and_holes_and_unwritten_are_left_out():
    template = image("t:a", [MappedExtent(0, 1000 * B, 16 * B, EXTENT_SHARED)])
    precache = image("t:b", [MappedExtent(0, 1000 * B, 16 * B, EXTENT_SHARED)])
    copy = image("c:a", [MappedExtent(0, 5000 * B, 8 * B), MappedExtent(12 * B, 7000 * B, 4 * B, EXTENT_UNWRITTEN)])
    _layouts, segments = find_segments([template, precache, copy], B)
    assert segments == [Segment(0, 8 * B, ((0, 1), (2,)))]


def test_the_image_sharing_most_is_kept_and_listed_first():
    copy = image("c:a", [MappedExtent(0, 5000 * B, 8 * B)])
    template = image("t:a", [MappedExtent(0, 1000 * B, 8 * B)])
    precache = image("t:b", [MappedExtent(0, 1000 * B, 8 * B)])
    _layouts, segments = find_segments([copy, template, precache], B)
    assert segments == [Segment(0, 8 * B, ((1, 2), (0,)))]


def test_compare_chunk_keeps_the_first_copy_and_matches_blocks_of_a_copy_that_differs_in_one():
    blocks = [bytes([index]) * B for index in range(8)]
    first = b"".join(blocks)
    other = b"".join(bytes([100 + index]) * B for index in range(8))
    almost = bytearray(first)
    almost[3 * B] ^= 1
    ops = list(compare_chunk([(0, 1), (2,), (3,), (4,)], 0, [first, other, bytes(almost), first], B))
    assert ops == [DedupeOp(0, 0, 8 * B, ((4,),)),
                   DedupeOp(0, 0, 3 * B, ((3,),)), DedupeOp(0, 4 * B, 4 * B, ((3,),))]


def test_xfs_frees_block_by_block_and_btrfs_only_whole_extents():
    layouts = [[Piece(0, 16 * B, 1000 * B)], [Piece(0, 16 * B, 5000 * B)]]
    for whole, freed, stranded in ((False, 12 * B, 0), (True, 0, 1)):
        model = SharingModel(layouts, ["t", "c"], whole)
        model.deduped(1, 0, 12 * B, 0)
        estimate = model.estimate()
        assert (estimate.freed, len(estimate.stranded)) == (freed, stranded)
    model.deduped(1, 12 * B, 16 * B, 0)
    assert model.estimate().freed == 16 * B


def test_btrfs_counts_the_true_size_of_an_extent_a_file_references_in_part():
    """FIEMAP shows 4 referenced blocks; the on-disk extent holds 16: removing the reference frees 16."""
    layouts = [[Piece(0, 16 * B, 1000 * B)], [Piece(4 * B, 8 * B, 5000 * B)]]
    model = SharingModel(layouts, ["t", "c"], True, [(1000 * B, 16 * B), (5004 * B, 16 * B)])
    model.deduped(1, 4 * B, 8 * B, 0)
    assert model.estimate().freed == 16 * B


def test_a_stranded_extent_is_rewritten_once_for_every_image_that_references_it():
    # The copy (and its precache) keep blocks 4-5 of their 16-block extent after the dedupe.
    layouts = [[Piece(0, 16 * B, 1000 * B)], [Piece(0, 16 * B, 5000 * B)], [Piece(0, 16 * B, 5000 * B)]]
    model = SharingModel(layouts, ["t", "c", "c"], True)
    for dest in (1, 2):
        model.deduped(dest, 0, 4 * B, 0)
        model.deduped(dest, 6 * B, 16 * B, 0)
    estimate = model.estimate()
    assert estimate.freed == 0 and [unit.kept for unit in estimate.stranded] == [2 * B]
    runs = plan_rescue(model, estimate.stranded, rewrite_ratio=4)
    assert runs == [RescueRun(2 * B, ((1, 4 * B), (2, 4 * B)))]
    model.rewritten(runs[0].refs, runs[0].length)
    assert model.estimate().freed == 16 * B - 2 * B
    assert plan_rescue(model, estimate.stranded, rewrite_ratio=0) == []


def test_a_unit_without_references_gives_no_run():
    """Seen once in test_dedupe_engine (btrfs, pool scope): a stranded unit no piece mapped made zip(strict) fail."""
    assert _runs_of([]) == []
    assert _runs_of([(0, 2 * B, 1, 0)]) == [RescueRun(2 * B, ((1, 0),))]


def test_a_range_deduped_again_maps_to_the_later_source():
    """The walk may make a range share one copy, then (with that copy) a better one: the later dedupe counts."""
    layouts = [[Piece(0, 16 * B, 1000 * B)], [Piece(0, 16 * B, 5000 * B)], [Piece(0, 16 * B, 9000 * B)]]
    model = SharingModel(layouts, ["v", "v", "v"], True)
    model.deduped(2, 0, 16 * B, 1)          # image 2 shares image 1's copy
    model.deduped(2, 4 * B, 12 * B, 0)      # ... and then, with it, image 0's in the middle
    model.deduped(1, 4 * B, 12 * B, 0)
    assert model.after()[2] == [Piece(0, 4 * B, 5000 * B), Piece(4 * B, 12 * B, 1000 * B), Piece(12 * B, 16 * B, 5000 * B)]
    estimate = model.estimate()
    # image 2's extent is freed; image 1's is still referenced at both ends (by 1 and 2): stranded, not freed
    assert estimate.freed == 16 * B and [(unit.start, unit.kept) for unit in estimate.stranded] == [(5000 * B, 8 * B)]


def test_a_kept_range_over_two_extents_is_rewritten_in_two_parts():
    """FIEMAP joins extents that lie next to each other on disk: the copy's one piece is two extents of 8 blocks,
    and what stays referenced (blocks 6 to 9) lies in both."""
    layouts = [[Piece(0, 16 * B, 1000 * B)], [Piece(0, 16 * B, 5000 * B)]]
    model = SharingModel(layouts, ["t", "c"], True, [(1000 * B, 16 * B), (5000 * B, 8 * B), (5008 * B, 8 * B)])
    model.deduped(1, 0, 6 * B, 0)
    model.deduped(1, 10 * B, 16 * B, 0)
    estimate = model.estimate()
    assert [(unit.start, unit.kept) for unit in estimate.stranded] == [(5000 * B, 2 * B), (5008 * B, 2 * B)]
    assert plan_rescue(model, estimate.stranded, rewrite_ratio=4) == [RescueRun(2 * B, ((1, 6 * B),)),
                                                                      RescueRun(2 * B, ((1, 8 * B),))]

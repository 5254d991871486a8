# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The dedupe engine on real btrfs and XFS: a restored pool shares again, and nothing a user relies on changes.

Every figure is held against the file system's own: free space by statvfs
after a sync (and a btrfs commit), content by sha256, holes by SEEK_HOLE.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.dom0.reflink.plugins.module_utils._fs.dedupe_range import DedupeUnsupported
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.engine import DedupeSettings
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.extent_maps import read_extent_map
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.inputs import EXTENT_UNWRITTEN
from dedupe_helpers import (
    MIB, PRIVATE_VID, ROOT_VIDS, assert_close, build_restored_pool, fs_settings, ideal_bytes, image_paths, run_dedupe,
    snapshot, used_bytes, write_file)

ALL_VIDS = [PRIVATE_VID] + ROOT_VIDS


def total_image_bytes(pool):
    return sum(os.stat(path).st_size for path in image_paths(pool))


@pytest.mark.parametrize("scope", ["pool", "volume"])
def test_restored_pool_shares_again_and_nothing_else_changes(reflink_dir, scope):
    pool = build_restored_pool(reflink_dir / "pool")
    settings = fs_settings(reflink_dir)
    paths = image_paths(pool)
    ideal = ideal_bytes(pool) if scope == "pool" else ideal_bytes(pool, [p for p in paths if "private" in p])
    before = snapshot(pool)
    used = used_bytes(reflink_dir)

    predicted = run_dedupe(pool, ALL_VIDS, scope, settings, execute=False)
    assert snapshot(pool) == before
    assert used_bytes(reflink_dir) == used

    done = run_dedupe(pool, ALL_VIDS, scope, settings, execute=True)
    freed = used - used_bytes(reflink_dir)
    assert snapshot(pool) == before, "a dedupe changed an image (content, size, mode, inode, times or holes)"
    assert done.report.refused == []
    assert done.report.changed
    assert_close(freed, done.report.reclaimed_bytes)
    assert freed >= ideal * 95 // 100, (freed, ideal)
    assert done.report.deduped_bytes == predicted.report.deduped_bytes
    assert done.report.reclaimed_bytes == predicted.report.reclaimed_bytes
    for vid, figures in done.report.groups.items():
        assert figures.as_dict() == predicted.report.groups[vid].as_dict(), vid
    if scope == "volume":
        assert done.report.groups["vm-templates/tpl-r1/root"].deduped_bytes == 0

    used = used_bytes(reflink_dir)
    again = run_dedupe(pool, ALL_VIDS, scope, settings, execute=True)
    assert not again.report.changed
    assert again.report.reclaimed_bytes == 0
    assert again.report.bytes_read < total_image_bytes(pool) * 5 // 100
    assert abs(used_bytes(reflink_dir) - used) < MIB
    assert snapshot(pool) == before


def test_btrfs_frees_a_partly_deduped_extent_only_when_the_rest_is_rewritten(btrfs_dir):
    """Without the rewrite, an extent of a copy that still holds its changed bytes stays whole: nothing of it is freed.

    Each copy of the root was written as two extents (before and after the
    hole); the first copy's change lies in its first extent (5 MiB), the
    second's too, the third's in its second extent.
    """
    pool = build_restored_pool(btrfs_dir / "pool")
    ideal = ideal_bytes(pool, [path for path in image_paths(pool) if "root" in path])
    before = snapshot(pool)
    used = used_bytes(btrfs_dir)
    no_rewrite = DedupeSettings(block_size=4096, whole_extents=True, rewrite_ratio=0)
    done = run_dedupe(pool, ROOT_VIDS, "pool", no_rewrite, execute=True)
    freed = used - used_bytes(btrfs_dir)
    assert done.report.deduped_bytes >= 18 * MIB
    assert done.report.rewritten_bytes == 0
    assert_close(freed, done.report.reclaimed_bytes)
    assert freed <= done.report.deduped_bytes - 2 * (5 * MIB - 512 * 1024), "stranded extents were freed?"

    used_after_dedupe = used_bytes(btrfs_dir)
    rescued = run_dedupe(pool, ROOT_VIDS, "pool", fs_settings(btrfs_dir), execute=True)
    rescue_freed = used_after_dedupe - used_bytes(btrfs_dir)
    assert rescued.report.deduped_bytes == 0
    assert 0 < rescued.report.rewritten_bytes <= 3 * 512 * 1024
    assert rescue_freed >= 2 * 4 * MIB
    assert_close(rescue_freed, rescued.report.reclaimed_bytes)
    assert freed + rescue_freed >= ideal * 95 // 100
    assert snapshot(pool) == before


def test_a_difference_the_samples_miss_is_found_by_the_kernel(reflink_dir):
    """One byte changed between two sampled blocks: the kernel says "differs", the rest still shares."""
    pool = build_restored_pool(reflink_dir / "pool")
    revision = next(path for path in image_paths(pool) if "private.img.2@" in path)
    offset = 1536 * 1024 + 100   # between the samples at 1 MiB and 2 MiB
    with open(revision, "rb") as handle:
        data = bytearray(handle.read())
    data[offset] ^= 0xFF
    mtime = os.stat(revision).st_mtime_ns
    os.unlink(revision)
    write_file(revision, [(0, bytes(data))], len(data), mtime)   # written in one go: one extent, as restored
    before = snapshot(pool)
    used = used_bytes(reflink_dir)
    done = run_dedupe(pool, [PRIVATE_VID], "volume", fs_settings(reflink_dir), execute=True)
    freed = used - used_bytes(reflink_dir)
    assert snapshot(pool) == before
    # Four copies of 4 MiB (clean with its precache, three revisions, the pin) minus the block that differs.
    assert done.report.deduped_bytes == 4 * 4 * MIB - 4096
    assert_close(freed, done.report.reclaimed_bytes)


def test_ext4_is_refused_with_a_clear_message_and_nothing_changes(ext4_dir):
    pool = ext4_dir / "pool"
    (pool / "appvms" / "work").mkdir(parents=True)
    for name in ("private.img", "private.img.1@2023-11-11T00:00:00Z"):
        with open(pool / "appvms" / "work" / name, "wb") as handle:
            handle.write(b"x" * MIB)
    before = snapshot(pool)
    for execute in (False, True):
        with pytest.raises(DedupeUnsupported, match=r"cannot share blocks.*nothing was changed"):
            run_dedupe(pool, [PRIVATE_VID], "volume", fs_settings(ext4_dir), execute=execute)
    assert snapshot(pool) == before


def test_images_of_different_sizes_share_what_they_have_in_common_and_unwritten_ranges_stay(reflink_dir):
    """A revision from before a resize (2 MiB of the clean's 4), and one with a preallocated (unwritten) range."""
    pool = reflink_dir / "pool"
    vm_dir = pool / "appvms" / "work"
    vm_dir.mkdir(parents=True)
    data = os.urandom(4 * MIB)
    zeros_at = 3 * MIB
    clean = data[:zeros_at] + bytes(MIB)   # written zeros at the end
    write_file(vm_dir / "private.img", [(0, clean)], 4 * MIB, 10 ** 18)
    write_file(vm_dir / "private.img.1@2023-11-11T00:00:00Z", [(0, data[:2 * MIB])], 2 * MIB, 10 ** 18)
    write_file(vm_dir / "private.img.2@2023-11-12T00:00:00Z", [(0, data[:zeros_at])], 4 * MIB, 10 ** 18)
    fd = os.open(vm_dir / "private.img.2@2023-11-12T00:00:00Z", os.O_RDWR)
    try:
        os.posix_fallocate(fd, zeros_at, MIB)   # unwritten: reads as the clean's zeros, holds no data
        os.fsync(fd)
        os.utime(fd, ns=(10 ** 18, 10 ** 18))
        unwritten_before = [extent for extent in read_extent_map(fd) if extent.flags & EXTENT_UNWRITTEN]
    finally:
        os.close(fd)
    assert unwritten_before, "no unwritten extent to test with"
    before = snapshot(pool)
    used = used_bytes(reflink_dir)
    done = run_dedupe(pool, [PRIVATE_VID], "volume", fs_settings(reflink_dir), execute=True)
    freed = used - used_bytes(reflink_dir)
    assert snapshot(pool) == before
    assert done.report.deduped_bytes == 2 * MIB + 3 * MIB
    assert_close(freed, done.report.reclaimed_bytes)
    fd = os.open(vm_dir / "private.img.2@2023-11-12T00:00:00Z", os.O_RDONLY)
    try:
        assert [extent for extent in read_extent_map(fd) if extent.flags & EXTENT_UNWRITTEN] == unwritten_before
    finally:
        os.close(fd)


def test_images_made_to_share_a_copy_follow_it_when_that_copy_shares_a_better_one(reflink_dir):
    """One chunk: two revisions equal to each other, the clean image (kept first) equal to them but in its first MiB.

    The walk makes the second revision share the first's blocks (their samples
    agree), then the first revision's last 3 MiB share the clean image's: the
    second revision must follow, or the first's old blocks stay referenced by
    it (nothing of them freed; on btrfs a rerun would rewrite them).
    """
    pool = reflink_dir / "pool"
    vm_dir = pool / "appvms" / "work"
    vm_dir.mkdir(parents=True)
    data = os.urandom(4 * MIB)
    clean = os.urandom(MIB) + data[MIB:]
    write_file(vm_dir / "private.img", [(0, clean)], 4 * MIB, 10 ** 18)
    for name in ("private.img.1@2023-11-11T00:00:00Z", "private.img.2@2023-11-12T00:00:00Z"):
        write_file(vm_dir / name, [(0, data)], 4 * MIB, 10 ** 18)
    ideal = ideal_bytes(pool)
    assert ideal == 7 * MIB
    before = snapshot(pool)
    used = used_bytes(reflink_dir)
    done = run_dedupe(pool, [PRIVATE_VID], "volume", fs_settings(reflink_dir), execute=True)
    freed = used - used_bytes(reflink_dir)
    assert snapshot(pool) == before
    assert freed >= ideal * 95 // 100, (freed, ideal)
    assert done.report.deduped_bytes == 4 * MIB + 3 * MIB   # the second revision's copy, then theirs, once
    again = run_dedupe(pool, [PRIVATE_VID], "volume", fs_settings(reflink_dir), execute=True)
    assert not again.report.changed, again.report

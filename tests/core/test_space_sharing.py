# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Space figures of images that share blocks, held against statvfs after removing the set, on btrfs and XFS.

Clones of a volume, pins, files that share only with each other, a file
outside the pool that shares with a pool file (kept, never freed), sparse
images, a file that references the same blocks twice, hard links; ext4,
where nothing is shared.
"""

from __future__ import annotations

import mmap
import os

from space_helpers import (KIB, MIB, Volume, assert_close, clone, clone_range, compsize, freed_by_removing, fs_kind,
                           space_map, write_data)

PIECE = 8 * MIB


def four_pieces(volume: Volume, seed: int = 1) -> None:
    """A session writing 32 MiB as four fsynced pieces (four extents on btrfs)."""
    volume.session([(index * PIECE, PIECE) for index in range(4)], seed=seed, fsync_each=True)
    for old in volume.revisions():
        old.unlink()   # the empty image of before


def files_of(pool, vid):
    """Every file of the volume ``vid`` (its VM directory holds no other volume in these tests)."""
    vm_dir = pool / os.path.dirname(vid)
    return [vm_dir / name for name in sorted(os.listdir(vm_dir))]


def test_clone_of_a_volume(reflink_dir):
    """Volume b is an import of volume a (a clone of a's clean): removing a frees only what a alone holds."""
    a = Volume(reflink_dir, "appvms/a/private", 4 * PIECE)
    four_pieces(a)
    a.session([(0, PIECE)], seed=2)                      # a's revision keeps the first piece's old data
    b = Volume(reflink_dir, "appvms/b/private", 4 * PIECE)
    b.clean.unlink()
    clone(a.clean, b.clean)
    b.precache.unlink()
    clone(b.clean, b.precache)
    space = space_map(reflink_dir)
    assert space.volumes["appvms/a/private"].exclusive == PIECE
    assert space.volumes["appvms/b/private"].exclusive == 0
    assert space.volumes["appvms/b/private"].allocated == 4 * PIECE
    assert space.if_removed(["appvms/a/private", "appvms/b/private"]).bytes == 5 * PIECE
    assert space.pool.allocated == 5 * PIECE
    assert space.pool.referenced == 5 * 4 * PIECE   # a: revision, clean, precache; b: clean, precache
    assert_close(PIECE, freed_by_removing(reflink_dir, files_of(reflink_dir, "appvms/a/private")), "volume a")
    space = space_map(reflink_dir)
    assert space.volumes["appvms/b/private"].exclusive == 4 * PIECE
    assert_close(4 * PIECE, freed_by_removing(reflink_dir, files_of(reflink_dir, "appvms/b/private")), "volume b")


def test_pin_keeps_what_the_revisions_would_free(reflink_dir):
    volume = Volume(reflink_dir, "appvms/work/private", 4 * PIECE)
    four_pieces(volume)
    pin = volume.pin("before")
    volume.session([(PIECE, PIECE)], seed=3)
    space = space_map(reflink_dir)
    figures = space.volumes["appvms/work/private"]
    assert figures.revisions_exclusive == 0        # the pin holds the old second piece too
    assert figures.exclusive == 5 * PIECE          # pins included
    revision = volume.revisions()[0]
    assert space.if_removed([os.path.relpath(revision, reflink_dir), os.path.relpath(pin, reflink_dir)]).bytes == PIECE
    assert_close(0, freed_by_removing(reflink_dir, [revision]), "the revision")
    space = space_map(reflink_dir)
    pin_figure = space.if_removed([os.path.relpath(pin, reflink_dir)]).bytes
    assert pin_figure == PIECE
    assert_close(pin_figure, freed_by_removing(reflink_dir, [pin]), "the pin")


def test_files_that_share_only_with_each_other(reflink_dir):
    """Two volumes whose clean images are clones: either alone frees nothing, both free all."""
    first = Volume(reflink_dir, "appvms/one/private", 4 * PIECE)
    four_pieces(first)
    second = reflink_dir / "appvms" / "two"
    second.mkdir()
    clone(first.clean, second / "private.img")
    first.precache.unlink()
    space = space_map(reflink_dir)
    one, two = "appvms/one/private.img", "appvms/two/private.img"
    assert space.if_removed([one]).bytes == 0
    assert space.if_removed([two]).bytes == 0
    assert space.if_removed([one, two]).bytes == 4 * PIECE
    assert [f.exclusive for v in space.volumes.values() for f in v.files] == [0, 0]
    assert space.pool.saved == 4 * PIECE
    assert_close(0, freed_by_removing(reflink_dir, [reflink_dir / one]), "one of the two")
    space = space_map(reflink_dir)
    assert space.if_removed([two]).bytes == 4 * PIECE
    assert_close(4 * PIECE, freed_by_removing(reflink_dir, [reflink_dir / two]), "the other")


def test_a_file_outside_the_pool_keeps_what_it_shares(reflink_dir):
    """Outside the pool: a whole clone of one image, and one piece of another: neither is counted as freed."""
    pool = reflink_dir / "pool"
    whole = Volume(pool, "appvms/whole/private", 4 * PIECE)
    four_pieces(whole)
    part = Volume(pool, "appvms/part/private", 4 * PIECE)
    four_pieces(part, seed=5)
    for volume in (whole, part):
        volume.precache.unlink()
    outside = reflink_dir / "backup.img"
    clone(whole.clean, outside)
    outside_part = reflink_dir / "piece.img"
    write_data(outside_part, [], create=True, size=PIECE)
    clone_range(part.clean, 2 * PIECE, PIECE, outside_part, 0)
    space = space_map(pool)
    assert space.volumes["appvms/whole/private"].exclusive == 0
    assert space.volumes["appvms/whole/private"].allocated == 4 * PIECE
    assert space.volumes["appvms/part/private"].exclusive == 3 * PIECE
    assert space.if_removed(["appvms/whole/private", "appvms/part/private"]).bytes == 3 * PIECE
    assert space.pool.allocated == 8 * PIECE
    assert_close(3 * PIECE, freed_by_removing(pool, [whole.clean, part.clean]), "both volumes")


def test_xfs_cannot_tell_an_outside_holder_of_blocks_two_pool_files_share(xfs_dir):
    """The documented limit: FIEMAP's shared flag cannot say whether a third holder is outside the pool.

    A clean image and its precache share their blocks; a file outside the pool
    clones them too.  The figure says removing the volume frees the blocks; the
    filesystem keeps them (GETFSMAP would tell where the filesystem has a
    reverse map, mkfs.xfs -m rmapbt=1).
    """
    pool = xfs_dir / "pool"
    volume = Volume(pool, "appvms/work/private", 4 * PIECE)
    four_pieces(volume)
    clone(volume.clean, xfs_dir / "backup.img")
    space = space_map(pool)
    assert space.volumes["appvms/work/private"].exclusive == 4 * PIECE      # overstated
    assert_close(0, freed_by_removing(pool, [volume.clean, volume.precache]), "the volume")


def test_sparse_images(reflink_dir):
    """A 1 GiB image with 24 MiB of data in three places, and its clone: only data counts."""
    volume = Volume(reflink_dir, "appvms/sparse/root", 1024 * MIB)
    volume.session([(0, PIECE), (500 * MIB, PIECE), (1024 * MIB - PIECE, PIECE)], seed=7)
    space = space_map(reflink_dir)
    figures = space.volumes["appvms/sparse/root"]
    assert figures.allocated == 3 * PIECE
    assert figures.exclusive == 3 * PIECE
    assert figures.revisions_exclusive == 0        # the revision is the empty image of before
    assert [f.allocated for f in figures.files] == [3 * PIECE, 3 * PIECE, 0]
    files = [volume.clean, volume.precache] + volume.revisions()
    assert_close(3 * PIECE, freed_by_removing(reflink_dir, files), "the sparse volume")


def test_a_file_that_references_its_blocks_twice(reflink_dir):
    """The first 8 MiB cloned into the same file at 24 MiB: held twice by one file, freed with it."""
    volume = Volume(reflink_dir, "appvms/twice/private", 4 * PIECE)
    volume.session([(0, PIECE), (PIECE, PIECE)], seed=8, fsync_each=True)
    clone_range(volume.clean, 0, PIECE, volume.clean, 3 * PIECE)
    volume.precache.unlink()
    for old in volume.revisions():
        old.unlink()
    space = space_map(reflink_dir)
    figures = space.volumes["appvms/twice/private"]
    assert figures.allocated == 2 * PIECE
    assert [(f.allocated, f.exclusive) for f in figures.files] == [(2 * PIECE, 2 * PIECE)]
    assert_close(2 * PIECE, freed_by_removing(reflink_dir, [volume.clean]), "the file")


def test_a_fragmented_image_and_its_clone(reflink_dir):
    """2,500 extents of 4 KiB (direct writes, every other block): more than one search or FIEMAP call per file.

    The metadata of so many extents (items, checksums, doubled on btrfs) is
    no longer small beside the data: it is freed too, but not counted.
    """
    vm_dir = reflink_dir / "appvms" / "fragmented"
    vm_dir.mkdir(parents=True)
    clean = vm_dir / "private.img"
    count = 2500
    buffer = mmap.mmap(-1, 4 * KIB)
    fd = os.open(clean, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    try:
        for index in range(count):
            buffer[:8] = index.to_bytes(8, "little")
            os.pwrite(fd, buffer, index * 8 * KIB)
    finally:
        os.close(fd)
    precache = vm_dir / "private-precache.img"
    clone(clean, precache)
    write_data(precache, [(0, 8 * KIB * 100)], seed=11)     # the first 100 extents replaced, 400 KiB freed
    space = space_map(reflink_dir)
    figures = space.volumes["appvms/fragmented/private"]
    assert [(f.allocated, f.exclusive) for f in figures.files] == [
        (count * 4 * KIB - 100 * 4 * KIB + 800 * KIB, 800 * KIB), (count * 4 * KIB, 100 * 4 * KIB)]
    if fs_kind(reflink_dir) == "btrfs":
        assert compsize(clean)[0] == count * 4 * KIB
    metadata = freed_by_removing(reflink_dir, [clean, precache]) - figures.exclusive
    assert 0 <= metadata < 2 * MIB


def test_hard_links_free_only_with_the_last_name(reflink_dir):
    volume = Volume(reflink_dir, "appvms/linked/private", 4 * PIECE)
    four_pieces(volume)
    volume.precache.unlink()
    pin = volume.clean.with_name("private.img.pin-linked")
    os.link(volume.clean, pin)
    space = space_map(reflink_dir)
    assert space.if_removed(["appvms/linked/private.img"]).bytes == 0
    assert space.if_removed(["appvms/linked/private"]).bytes == 4 * PIECE
    assert_close(0, freed_by_removing(reflink_dir, [volume.clean]), "one name")
    assert_close(4 * PIECE, freed_by_removing(reflink_dir, [pin]), "the last name")


def test_ext4_exclusive_is_allocated(ext4_dir):
    """No reflinks: a revision is a copy, and every file's exclusive bytes are its allocated bytes."""
    vm_dir = ext4_dir / "appvms" / "work"
    vm_dir.mkdir(parents=True)
    clean = vm_dir / "private.img"
    write_data(clean, [(0, 6 * MIB), (40 * MIB, 4 * MIB)], seed=9, create=True, size=64 * MIB)
    revision = vm_dir / "private.img.1@2024-01-01T00:00:00Z"
    write_data(revision, [(0, 6 * MIB)], seed=10, create=True, size=64 * MIB)
    space = space_map(ext4_dir)
    figures = space.volumes["appvms/work/private"]
    assert [(f.allocated, f.exclusive) for f in figures.files] == [(10 * MIB, 10 * MIB), (6 * MIB, 6 * MIB)]
    assert (figures.allocated, figures.exclusive, figures.revisions_exclusive, figures.stranded) == \
        (16 * MIB, 16 * MIB, 6 * MIB, 0)
    assert space.pool.saved == 0
    assert_close(6 * MIB, freed_by_removing(ext4_dir, [revision]), "the revision")
    assert_close(10 * MIB, freed_by_removing(ext4_dir, [clean]), "clean")

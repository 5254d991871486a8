# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Revision chains as qubesd's start/stop makes them: what removing revisions frees, held against statvfs.

A VM's volume of 64 MiB is written, then three sessions each rewrite one
16 MiB region (the first, second, third), keeping the revisions.  Measured
before (space-notes.md): removing the three revisions frees 48 MiB on XFS and
0 bytes on btrfs when the 64 MiB went into one extent, whose last region the
clean image still references; 48 MiB on both when the data was written as
four fsynced pieces (four extents).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from space_helpers import (REGION, Volume, assert_close, clone, compsize, freed_by_removing, fs_kind,
                           large_btrfs_dir, large_filesystems, large_reflink_dir, revision_chain, space_map, used_bytes)

__all__ = ["large_btrfs_dir", "large_filesystems", "large_reflink_dir"]   # fixtures

VID = "appvms/work/private"


def make_chain(pool, pieces: bool) -> Volume:
    """Three revisions kept; the first session wrote all 64 MiB (in one write, or four fsynced ones)."""
    return revision_chain(pool, VID, pieces)


def relative(pool, paths):
    return [os.path.relpath(path, pool) for path in paths]


@pytest.mark.parametrize("pieces", [False, True], ids=["one-write", "four-pieces"])
def test_removing_the_revisions_frees_what_the_figure_says(large_reflink_dir, pieces):
    volume = make_chain(large_reflink_dir, pieces)
    space = space_map(large_reflink_dir)
    figures = space.volumes[VID]
    expected = 0 if fs_kind(large_reflink_dir) == "btrfs" and not pieces else 3 * REGION
    assert figures.revisions_exclusive == expected
    assert space.if_removed(relative(large_reflink_dir, volume.revisions())).bytes == expected
    # The old per-file sums: what reflink_gc reported before (192 MiB and 16 MiB) must not come back.
    assert figures.allocated == 7 * REGION   # the first 64 MiB and three rewritten regions, each once
    assert figures.exclusive == 7 * REGION
    assert space.pool.allocated == 7 * REGION
    assert space.pool.saved == space.pool.referenced - space.pool.allocated
    freed = freed_by_removing(large_reflink_dir, volume.revisions())
    assert_close(expected, freed, "revisions")


def test_revision_subsets_in_pieces(large_reflink_dir):
    """Each revision alone, then two together: each answer is what statvfs then sees."""
    volume = make_chain(large_reflink_dir, pieces=True)
    oldest, middle, newest = volume.revisions()
    space = space_map(large_reflink_dir)
    # The oldest alone holds the first region's original data; the others hold nothing alone.
    assert [space.if_removed(relative(large_reflink_dir, [path])).bytes for path in (oldest, middle, newest)] == \
        [REGION, 0, 0]
    assert [f.exclusive for f in space.volumes[VID].files if f.file.endswith(("Z",))] == [REGION, 0, 0]
    two = space.if_removed(relative(large_reflink_dir, [oldest, middle])).bytes
    assert two == 2 * REGION
    assert_close(two, freed_by_removing(large_reflink_dir, [oldest, middle]), "oldest and middle revision")
    space = space_map(large_reflink_dir)
    last = space.if_removed(relative(large_reflink_dir, [newest])).bytes
    assert last == REGION
    assert_close(last, freed_by_removing(large_reflink_dir, [newest]), "the last revision")
    space = space_map(large_reflink_dir)
    whole = space.if_removed([VID])
    assert whole.bytes == space.volumes[VID].exclusive == 4 * REGION
    assert sorted(whole.files) == sorted(relative(large_reflink_dir, [volume.clean, volume.precache]))
    assert_close(whole.bytes, freed_by_removing(large_reflink_dir, [volume.clean, volume.precache]), "the volume")


@pytest.mark.parametrize("pieces", [False, True], ids=["one-write", "four-pieces"])
def test_removing_the_whole_volume(large_reflink_dir, pieces):
    volume = make_chain(large_reflink_dir, pieces)
    space = space_map(large_reflink_dir)
    figure = space.volumes[VID].exclusive
    assert figure == space.if_removed([VID]).bytes == 7 * REGION
    files = [volume.clean, volume.precache] + volume.revisions()
    assert_close(figure, freed_by_removing(large_reflink_dir, files), "the volume")


def test_stranded_bytes_on_btrfs(large_btrfs_dir):
    """One 64 MiB extent of which clean references a quarter once the revisions are gone: 48 MiB stranded.

    What frees them: rewriting clean (a full copy renamed over it) gives back the
    stranded 48 MiB and the three rewritten regions, and costs the 64 MiB written.
    """
    volume = make_chain(large_btrfs_dir, pieces=False)
    space = space_map(large_btrfs_dir)
    assert space.volumes[VID].stranded == 0   # the revisions still reference every part of the extent
    freed = freed_by_removing(large_btrfs_dir, volume.revisions())
    assert_close(0, freed, "revisions")
    space = space_map(large_btrfs_dir)
    figures = space.volumes[VID]
    assert figures.stranded == 3 * REGION
    assert space.pool.stranded == 3 * REGION
    assert figures.allocated == 7 * REGION   # whole extents: the stranded bytes are allocated
    assert [(f.allocated, f.exclusive) for f in figures.files] == [(7 * REGION, 0), (7 * REGION, 0)]
    # compsize of clean: disk usage (whole extents) minus referenced bytes is what no file references.
    disk, referenced = compsize(volume.clean)
    assert disk == figures.allocated
    assert disk - referenced == figures.stranded
    copy = volume.clean.with_name("private.img~rewrite1")
    before = used_bytes(large_btrfs_dir)
    subprocess.run(["cp", "--reflink=never", str(volume.clean), str(copy)], check=True)
    os.rename(copy, volume.clean)
    volume.precache.unlink()
    clone(volume.clean, volume.precache)
    given_back = before - used_bytes(large_btrfs_dir)
    assert_close(figures.stranded, given_back, "rewrite of clean")

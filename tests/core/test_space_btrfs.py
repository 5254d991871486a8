# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""btrfs's own cases: whole extents, compression, preallocation, inline data, subvolumes and snapshots.

Every figure is held against statvfs after removing the set, and where they
measure the same thing against ``compsize -b`` (disk usage of a set of files:
each extent once, whole) and ``btrfs filesystem du --raw`` (per file: the
bytes referenced, and those not shared).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess

import pytest

from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.space import SpaceMap
from space_helpers import (MIB, Volume, assert_close, btrfs_du, clone, clone_range, compsize, freed_by_removing,
                           space_map, tool_env, write_data)

PIECE = 8 * MIB


def btrfs(*args):
    return subprocess.run(["btrfs"] + [str(arg) for arg in args], check=True, capture_output=True, text=True,
                          env=tool_env()).stdout


def chain(pool, vid="appvms/work/private", seed=1) -> Volume:
    """32 MiB in four fsynced pieces, then two sessions that rewrite the first and the second piece."""
    volume = Volume(pool, vid, 4 * PIECE)
    volume.session([(index * PIECE, PIECE) for index in range(4)], seed=seed, fsync_each=True)
    volume.revisions()[0].unlink()
    volume.session([(0, PIECE)], seed=seed + 1)
    volume.session([(PIECE, PIECE)], seed=seed + 2)
    return volume


def test_figures_agree_with_compsize_and_btrfs_du(btrfs_dir):
    """Allocated = compsize's disk usage (volume and pool); per file, allocated and exclusive = du's columns."""
    first = chain(btrfs_dir)
    second = Volume(btrfs_dir, "appvms/copy/private", 4 * PIECE)
    second.clean.unlink()
    clone(first.clean, second.clean)
    space = space_map(btrfs_dir)
    for vid, volume in (("appvms/work/private", first), ("appvms/copy/private", second)):
        files = [volume.clean, volume.precache] + volume.revisions()
        disk, _referenced = compsize(*files)
        assert space.volumes[vid].allocated == disk, vid
        du = btrfs_du(*files)
        for entry in space.volumes[vid].files:
            assert (entry.allocated, entry.exclusive) == du[str(btrfs_dir / entry.file)], entry
    # The scan's inode numbers spare a stat per file and change nothing.
    with Directory.open_pool(str(btrfs_dir)) as pool_dir:
        known = SpaceMap.read(pool_dir, [dataclasses.replace(entry, inode=os.lstat(btrfs_dir / entry.file).st_ino)
                                         for entry in space.files])
    assert known.sharing.groups == space.sharing.groups
    everything = [btrfs_dir / entry.file for entry in space.files]
    disk, referenced = compsize(*everything)
    assert space.pool.allocated == disk == 6 * PIECE
    assert space.pool.referenced == referenced    # no extent is referenced in part here
    assert_close(space.if_removed(["appvms/work/private", "appvms/copy/private"]).bytes,
                 freed_by_removing(btrfs_dir, everything), "the pool")


def test_compressed_extents(btrfs_dir):
    """Compressed extents count with their compressed size (what compsize calls disk usage)."""
    vm_dir = btrfs_dir / "appvms" / "zipped"
    vm_dir.mkdir(parents=True)
    btrfs("property", "set", vm_dir, "compression", "zstd")
    clean = vm_dir / "private.img"
    line = b"".join(b"%08d some text that compresses well\n" % index for index in range(64 * 1024))
    with open(clean, "wb") as handle:
        for _round in range(10):
            handle.write(line)
        os.fsync(handle.fileno())
    clone(clean, vm_dir / "private-precache.img")
    write_data(vm_dir / "private-precache.img", [(MIB, MIB)], seed=3)   # a random MiB: stored uncompressed
    space = space_map(btrfs_dir)
    figures = space.volumes["appvms/zipped/private"]
    disk, referenced = compsize(clean, vm_dir / "private-precache.img")
    assert figures.allocated == disk
    assert disk < referenced / 4      # compressed indeed
    precache = next(entry for entry in figures.files if entry.file.endswith("precache.img"))
    assert precache.exclusive == MIB
    freed = freed_by_removing(btrfs_dir, [clean, vm_dir / "private-precache.img"])
    assert_close(figures.exclusive, freed, "compressed volume")


def test_preallocated_extent_in_part_written(btrfs_dir):
    """fallocate 32 MiB, write 8 MiB into it: one extent, two kinds of item, all of it allocated."""
    vm_dir = btrfs_dir / "appvms" / "prealloc"
    vm_dir.mkdir(parents=True)
    clean = vm_dir / "private.img"
    with open(clean, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, 4 * PIECE)
    write_data(clean, [(PIECE, PIECE)], seed=4)
    space = space_map(btrfs_dir)
    figures = space.volumes["appvms/prealloc/private"]
    assert figures.allocated == figures.exclusive == 4 * PIECE
    assert figures.stranded == 0
    assert_close(4 * PIECE, freed_by_removing(btrfs_dir, [clean]), "preallocated image")


def test_inline_data_is_metadata(btrfs_dir):
    vm_dir = btrfs_dir / "appvms" / "tiny"
    vm_dir.mkdir(parents=True)
    tiny = vm_dir / "private.img"
    tiny.write_bytes(b"x" * 1000)
    big = vm_dir / "root.img"
    write_data(big, [(0, PIECE)], seed=5, create=True)
    space = space_map(btrfs_dir)
    assert space.volumes["appvms/tiny/private"].allocated == 0
    assert space.volumes["appvms/tiny/root"].allocated == PIECE
    assert_close(PIECE, freed_by_removing(btrfs_dir, [tiny, big]), "tiny and big")


def test_stranded_part_of_an_extent_cloned_in_part(btrfs_dir):
    """A pin of a quarter of an extent keeps the whole extent once the image is gone: 3/4 stranded."""
    vm_dir = btrfs_dir / "appvms" / "part"
    vm_dir.mkdir(parents=True)
    clean = vm_dir / "private.img"
    write_data(clean, [(0, 4 * PIECE)], seed=6, create=True)
    pin = vm_dir / "private.img.pin-quarter"
    write_data(pin, [], create=True, size=PIECE)
    clone_range(clean, PIECE, PIECE, pin, 0)
    space = space_map(btrfs_dir)
    assert space.volumes["appvms/part/private"].stranded == 0
    assert space.if_removed(["appvms/part/private.img"]).bytes == 0
    assert_close(0, freed_by_removing(btrfs_dir, [clean]), "clean")
    space = space_map(btrfs_dir)
    figures = space.volumes["appvms/part/private"]
    assert (figures.allocated, figures.stranded) == (4 * PIECE, 3 * PIECE)
    disk, referenced = compsize(pin)
    assert (disk, disk - referenced) == (figures.allocated, figures.stranded)
    assert_close(4 * PIECE, freed_by_removing(btrfs_dir, [pin]), "the pin")


@pytest.fixture
def subvolume(btrfs_dir):
    """A subvolume holding the pool; snapshots made by the test are deleted after it."""
    path = btrfs_dir / "pool-subvolume"
    btrfs("subvolume", "create", path)
    made = [path]
    yield path, made
    for sub in reversed(made):
        if sub.exists():
            subprocess.run(["btrfs", "property", "set", sub, "ro", "false"], capture_output=True, env=tool_env(),
                           check=False)
            subprocess.run(["btrfs", "subvolume", "delete", "--commit-after", sub], capture_output=True,
                           env=tool_env(), check=False)


def test_pool_in_a_subvolume_with_a_snapshot(subvolume, btrfs_dir):
    """A snapshot holds every extent written before it; after it is gone, they are the pool's again.

    Volume two's extent items lie in leaves that nothing rewrites after the
    snapshot (3,000 empty files between the two volumes make the tree tall):
    such a leaf is shared by the two trees and counted once in the extent
    tree, so only the backward walk (LOGICAL_INO) sees the snapshot's claim.
    """
    pool, made = subvolume
    second = chain(pool, "appvms/two/private", seed=20)
    filler = pool / "filler"
    filler.mkdir()
    for index in range(3000):
        (filler / ("%05d" % index)).touch()
    first = chain(pool, "appvms/one/private", seed=10)
    # Read once before the snapshot: listing a directory the first time after a change updates its atime
    # (relatime), which would rewrite the leaf that holds volume two's items after the snapshot.
    assert space_map(pool).volumes["appvms/two/private"].exclusive == 6 * PIECE
    snapshot = btrfs_dir / "snapshot"
    btrfs("subvolume", "snapshot", "-r", pool, snapshot)
    made.append(snapshot)
    first.session([(2 * PIECE, PIECE)], seed=30)      # new data, only in the pool
    space = space_map(pool)
    assert space.volumes["appvms/one/private"].exclusive == PIECE
    assert space.volumes["appvms/two/private"].exclusive == 0
    assert space.if_removed(["appvms/one/private", "appvms/two/private"]).bytes == PIECE
    one = [first.clean, first.precache] + first.revisions()
    assert_close(PIECE, freed_by_removing(pool, one), "volume one, with the snapshot")
    two = [second.clean, second.precache] + second.revisions()
    assert_close(0, freed_by_removing(pool, two[:1]), "volume two's clean image, with the snapshot")
    btrfs("subvolume", "delete", "--commit-after", snapshot)
    btrfs("subvolume", "sync", btrfs_dir)
    space = space_map(pool)
    assert space.volumes["appvms/two/private"].exclusive == 6 * PIECE
    assert_close(6 * PIECE, freed_by_removing(pool, two[1:]), "the rest of volume two, the snapshot gone")


def test_clone_in_another_subvolume_is_kept(subvolume, btrfs_dir):
    pool, made = subvolume
    volume = chain(pool, "appvms/one/private", seed=40)
    other = btrfs_dir / "elsewhere"
    btrfs("subvolume", "create", other)
    made.append(other)
    clone(volume.clean, other / "backup.img")
    space = space_map(pool)
    # clean's extents: the rewritten first and second pieces and the original third and fourth
    assert space.volumes["appvms/one/private"].exclusive == 2 * PIECE   # the old first and second piece
    files = [volume.clean, volume.precache] + volume.revisions()
    assert_close(2 * PIECE, freed_by_removing(pool, files), "the volume")


UNPRIVILEGED_READER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.pool_extents import read_sharing
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.space import ImageFile, SpaceMap
files = [ImageFile(name, "appvms/user/private") for name in sys.argv[3:]]
space = SpaceMap(files, read_sharing(int(sys.argv[2]), [entry.file for entry in files]))
print(json.dumps({"methods": sorted(space.sharing.methods),
                  "files": [[f.allocated, f.exclusive] for f in space.volumes["appvms/user/private"].files]}))
"""


def test_without_privileges_fiemap_counts(btrfs_dir):
    """The tree search needs CAP_SYS_ADMIN: a reader without it falls back to FIEMAP (a pool directory
    opened for it, as a module run by another user would have it) and gets the same figures here."""
    volume = Volume(btrfs_dir, "appvms/user/private", 4 * PIECE)
    volume.session([(index * PIECE, PIECE) for index in range(4)], seed=50, fsync_each=True)
    volume.revisions()[0].unlink()
    write_data(volume.precache, [(PIECE, PIECE)], seed=51)
    for path in (btrfs_dir, btrfs_dir / "appvms", volume.clean.parent):
        path.chmod(0o755)
    for path in (volume.clean, volume.precache):
        path.chmod(0o644)
    names = ["appvms/user/private-precache.img", "appvms/user/private.img"]
    space = space_map(btrfs_dir)
    assert [[f.allocated, f.exclusive] for f in space.volumes["appvms/user/private"].files] == \
        [[4 * PIECE, PIECE], [4 * PIECE, PIECE]]
    collections = str(pathlib.Path(__file__).resolve().parents[2] / "build" / "pytest-collections")   # conftest's
    fd = os.open(btrfs_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        out = subprocess.run(["/usr/bin/python3", "-c", UNPRIVILEGED_READER, collections, str(fd)] + names,
                             user=65534, group=65534, pass_fds=[fd], capture_output=True, text=True, check=False)
    finally:
        os.close(fd)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"methods": ["fiemap blocks"], "files": [[4 * PIECE, PIECE], [4 * PIECE, PIECE]]}

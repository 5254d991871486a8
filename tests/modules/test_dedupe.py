# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_dedupe through Ansible on btrfs and XFS: a restored pool shares again, and nothing a user relies on changes.

Every figure is held against the file system's own in the same run: the
freed space by statvfs after a sync (and a btrfs commit), the data by
sha256, holes by SEEK_HOLE, inodes, modes and times by stat, the rerun's
reads by the loop device's own count of sectors read.  The pool (tens of
MiB per image, so that the tolerance of 1 MiB + 1 % can fail) lives on a 1
GiB file system of this test module's own: on the session's 256 MiB btrfs a
restore's writes would not make extents of a real pool's size.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from dedupe_helpers import MIB, ideal_bytes, restored_pool, snapshot, write_file
from module_helpers import assert_failed, loop_device, make_pool
from qubes_xml_helpers import Domain, Volume, app_vm, qubes_xml, reflink_pool, template_vm
from space_helpers import TESTS_BASE_DIR, assert_close, used_bytes

from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.extent_maps import read_extent_map

GIB = 1024 * MIB
ROOT_SIZE, CHANGED, PRIVATE_SIZE, SYSNET_SIZE = 24 * MIB, 2 * MIB, 16 * MIB, 8 * MIB
ROOTS = ["vm-templates/%s/root" % vm for vm in ("tpl", "tpl-r1", "tpl-r2", "tpl-r3")]
PRIVATE, SYSNET, WORK_ROOT = "appvms/work/private", "appvms/sysnet/private", "appvms/work/root"


@pytest.fixture(scope="module")
def dedupe_filesystems(filesystems):
    """A 1 GiB btrfs and XFS of this module's own: {kind: LoopFs} (its loop device counts this module's reads)."""
    loopfs = sys.modules["loopfs"]
    made = {}
    try:
        for kind in ("btrfs", "xfs"):
            made[kind] = loopfs.create(kind, GIB, TESTS_BASE_DIR)
        yield made
    finally:
        for fs in made.values():
            fs.destroy()


@pytest.fixture(params=["btrfs", "xfs"])
def big_fs(dedupe_filesystems, request):
    """(fresh directory on the module's 1 GiB file system, its LoopFs), btrfs then XFS."""
    fs = dedupe_filesystems[request.param]
    path = pathlib.Path(tempfile.mkdtemp(prefix="dedupe-", dir=fs.path))
    request.addfinalizer(lambda: shutil.rmtree(path, ignore_errors=True))
    return path, fs


def sectors_read(device):
    """Sectors the block device ``device`` has read since it was made (/sys/block/<dev>/stat, field 3)."""
    with open("/sys/block/%s/stat" % os.path.basename(device), encoding="ascii") as handle:
        return int(handle.read().split()[2])


def drop_page_cache(paths):
    """The images' data out of the page cache: the next run reads it from the (loop) disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def physical_map(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return [(extent.logical, extent.physical, extent.length) for extent in read_extent_map(fd)]
    finally:
        os.close(fd)


def full_copy(src, dst, mtime_ns):
    """An independent copy of ``src`` (no shared block), written in 1 MiB pieces as a restore does."""
    data = pathlib.Path(src).read_bytes()
    write_file(dst, [(offset, data[offset:offset + MIB]) for offset in range(0, len(data), MIB)], len(data), mtime_ns)


def build_pool(base):
    """The restored pool, a running VM (sysnet: dirty image and a pin behind loop devices, a full-copy revision),
    a running AppVM's snapshot root (a hard link of the template's clean image, and its dirty image), a symlink
    at an image name, and the qubes.xml that lists them.  Returns (pool, qubes.xml, the images each volume has
    that the dedupe may change, the files it must leave alone)."""
    pool = make_pool(base)
    images = {vid: [str(path) for path in paths] for vid, paths in restored_pool(pool, ROOT_SIZE, CHANGED,
                                                                                 PRIVATE_SIZE).items()}
    sysnet = pool / "appvms" / "sysnet"
    sysnet.mkdir()
    data = os.urandom(SYSNET_SIZE)
    write_file(sysnet / "private.img", [(0, data)], SYSNET_SIZE, 1_700_000_000 * 10 ** 9)
    full_copy(sysnet / "private.img", sysnet / "private.img.1@2023-11-13T00:00:00Z", 1_699_000_000 * 10 ** 9)
    full_copy(sysnet / "private.img", sysnet / "private-dirty.img", 1_700_000_100 * 10 ** 9)
    full_copy(sysnet / "private.img", sysnet / "private.img.pin-export", 1_699_500_000 * 10 ** 9)
    images[SYSNET] = [str(sysnet / "private.img"), str(sysnet / "private.img.1@2023-11-13T00:00:00Z")]
    work = pool / "appvms" / "work"
    os.link(pool / "vm-templates/tpl/root.img", work / "root.img")
    subprocess.run(["cp", "--reflink=always", str(work / "root.img"), str(work / "root-dirty.img")], check=True)
    outside = base / "outside.img"
    outside.write_bytes(os.urandom(MIB))
    os.symlink(outside, work / "private.img.pin-evil")
    left_alone = {"appvms/sysnet/private-dirty.img", "appvms/sysnet/private.img.pin-export", "appvms/work/root.img",
                  "appvms/work/root-dirty.img", "appvms/work/private.img.pin-evil"}
    domains = [template_vm(vm, "pool", number=number) for number, vm in enumerate(["tpl", "tpl-r1", "tpl-r2", "tpl-r3"], 1)]
    domains.append(app_vm("work", "pool", "tpl", number=10))
    domains.append(Domain("AppVM", "sysnet", [Volume("private", "pool", SYSNET, False, True)], 11, "tpl"))
    xml = base / "qubes.xml"
    xml.write_text(qubes_xml([reflink_pool("pool", pool)], domains))
    return pool, xml, images, left_alone


def facts(path):
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, path.read_bytes()


def vids_figures(result):
    return {entry["vid"]: (entry["deduped_bytes"], entry["reclaimed_bytes"]) for entry in result["volumes"]}


def assert_predicted(predicted, done, what):
    """Check mode said what the real run then did: the same actions and deduped bytes, the freed space within
    the tolerance (in total and per volume)."""
    assert not predicted["failed"] and not done["failed"], (predicted, done)
    assert predicted["actions"] == done["actions"], what
    assert predicted["deduped_bytes"] == done["deduped_bytes"], what
    assert predicted["skipped"] == done["skipped"], what
    assert_close(predicted["reclaimed_bytes"], done["reclaimed_bytes"], what + ": check mode's reclaimed_bytes")
    for vid, (deduped, reclaimed) in vids_figures(done).items():
        assert vids_figures(predicted)[vid][0] == deduped, (what, vid)
        assert_close(vids_figures(predicted)[vid][1], reclaimed, "%s: %s" % (what, vid))
    assert sum(reclaimed for _deduped, reclaimed in vids_figures(done).values()) == done["reclaimed_bytes"]


def test_a_restored_pool_shares_again_and_nothing_a_user_relies_on_changes(big_fs, run_module):
    base, fs = big_fs
    pool, xml, images, left_alone = build_pool(base)
    deduped_images = [path for paths in images.values() for path in paths]
    ideal_per_volume = sum(ideal_bytes(pool, paths) for paths in images.values())
    ideal_pool = ideal_bytes(pool, deduped_images)
    before = snapshot(pool)
    dirty_map = physical_map(pool / "appvms/sysnet/private-dirty.img")
    args = {"pool": str(pool), "qubes_xml": str(xml)}
    with loop_device(pool / "appvms/sysnet/private-dirty.img"), loop_device(pool / "appvms/sysnet/private.img.pin-export"):
        # scope volume: each volume's images with each other (check mode's figures: tests/core/test_dedupe_task.py)
        used = used_bytes(pool)
        done = run_module("reflink_dedupe", **args)
        freed_by_volume = used - used_bytes(pool)
        assert snapshot(pool) == before, "the dedupe changed an image (content, size, mode, inode, times or holes)"
        assert done["changed"] is True
        assert_close(done["reclaimed_bytes"], freed_by_volume, "scope volume: reclaimed_bytes against statvfs")
        assert freed_by_volume >= ideal_per_volume * 95 // 100, (freed_by_volume, ideal_per_volume)
        assert sum(reclaimed for _deduped, reclaimed in vids_figures(done).values()) == done["reclaimed_bytes"]
        figures = vids_figures(done)
        # Each root shares with its own precache already: only the private volumes had copies of their own.
        assert [figures[vid][0] for vid in ROOTS] == [0, 0, 0, 0]
        assert figures[PRIVATE][0] == 4 * PRIVATE_SIZE and figures[SYSNET][0] == SYSNET_SIZE
        assert set(figures) == set(ROOTS + [PRIVATE, SYSNET, WORK_ROOT])
        skipped = {entry["file"]: entry["reason"] for entry in done["skipped"]}
        assert set(skipped) == left_alone, skipped
        assert "running VM" in skipped["appvms/sysnet/private-dirty.img"]
        assert skipped["appvms/sysnet/private.img.pin-export"].startswith("loop device /dev/loop")
        assert "snapshot volume" in skipped["appvms/work/root.img"] and "snapshot volume" in skipped["appvms/work/root-dirty.img"]
        assert skipped["appvms/work/private.img.pin-evil"] == "a symlink, never opened"

        # scope pool: the copies of the template's root share with it too
        used = used_bytes(pool)
        predicted = run_module("reflink_dedupe", check=True, diff=True, scope="pool", **args)
        assert used_bytes(pool) == used and snapshot(pool) == before, "check mode changed something"
        done = run_module("reflink_dedupe", diff=True, scope="pool", **args)
        freed_by_pool = used - used_bytes(pool)
        assert snapshot(pool) == before
        assert_close(done["reclaimed_bytes"], freed_by_pool, "scope pool: reclaimed_bytes against statvfs")
        assert freed_by_volume + freed_by_pool >= ideal_pool * 95 // 100, (freed_by_volume, freed_by_pool, ideal_pool)
        assert freed_by_pool >= 3 * (ROOT_SIZE - 2 * MIB - CHANGED) * 95 // 100
        assert_predicted(predicted, done, "scope pool")
        assert vids_figures(done)[ROOTS[0]] == (0, 0), "the template's root is the copy kept"
        assert all(vids_figures(done)[vid][0] == ROOT_SIZE - MIB - CHANGED for vid in ROOTS[1:])
        if fs.kind == "btrfs":   # the copies' own 2 MiB moved out of their otherwise freed extents
            assert 0 < done["rewritten_bytes"] <= 3 * (CHANGED + MIB)
        else:
            assert done["rewritten_bytes"] == 0
        for vid in ROOTS[1:]:
            before_vid, after_vid = done["diff"]["before"][vid], done["diff"]["after"][vid]
            assert before_vid["exclusive"] >= ROOT_SIZE - MIB and after_vid["exclusive"] <= 2 * CHANGED, vid
            assert_close(predicted["diff"]["after"][vid]["exclusive"], after_vid["exclusive"], vid)
        assert done["diff"]["before"][ROOTS[0]] == predicted["diff"]["before"][ROOTS[0]]

        # a rerun: nothing to do, and it reads (from disk) little of the images
        paths = [str(pool / name) for name in before]
        total = sum(os.path.getsize(path) for path in paths)
        drop_page_cache(paths)
        sectors = sectors_read(fs.device)
        again = run_module("reflink_dedupe", scope="pool", **args)
        read_from_disk = (sectors_read(fs.device) - sectors) * 512
        assert again["changed"] is False and again["actions"] == [], again
        assert again["deduped_bytes"] == 0 and again["reclaimed_bytes"] == 0, again
        assert again["bytes_read"] < total * 5 // 100, (again["bytes_read"], total)
        assert read_from_disk < total * 5 // 100, (read_from_disk, total)
        print("\nrerun on %s: %d bytes read by the engine, %d from the disk, of %d bytes of images"
              % (fs.kind, again["bytes_read"], read_from_disk, total))
    assert snapshot(pool) == before
    assert physical_map(pool / "appvms/sysnet/private-dirty.img") == dirty_map, "the running VM's dirty image was touched"
    for vid in ROOTS + [PRIVATE]:
        clean, precache = before["%s.img" % vid], before["%s-precache.img" % vid]
        assert (precache["mtime"], precache["size"]) == (clean["mtime"], clean["size"]), "%s: precache stale" % vid


def test_an_empty_vids_list_selects_no_volume_and_reads_no_image(big_fs, run_module):
    """``vids: []`` means no volume, never every one (issue 26's rule for every list): nothing changed, no
    figure, no image read from the disk, no extent moved (a dedupe keeps mtime and ctime: the maps tell)."""
    base, fs = big_fs
    pool = make_pool(base)
    images = [path for paths in restored_pool(pool, 8 * MIB, MIB, 4 * MIB).values() for path in paths]
    total = sum(os.path.getsize(path) for path in images)

    def state():
        return snapshot(pool), {str(path): physical_map(path) for path in images}

    before = state()
    for check in (True, False):
        drop_page_cache(images)
        sectors = sectors_read(fs.device)
        nothing = run_module("reflink_dedupe", check=check, pool=str(pool), vids=[], scope="pool", qubes_xml="none")
        read_from_disk = (sectors_read(fs.device) - sectors) * 512
        assert not nothing["failed"] and nothing["changed"] is False, nothing
        assert nothing["volumes"] == [] and nothing["skipped"] == [] and nothing["actions"] == [], nothing
        assert nothing["deduped_bytes"] == 0 and nothing["reclaimed_bytes"] == 0, nothing
        assert read_from_disk < total // 100, (read_from_disk, total)
        assert state() == before, "vids: [] changed an image"
    # Without vids, the same pool had something to dedupe: the empty list is what selected nothing.
    everything = run_module("reflink_dedupe", pool=str(pool), scope="pool", qubes_xml="none")
    assert everything["changed"] is True and everything["deduped_bytes"] > 0, everything
    assert state()[0] == before[0]


def test_ext4_says_so_and_changes_nothing(ext4_dir, run_module):
    pool = make_pool(ext4_dir)
    vm_dir = pool / "appvms" / "work"
    vm_dir.mkdir()
    for name in ("private.img", "private.img.1@2023-11-11T00:00:00Z"):
        write_file(vm_dir / name, [(0, b"x" * MIB)], MIB, 1_700_000_000 * 10 ** 9)
    before = snapshot(pool)
    named = run_module("reflink_dedupe", pool=str(pool), vids=[PRIVATE], qubes_xml="none")
    assert_failed(named, "cannot share blocks", "FIDEDUPERANGE", "nothing was changed")
    nightly = run_module("reflink_dedupe", pool=str(pool), qubes_xml="none")
    assert not nightly["failed"] and nightly["changed"] is False, nightly
    assert any("cannot share blocks" in warning for warning in nightly.get("warnings", [])), nightly
    assert nightly["volumes"] == [] and nightly["reclaimed_bytes"] == 0
    assert snapshot(pool) == before


def test_an_empty_list_selects_nothing_and_a_symlinked_vm_directory_is_never_entered(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    outside = btrfs_dir / "elsewhere"
    outside.mkdir()
    for name in ("private.img", "private.img.1@2023-11-11T00:00:00Z"):
        write_file(outside / name, [(0, os.urandom(MIB))], MIB, 1_700_000_000 * 10 ** 9)
    os.symlink(outside, pool / "appvms" / "evil")
    before = {path.name: facts(path) for path in outside.iterdir()}
    nothing = run_module("reflink_dedupe", pool=str(pool), vids=[], qubes_xml="none")
    assert not nothing["failed"] and nothing["changed"] is False and nothing["volumes"] == [], nothing
    named = run_module("reflink_dedupe", pool=str(pool), vids=["appvms/evil/private"], qubes_xml="none")
    assert not named["failed"], named
    assert [entry["file"] for entry in named["skipped"]] == ["appvms/evil"], named
    assert "never entered" in named["skipped"][0]["reason"]
    assert {path.name: facts(path) for path in outside.iterdir()} == before

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_info's space figures through the module, each held against statvfs after removing that set for real.

The pool is made the way a dom0 makes one: the modules create it and its
volumes, qubesd's start/stop (the emulation of space_helpers) writes and
commits sessions, the modules import a clone of a volume (src_vid), pin,
revert and gc.  That pool must have no warning among its findings.  Then the
sets are removed one after the other, each figure read by the module just
before (a figure of the same run for the first set removed, and for the
unions after it, by set arithmetic: removing A then B frees what A and B together do).
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest
from qubes_xml_helpers import Domain, qubes_xml, reflink_pool
from qubes_xml_helpers import Volume as XmlVolume
from space_helpers import (MIB, Volume, assert_close, compsize, freed_by_removing, fs_kind, large_filesystems,
                           large_reflink_dir, used_bytes)

from module_helpers import T0, assert_failed, copy_file, make_pool, make_volume, put_file, run_parallel

__all__ = ["large_filesystems", "large_reflink_dir"]   # fixtures

WORK = "appvms/work/private"   # 64 MiB: qubesd's sessions, a pin, a revert, gc
COPY = "appvms/copy/private"   # imported from WORK with src_vid: a clone across volumes
TEMPLATE = "vm-templates/tpl/root"   # 256 MiB, sparse: 12 MiB of data in three places
REGION = 16 * MIB
SIZES = {WORK: 64 * MIB, COPY: 64 * MIB, TEMPLATE: 256 * MIB}


def ok(result):
    assert not result.get("failed"), result
    return result


def write_qubes_xml(base, pool):
    domains = [Domain("AppVM", "work", [XmlVolume("private", "varlibqubes", WORK, False, True, SIZES[WORK],
                                                  revisions_to_keep=2)], 2, "tpl"),
               Domain("AppVM", "copy", [XmlVolume("private", "varlibqubes", COPY, False, True, SIZES[COPY])], 3, "tpl"),
               Domain("TemplateVM", "tpl", [XmlVolume("root", "varlibqubes", TEMPLATE, False, True, SIZES[TEMPLATE])],
                      1)]
    path = base / "qubes.xml"
    path.write_text(qubes_xml([reflink_pool("varlibqubes", pool)], domains), encoding="utf-8")
    return str(path)


def build_pool(base, run_module):
    """The pool: made by the modules and qubesd's start/stop; returns (pool, qubes.xml)."""
    pool = base / "pool"
    xml = write_qubes_xml(base, pool)
    common = {"pool": str(pool), "qubes_xml": xml}
    ok(run_module("reflink_pool", path=str(pool)))
    ok(run_module("reflink_volume", volumes=[{"vid": WORK, "size": SIZES[WORK]},
                                             {"vid": TEMPLATE, "size": SIZES[TEMPLATE]}], **common))
    work = Volume(pool, WORK, create=False)
    work.session([(0, 4 * REGION)], seed=1)              # one write: one 64 MiB extent on btrfs
    for region in range(2):
        work.session([(region * REGION, REGION)], seed=10 + region)
    Volume(pool, TEMPLATE, create=False).session([(0, 4 * MIB), (128 * MIB, 4 * MIB), (252 * MIB, 4 * MIB)], seed=3)
    ok(run_module("reflink_import", vid=COPY, src_vid=WORK, **common))
    ok(run_module("reflink_pin", vid=WORK, name="before", **common))
    work.session([(2 * REGION, REGION)], seed=12)
    ok(run_module("reflink_revert", vid=WORK, revision="latest", **common))
    Volume(pool, WORK, create=False).session([(3 * REGION, REGION // 2)], seed=13)
    ok(run_module("reflink_gc", **common))               # WORK keeps its 2 revisions (qubes.xml)
    return pool, xml


def image_files(pool):
    """Every image file of the pool, relative to it."""
    return sorted(os.path.relpath(os.path.join(root, name), pool)
                  for prefix in ("appvms", "vm-templates") for root, _dirs, names in os.walk(pool / prefix)
                  for name in names)


def files_of(result, vid):
    return {entry["file"]: entry for entry in volume_of(result, vid)["space"]["files"]}


def volume_of(result, vid):
    return next(volume for volume in result["volumes"] if volume["vid"] == vid)


def paths(pool, names):
    return [pool / name for name in names]


def test_space_figures_of_a_pool_made_by_qubesd_and_the_modules(large_reflink_dir, run_module):
    kind = fs_kind(large_reflink_dir)
    pool, xml = build_pool(large_reflink_dir, run_module)
    files = image_files(pool)
    revisions = sorted(name for name in files if name.startswith(WORK + ".img.") and "@" in name)
    pin = WORK + ".img.pin-before"
    assert len(revisions) == 2 and pin in files
    mixed = [TEMPLATE, pin, revisions[0]]
    used_bytes(pool)   # XFS: the background freeing of what gc removed is done before the maps are read
    before = {name: os.stat(pool / name).st_mtime_ns for name in files}
    common = {"pool": str(pool), "qubes_xml": xml}
    real, check, part = run_parallel(run_module, [
        ("reflink_info", dict(space=True, if_removed=mixed, **common)),
        ("reflink_info", dict(space=True, if_removed=mixed, check=True, **common)),
        ("reflink_info", dict(space=True, vids=[COPY], **common)),
    ], workers=3)
    for result in (real, check, part):
        ok(result)
    assert {name: os.stat(pool / name).st_mtime_ns for name in image_files(pool)} == before   # read-only
    # A pool made and used only by this collection and qubesd: no warning.  Stranded bytes are what normal use
    # leaves (a VM that rewrote most of an extent's data): how many depends on how btrfs laid out the first write.
    assert [finding for finding in real["findings"] if finding["severity"] == "warning"] == []
    assert {finding["kind"] for finding in real["findings"]} <= ({"stranded"} if kind == "btrfs" else set())
    for key in ("volumes", "if_removed", "findings", "missing"):
        assert check[key] == real[key], key
    # The filesystem's usage moves a little while the other run probes for reflinks (two unnamed files).
    assert dict(check["pool"], usage=0, space=dict(check["pool"]["space"], fs_free=0)) == \
        dict(real["pool"], usage=0, space=dict(real["pool"]["space"], fs_free=0))
    # vids limits the report, not the map: the copy's figures count what the other volumes hold too.
    assert [volume["vid"] for volume in part["volumes"]] == [COPY]
    assert part["volumes"][0]["space"] == volume_of(real, COPY)["space"]

    space = real["pool"]["space"]
    listed = sorted(entry["file"] for volume in real["volumes"] for entry in volume["space"]["files"])
    assert listed == files
    st = os.statvfs(pool)
    assert space["fs_size"] == st.f_blocks * st.f_frsize
    assert_close(space["fs_free"], st.f_bavail * st.f_frsize, "fs_free")
    assert space["saved"] == space["referenced"] - space["allocated"] > 0
    assert space["referenced"] == sum(entry["allocated"] for volume in real["volumes"]
                                      for entry in volume["space"]["files"])
    for vid in (WORK, COPY, TEMPLATE):
        figures = volume_of(real, vid)["space"]
        if kind == "btrfs":   # whole extents: what compsize counts
            assert figures["allocated"] == compsize(*paths(pool, files_of(real, vid)))[0], vid
        else:                 # blocks: each file's own st_blocks
            for name, entry in files_of(real, vid).items():
                assert entry["allocated"] == os.stat(pool / name).st_blocks * 512, name
    # Sparse: only the template's 12 MiB of data count, not its 256 MiB.
    assert volume_of(real, TEMPLATE)["space"]["allocated"] == 12 * MIB
    # The clone across volumes: each of the two shares most of its data with the other.
    assert volume_of(real, COPY)["space"]["exclusive"] < volume_of(real, COPY)["space"]["allocated"]
    assert sorted(real["if_removed"]["files"]) == sorted([pin, revisions[0]] + [n for n in files
                                                                                if n.startswith(TEMPLATE)])

    # 1. The mixed set: a volume, a pin, a revision.
    assert_close(real["if_removed"]["bytes"], freed_by_removing(pool, paths(pool, real["if_removed"]["files"])),
                 "if_removed of a volume, a pin and a revision")

    # 2. The clone: what removing the imported copy frees while the volume it came from stays.
    second = ok(run_module("reflink_info", space=True, **common))
    assert [finding for finding in second["findings"] if finding["severity"] == "warning"] == []
    assert_close(volume_of(second, COPY)["space"]["exclusive"],
                 freed_by_removing(pool, paths(pool, files_of(second, COPY))), "the copy's exclusive")

    # 3. One revision, then all of them, then the volume: the pool is then empty.
    third = ok(run_module("reflink_info", space=True, **common))
    work = volume_of(third, WORK)["space"]
    by_file = files_of(third, WORK)
    remaining = [name for name in revisions if name in by_file]
    largest = max(remaining, key=lambda name: by_file[name]["exclusive"])
    first = freed_by_removing(pool, [pool / largest])
    assert_close(by_file[largest]["exclusive"], first, "one revision's exclusive")
    rest = freed_by_removing(pool, paths(pool, [name for name in remaining if name != largest]))
    assert_close(work["revisions_exclusive"], first + rest, "revisions_exclusive")
    last = freed_by_removing(pool, paths(pool, [name for name in by_file if name not in remaining]))
    assert_close(work["exclusive"], first + rest + last, "the volume's exclusive")
    assert_close(third["pool"]["space"]["allocated"], first + rest + last, "the pool's allocated")
    assert image_files(pool) == []


def test_ext4_exclusive_is_allocated_and_no_reflink(ext4_dir, btrfs_dir, run_module):
    """ext4 shares nothing: every file's exclusive is its allocated; the pool gets the no_reflink warning."""
    pool = make_pool(ext4_dir)
    for vid, seed in ((WORK, 1), (COPY, 2)):
        clean = pool / (vid + ".img")
        put_file(clean, 24 * MIB, [(0, 4 * MIB), (12 * MIB, 4 * MIB)], seed=seed, mtime=T0)   # the fs has 64 MiB
        copy_file(clean, pool / (vid + "-precache.img"))
    used_bytes(pool)
    result = ok(run_module("reflink_info", pool=str(pool), space=True, if_removed=[WORK], qubes_xml="none"))
    assert [(finding["kind"], finding["vid"], finding["severity"]) for finding in result["findings"]] == [
        ("no_reflink", None, "warning")]
    for volume in result["volumes"]:
        assert volume["space"]["exclusive"] == volume["space"]["allocated"] >= 16 * MIB
        for entry in volume["space"]["files"]:
            assert entry["exclusive"] == entry["allocated"] == os.stat(pool / entry["file"]).st_blocks * 512
    assert result["pool"]["space"]["saved"] == 0
    assert result["if_removed"]["bytes"] == volume_of(result, WORK)["space"]["exclusive"]
    assert_close(result["if_removed"]["bytes"], freed_by_removing(pool, paths(pool, result["if_removed"]["files"])),
                 "a volume on ext4")
    # The way out: the pool on a filesystem that shares blocks.
    moved = btrfs_dir / "pool"
    subprocess.run(["cp", "-a", "--sparse=always", str(pool), str(moved)], check=True)
    again = ok(run_module("reflink_info", pool=str(moved), qubes_xml="none"))
    assert again["findings"] == []


@pytest.fixture
def small_pool(btrfs_dir):
    pool = make_pool(btrfs_dir)
    make_volume(pool, WORK, size=4 * MIB, revisions=[(1, 1767323000)])
    return pool


def test_if_removed_edges(small_pool, run_module):
    common = {"pool": str(small_pool), "qubes_xml": "none"}
    empty, unknown_vid, unknown_file, revision_only = run_parallel(run_module, [
        ("reflink_info", dict(if_removed=[], **common)),
        ("reflink_info", dict(if_removed=[WORK, "appvms/nothere/private"], **common)),
        ("reflink_info", dict(if_removed=["appvms/work/private.img.9@2026-01-01T00:00:00Z"], space=True, **common)),
        ("reflink_info", dict(if_removed=[WORK + ".img.1@2026-01-02T03:03:20Z"], **common)),
    ], workers=2)
    # An empty list means nothing: 0 bytes, and the maps are not read (no space keys).
    assert ok(empty)["if_removed"] == {"bytes": 0, "files": []}
    assert "space" not in empty["pool"] and "space" not in empty["volumes"][0]
    assert_failed(unknown_vid, "if_removed", "appvms/nothere/private", "neither a volume nor an image file")
    assert_failed(unknown_file, "appvms/work/private.img.9@2026-01-01T00:00:00Z")
    # Without space: the maps are read for if_removed alone; the report has no space keys.
    ok(revision_only)
    assert revision_only["if_removed"]["files"] == [WORK + ".img.1@2026-01-02T03:03:20Z"]
    assert revision_only["if_removed"]["bytes"] == 4096   # make_volume's revision holds 4 KiB of its own
    assert "space" not in revision_only["pool"]
    assert pathlib.Path(small_pool / (WORK + ".img.1@2026-01-02T03:03:20Z")).exists()

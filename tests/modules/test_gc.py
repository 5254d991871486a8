# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_gc through ansible-playbook: what it removes, what it never touches, and what it reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from module_helpers import MIB, T0, make_pool, make_volume, pool_listing, put_file, stamp

OLD = time.time() - 7200     # older than the default min_age of 1h
FRESH = time.time() - 60


def build_messy_pool(base):
    """A pool with every kind of leftover gc looks at; returns (pool, expectations)."""
    pool = make_pool(base)
    work = pool / "appvms" / "work"
    make_volume(pool, "appvms/work/data", revisions=[(1, T0 - 300), (2, T0 - 200), (3, T0 - 100)])
    make_volume(pool, "appvms/work/data2", seed=3, revisions=[(1, T0 - 100)])
    put_file(work / "data.img~abcdefgh", MIB, [(0, 4096)], mtime=OLD)      # old tempfile of data
    put_file(work / "data2.img~freshone", MIB, [(0, 4096)], mtime=FRESH)   # fresh tempfile of data2
    put_file(work / "data-import.img", 2 * MIB, [(0, 8192)], mtime=OLD)    # unclaimed old import
    put_file(work / "data.img.x1@2026-01-01T00:00:00Z", MIB, [(0, 100)])   # junk revision name
    (work / "firewall.xml").write_text("<firewall/>")
    (work / "notes").write_text("qubesd's own file")
    # A running volume (dirty image) with an old tempfile: nothing of it may go.
    make_volume(pool, "appvms/sys-net/private", seed=5)
    os.rename(pool / "appvms/sys-net/private-precache.img", pool / "appvms/sys-net/private-dirty.img")
    put_file(pool / "appvms/sys-net/private.img~oldtmp00", MIB, [(0, 4096)], mtime=OLD)
    # A stale precache (its mtime differs from clean's).
    make_volume(pool, "vm-templates/debian/root", seed=7)
    os.utime(pool / "vm-templates/debian/root-precache.img", (T0 - 5, T0 - 5))
    # An empty VM directory.
    (pool / "appvms" / "gone").mkdir()
    return pool


def removed_files(result):
    return sorted(entry["file"] for entry in result["removed"])


def test_gc_removes_exactly_the_leftovers_and_check_mode_agrees(btrfs_dir, run_module):
    pool = build_messy_pool(btrfs_dir)
    before = pool_listing(pool)
    checked = run_module("reflink_gc", check=True, pool=str(pool), revisions_to_keep=1)
    assert pool_listing(pool) == before  # check mode touched nothing
    result = run_module("reflink_gc", pool=str(pool), revisions_to_keep=1)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True
    expected = [
        "appvms/work/data-import.img",
        "appvms/work/data.img.1@%s" % stamp(T0 - 300),
        "appvms/work/data.img.2@%s" % stamp(T0 - 200),
        "appvms/work/data.img.x1@2026-01-01T00:00:00Z",
        "appvms/work/data.img~abcdefgh",
        "vm-templates/debian/root-precache.img",
    ]
    assert removed_files(result) == expected
    # Check mode reported the same removals, bytes and all, and the same keys.
    assert checked["removed"] == result["removed"]
    assert set(checked) == set(result)
    assert checked["actions"] == result["actions"]
    for name in expected:
        assert not (pool / name).exists()
    assert not (pool / "appvms" / "gone").exists()
    # Kept: data2's fresh tempfile, revision 3 of data, data2's revision, non-image files, the
    # running volume's dirty image and its old tempfile.
    work = pool / "appvms" / "work"
    for kept in ("data2.img~freshone", "data.img.3@%s" % stamp(T0 - 100), "data2.img.1@%s" % stamp(T0 - 100),
                 "firewall.xml", "notes", "data.img", "data-precache.img", "data2.img"):
        assert (work / kept).exists(), kept
    assert (work / "firewall.xml").read_text() == "<firewall/>"
    assert (pool / "appvms/sys-net/private-dirty.img").exists()
    assert (pool / "appvms/sys-net/private.img~oldtmp00").exists()
    assert result["pending_commit"] == [{"vid": "appvms/sys-net/private",
                                         "file": "appvms/sys-net/private-dirty.img", "size": 4 * MIB}]
    assert [item["vid"] for item in result["skipped_volumes"]] == ["appvms/sys-net/private"]
    # Bytes: what the removed files held alone (the import 8 KiB; the tempfile, the junk revision and two
    # revisions a block each; the stale precache is a reflink of clean: nothing), in check mode too.
    assert result["reclaimed_bytes"] == checked["reclaimed_bytes"] == 6 * 4096
    assert result["reclaimed_exclusive_bytes"] == result["reclaimed_bytes"]   # the deprecated alias
    # A second run has nothing left to do.
    again = run_module("reflink_gc", pool=str(pool), revisions_to_keep=1)
    assert again["changed"] is False and again["removed"] == [] and again["actions"] == []


def test_per_volume_revision_override_and_rebuild_precache(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    revisions = [(1, T0 - 300), (2, T0 - 200), (3, T0 - 100), (4, T0 - 50)]
    make_volume(pool, "appvms/a/private", revisions=revisions)
    make_volume(pool, "appvms/b/private", revisions=revisions, precache=False)
    result = run_module("reflink_gc", pool=str(pool), revisions_to_keep=1, rebuild_precache=True,
                        revisions_to_keep_per_volume={"appvms/a/private": 3})
    assert not result.get("failed"), result.get("msg")
    assert sorted(os.listdir(pool / "appvms/a")) == sorted(
        ["private.img", "private-precache.img"] + ["private.img.%d@%s" % (n, stamp(t)) for n, t in revisions[1:]])
    assert sorted(os.listdir(pool / "appvms/b")) == sorted(
        ["private.img", "private-precache.img", "private.img.4@%s" % stamp(T0 - 50)])
    clean, precache = os.stat(pool / "appvms/b/private.img"), os.stat(pool / "appvms/b/private-precache.img")
    assert (precache.st_mtime_ns, precache.st_size) == (clean.st_mtime_ns, clean.st_size)
    assert (pool / "appvms/b/private-precache.img").read_bytes() == (pool / "appvms/b/private.img").read_bytes()


def test_journal_claims_its_import_file(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, "appvms/work/private")
    begun = run_module("reflink_import", pool=str(pool), vid="appvms/work/private", state="begin", size="4M")
    assert begun["changed"] is True
    import_image = pool / "appvms/work/private-import.img"
    os.utime(import_image, (OLD, OLD))
    result = run_module("reflink_gc", pool=str(pool))
    assert import_image.exists() and result["removed"] == []
    # Once the journal is older than import_max_age, both go.
    journal = pool / ".reflink/imports/appvms-work-private.json"
    os.utime(journal, (OLD, OLD))
    result = run_module("reflink_gc", pool=str(pool), import_max_age="1h")
    assert removed_files(result) == ["appvms/work/private-import.img"]
    assert not import_image.exists() and not journal.exists()


def test_journal_whose_import_is_gone_is_removed(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, "appvms/work/private")
    run_module("reflink_import", pool=str(pool), vid="appvms/work/private", state="begin", size="4M")
    os.unlink(pool / "appvms/work/private-import.img")  # qubesd removed it on VM start
    result = run_module("reflink_gc", pool=str(pool))
    assert result["changed"] is True
    assert not (pool / ".reflink/imports/appvms-work-private.json").exists()


def test_orphans_reported_then_removed(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, "appvms/keep/private")
    make_volume(pool, "appvms/old/private", size=8 * MIB, revisions=[(1, T0 - 10)])
    (pool / "appvms/old/firewall.xml").write_text("x")
    result = run_module("reflink_gc", pool=str(pool), keep_vids=["appvms/keep/private"])
    assert result["changed"] is False
    assert [(o["vid"], o["size"]) for o in result["orphans"]] == [("appvms/old/private", 8 * MIB)]
    assert (pool / "appvms/old/private.img").exists()
    result = run_module("reflink_gc", pool=str(pool), keep_vids=["appvms/keep/private"], remove_orphans=True)
    assert result["changed"] is True
    assert os.listdir(pool / "appvms/old") == ["firewall.xml"]
    assert sorted(os.listdir(pool / "appvms/keep")) == ["private-precache.img", "private.img"]


def test_remove_orphans_needs_keep_vids(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    result = run_module("reflink_gc", pool=str(pool), remove_orphans=True)
    assert result["failed"] and "keep_vids" in result["msg"]


def test_volume_locked_by_another_process_is_skipped(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, "appvms/work/private")
    put_file(pool / "appvms/work/private.img~abcdefgh", MIB, [(0, 4096)], mtime=OLD)
    locks = pool / ".reflink" / "locks"
    locks.mkdir(parents=True, mode=0o700)
    # Hold only the volume lock (no pool lock), as a task of another tool might.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import fcntl, os, sys, time
        fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(60)
    """), str(locks / "appvms-work-private.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_module("reflink_gc", pool=str(pool))
    finally:
        holder.kill()
        holder.wait()
    assert (pool / "appvms/work/private.img~abcdefgh").exists()
    assert result["skipped_volumes"] == [{"vid": "appvms/work/private",
                                          "reason": "its volume lock is held by another task"}]
    assert result["removed"] == []


def test_min_age_forms(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, "appvms/work/private")
    put_file(pool / "appvms/work/private.img~abcdefgh", MIB, [(0, 4096)], mtime=time.time() - 600)
    kept = run_module("reflink_gc", pool=str(pool), min_age="30m")
    assert kept["removed"] == []
    bad = run_module("reflink_gc", pool=str(pool), min_age="5 weeks")
    assert bad["failed"] and "min_age" in bad["msg"]
    gone = run_module("reflink_gc", pool=str(pool), min_age=300)
    assert removed_files(gone) == ["appvms/work/private.img~abcdefgh"]
    assert json.dumps(gone["removed"])  # plain data, serialisable


@pytest.mark.parametrize("fs", ["btrfs", "xfs"])
def test_exclusive_bytes_tell_what_a_removal_frees(fs, request, run_module):
    """A revision sharing all its extents with clean frees nothing; one with its own data frees that."""
    pool = make_pool(request.getfixturevalue(fs + "_dir"))
    own = {"alpha": MIB, "beta": 2 * MIB}
    for vm, own_bytes in own.items():   # two VM directories, different figures: each file read in its own
        vm_dir = pool / "appvms" / vm
        make_volume(pool, "appvms/%s/private" % vm, revisions=[(3, T0 - 100)])
        shared = vm_dir / ("private.img.1@%s" % stamp(T0 - 300))
        subprocess.run(["cp", "--reflink=always", str(vm_dir / "private.img"), str(shared)], check=True)
        os.utime(shared, (T0 - 300, T0 - 300))
        put_file(vm_dir / ("private.img.2@%s" % stamp(T0 - 200)), 4 * MIB, [(0, own_bytes)], seed=9, mtime=T0 - 200)
    checked = run_module("reflink_gc", check=True, pool=str(pool), revisions_to_keep=1)
    result = run_module("reflink_gc", pool=str(pool), revisions_to_keep=1)
    assert not result.get("failed"), result.get("msg")
    assert checked["removed"] == result["removed"]
    by_file = {entry["file"]: entry for entry in result["removed"]}
    assert sorted(by_file) == ["appvms/%s/private.img.%d@%s" % (vm, number, stamp(T0 - 400 + 100 * number))
                               for vm in ("alpha", "beta") for number in (1, 2)]
    for name, entry in by_file.items():
        own_data = own[name.split("/")[1]] if ".img.2@" in name else 0
        assert entry["exclusive_bytes"] == own_data, entry
        assert entry["bytes"] >= max(own_data, 64 * 1024), entry
    assert result["reclaimed_bytes"] == checked["reclaimed_bytes"] == 3 * MIB
    assert result["reclaimed_exclusive_bytes"] == checked["reclaimed_exclusive_bytes"] == 3 * MIB


@pytest.mark.parametrize("fs", ["btrfs", "xfs"])
def test_without_revisions_to_keep_no_revision_is_pruned(fs, request, run_module):
    """No default: a volume whose owner keeps 5 revisions (qvm-volume config) keeps them all."""
    pool = make_pool(request.getfixturevalue(fs + "_dir"))
    five = [(number, T0 - 600 + 100 * number) for number in range(1, 6)]
    make_volume(pool, "appvms/work/private", revisions=five)
    make_volume(pool, "appvms/mail/private", seed=4, revisions=five[:3])
    before = pool_listing(pool)

    plain = run_module("reflink_gc", pool=str(pool))
    assert not plain.get("failed"), plain.get("msg")
    assert plain["changed"] is False and plain["removed"] == [] and plain["actions"] == []
    assert pool_listing(pool) == before

    # A per-volume value prunes that volume only, oldest first.
    one = run_module("reflink_gc", pool=str(pool), revisions_to_keep_per_volume={"appvms/mail/private": 1})
    assert removed_files(one) == ["appvms/mail/private.img.%d@%s" % (n, stamp(t)) for n, t in five[:2]]
    assert all("revisions_to_keep=1" in entry["reason"] for entry in one["removed"])
    for number, mtime in five:
        assert (pool / "appvms/work" / ("private.img.%d@%s" % (number, stamp(mtime)))).exists()
    assert (pool / "appvms/mail" / ("private.img.3@%s" % stamp(five[2][1]))).exists()


def test_check_mode_on_a_pool_not_made_yet(btrfs_dir, run_module):
    """gc and info plan against the empty pool reflink_pool would make, with a warning; a real run fails."""
    pool = btrfs_dir / "not-yet"
    before = pool_listing(btrfs_dir)
    gc = run_module("reflink_gc", check=True, pool=str(pool), revisions_to_keep=1)
    info = run_module("reflink_info", check=True, pool=str(pool))
    assert pool_listing(btrfs_dir) == before and not pool.exists()
    for result in (gc, info):
        assert not result.get("failed"), result.get("msg")
        assert result["changed"] is False
        assert any("does not exist" in warning and "check mode" in warning for warning in result["warnings"])
    assert gc["removed"] == [] and gc["actions"] == [] and gc["reclaimed_bytes"] == 0
    assert info["volumes"] == []
    assert info["pool"]["path"] == str(pool) and info["pool"]["fstype"] == "btrfs"
    for module, args in (("reflink_gc", {}), ("reflink_info", {})):
        real = run_module(module, pool=str(pool), **args)
        assert real.get("failed") is True and str(pool) in real["msg"], real
    # Once the pool exists, the real runs have the keys check mode returned.
    assert run_module("reflink_pool", path=str(pool))["changed"] is True
    real_gc = run_module("reflink_gc", pool=str(pool), revisions_to_keep=1)
    real_info = run_module("reflink_info", pool=str(pool))
    assert set(real_gc) - {"warnings"} == set(gc) - {"warnings"}
    assert set(real_info) - {"warnings"} == set(info) - {"warnings"}
    assert set(real_info["pool"]) == set(info["pool"])
    assert real_gc["removed"] == gc["removed"] and real_info["volumes"] == info["volumes"]

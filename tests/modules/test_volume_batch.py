# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_volume with ``volumes`` (many volumes in one task) through ansible-playbook, on real filesystems."""

from __future__ import annotations

import os
import subprocess

from module_helpers import (
    MIB,
    VOLUME_KEYS,
    assert_failed,
    listing,
    make_pool,
    make_volume,
    pool_listing,
    run_parallel,
    start_volume,
    strip_how,
)


def batch(pool, volumes, **task):
    return dict(pool=str(pool), volumes=volumes, **task)


def image(pool, vid):
    return pool / (vid + ".img")


def by_vid(result):
    return {item["vid"]: item for item in result["volumes"]}


def test_create_check_real_rerun(any_fs_dir, run_module):
    pool = make_pool(any_fs_dir)
    volumes = [{"vid": "appvms/work/private", "size": "20M"},
               {"vid": "appvms/work/volatile-data"},            # takes the task's size
               {"vid": "vm-templates/debian-12/root", "size": None, "revisions_to_keep": -1}]
    args = batch(pool, volumes, size="8M")

    before = listing(pool)
    check = run_module("reflink_volume", check=True, diff=True, **args)
    assert not check.get("failed") and check["changed"] is True, check
    assert listing(pool) == before
    assert [strip_how(text) for text in check["actions"]] == [
        "create VM directory appvms/work",
        "create sparse image appvms/work/private.img of 20971520 bytes",
        "refresh precache: appvms/work/private-precache.img from appvms/work/private.img",
        # Planned against what the first item leaves: the VM directory is not made twice.
        "create sparse image appvms/work/volatile-data.img of 8388608 bytes",
        "refresh precache: appvms/work/volatile-data-precache.img from appvms/work/volatile-data.img",
        "create VM directory vm-templates/debian-12",
        "create sparse image vm-templates/debian-12/root.img of 8388608 bytes",
    ]
    assert sorted(check["diff"]["before"]) == sorted(item["vid"] for item in volumes)
    assert check["diff"]["after"]["appvms/work/private"]["size"] == 20 * MIB

    real = run_module("reflink_volume", diff=True, **args)
    assert not real.get("failed") and real["changed"] is True, real
    assert real["actions"] == check["actions"]   # "(reflink)" too: check mode knows the pool
    assert real["diff"] == check["diff"]
    assert [item["vid"] for item in real["volumes"]] == [item["vid"] for item in volumes]
    for item, predicted in zip(real["volumes"], check["volumes"], strict=True):
        assert set(item) == VOLUME_KEYS | {"changed", "actions"}
        assert item["changed"] is True
        assert item == predicted
    assert "volume" not in real

    assert os.path.getsize(image(pool, "appvms/work/private")) == 20 * MIB
    assert os.path.getsize(image(pool, "appvms/work/volatile-data")) == 8 * MIB
    assert sorted(os.listdir(pool / "vm-templates" / "debian-12")) == ["root.img"]   # -1: no precache
    assert sorted(os.listdir(pool / "appvms" / "work")) == [
        "private-precache.img", "private.img", "volatile-data-precache.img", "volatile-data.img"]

    # The rerun changes nothing, item by item, and touches no file.
    after = pool_listing(pool)
    rerun = run_module("reflink_volume", **args)
    assert rerun["changed"] is False and rerun["actions"] == [], rerun
    assert [item["changed"] for item in rerun["volumes"]] == [False] * 3
    assert pool_listing(pool) == after


def test_mixed_batch_grow_remove_create(reflink_dir, run_module):
    pool = make_pool(reflink_dir)
    data = make_volume(pool, "appvms/work/private")
    make_volume(pool, "appvms/old/private")
    make_volume(pool, "appvms/old/root")
    make_volume(pool, "appvms/keep/private")
    pin = pool / "appvms" / "keep" / "private.img.pin-good"
    subprocess.run(["cp", "--reflink=always", str(image(pool, "appvms/keep/private")), str(pin)], check=True)
    old_inode = os.stat(image(pool, "appvms/work/private")).st_ino
    volumes = [
        {"vid": "appvms/work/private", "size": "16M"},                  # grow
        {"vid": "appvms/old/private", "state": "absent"},               # remove ...
        {"vid": "appvms/old/root", "state": "absent"},                  # ... and then its VM directory
        {"vid": "appvms/keep/private", "state": "absent"},              # its pin stays
        {"vid": "appvms/new/private", "size": "2M"},                    # create
        {"vid": "appvms/new/root", "size": "4M", "state": "present"},
    ]
    args = batch(pool, volumes)
    check = run_module("reflink_volume", check=True, **args)
    real = run_module("reflink_volume", **args)
    assert not real.get("failed") and real["changed"] is True, real
    assert real["actions"] == check["actions"]
    items = by_vid(real)
    assert [items[vid]["changed"] for vid in items] == [True] * 6
    assert "remove VM directory appvms/old (now empty)" in items["appvms/old/root"]["actions"]
    assert not any("remove VM directory" in text for text in items["appvms/old/private"]["actions"])
    assert items["appvms/keep/private"]["kept_pins"] == ["good"]
    assert items["appvms/old/root"]["kept_pins"] == []
    assert items["appvms/work/private"]["size"] == 16 * MIB

    grown = image(pool, "appvms/work/private")
    assert os.path.getsize(grown) == 16 * MIB and os.stat(grown).st_ino != old_inode
    with open(grown, "rb") as handle:
        assert handle.read(len(data)) == data
    assert not (pool / "appvms" / "old").exists()
    assert sorted(os.listdir(pool / "appvms" / "keep")) == ["private.img.pin-good"]
    assert os.path.getsize(image(pool, "appvms/new/root")) == 4 * MIB

    rerun = run_module("reflink_volume", **args)
    assert rerun["changed"] is False and [item["changed"] for item in rerun["volumes"]] == [False] * 6, rerun


def test_a_bad_fourth_item_changes_nothing(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, "appvms/a/private", size=8 * MIB)
    make_volume(pool, "appvms/d/private", size=8 * MIB)
    make_volume(pool, "appvms/busy/private")
    start_volume(pool, "appvms/busy/private")
    good = [{"vid": "appvms/new/private", "size": "4M"},
            {"vid": "appvms/a/private", "size": "16M"},
            {"vid": "appvms/b/private", "size": "4M"}]
    bad_fourth = {
        "shrink": ({"vid": "appvms/d/private", "size": "4M"}, "refusing to shrink"),
        "traversal": ({"vid": "appvms/../../etc/private"}, "vid"),
        "unknown key": ({"vid": "appvms/d/private", "sise": "4M"}, "unknown key sise"),
        "twice": ({"vid": "appvms/a/private"}, "given twice"),
        "in use": ({"vid": "appvms/busy/private", "state": "absent"}, "in use"),
        "bad state": ({"vid": "appvms/d/private", "state": "gone"}, "state must be one of"),
        "bad revisions_to_keep": ({"vid": "appvms/d/private", "revisions_to_keep": "--1"}, "revisions_to_keep must be"),
        "symlinked VM directory": ({"vid": "appvms/link/private", "size": "4M"}, "is a symlink"),
    }
    os.symlink(btrfs_dir, pool / "appvms" / "link")
    before = pool_listing(pool)   # lock files aside: planning takes the locks, as a single task does
    for why, (item, words) in bad_fourth.items():
        result = run_module("reflink_volume", **batch(pool, good + [item, {"vid": "appvms/e/private", "size": "4M"}]))
        msg = assert_failed(result, "volumes item 4", words)
        assert msg.endswith("nothing was changed"), (why, msg)
        assert pool_listing(pool) == before, why


def test_mutually_exclusive_with_vid_and_empty_list(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    both = run_module("reflink_volume", pool=str(pool), vid="appvms/a/private", volumes=[{"vid": "appvms/b/private"}],
                      size="4M")
    assert both.get("failed") and "mutually exclusive" in both["msg"], both
    neither = run_module("reflink_volume", pool=str(pool), size="4M")
    assert neither.get("failed") and "vid" in neither["msg"] and "volumes" in neither["msg"], neither
    empty = run_module("reflink_volume", **batch(pool, []))
    assert not empty.get("failed") and empty["changed"] is False and empty["volumes"] == [], empty
    assert sorted(os.listdir(pool)) == ["appvms", "vm-templates"]   # not even a lock file
    assert sorted(os.listdir(pool / "appvms")) == []


def test_a_failure_while_executing_stops_and_a_rerun_converges(reflink_dir, run_module):
    pool = make_pool(reflink_dir)
    make_volume(pool, "appvms/c/private", size=4 * MIB)
    volumes = [{"vid": "appvms/a/private", "size": "4M"},
               {"vid": "appvms/b/private", "size": "4M"},
               {"vid": "appvms/c/private", "size": "8M"},     # its grow needs a new file in appvms/c
               {"vid": "appvms/d/private", "size": "4M"}]
    locked = pool / "appvms" / "c"
    # Immutable: even root cannot add a file there, so the third item fails for real, after planning.
    subprocess.run(["chattr", "+i", str(locked)], check=True)
    try:
        failed = run_module("reflink_volume", **batch(pool, volumes))
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert failed.get("failed") is True and failed["changed"] is True, failed
    assert "volumes item 3 (appvms/c/private)" in failed["msg"]
    assert "appvms/a/private, appvms/b/private" in failed["msg"] and "run the task again" in failed["msg"]
    assert [item["vid"] for item in failed["volumes"]] == ["appvms/a/private", "appvms/b/private"]
    assert [strip_how(text) for text in failed["actions"][:3]] == [
        "create VM directory appvms/a",
        "create sparse image appvms/a/private.img of 4194304 bytes",
        "refresh precache: appvms/a/private-precache.img from appvms/a/private.img"]
    assert image(pool, "appvms/b/private").exists() and not (pool / "appvms" / "d").exists()
    assert os.path.getsize(image(pool, "appvms/c/private")) == 4 * MIB
    assert sorted(os.listdir(locked)) == ["private-precache.img", "private.img"]   # nothing left behind

    rerun = run_module("reflink_volume", **batch(pool, volumes))
    assert not rerun.get("failed"), rerun
    assert [item["changed"] for item in rerun["volumes"]] == [False, False, True, True]
    assert os.path.getsize(image(pool, "appvms/c/private")) == 8 * MIB
    assert os.path.getsize(image(pool, "appvms/d/private")) == 4 * MIB


def test_two_overlapping_batches_at_once_never_deadlock(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    vids = ["appvms/vm%02d/private" % number for number in range(12)]
    forward = [{"vid": vid, "size": "4M"} for vid in vids]
    backward = [{"vid": vid, "size": "4M"} for vid in reversed(vids)]   # the other order: locks sorted all the same
    first, second = run_parallel(run_module, [("reflink_volume", batch(pool, forward, lock_timeout=20)),
                                              ("reflink_volume", batch(pool, backward, lock_timeout=20))])
    for result in (first, second):
        assert not result.get("failed"), result
    created = [item["vid"] for result in (first, second) for item in result["volumes"] if item["changed"]]
    assert sorted(created) == sorted(vids)    # each volume made exactly once, by one of them
    for vid in vids:
        assert os.path.getsize(image(pool, vid)) == 4 * MIB

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_volume through ansible-playbook, on real btrfs, XFS and ext4: what ends up on disk."""

from __future__ import annotations

import os

from module_helpers import (
    MIB,
    T0,
    T0_STAMP,
    VOLUME_KEYS,
    allocated,
    assert_failed,
    blockdev_size,
    how_suffix,
    listing,
    loop_device,
    make_pool,
    make_volume,
    mode_of,
    pool_listing,
    put_file,
    run_parallel,
    stamp,
    start_volume,
    strip_how,
)

VID = "appvms/work/private"


def fs_kind(request):
    return request.node.callspec.params["any_fs_dir"]


# ------------------------------------------------------------------ create

def test_create_check_real_diff_and_rerun(any_fs_dir, run_module, request):
    kind = fs_kind(request)
    pool = make_pool(any_fs_dir)
    vm_dir = pool / "appvms" / "work"
    clean, precache = vm_dir / "private.img", vm_dir / "private-precache.img"
    args = {"pool": str(pool), "vid": VID, "size": "20M"}
    expected_plan = [
        "create VM directory appvms/work",
        "create sparse image appvms/work/private.img of 20971520 bytes",
        "refresh precache: appvms/work/private-precache.img from appvms/work/private.img",
    ]

    # Check mode: the plan, the predicted volume, and not one byte on disk.
    before = listing(pool)
    check = run_module("reflink_volume", check=True, diff=True, **args)
    assert listing(pool) == before
    assert not vm_dir.exists()
    assert check["changed"] is True and not check.get("failed"), check
    assert [strip_how(action) for action in check["actions"]] == expected_plan

    # The real run does what check mode said, and reports the same keys and values.
    real = run_module("reflink_volume", diff=True, **args)
    assert real["changed"] is True and not real.get("failed"), real
    assert [strip_how(action) for action in real["actions"]] == expected_plan
    assert real["actions"][2].startswith(expected_plan[2] + how_suffix(kind)), real["actions"]
    assert check["actions"] == real["actions"]   # how the clone goes too: check mode probes the pool
    assert set(real) == set(check)
    assert set(real["volume"]) >= VOLUME_KEYS and "path" not in real["volume"]
    assert real["volume"] == check["volume"]
    assert real["volume"] == {
        "vid": VID, "image": str(clean), "size": 20 * MIB, "usage": 0, "revisions": [],
        "state": "stopped", "in_use": False, "in_use_reasons": [], "precache": "fresh", "pins": [],
    }

    # On disk: exactly clean and precache, 0600, sparse, same size and mtime, two inodes.
    assert sorted(os.listdir(vm_dir)) == ["private-precache.img", "private.img"]
    st_clean, st_pre = os.stat(clean), os.stat(precache)
    assert mode_of(clean) == mode_of(precache) == 0o600
    assert st_clean.st_size == st_pre.st_size == 20 * MIB
    assert allocated(clean) == 0
    assert allocated(precache) == 0
    assert st_pre.st_mtime_ns == st_clean.st_mtime_ns
    assert st_pre.st_ino != st_clean.st_ino
    assert clean.read_bytes() == bytes(20 * MIB)

    # Diff: nothing before, both files after; check mode predicted the same.
    assert real["diff"]["before"]["files"] == [] and real["diff"]["before"]["size"] == 0
    after = real["diff"]["after"]
    assert after["size"] == 20 * MIB and after["revisions"] == []
    assert [(f["name"], f["size"]) for f in after["files"]] == [
        ("private-precache.img", 20 * MIB), ("private.img", 20 * MIB)]
    assert check["diff"] == real["diff"]

    # Rerun: nothing to do, nothing touched.
    vm_before = listing(vm_dir)
    rerun = run_module("reflink_volume", **args)
    assert rerun["changed"] is False and rerun["actions"] == [], rerun
    assert listing(vm_dir) == vm_before
    assert (os.stat(clean).st_ino, os.stat(clean).st_mtime_ns) == (st_clean.st_ino, st_clean.st_mtime_ns)
    assert (os.stat(precache).st_ino, os.stat(precache).st_mtime_ns) == (st_pre.st_ino, st_pre.st_mtime_ns)
    assert rerun["volume"] == real["volume"]


SIZE_FORMS = [("20M", 20 * MIB), ("20MiB", 20 * MIB), ("1.5M", 1572864), (1048576, 1048576), ("1k", 1024)]


def test_check_mode_plans_on_a_pool_not_made_yet(btrfs_dir, run_module):
    """ansible-playbook --check of a provisioning play on a fresh host: the pool task would make the
    pool, so the volume tasks after it report what they would do instead of failing; nothing is made."""
    pool = btrfs_dir / "new-pool"
    source = btrfs_dir / "template.img"
    put_file(source, 4 * MIB, [(0, MIB)], seed=21)
    before = listing(btrfs_dir)
    made = run_module("reflink_pool", check=True, path=str(pool))
    volume = run_module("reflink_volume", check=True, diff=True, pool=str(pool), vid=VID, size="8M")
    imported = run_module("reflink_import", check=True, pool=str(pool), vid="vm-templates/debian/root",
                          src=str(source))
    for result in (made, volume, imported):
        assert not result.get("failed"), result.get("msg")
        assert result["changed"] is True
    assert volume["volume"]["size"] == 8 * MIB
    assert volume["diff"]["before"] != volume["diff"]["after"]
    assert any("private.img" in action for action in volume["actions"]), volume["actions"]
    assert imported["volume"]["size"] == 4 * MIB
    assert listing(btrfs_dir) == before and not pool.exists()
    # A real run still needs the pool: no volume is made in a directory nobody set up.
    real = run_module("reflink_volume", pool=str(pool), vid=VID, size="8M")
    assert_failed(real, "does not exist", "reflink_pool")
    assert listing(btrfs_dir) == before
    # Once the pool is made, the real runs do what check mode said, with the same keys; again, nothing.
    assert run_module("reflink_pool", path=str(pool))["changed"] is True
    for check, module, args in ((volume, "reflink_volume", {"vid": VID, "size": "8M"}),
                                (imported, "reflink_import", {"vid": "vm-templates/debian/root", "src": str(source)})):
        done = run_module(module, diff=True, pool=str(pool), **args)
        assert not done.get("failed"), done.get("msg")
        assert [strip_how(action) for action in done["actions"]] == [strip_how(a) for a in check["actions"]]
        assert set(done) - {"diff", "warnings"} == set(check) - {"diff", "warnings"}
        assert done["volume"]["size"] == check["volume"]["size"]
        assert run_module(module, pool=str(pool), **args)["changed"] is False


def test_every_size_form(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    calls = [("reflink_volume", {"pool": str(pool), "vid": "appvms/vm%d/private" % i, "size": size})
             for i, (size, _bytes) in enumerate(SIZE_FORMS)]
    # Then the same sizes spelt differently: no change.
    calls += [("reflink_volume", {"pool": str(pool), "vid": "appvms/vm0/private", "size": 20971520}),
              ("reflink_volume", {"pool": str(pool), "vid": "appvms/vm2/private", "size": "1.5MiB"})]
    results = run_parallel(run_module, calls[:len(SIZE_FORMS)]) + run_parallel(run_module, calls[len(SIZE_FORMS):])
    for i, ((size, expected), result) in enumerate(zip(SIZE_FORMS, results[:len(SIZE_FORMS)], strict=True)):
        assert result["changed"] is True and not result.get("failed"), (size, result)
        assert result["volume"]["size"] == expected, size
        assert os.stat(pool / "appvms" / ("vm%d" % i) / "private.img").st_size == expected, size
        assert os.stat(pool / "appvms" / ("vm%d" % i) / "private-precache.img").st_size == expected, size
    for result in results[len(SIZE_FORMS):]:
        assert result["changed"] is False and result["actions"] == [], result


# (size, words the message must contain)
BAD_SIZES = [("-1", ["-1"]), ("abc", ["abc", "MiB"]), ("1P", ["1P", "MiB"]), ("1GB", ["1GB", "MiB"]),
             (True, ["boolean"])]


def test_bad_sizes_fail_and_change_nothing(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, size=4 * MIB)
    before = listing(pool)
    calls = [("reflink_volume", {"pool": str(pool), "vid": VID, "size": size}) for size, _words in BAD_SIZES]
    calls += [("reflink_volume", {"pool": str(pool), "vid": "appvms/new/private", "size": size})
              for size in ("-1", "1GB")]
    results = run_parallel(run_module, calls)
    for (_size, words), result in zip(BAD_SIZES + [BAD_SIZES[0], BAD_SIZES[3]], results, strict=True):
        assert_failed(result, "size", *words)
        assert result["actions"] == []
    assert listing(pool) == before


# -------------------------------------------------------------------- grow

def test_grow_stopped_gives_a_new_inode(any_fs_dir, run_module, request):
    kind = fs_kind(request)
    pool = make_pool(any_fs_dir)
    old_data = make_volume(pool, VID, size=4 * MIB, revisions=[(1, T0 - 60)])
    vm_dir = pool / "appvms" / "work"
    clean, precache = vm_dir / "private.img", vm_dir / "private-precache.img"
    revision = vm_dir / ("private.img.1@" + stamp(T0 - 60))
    old_ino = os.stat(clean).st_ino
    rev_facts = listing(vm_dir)[revision.name]
    # A backup reading the old clean image through an open descriptor must not notice anything.
    backup_fd = os.open(clean, os.O_RDONLY)
    try:
        result = run_module("reflink_volume", pool=str(pool), vid=VID, size="6M")
        assert result["changed"] is True and not result.get("failed"), result
        assert os.fstat(backup_fd).st_size == 4 * MIB
        assert os.pread(backup_fd, 4 * MIB, 0) == old_data
    finally:
        os.close(backup_fd)

    plan = [strip_how(action) for action in result["actions"]]
    # The old precache stays until the new one replaces it, so a failed resize leaves it in place.
    assert plan == [
        "resize (new inode): appvms/work/private.img from appvms/work/private.img, size 6291456 bytes",
        "refresh precache: appvms/work/private-precache.img from appvms/work/private.img",
    ]
    assert all(action.startswith(text + how_suffix(kind))
               for action, text in zip(result["actions"], plan, strict=True)), result["actions"]
    st_clean, st_pre = os.stat(clean), os.stat(precache)
    assert st_clean.st_ino != old_ino
    assert st_clean.st_size == 6 * MIB
    data = clean.read_bytes()
    assert data[:4 * MIB] == old_data
    assert data[4 * MIB:] == bytes(2 * MIB)
    assert (st_pre.st_size, st_pre.st_mtime_ns) == (st_clean.st_size, st_clean.st_mtime_ns)
    assert st_pre.st_ino != st_clean.st_ino
    assert precache.read_bytes() == data
    assert mode_of(clean) == mode_of(precache) == 0o600
    assert listing(vm_dir)[revision.name] == rev_facts  # a resize makes no revision and keeps the old ones
    assert sorted(os.listdir(vm_dir)) == sorted(["private.img", "private-precache.img", revision.name])
    volume = result["volume"]
    assert (volume["size"], volume["precache"], volume["state"]) == (6 * MIB, "fresh", "stopped")
    assert volume["revisions"] == [{"id": 1, "timestamp": stamp(T0 - 60)}]
    assert volume["usage"] == allocated(clean)


def test_grow_running_in_place_and_tell_the_loop_device(any_fs_dir, run_module):
    pool = make_pool(any_fs_dir)
    make_volume(pool, VID, size=4 * MIB)
    vm_dir = pool / "appvms" / "work"
    dirty = vm_dir / "private-dirty.img"
    running_data = start_volume(pool, VID)
    clean_facts = listing(vm_dir)["private.img"]
    dirty_ino = os.stat(dirty).st_ino
    with loop_device(dirty) as device:
        assert blockdev_size(device) == 4 * MIB
        grow = run_module("reflink_volume", pool=str(pool), vid=VID, size="8M")
        assert grow["changed"] is True and not grow.get("failed"), grow
        assert grow["actions"] == [
            "resize appvms/work/private-dirty.img in place to 8388608 bytes",
            "tell loop device %s its backing file's new size" % device,
        ]
        assert os.stat(dirty).st_ino == dirty_ino
        assert os.stat(dirty).st_size == 8 * MIB
        assert blockdev_size(device) == 8 * MIB
        data = dirty.read_bytes()
        assert data[:4 * MIB] == running_data and data[4 * MIB:] == bytes(4 * MIB)
        assert listing(vm_dir)["private.img"] == clean_facts  # clean untouched while running
        assert not (vm_dir / "private-precache.img").exists()
        volume = grow["volume"]
        assert (volume["size"], volume["state"], volume["in_use"]) == (8 * MIB, "running", True)
        assert any(device in reason for reason in volume["in_use_reasons"]), volume

        # While it runs: a shrink is refused even with allow_shrink, a commit (state=stopped) too.
        shrink, commit = run_parallel(run_module, [
            ("reflink_volume", {"pool": str(pool), "vid": VID, "size": "2M", "allow_shrink": True}),
            ("reflink_volume", {"pool": str(pool), "vid": VID, "state": "stopped"}),
        ])
        assert_failed(shrink, "running", device)
        assert_failed(commit, "running", device)
        assert os.stat(dirty).st_size == 8 * MIB and os.stat(dirty).st_ino == dirty_ino
        assert blockdev_size(device) == 8 * MIB
        assert listing(vm_dir)["private.img"] == clean_facts


# ------------------------------------------------------------------ shrink

def test_shrink_refused_then_allowed(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    old_data = make_volume(pool, VID, size=8 * MIB)
    vm_dir = pool / "appvms" / "work"
    clean, precache = vm_dir / "private.img", vm_dir / "private-precache.img"
    before = pool_listing(pool)
    refused = run_module("reflink_volume", pool=str(pool), vid=VID, size="4M")
    msg = assert_failed(refused, "allow_shrink", str(8 * MIB), str(4 * MIB))
    assert "shrink" in msg
    assert pool_listing(pool) == before

    old_ino = os.stat(clean).st_ino
    allowed = run_module("reflink_volume", pool=str(pool), vid=VID, size="4M", allow_shrink=True)
    assert allowed["changed"] is True and not allowed.get("failed"), allowed
    st_clean, st_pre = os.stat(clean), os.stat(precache)
    assert st_clean.st_ino != old_ino and st_clean.st_size == 4 * MIB
    assert clean.read_bytes() == old_data[:4 * MIB]
    assert (st_pre.st_size, st_pre.st_mtime_ns) == (st_clean.st_size, st_clean.st_mtime_ns)
    assert allowed["volume"]["size"] == 4 * MIB and allowed["volume"]["precache"] == "fresh"


# ------------------------------------------------------------------ absent

def _every_kind_of_file(pool, vm, volume="private"):
    """A volume with clean, precache, two revisions, a junk revision, an import image and a tempfile."""
    vid = "appvms/%s/%s" % (vm, volume)
    make_volume(pool, vid, size=2 * MIB, revisions=[(1, T0 - 120), (2, T0 - 60)])
    vm_dir = pool / "appvms" / vm
    put_file(vm_dir / (volume + "-import.img"), MIB, [(0, 4096)])
    put_file(vm_dir / (volume + ".img.x@2026-01-01T00:00:00Z"), MIB)
    put_file(vm_dir / (volume + ".img~abcd1234"), MIB)
    return vid, vm_dir


def test_absent_removes_every_file_and_the_empty_vm_dir(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    vid_a, dir_a = _every_kind_of_file(pool, "alone")
    vid_b, dir_b = _every_kind_of_file(pool, "shared")
    # In the shared VM directory: qubesd's firewall.xml and a sibling volume "private2" with a tempfile.
    firewall = dir_b / "firewall.xml"
    firewall.write_text("<firewall/>\n")
    make_volume(pool, "appvms/shared/private2", size=MIB)
    put_file(dir_b / "private2.img~zzzz9999", MIB)
    kept = {name: facts for name, facts in listing(dir_b).items()
            if name == "firewall.xml" or name.startswith("private2")}
    assert len(kept) == 4

    before = listing(pool)
    check = run_module("reflink_volume", check=True, pool=str(pool), vid=vid_b, state="absent")
    assert listing(pool) == before
    real_a, real_b = run_parallel(run_module, [
        ("reflink_volume", {"pool": str(pool), "vid": vid_a, "state": "absent"}),
        ("reflink_volume", {"pool": str(pool), "vid": vid_b, "state": "absent"}),
    ])
    for result in (real_a, real_b):
        assert result["changed"] is True and not result.get("failed"), result
        assert result["volume"]["state"] == "absent" and result["volume"]["size"] == 0
        assert result["volume"]["revisions"] == [] and result["volume"]["precache"] == "missing"
    assert check["actions"] == real_b["actions"]
    assert check["volume"] == real_b["volume"]
    assert not dir_a.exists()
    assert "remove VM directory appvms/alone (now empty)" in real_a["actions"]
    assert listing(dir_b) == kept
    assert firewall.read_text() == "<firewall/>\n"
    assert not any("appvms/shared (now empty)" in action for action in real_b["actions"])
    for name in ("private.img", "private-precache.img", "private-import.img", "private.img~abcd1234",
                 "private.img.x@2026-01-01T00:00:00Z", "private.img.1@" + stamp(T0 - 120)):
        assert any(name in action for action in real_b["actions"]), (name, real_b["actions"])

    rerun = run_module("reflink_volume", pool=str(pool), vid=vid_b, state="absent")
    assert rerun["changed"] is False and rerun["actions"] == [], rerun
    assert listing(dir_b) == kept


def test_absent_refused_while_in_use(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, "appvms/started/private", size=MIB)
    start_volume(pool, "appvms/started/private")
    make_volume(pool, "appvms/looped/private", size=MIB)
    before = pool_listing(pool)
    with loop_device(pool / "appvms" / "looped" / "private.img") as device:
        dirty, looped = run_parallel(run_module, [
            ("reflink_volume", {"pool": str(pool), "vid": "appvms/started/private", "state": "absent"}),
            ("reflink_volume", {"pool": str(pool), "vid": "appvms/looped/private", "state": "absent"}),
        ])
        assert_failed(dirty, "in use", "private-dirty.img")
        assert_failed(looped, "in use", device, "private.img")
        assert pool_listing(pool) == before


# --------------------------------------------------------------- stopped

KEEP_CASES = {
    # revisions_to_keep: revision ids left (existing ones are 2, 3, 5; the commit adds 6)
    1: [6],
    0: [],
    3: [3, 5, 6],
    -1: [],
}
OLD_REVISIONS = [(2, T0 - 300), (3, T0 - 200), (5, T0 - 100)]


def test_stopped_commits_a_dirty_image(any_fs_dir, run_module, request):
    kind = fs_kind(request)
    pool = make_pool(any_fs_dir)
    setups = {}
    for keep in KEEP_CASES:
        vid = "appvms/keep%s/private" % str(keep).replace("-", "m")
        clean_data = make_volume(pool, vid, size=2 * MIB, revisions=OLD_REVISIONS)
        vm_dir = pool / os.path.dirname(vid)
        old_revs = {name: (pool / os.path.dirname(vid) / name).read_bytes()
                    for name in os.listdir(vm_dir) if ".img." in name}
        dirty_data = start_volume(pool, vid, seed=7)
        setups[keep] = (vid, vm_dir, clean_data, dirty_data, os.stat(vm_dir / "private-dirty.img").st_ino, old_revs)

    # Check mode first (for two of the cases): it must predict the real run and change nothing.
    before_check = listing(pool)
    checks = dict(zip((3, -1), run_parallel(run_module, [
        ("reflink_volume", {"pool": str(pool), "vid": setups[keep][0], "state": "stopped",
                            "revisions_to_keep": keep, "check": True, "diff": True})
        for keep in (3, -1)]), strict=True))
    assert listing(pool) == before_check

    results = run_parallel(run_module, [
        ("reflink_volume", {"pool": str(pool), "vid": vid, "state": "stopped", "revisions_to_keep": keep,
                            "diff": True})
        for keep, (vid, *_rest) in setups.items()])

    for (keep, expected_ids), result in zip(KEEP_CASES.items(), results, strict=True):
        vid, vm_dir, clean_data, dirty_data, dirty_ino, old_revs = setups[keep]
        assert result["changed"] is True and not result.get("failed"), (keep, result)
        assert result["diff"]["before"]["revisions"] == [2, 3, 5]
        assert result["diff"]["after"]["revisions"] == expected_ids
        if keep in checks:
            check = checks[keep]
            assert check["changed"] is True and set(check) == set(result), (keep, check)
            assert check["actions"] == result["actions"], keep   # "(reflink)" too: check mode knows the pool
            assert check["volume"] == result["volume"], keep
            assert check["diff"]["after"]["revisions"] == expected_ids
        clean = vm_dir / "private.img"
        # The dirty image became clean by rename: same inode, its bytes.
        assert not (vm_dir / "private-dirty.img").exists()
        assert os.stat(clean).st_ino == dirty_ino
        assert clean.read_bytes() == dirty_data
        expected_names = {"private.img"}
        revs = {n: (vm_dir / n) for n in os.listdir(vm_dir) if ".img." in n}
        for number in expected_ids:
            if number == 6:
                name = "private.img.6@" + T0_STAMP  # named from the old clean's mtime
                assert revs[name].read_bytes() == clean_data, keep
                assert mode_of(revs[name]) == 0o600
            else:
                name = "private.img.%d@%s" % (number, stamp(dict(OLD_REVISIONS)[number]))
                assert revs[name].read_bytes() == old_revs[name], keep
            expected_names.add(name)
        if keep != -1:
            precache = vm_dir / "private-precache.img"
            expected_names.add(precache.name)
            st_clean, st_pre = os.stat(clean), os.stat(precache)
            assert (st_pre.st_size, st_pre.st_mtime_ns) == (st_clean.st_size, st_clean.st_mtime_ns), keep
            assert st_pre.st_ino != st_clean.st_ino
            assert mode_of(precache) == 0o600
            assert result["actions"][-1].startswith(
                "refresh precache: %s/private-precache.img from %s/private.img%s"
                % (os.path.dirname(vid), os.path.dirname(vid), how_suffix(kind))), result["actions"]
        assert set(os.listdir(vm_dir)) == expected_names, (keep, sorted(os.listdir(vm_dir)))
        volume = result["volume"]
        assert [rev["id"] for rev in volume["revisions"]] == expected_ids, (keep, volume)
        if 6 in expected_ids:
            assert volume["revisions"][-1] == {"id": 6, "timestamp": T0_STAMP}
        assert volume["state"] == "stopped" and volume["in_use"] is False
        assert volume["precache"] == ("missing" if keep == -1 else "fresh")
        assert volume["size"] == 2 * MIB
        assert "commit: rename %s/private-dirty.img to %s/private.img" % (
            os.path.dirname(vid), os.path.dirname(vid)) in result["actions"]

    before = {keep: listing(setup[1]) for keep, setup in setups.items()}
    reruns = run_parallel(run_module, [
        ("reflink_volume", {"pool": str(pool), "vid": vid, "state": "stopped", "revisions_to_keep": keep})
        for keep, (vid, *_rest) in setups.items()])
    for keep, rerun in zip(KEEP_CASES, reruns, strict=True):
        assert rerun["changed"] is False and rerun["actions"] == [], (keep, rerun)
        assert listing(setups[keep][1]) == before[keep]

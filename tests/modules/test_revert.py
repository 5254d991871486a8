# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_revert through ansible-playbook, on real btrfs, XFS and ext4: what ends up on disk."""

from __future__ import annotations

import os

import pytest

from module_helpers import (
    MIB,
    T0,
    T0_STAMP,
    VOLUME_KEYS,
    how_suffix,
    listing,
    make_pool,
    make_volume,
    mode_of,
    put_file,
    same_bytes,
    stamp,
    start_volume,
    strip_how,
)
from staging_helpers import (
    VID,
    assert_no_leftovers,
    assert_ok,
    assert_refused,
    image,
    read_only_loop,
    revision_ids,
    revisions,
    snapshot,
    vm_dir_of,
)

REL = "appvms/work/private"
T1, T2 = T0 - 7200, T0 - 3600


def make_history(pool, vid=VID):
    """A stopped volume with clean (mtime T0) and revisions 1 (T1) and 2 (T2), each with its own data.

    Returns {"clean": bytes, 1: bytes, 2: bytes}.
    """
    data = {"clean": make_volume(pool, vid, size=4 * MIB, revisions=[(1, T1), (2, T2)])}
    for number, path in revisions(pool, vid).items():
        data[number] = path.read_bytes()
    assert len({data["clean"], data[1], data[2]}) == 3
    return data


def assert_precache_fresh(pool, vid=VID):
    clean, precache = image(pool, vid), image(pool, vid, "precache")
    st_clean, st_pre = os.stat(clean), os.stat(precache)
    assert (st_pre.st_size, st_pre.st_mtime_ns) == (st_clean.st_size, st_clean.st_mtime_ns)
    assert st_pre.st_ino != st_clean.st_ino and mode_of(precache) == 0o600
    assert same_bytes(clean, precache)


def test_revert_to_an_id(any_fs_dir, run_module, request):
    kind = request.node.callspec.params["any_fs_dir"]
    pool = make_pool(any_fs_dir)
    data = make_history(pool)
    clean = image(pool)
    rev1 = revisions(pool)[1]
    rev1_ino = os.stat(rev1).st_ino
    rev2_facts = listing(vm_dir_of(pool))[revisions(pool)[2].name]

    result = assert_ok(run_module("reflink_revert", pool=str(pool), vid=VID, revision=1), True)
    expected = [
        "keep the current image as a revision: %s.img.3@%s from %s.img" % (REL, T0_STAMP, REL),
        "remove %s-precache.img (the precache is about to go stale)" % REL,
        "mark %s.img.1@%s as revision 1 restored" % (REL, stamp(T1)),
        "revert to revision 1: rename %s.img.1@%s to %s.img" % (REL, stamp(T1), REL),
        "refresh precache: %s-precache.img from %s.img" % (REL, REL),
    ]
    assert [strip_how(text) for text in result["actions"]] == expected
    assert result["actions"][0].startswith(expected[0] + how_suffix(kind)), result["actions"]
    # Clean is revision 1's file (renamed: same inode, same bytes, its mtime).
    assert clean.read_bytes() == data[1]
    st = os.stat(clean)
    assert st.st_ino == rev1_ino and int(st.st_mtime) == T1 and mode_of(clean) == 0o600
    # Revision 1 is gone as a revision; the previous clean is revision 3, named from its mtime.
    assert sorted(revisions(pool)) == [2, 3]
    assert revisions(pool)[3].name == "private.img.3@" + T0_STAMP
    assert revisions(pool)[3].read_bytes() == data["clean"] and mode_of(revisions(pool)[3]) == 0o600
    assert listing(vm_dir_of(pool))[revisions(pool)[2].name] == rev2_facts
    assert_precache_fresh(pool)
    assert result["volume"] == {
        "vid": VID, "image": str(clean), "size": 4 * MIB, "usage": result["volume"]["usage"],
        "revisions": [{"id": 2, "timestamp": stamp(T2)}, {"id": 3, "timestamp": T0_STAMP}],
        "state": "stopped", "in_use": False, "in_use_reasons": [], "precache": "fresh", "pins": [],
    }

    # The same task again: already done, nothing moves.
    before = snapshot(pool)
    again = assert_ok(run_module("reflink_revert", pool=str(pool), vid=VID, revision="1"), False)
    assert again["actions"] == []
    assert snapshot(pool) == before
    assert_no_leftovers(pool)


def test_revert_to_latest_twice_does_not_flip_back(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    data = make_history(pool)
    clean = image(pool)

    result = assert_ok(run_module("reflink_revert", pool=str(pool), vid=VID), True)
    assert clean.read_bytes() == data[2]
    assert revision_ids(result) == [1, 3]
    assert revisions(pool)[3].read_bytes() == data["clean"]
    assert_precache_fresh(pool)

    before = snapshot(pool)
    again = assert_ok(run_module("reflink_revert", pool=str(pool), vid=VID, revision="latest"), False)
    assert again["actions"] == [] and revision_ids(again) == [1, 3]
    assert snapshot(pool) == before
    assert clean.read_bytes() == data[2]

    # To go further back, name the id.
    back = assert_ok(run_module("reflink_revert", pool=str(pool), vid=VID, revision=1), True)
    assert clean.read_bytes() == data[1]
    assert revision_ids(back) == [3, 4]
    assert revisions(pool)[4].read_bytes() == data[2]
    assert_precache_fresh(pool)
    assert_no_leftovers(pool)


def test_a_commit_after_a_revert_makes_latest_revert_again(btrfs_dir, run_module):
    """The revert marker belongs to the reverted inode: an import gives a new clean without it."""
    pool = make_pool(btrfs_dir)
    data = make_history(pool)
    clean = image(pool)
    assert_ok(run_module("reflink_revert", pool=str(pool), vid=VID), True)
    assert clean.read_bytes() == data[2]

    src = btrfs_dir / "new.img"
    new_data = put_file(src, 4 * MIB, [(0, 8192)], seed=42)
    imported = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src=str(src),
                                    revisions_to_keep=5), True)
    assert revision_ids(imported) == [1, 3, 4]
    assert revisions(pool)[4].read_bytes() == data[2]

    reverted = assert_ok(run_module("reflink_revert", pool=str(pool), vid=VID), True)
    assert clean.read_bytes() == data[2]
    assert revision_ids(reverted) == [1, 3, 5]
    assert revisions(pool)[5].read_bytes() == new_data
    assert_no_leftovers(pool, btrfs_dir)


@pytest.mark.parametrize("revision, words", [
    (9, ("no revision 9", "revisions: 1, 2")),
    ("0", ("revision must be", "positive integer")),
    (-1, ("revision must be", "positive integer")),
    ("abc", ("revision must be", "'abc'")),
])
def test_bad_revisions_are_refused(btrfs_dir, run_module, revision, words):
    pool = make_pool(btrfs_dir)
    make_history(pool)
    before = snapshot(pool)
    result = run_module("reflink_revert", pool=str(pool), vid=VID, revision=revision)
    assert_refused(result, *words)
    assert snapshot(pool) == before
    assert_no_leftovers(pool)


def test_latest_without_revisions_is_refused(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    before = snapshot(pool)
    result = run_module("reflink_revert", pool=str(pool), vid=VID)
    assert_refused(result, "no revision", "revisions: none")
    assert snapshot(pool) == before


def test_dirty_image_refused_unless_discard_dirty(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    data = make_history(pool)
    start_volume(pool, VID)  # a halted VM's uncommitted data
    before = snapshot(pool)

    refused = run_module("reflink_revert", pool=str(pool), vid=VID, revision=1)
    assert_refused(refused, "private-dirty.img", "discard_dirty")
    assert snapshot(pool) == before

    result = assert_ok(run_module("reflink_revert", pool=str(pool), vid=VID, revision=1, discard_dirty=True), True)
    assert result["actions"][0] == "remove %s-dirty.img (discard_dirty: dropping uncommitted data)" % REL
    assert not image(pool, kind="dirty").exists()
    assert image(pool).read_bytes() == data[1]
    # start_volume renamed the precache to dirty: the previous clean still became revision 3.
    assert revision_ids(result) == [2, 3] and revisions(pool)[3].read_bytes() == data["clean"]
    assert result["volume"]["state"] == "stopped" and result["volume"]["in_use"] is False
    assert_precache_fresh(pool)
    assert_no_leftovers(pool)


def test_refused_while_a_loop_device_is_attached_even_with_discard_dirty(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_history(pool)
    before = snapshot(pool)
    with read_only_loop(image(pool)) as device:
        result = run_module("reflink_revert", pool=str(pool), vid=VID, revision=1, discard_dirty=True)
        assert_refused(result, "running", device)
        assert snapshot(pool) == before
    assert_no_leftovers(pool)


def test_check_mode_changes_nothing_and_predicts_the_real_run(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_history(pool)
    start_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID, "revision": 2, "discard_dirty": True}
    before = listing(pool)  # no .reflink/ yet: check mode must not even create the lock files

    check = assert_ok(run_module("reflink_revert", check=True, diff=True, **args), True)
    assert listing(pool) == before
    real = assert_ok(run_module("reflink_revert", diff=True, **args), True)
    assert set(check) == set(real)
    assert check["actions"] == real["actions"]   # "(reflink)" too: check mode knows the pool
    assert set(real["volume"]) >= VOLUME_KEYS
    assert check["volume"] == real["volume"]
    assert check["diff"] == real["diff"]
    assert real["diff"]["after"]["revisions"] == [1, 3]

    # Check mode of the rerun: no change predicted, none made.
    after = snapshot(pool)
    rerun = assert_ok(run_module("reflink_revert", check=True, **args), False)
    assert rerun["actions"] == [] and snapshot(pool) == after
    assert_no_leftovers(pool)

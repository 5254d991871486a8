# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_pin, and the revert to a pin, through ansible-playbook on real btrfs, XFS and ext4.

The pins must outlive what qubesd does to a volume with ``revisions_to_keep: 1``: every
stop commits and prunes, so after two restarts nothing of the start state is left but
the pin.
"""

from __future__ import annotations

import os

import pytest
from qubes_xml_helpers import dom0_layout

from module_helpers import (
    MIB,
    T0,
    T0_STAMP,
    VOLUME_KEYS,
    how_suffix,
    make_pool,
    make_volume,
    mode_of,
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
    revision_ids,
    revisions,
    sha256_file,
    snapshot,
    vm_dir_of,
)

REL = "appvms/work/private"
PIN = "before-upgrade"
T1, T2 = T0 - 7200, T0 - 3600


def pin_path(pool, name=PIN, vid=VID):
    return vm_dir_of(pool, vid) / ("%s.img.pin-%s" % (os.path.basename(vid), name))


def fs_kind(request, fixture="any_fs_dir"):
    return request.node.callspec.params[fixture]


def qubesd_cycle(pool, run_module, seed, vid=VID):
    """A VM start and stop as qubesd does them: precache renamed to dirty, written, committed with keep 1."""
    start_volume(pool, vid, seed=seed)
    return assert_ok(run_module("reflink_volume", pool=str(pool), vid=vid, state="stopped", revisions_to_keep=1),
                     True)


def test_pin_the_clean_image(any_fs_dir, run_module, request):
    kind = fs_kind(request)
    pool = make_pool(any_fs_dir)
    data = make_volume(pool, VID, size=4 * MIB)

    result = assert_ok(run_module("reflink_pin", pool=str(pool), vid=VID, name=PIN), True)
    assert [strip_how(text) for text in result["actions"]] == [
        "pin %s (clean): %s.img.pin-%s from %s.img" % (PIN, REL, PIN, REL)]
    assert how_suffix(kind) in result["actions"][0]
    pinned = pin_path(pool)
    assert pinned.read_bytes() == data and mode_of(pinned) == 0o600
    # Always an independent inode; on ext4 it is the sparse copy (equal bytes, other inode).
    assert os.stat(pinned).st_ino != os.stat(image(pool)).st_ino
    assert os.stat(pinned).st_mtime == T0
    expected = {"name": PIN, "size": 4 * MIB, "timestamp": T0_STAMP}
    assert result["pin"] == dict(expected, source="clean")
    assert set(result["volume"]) >= VOLUME_KEYS and result["volume"]["pins"] == [expected]
    assert_no_leftovers(pool)

    before = snapshot(pool)
    again = assert_ok(run_module("reflink_pin", pool=str(pool), vid=VID, name=PIN), False)
    assert again["actions"] == [] and again["pin"] == result["pin"] and snapshot(pool) == before


def test_pin_a_revision_takes_the_time_in_its_name(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[(1, T1), (2, T2)])
    for path in revisions(pool).values():   # qubesd's revisions carry their copy time as mtime
        os.utime(path, (T0 + 500, T0 + 500))

    latest = assert_ok(run_module("reflink_pin", pool=str(pool), vid=VID, name="newest", revision="latest"), True)
    assert latest["pin"] == {"name": "newest", "size": 4 * MIB, "timestamp": stamp(T2), "source": "revision 2"}
    first = assert_ok(run_module("reflink_pin", pool=str(pool), vid=VID, name="oldest", revision=1), True)
    assert first["pin"]["timestamp"] == stamp(T1) and os.stat(pin_path(pool, "oldest")).st_mtime == T1
    assert pin_path(pool, "oldest").read_bytes() == revisions(pool)[1].read_bytes()
    assert [pin["name"] for pin in first["volume"]["pins"]] == ["newest", "oldest"]


def test_pin_survives_qubesd_cycles_and_the_revert_to_it_restores_the_bytes(any_fs_dir, run_module, request):
    pool = make_pool(any_fs_dir)
    make_volume(pool, VID, size=4 * MIB)
    pinned_digest = sha256_file(image(pool))
    assert_ok(run_module("reflink_pin", pool=str(pool), vid=VID, name=PIN), True)
    pin_ino = os.stat(pin_path(pool)).st_ino

    for seed in (21, 22, 23):
        committed = qubesd_cycle(pool, run_module, seed)
        assert len(committed["volume"]["revisions"]) == 1
        assert committed["volume"]["pins"] == [{"name": PIN, "size": 4 * MIB, "timestamp": T0_STAMP}]
    assert sha256_file(image(pool)) != pinned_digest
    assert all(sha256_file(path) != pinned_digest for path in revisions(pool).values())
    assert sha256_file(pin_path(pool)) == pinned_digest and os.stat(pin_path(pool)).st_ino == pin_ino

    before_ids = sorted(revisions(pool))
    replaced = sha256_file(image(pool))
    result = assert_ok(run_module("reflink_revert", pool=str(pool), vid=VID, pin=PIN), True)
    assert sha256_file(image(pool)) == pinned_digest
    assert os.stat(image(pool)).st_ino not in (pin_ino, os.stat(pin_path(pool)).st_ino)
    assert os.stat(image(pool)).st_mtime == T0   # the pinned data's time
    new_id = before_ids[-1] + 1
    assert revision_ids(result) == before_ids + [new_id] and sha256_file(revisions(pool)[new_id]) == replaced
    assert [text.split(":")[0] for text in result["actions"]] == [
        "keep the current image as a revision", "remove %s-precache.img (the precache is about to go stale)" % REL,
        "revert to pin %s" % PIN, "refresh precache"]
    assert sha256_file(pin_path(pool)) == pinned_digest and result["volume"]["precache"] == "fresh"
    assert_no_leftovers(pool)

    before = snapshot(pool)
    again = assert_ok(run_module("reflink_revert", pool=str(pool), vid=VID, pin=PIN), False)
    assert again["actions"] == [] and snapshot(pool) == before


def test_other_content_needs_force(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    assert_ok(run_module("reflink_pin", pool=str(pool), vid=VID, name=PIN), True)
    qubesd_cycle(pool, run_module, 31)
    old_ino = os.stat(pin_path(pool)).st_ino
    before = snapshot(pool)

    refused = run_module("reflink_pin", pool=str(pool), vid=VID, name=PIN)
    assert_refused(refused, "already has a pin %s with other content" % PIN, "force: true")
    assert snapshot(pool) == before

    forced = assert_ok(run_module("reflink_pin", pool=str(pool), vid=VID, name=PIN, force=True), True)
    assert forced["actions"][0].startswith("replace pin %s (force) by clean" % PIN)
    assert pin_path(pool).read_bytes() == image(pool).read_bytes() and os.stat(pin_path(pool)).st_ino != old_ino
    assert_no_leftovers(pool)


def test_check_and_diff_mode_predict_the_real_run(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[(1, T1)])
    args = {"pool": str(pool), "vid": VID, "name": PIN, "revision": 1}
    before = snapshot(pool)

    check = assert_ok(run_module("reflink_pin", check=True, diff=True, **args), True)
    assert snapshot(pool) == before
    real = assert_ok(run_module("reflink_pin", diff=True, **args), True)
    assert check["actions"] == real["actions"]
    assert check["pin"] == real["pin"] and check["volume"] == real["volume"] and check["diff"] == real["diff"]
    pin_file = "private.img.pin-%s" % PIN
    assert pin_file not in [item["name"] for item in real["diff"]["before"]["files"]]
    assert pin_file in [item["name"] for item in real["diff"]["after"]["files"]]

    qubesd_cycle(pool, run_module, 41)
    revert_args = {"pool": str(pool), "vid": VID, "pin": PIN}
    before = snapshot(pool)
    check = assert_ok(run_module("reflink_revert", check=True, diff=True, **revert_args), True)
    assert snapshot(pool) == before
    real = assert_ok(run_module("reflink_revert", diff=True, **revert_args), True)
    assert check["actions"] == real["actions"]
    assert check["diff"]["after"]["revisions"] == real["diff"]["after"]["revisions"]
    assert check["volume"]["pins"] == real["volume"]["pins"]

    removed = snapshot(pool)
    check = assert_ok(run_module("reflink_pin", check=True, pool=str(pool), vid=VID, name=PIN, state="absent"), True)
    assert snapshot(pool) == removed and check["pin"] is None and check["volume"]["pins"] == []


@pytest.mark.parametrize("name", ["../x", "A", "x@y", "x~y", "a" * 41, "x\n"], ids=repr)
def test_bad_names_are_refused_with_nothing_changed(btrfs_dir, run_module, name):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    before = snapshot(pool)
    assert_refused(run_module("reflink_pin", pool=str(pool), vid=VID, name=name), "pin name", "is not valid")
    assert_refused(run_module("reflink_revert", pool=str(pool), vid=VID, pin=name), "pin name", "is not valid")
    assert snapshot(pool) == before


def test_missing_images_and_pins_are_refused(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[(1, T1)])
    before = snapshot(pool)
    assert_refused(run_module("reflink_pin", pool=str(pool), vid=VID, name=PIN, revision=7), "no revision 7")
    assert_refused(run_module("reflink_pin", pool=str(pool), vid="appvms/work/other", name=PIN),
                   "no clean image")
    assert_refused(run_module("reflink_revert", pool=str(pool), vid=VID, pin="nothing"), "no pin nothing")
    assert_refused(run_module("reflink_revert", pool=str(pool), vid=VID, pin=PIN, revision=1), "mutually exclusive")
    assert snapshot(pool) == before
    unpinned = assert_ok(run_module("reflink_pin", pool=str(pool), vid=VID, name=PIN, state="absent"), False)
    assert unpinned["pin"] is None and unpinned["actions"] == []


def test_a_running_volume_can_be_pinned_but_not_reverted(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    data = make_volume(pool, VID)
    start_volume(pool, VID)
    assert_ok(run_module("reflink_pin", pool=str(pool), vid=VID, name=PIN), True)
    assert pin_path(pool).read_bytes() == data
    assert_refused(run_module("reflink_revert", pool=str(pool), vid=VID, pin=PIN), "dirty image", "discard_dirty")


def test_snapshots_disabled_running_volume_has_no_clean_and_is_no_orphan(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, precache=False)
    assert_ok(run_module("reflink_pin", pool=str(pool), vid=VID, name=PIN), True)
    os.rename(image(pool), image(pool, kind="dirty"))   # qubesd's start with revisions_to_keep -1
    assert_refused(run_module("reflink_pin", pool=str(pool), vid=VID, name="other"), "no clean image")
    gc = assert_ok(run_module("reflink_gc", pool=str(pool), revisions_to_keep=0), False)
    assert gc["orphaned_pins"] == [] and pin_path(pool).exists()


def test_absent_keeps_pins_gc_reports_them_and_a_new_volume_keeps_them(any_fs_dir, run_module):
    pool = make_pool(any_fs_dir)
    data = make_volume(pool, VID, revisions=[(1, T1)])
    assert_ok(run_module("reflink_pin", pool=str(pool), vid=VID, name=PIN), True)

    removed = assert_ok(run_module("reflink_volume", pool=str(pool), vid=VID, state="absent"), True)
    assert removed["kept_pins"] == [PIN] and removed["volume"]["state"] == "absent"
    assert sorted(os.listdir(vm_dir_of(pool))) == ["private.img.pin-%s" % PIN]
    again = assert_ok(run_module("reflink_volume", pool=str(pool), vid=VID, state="absent"), False)
    assert again["kept_pins"] == [PIN]

    for check in (True, False):
        gc = assert_ok(run_module("reflink_gc", check=check, pool=str(pool), revisions_to_keep=0, min_age=0), False)
        assert gc["orphaned_pins"] == [{"vid": VID, "name": PIN, "file": "%s.img.pin-%s" % (REL, PIN),
                                        "size": 4 * MIB}]
    assert pin_path(pool).read_bytes() == data
    info = assert_ok(run_module("reflink_info", pool=str(pool)), False)
    assert [(volume["vid"], volume["state"], [pin["name"] for pin in volume["pins"]])
            for volume in info["volumes"]] == [(VID, "absent", [PIN])]

    created = assert_ok(run_module("reflink_volume", pool=str(pool), vid=VID, size="4M"), True)
    assert created["volume"]["pins"][0]["name"] == PIN and pin_path(pool).read_bytes() == data
    assert_ok(run_module("reflink_revert", pool=str(pool), vid=VID, pin=PIN), True)
    assert image(pool).read_bytes() == data

    gone = assert_ok(run_module("reflink_volume", pool=str(pool), vid=VID, state="absent", remove_pins=True), True)
    assert gone["kept_pins"] == [] and not vm_dir_of(pool).exists()


def test_sibling_volumes_never_see_each_others_pins(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    data, data2 = "appvms/work/data", "appvms/work/data2"
    make_volume(pool, data, seed=1)
    make_volume(pool, data2, seed=2)
    assert_ok(run_module("reflink_pin", pool=str(pool), vid=data, name="a"), True)
    assert_ok(run_module("reflink_pin", pool=str(pool), vid=data2, name="a"), True)
    assert_ok(run_module("reflink_pin", pool=str(pool), vid=data2, name="b"), True)

    info = assert_ok(run_module("reflink_info", pool=str(pool)), False)
    pins = {volume["vid"]: [pin["name"] for pin in volume["pins"]] for volume in info["volumes"]}
    assert pins == {data: ["a"], data2: ["a", "b"]}
    gone = assert_ok(run_module("reflink_volume", pool=str(pool), vid=data, state="absent", remove_pins=True), True)
    assert gone["kept_pins"] == []
    assert sorted(os.listdir(vm_dir_of(pool, data))) == [
        "data2-precache.img", "data2.img", "data2.img.pin-a", "data2.img.pin-b"]


def test_a_snapshot_volume_is_not_pinned_and_a_pool_holding_pins_is_not_removed(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, "vm-templates/fedora-42/root")
    (pool / "appvms/work").mkdir()
    os.link(pool / "vm-templates/fedora-42/root.img", pool / "appvms/work/root.img")
    xml = btrfs_dir / "qubes.xml"
    xml.write_text(dom0_layout(pool), encoding="utf-8")
    before = snapshot(pool)
    assert_refused(run_module("reflink_pin", pool=str(pool), vid="appvms/work/root", name=PIN, qubes_xml=str(xml)),
                   "cannot pin volume appvms/work/root", "snapshot volume")
    assert snapshot(pool) == before

    assert_ok(run_module("reflink_pin", pool=str(pool), vid="vm-templates/fedora-42/root", name=PIN), True)
    assert_ok(run_module("reflink_volume", pool=str(pool), vid="vm-templates/fedora-42/root", state="absent"), True)
    os.unlink(pool / "appvms/work/root.img")
    os.rmdir(pool / "appvms/work")
    refused = run_module("reflink_pool", path=str(pool), state="absent")
    assert refused.get("failed") and "vm-templates/fedora-42/root.img.pin-%s" % PIN in refused["msg"], refused
    assert pin_path(pool, vid="vm-templates/fedora-42/root").exists()


def test_a_symlink_named_as_a_pin_is_refused_and_never_followed(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    victim = btrfs_dir / "victim"
    victim.write_text("not a volume\n")
    pin_path(pool).symlink_to(victim)
    before = snapshot(pool)
    for module, args in (("reflink_pin", {"name": PIN, "force": True}), ("reflink_pin", {"name": PIN, "state": "absent"}),
                         ("reflink_revert", {"pin": PIN})):
        assert_refused(run_module(module, pool=str(pool), vid=VID, **args), "symlink")
    assert snapshot(pool) == before and victim.read_text() == "not a volume\n"

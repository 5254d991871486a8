# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a new user hit in the first hour (issue 26), outside imports: each a rule for every module.

An empty list means nothing; a symlinked pool is not removed; revision ids are positive integers;
options are checked, never ignored silently; messages name a way out that works; check and diff
mode say what the real run does, and check mode writes nothing, lock files included.  gc leaves
what a process holds open, a stale precache it would rebuild included.
"""

from __future__ import annotations

import json
import os
import subprocess

from module_helpers import MIB, T0, assert_failed, holding_open, make_pool, make_volume, pool_listing, put_file, stamp
from staging_helpers import VID, assert_ok, assert_refused, image

OLD = T0 - 7200


def test_an_empty_vids_list_selects_no_volume(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[(1, T0 - 200), (2, T0 - 100)])
    put_file(pool / "appvms/work/private.img~abcd1234", MIB, [(0, 4096)], mtime=OLD)
    (pool / "appvms" / "empty").mkdir()
    before = pool_listing(pool)
    for check in (True, False):
        gc = run_module("reflink_gc", check=check, pool=str(pool), vids=[], revisions_to_keep=0, min_age=0)
        assert_ok(gc, False)
        assert gc["removed"] == [] and gc["actions"] == [] and gc["reclaimed_bytes"] == 0
        assert pool_listing(pool) == before
    info = run_module("reflink_info", pool=str(pool), vids=[])
    assert not info.get("failed") and info["volumes"] == [], info


def test_keep_vids_empty_with_remove_orphans_is_refused(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, mtime=OLD)
    make_volume(pool, "appvms/mail/private", seed=2, mtime=OLD)
    before = pool_listing(pool)
    for check in (True, False):
        result = run_module("reflink_gc", check=check, pool=str(pool), keep_vids=[], remove_orphans=True,
                            min_age=0)
        assert_failed(result, "keep_vids", "every volume", "qubes.xml")
        assert pool_listing(pool) == before
    # Without remove_orphans an empty keep_vids only reports.
    reported = assert_ok(run_module("reflink_gc", pool=str(pool), keep_vids=[]), False)
    assert sorted(item["vid"] for item in reported["orphans"]) == ["appvms/mail/private", VID]


def test_gc_scoped_with_vids_leaves_other_volumes_journals(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    make_volume(pool, "appvms/mail/private", seed=2)
    assert_ok(run_module("reflink_import", pool=str(pool), vid="appvms/mail/private", state="begin", size="1M"), True)
    imports = pool / ".reflink" / "imports"
    (imports / "appvms-other-private.json").write_text("{not json")      # another volume's, unreadable
    (imports / "appvms-work-private.json").write_text("{not json")       # the scoped volume's, unreadable
    journals_before = sorted(os.listdir(imports))
    gc = assert_ok(run_module("reflink_gc", pool=str(pool), vids=[VID]), True)
    assert gc["actions"] == ["remove journal .reflink/imports/appvms-work-private.json (unreadable journal)"]
    assert sorted(os.listdir(imports)) == [name for name in journals_before if name != "appvms-work-private.json"]


def test_pool_absent_on_a_symlink_removes_nothing(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    (pool / ".reflink").mkdir()
    (pool / "appvms" / "gone").mkdir()
    link = btrfs_dir / "link"
    os.symlink(pool, link)
    before = pool_listing(btrfs_dir)
    for check in (True, False):
        msg = assert_failed(run_module("reflink_pool", check=check, path=str(link), state="absent"),
                            "symlink", str(pool), "nothing was removed")
        assert "run the task again" not in msg
        assert pool_listing(btrfs_dir) == before and os.path.islink(link)
    assert_ok(run_module("reflink_pool", path=str(pool), state="absent"), True)
    assert not pool.exists()


def test_pool_refusal_names_the_pins_and_remove_pins(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    assert_ok(run_module("reflink_pin", pool=str(pool), vid=VID, name="keep"), True)
    assert_ok(run_module("reflink_volume", pool=str(pool), vid=VID, state="absent"), True)
    msg = assert_failed(run_module("reflink_pool", path=str(pool), state="absent"),
                        "appvms/work/private.img.pin-keep", "remove_pins: true")
    assert "reflink_pin state=absent" in msg
    assert_ok(run_module("reflink_volume", pool=str(pool), vid=VID, state="absent", remove_pins=True), True)
    assert_ok(run_module("reflink_pool", path=str(pool), state="absent"), True)


def test_revision_ids_are_positive_integers_everywhere(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[(1, T0 - 100)])
    zero = "private.img.0@%s" % stamp(T0 - 300)
    negative = "private.img.-1@%s" % stamp(T0 - 200)
    for name in (zero, negative):
        put_file(pool / "appvms/work" / name, MIB, [(0, 4096)], mtime=T0 - 300)
    info = run_module("reflink_info", pool=str(pool))
    [volume] = info["volumes"]
    assert [item["id"] for item in volume["revisions"]] == [1]
    assert sorted(volume["artifacts"]["junk_revisions"]) == sorted([zero, negative])
    # "latest" is revision 1 for a revert and a pin too, never the junk 0 (found by tests/model).
    pin = assert_ok(run_module("reflink_pin", check=True, pool=str(pool), vid=VID, name="p", revision="latest"), True)
    assert pin["pin"]["source"] == "revision 1", pin
    revert = assert_ok(run_module("reflink_revert", check=True, pool=str(pool), vid=VID), True)
    assert any("private.img.1@" in action for action in revert["actions"]), revert
    assert not any(".img.0@" in action or ".img.-1@" in action for action in revert["actions"] + pin["actions"])
    gc = assert_ok(run_module("reflink_gc", pool=str(pool)), True)
    reasons = {entry["file"].rpartition("/")[2]: entry["reason"] for entry in gc["removed"]}
    assert set(reasons) == {zero, negative}
    assert "id -1 is a negative number" in reasons[negative] and "not an integer" not in reasons[negative]
    assert "id 0 is not a revision id" in reasons[zero]
    assert os.path.exists(pool / "appvms/work" / ("private.img.1@%s" % stamp(T0 - 100)))


def test_lock_timeout_must_not_be_negative(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    before = pool_listing(pool)
    for module, args in (("reflink_volume", {"pool": str(pool), "vid": VID, "size": "8M"}),
                         ("reflink_gc", {"pool": str(pool)}),
                         ("reflink_info", {"pool": str(pool)}),
                         ("reflink_pool", {"path": str(pool)})):
        assert_failed(run_module(module, lock_timeout=-1, **args), "lock_timeout", "-1", "0 or more")
    assert pool_listing(pool) == before
    assert_ok(run_module("reflink_volume", pool=str(pool), vid=VID, size="8M", lock_timeout=0), True)


def test_size_with_state_stopped_or_absent_is_warned_about(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    make_volume(pool, "appvms/mail/private", seed=2)
    stopped = assert_ok(run_module("reflink_volume", pool=str(pool), vid=VID, state="stopped", size="8M"), False)
    assert any("size 8388608 was not used" in text and "state=stopped" in text for text in stopped["warnings"])
    assert os.path.getsize(image(pool)) == 4 * MIB
    batch = assert_ok(run_module("reflink_volume", pool=str(pool), size="2M", volumes=[
        {"vid": "appvms/mail/private", "state": "absent", "size": "4M"},    # its own size: warned about
        {"vid": "appvms/new/private", "state": "absent"}]), True)          # the task's size: a default
    assert batch["warnings"] == ["volumes item 1 (appvms/mail/private): size 4194304 was not used: "
                                 "state=absent removes the volume"]
    removed = assert_ok(run_module("reflink_volume", pool=str(pool), vid=VID, state="absent", size="8M"), True)
    assert any("state=absent removes the volume" in text for text in removed["warnings"])


def test_a_forced_pin_replacement_shows_in_the_diff(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    assert_ok(run_module("reflink_pin", pool=str(pool), vid=VID, name="keep"), True)
    pin = pool / "appvms/work/private.img.pin-keep"
    with open(pin, "r+b") as handle:   # other content, same size, allocation and time
        handle.write(b"other data" * 100)
    os.utime(pin, ns=(os.stat(image(pool)).st_mtime_ns,) * 2)
    args = {"pool": str(pool), "vid": VID, "name": "keep", "force": True}
    check = assert_ok(run_module("reflink_pin", check=True, diff=True, **args), True)
    real = assert_ok(run_module("reflink_pin", diff=True, **args), True)
    assert real["diff"]["before"] != real["diff"]["after"], real["diff"]
    assert check["diff"] == real["diff"]


def test_check_mode_plans_the_pin_of_a_volume_the_play_creates(btrfs_dir, ansible_env, tmp_path):
    pool = make_pool(btrfs_dir)
    saved = tmp_path / "pin.json"
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"dom0.reflink.reflink_volume": {"pool": str(pool), "vid": VID, "size": "4M"}},
        {"dom0.reflink.reflink_pin": {"pool": str(pool), "vid": VID, "name": "first"}, "register": "pinned"},
        {"ansible.builtin.copy": {"content": "{{ pinned | to_json }}", "dest": str(saved), "mode": "0600"},
         "check_mode": False, "diff": False}]}]))
    before = pool_listing(pool)
    proc = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", "--check", str(playbook)],
                          env=ansible_env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert pool_listing(pool) == before
    pinned = json.loads(saved.read_text())
    assert pinned["changed"] is True and pinned["pin"]["name"] == "first"
    assert any("does not exist" in text and "check mode" in text for text in pinned["warnings"])
    # The real run creates the volume, then pins it.
    saved.unlink()
    real = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", str(playbook)],
                          env=ansible_env, capture_output=True, text=True, timeout=600, check=False)
    assert real.returncode == 0, real.stdout + real.stderr
    assert json.loads(saved.read_text())["changed"] is True and (pool / "appvms/work/private.img.pin-first").exists()


def test_refused_pin_of_a_missing_volume_in_a_real_run(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    assert_refused(run_module("reflink_pin", pool=str(pool), vid=VID, name="first"), "no clean image")


def test_check_mode_writes_nothing_into_the_lock_files(btrfs_dir, run_module):
    """Check mode held each lock exclusively and wrote its holder's record into the lock file (found by tests/model)."""
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    assert_ok(run_module("reflink_volume", pool=str(pool), vid=VID, size="8M"), True)   # makes the lock files
    assert_ok(run_module("reflink_gc", pool=str(pool)), False)      # the pool lock, held exclusively once
    locks = pool / ".reflink" / "locks"

    def lock_files():
        return {name: (os.stat(locks / name).st_mtime_ns, (locks / name).read_bytes()) for name in os.listdir(locks)}

    before = lock_files()
    assert sorted(before) == ["appvms-work-private.lock", "pool.lock"] and all(data for _mtime, data in before.values())
    for module, options in (("reflink_volume", {"pool": str(pool), "vid": VID, "size": "16M"}),
                            ("reflink_volume", {"pool": str(pool), "volumes": [{"vid": VID, "size": "16M"}]}),
                            ("reflink_gc", {"pool": str(pool), "rebuild_precache": True}),
                            ("reflink_pool", {"path": str(pool)}),
                            ("reflink_dedupe", {"pool": str(pool), "vids": [VID], "qubes_xml": "none"}),
                            ("reflink_pin", {"pool": str(pool), "vid": VID, "schedule": {"daily": 1}})):
        result = run_module(module, check=True, **options)
        assert not result.get("failed"), result
        assert lock_files() == before, module


def test_gc_leaves_a_stale_precache_held_open_and_does_not_rebuild_it(btrfs_dir, run_module):
    """rebuild_precache renamed a new precache over a stale one a process held open, while it reported the
    stale one as not removed (found by tests/model): the rename takes the name from the held file as a
    removal does."""
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    precache = pool / "appvms/work/private-precache.img"
    os.utime(precache, (T0 - 60, T0 - 60))          # stale: its mtime is not clean's
    before = os.stat(precache)
    with holding_open(precache) as (pid, command):
        results = [run_module("reflink_gc", check=check, pool=str(pool), rebuild_precache=True) for check in (True, False)]
        after = os.stat(precache)
    for result in results:
        assert_ok(result, False)
        assert result["actions"] == [] and result["removed"] == []
        [skipped] = result["skipped_files"]
        assert skipped["file"] == "appvms/work/private-precache.img"
        assert "pid %d (%s)" % (pid, command) in skipped["reason"] and "stale precache" in skipped["reason"]
        assert skipped["reason"].endswith("nor rebuilt")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # Once it is closed, gc rebuilds it.
    rebuilt = assert_ok(run_module("reflink_gc", pool=str(pool), rebuild_precache=True), True)
    assert [entry["file"] for entry in rebuilt["removed"]] == ["appvms/work/private-precache.img"]
    assert os.stat(precache).st_mtime_ns == os.stat(pool / "appvms/work/private.img").st_mtime_ns

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The modules with a qubes.xml as qubesd writes it: gc's known volumes, refusals, revisions, info, in-use."""

from __future__ import annotations

import contextlib
import os
import pathlib

import pytest

import machine_lock
from qubes_xml_helpers import BILLION_LAUGHS, dom0_layout

from module_helpers import MIB, T0, assert_failed, make_pool, make_volume, pool_listing, put_file, stamp

TEMPLATE_ROOT = "vm-templates/fedora-42/root"


def write_xml(base, pool, **layout):
    path = base / "qubes.xml"
    path.write_text(dom0_layout(pool, **layout), encoding="utf-8")
    return str(path)


def revisions(pool, vid):
    vm_dir = pool / os.path.dirname(vid)
    prefix = os.path.basename(vid) + ".img."
    return sorted(name for name in os.listdir(vm_dir) if name.startswith(prefix))


def build_dom0_pool(base):
    """A pool as a dom0 with work running leaves it, plus what crashes and qvm-remove left."""
    pool = make_pool(base)
    make_volume(pool, TEMPLATE_ROOT, seed=2, revisions=[(n, T0 - 100 * (5 - n)) for n in range(1, 5)])
    make_volume(pool, "vm-templates/fedora-42/private", seed=3, revisions=[(1, T0 - 20), (2, T0 - 10)])
    make_volume(pool, "appvms/work/private", seed=4, revisions=[(n, T0 - 10 * (6 - n)) for n in range(1, 6)])
    # work runs: its root.img is qubesd's hard link to the template's clean image, next to a dirty copy.
    work = pool / "appvms/work"
    os.link(pool / TEMPLATE_ROOT.replace("root", "root.img"), work / "root.img")
    put_file(work / "root-dirty.img", 4 * MIB, [(0, 8192)], seed=9)
    put_file(work / "volatile-dirty.img", 2 * MIB, [(0, 4096)], seed=10)
    # disp12 crashed: its root snapshot stayed without a dirty image.
    (pool / "appvms/disp12").mkdir()
    put_file(pool / "appvms/disp12/root.img", 4 * MIB, [(0, 4096)], seed=11)
    # gone was qvm-removed half-way; vault's private lives in the LVM pool by qubes.xml.
    make_volume(pool, "appvms/gone/private", seed=12)
    make_volume(pool, "appvms/vault/private", seed=13)
    return pool


def test_dom0_gc_without_keep_vids(btrfs_dir, run_module):
    pool = build_dom0_pool(btrfs_dir)
    xml = write_xml(btrfs_dir, pool, template_keep=3, private_keep=5)
    xml_bytes = pathlib.Path(xml).read_bytes()
    work = pool / "appvms/work"
    template_clean = pool / "vm-templates/fedora-42/root.img"
    clean_before = (os.stat(template_clean).st_ino, template_clean.read_bytes())
    dirty_before = (work / "root-dirty.img").read_bytes()
    before = pool_listing(pool)

    checked = run_module("reflink_gc", check=True, pool=str(pool), qubes_xml=xml, rebuild_precache=True)
    assert pool_listing(pool) == before
    result = run_module("reflink_gc", pool=str(pool), qubes_xml=xml, rebuild_precache=True)
    assert not result.get("failed"), result.get("msg")
    # A snapshot's leftover gets no precache of its own (qubesd's snapshots have none).
    assert not (pool / "appvms/disp12/root-precache.img").exists()
    assert checked["removed"] == result["removed"] and checked["orphans"] == result["orphans"]
    # Pruned to each volume's own revisions_to_keep: the template's root to 3, its private to the pool's 1,
    # work's private kept at 5 (a fixed default of 1 would have pruned four of them).
    assert sorted(entry["file"] for entry in result["removed"]) == [
        "vm-templates/fedora-42/private.img.1@%s" % stamp(T0 - 20),
        "vm-templates/fedora-42/root.img.1@%s" % stamp(T0 - 400),
    ]
    assert len(revisions(pool, "appvms/work/private")) == 5
    assert [(o["vid"], o["reason"].split(":")[0]) for o in result["orphans"]] == [
        ("appvms/disp12/root", "left by a crash"),
        ("appvms/gone/private", "not listed in qubes.xml for pool varlibqubes"),
        ("appvms/vault/private", "not listed in qubes.xml for pool varlibqubes"),
    ]
    # A running snapshot's dirty image is no pending commit; nothing of work's root or volatile was touched.
    assert result["pending_commit"] == []
    assert {item["vid"] for item in result["skipped_volumes"]} == {"appvms/work/root", "appvms/work/volatile"}
    assert (pool / "appvms/gone/private.img").exists() and (pool / "appvms/disp12/root.img").exists()

    removed = run_module("reflink_gc", pool=str(pool), qubes_xml=xml, remove_orphans=True)
    assert not removed.get("failed"), removed.get("msg")
    # disp12's root.img was written moments ago: it may be a VM that qubesd is creating, not yet in qubes.xml.
    assert sorted(entry["file"] for entry in removed["removed"]) == [
        "appvms/gone/private-precache.img", "appvms/gone/private.img",
        "appvms/vault/private-precache.img", "appvms/vault/private.img"]
    kept = {o["vid"]: o["kept"] for o in removed["orphans"] if "kept" in o}
    assert kept == {"appvms/disp12/root": "root.img is younger than min_age: a VM being created?"}
    assert (pool / "appvms/disp12/root.img").exists()
    aged = run_module("reflink_gc", pool=str(pool), qubes_xml=xml, remove_orphans=True, min_age="0s")
    assert [entry["file"] for entry in aged["removed"]] == ["appvms/disp12/root.img"]
    for gone in ("appvms/disp12", "appvms/gone", "appvms/vault"):
        assert not (pool / gone).exists()
    # The hard link and the template's clean image: same inode, two links, same bytes.
    assert os.stat(work / "root.img").st_ino == clean_before[0] == os.stat(template_clean).st_ino
    assert os.stat(template_clean).st_nlink == 2
    assert template_clean.read_bytes() == clean_before[1]
    assert (work / "root-dirty.img").read_bytes() == dirty_before
    assert (work / "volatile-dirty.img").exists()
    assert pathlib.Path(xml).read_bytes() == xml_bytes   # qubes.xml is never written


def test_gc_without_qubes_xml_prunes_nothing_and_lists_no_orphans(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, "appvms/work/private", revisions=[(1, T0 - 20), (2, T0 - 10)])
    result = run_module("reflink_gc", pool=str(pool), qubes_xml="none")
    assert result["removed"] == [] and result["orphans"] == []
    assert_failed(run_module("reflink_gc", pool=str(pool), qubes_xml="none", remove_orphans=True),
                  "keep_vids", "qubes.xml")


def test_snapshot_and_volatile_volumes_are_refused(btrfs_dir, run_module):
    pool = build_dom0_pool(btrfs_dir)
    xml = write_xml(btrfs_dir, pool)
    src = btrfs_dir / "new-root.img"
    put_file(src, 4 * MIB, [(0, 4096)], seed=20)
    before = pool_listing(pool)
    for check in (True, False):
        msg = assert_failed(run_module("reflink_import", check=check, pool=str(pool), vid="appvms/work/root",
                                       src=str(src), qubes_xml=xml), "snapshot volume", "work")
        assert "origin %s instead" % TEMPLATE_ROOT in msg
    assert_failed(run_module("reflink_volume", pool=str(pool), vid="appvms/work/volatile", size="8M",
                             qubes_xml=xml), "volatile volume")
    assert_failed(run_module("reflink_revert", pool=str(pool), vid="appvms/disp12/private", qubes_xml=xml),
                  "snapshot volume", "origin appvms/work/private")
    assert pool_listing(pool) == before
    # Without qubes.xml the old behaviour stays (what the issue describes): the import succeeds.
    assert not run_module("reflink_import", check=True, pool=str(pool), vid="appvms/disp12/root",
                          src=str(src), qubes_xml="none").get("failed")


def test_commits_follow_the_volumes_own_revisions_to_keep(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    vid = "appvms/work/private"
    make_volume(pool, vid, revisions=[(n, T0 - 10 * (6 - n)) for n in range(1, 5)])
    xml = write_xml(btrfs_dir, pool, private_keep=5)
    src = btrfs_dir / "data.img"
    data = put_file(src, 4 * MIB, [(0, 65536)], seed=30)
    result = run_module("reflink_import", pool=str(pool), vid=vid, src=str(src), qubes_xml=xml)
    assert not result.get("failed"), result.get("msg")
    assert (pool / "appvms/work/private.img").read_bytes() == data
    assert len(revisions(pool, vid)) == 5 and [r["id"] for r in result["volume"]["revisions"]] == [1, 2, 3, 4, 5]
    # A halted VM's pending commit (reflink_volume state=stopped) keeps five as well ...
    put_file(pool / "appvms/work/private-dirty.img", 4 * MIB, [(0, 4096)], seed=31)
    result = run_module("reflink_volume", pool=str(pool), vid=vid, state="stopped", qubes_xml=xml)
    assert [r["id"] for r in result["volume"]["revisions"]] == [2, 3, 4, 5, 6]
    # ... an explicit value wins, and without qubes.xml the default is 1.
    put_file(pool / "appvms/work/private-dirty.img", 4 * MIB, [(0, 4096)], seed=32)
    result = run_module("reflink_volume", pool=str(pool), vid=vid, state="stopped", qubes_xml="none")
    assert [r["id"] for r in result["volume"]["revisions"]] == [7]


def test_info_reports_qubes_and_missing_through_a_symlinked_pool(btrfs_dir, run_module):
    pool = build_dom0_pool(btrfs_dir)
    link = btrfs_dir / "pool-link"
    link.symlink_to(pool)
    xml = write_xml(btrfs_dir, link, private_keep=5)   # qubes.xml names the symlink, the task the real path
    result = run_module("reflink_info", check=True, pool=str(pool), qubes_xml=xml)
    assert not result.get("failed"), result.get("msg")
    assert result["qubes_pool"] == {"name": "varlibqubes", "revisions_to_keep": 1, "qubes_xml": xml}
    by_vid = {volume["vid"]: volume["qubes"] for volume in result["volumes"]}
    assert by_vid["appvms/work/private"] == {"vm": "work", "volume": "private", "kind": "origin",
                                             "revisions_to_keep": 5}
    assert by_vid["appvms/work/root"]["kind"] == "snapshot"
    assert by_vid["appvms/work/volatile"]["kind"] == "volatile"
    assert by_vid["appvms/gone/private"] is None and by_vid["appvms/vault/private"] is None
    # fedora-42's volatile and every DispVM volume have no image while stopped: not missing; work's and
    # the template's origins are there. Remove one to see it listed.
    assert result["missing"] == []
    os.unlink(pool / "appvms/work/private.img")
    result = run_module("reflink_info", pool=str(link), qubes_xml=xml, vids=["appvms/work/private"])
    assert result["missing"] == [{"vid": "appvms/work/private", "vm": "work", "volume": "private"}]
    assert result["volumes"][0]["qubes"]["vm"] == "work"
    assert run_module("reflink_info", pool=str(pool), qubes_xml="none")["missing"] == []


@contextlib.contextmanager
def running_state_file(name):
    """qubesd's running-state file /var/run/qubes/volume-running-<name>, removed afterwards (and the
    directory too, if this made it).  The whole machine sees it: the test is marked serial."""
    machine_lock.require_serial("/var/run/qubes/volume-running-" + name)
    directory = "/var/run/qubes"
    made = not os.path.isdir(directory)
    if made:
        os.makedirs(directory, mode=0o755)
    path = os.path.join(directory, "volume-running-" + name)
    assert not os.path.lexists(path)
    with open(path, "x", encoding="ascii"):
        pass
    try:
        yield path
    finally:
        os.unlink(path)
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(directory)


@pytest.mark.serial
def test_running_state_file_of_the_pools_own_name_only(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    vid = "appvms/test-qubes-xml-14/private"
    make_volume(pool, vid)
    xml = write_xml(btrfs_dir, pool, name="my-pool")
    escaped = "appvms-test--qubes--xml--14-private"
    with running_state_file("other--pool:" + escaped):
        known = run_module("reflink_info", pool=str(pool), vids=[vid], qubes_xml=xml)["volumes"][0]
        unknown = run_module("reflink_info", pool=str(pool), vids=[vid], qubes_xml="none")["volumes"][0]
    assert known["in_use"] is False and known["state"] == "stopped"
    assert unknown["in_use"] is True and unknown["state"] == "running"
    with running_state_file("my--pool:" + escaped) as path:
        exact = run_module("reflink_volume", pool=str(pool), vid=vid, state="absent", qubes_xml=xml)
    assert_failed(exact, "in use", path)
    assert (pool / (vid + ".img")).exists()


def test_bad_qubes_xml_fails_and_changes_nothing(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, "appvms/work/private", revisions=[(1, T0 - 20), (2, T0 - 10)])
    text = dom0_layout(pool)
    (btrfs_dir / "truncated.xml").write_text(text[:len(text) - 40], encoding="utf-8")
    (btrfs_dir / "bomb.xml").write_text(BILLION_LAUGHS.replace("/var/lib/qubes", str(pool)), encoding="utf-8")
    before = pool_listing(pool)
    assert_failed(run_module("reflink_volume", pool=str(pool), vid="appvms/new/private", size="4M",
                             qubes_xml=str(btrfs_dir / "absent.xml")), "does not exist")
    assert_failed(run_module("reflink_gc", pool=str(pool), revisions_to_keep=0,
                             qubes_xml=str(btrfs_dir / "truncated.xml")), "not well-formed")
    assert_failed(run_module("reflink_info", pool=str(pool), qubes_xml=str(btrfs_dir / "bomb.xml")),
                  "DOCTYPE or entity")
    assert_failed(run_module("reflink_pool", path=str(pool), qubes_xml=str(btrfs_dir / "bomb.xml")),
                  "DOCTYPE or entity")
    assert pool_listing(pool) == before
    assert not (pool / "appvms/new").exists()

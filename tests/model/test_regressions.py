# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sequences the state machine found, replayed as they were printed (shrunk by Hypothesis, then by hand).

Each test is one recorded case: the machine's own rules called in order, so
every property of harness.py is checked at every step, as in a random run.
A case of a known defect (known_defects.py) must still show it: once a fix
makes it go away, the test says so, and the defect's entry is deleted from
KNOWN (which makes its checks strict in every run).
"""

from __future__ import annotations

import contextlib
import os

import pytest

import known_defects
from machine import PoolMachine

OTHER_FS = {"btrfs": "xfs", "xfs": "btrfs", "ext4": "btrfs"}


@pytest.fixture
def machine(filesystems, request):
    """``machine(kind)``: a PoolMachine on the session's file system ``kind``, torn down after the test."""
    made = []

    def make(kind):
        state = PoolMachine(filesystems[kind].path, kind, filesystems[OTHER_FS[kind]].path)
        made.append(state)
        return state

    yield make
    for state in made:
        state.teardown()


@contextlib.contextmanager
def shows(name):
    """The case shows the known defect ``name`` (reported); strict, it fails the test where it shows."""
    before = known_defects.count(name)
    yield
    if known_defects.is_lenient(name):
        assert known_defects.count(name) > before, (
            "known defect %s no longer shows in its recorded case: its fix is in; delete its entry from "
            "KNOWN in tests/model/known_defects.py (its checks are then strict)" % name)


# -- issue 26, the seven -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["btrfs"])
def test_full_pool_cannot_be_cleaned(machine, kind):
    state = machine(kind)
    with shows("full_disk_cleanup"):
        state.make_pool(seeds=[0, 3])
        state.fill_disk()
        state.gc(keep=0, keep_vids="none", min_age=0, rebuild=False, remove_orphans=False, scope="all",
                 vid="appvms/a/data")
        state.volume_absent(remove_pins=False, size=None, vid="appvms/a/data")
        state.pool_present()


def test_import_from_empty_source(machine):
    state = machine("xfs")
    with shows("empty_source_import"):
        state.make_pool(seeds=[0])
        state.import_file(checksum=None, data_size=4096, fallback="errno", force=False, keep=0, seed=0, size=None,
                          source="empty", vid="appvms/a/data")


def test_one_shot_import_over_held_import_image(machine):
    state = machine("btrfs")
    with shows("held_import_replaced"):
        state.make_pool(seeds=[0])
        state.plant_leftover(kind="import", old=False, seed=1, vid="appvms/a/data")
        state.hold_open(vid="appvms/a/data", which="import")
        state.import_file(checksum=None, data_size=4096, fallback="errno", force=False, keep=None, seed=2,
                          size=None, source="file", vid="appvms/a/data")


def test_volume_absent_removes_held_import_image(machine):
    state = machine("xfs")
    with shows("held_import_replaced"):
        state.make_pool(seeds=[0])
        state.plant_leftover(kind="import", old=False, seed=1, vid="appvms/a/data")
        state.hold_open(vid="appvms/a/data", which="import")
        state.volume_absent(remove_pins=False, size=None, vid="appvms/a/data")


def test_abort_removes_held_import_image(machine):
    state = machine("btrfs")
    with shows("held_import_replaced"):
        state.make_pool(seeds=[0])
        state.import_begin(size=65536, vid="appvms/a/data")
        state.writer_writes(extend=False, seed=5, vid="appvms/a/data")
        state.hold_open(vid="appvms/a/data", which="import")
        state.import_abort(vid="appvms/a/data")


def test_empty_vids_means_whole_pool(machine):
    state = machine("btrfs")
    with shows("empty_vids_widen"):
        state.make_pool(seeds=[0, 3])
        state.info(scope="empty", vid="appvms/a/data")
        state.gc(keep=0, keep_vids="none", min_age=0, rebuild=False, remove_orphans=False, scope="empty",
                 vid="appvms/a/data")


def test_empty_keep_vids_removes_every_volume(machine):
    state = machine("xfs")
    with shows("empty_keep_vids_orphans"):
        state.make_pool(seeds=[0, 1])
        state.gc(keep=None, keep_vids="empty", min_age=0, rebuild=False, remove_orphans=True, scope="all",
                 vid="appvms/a/data")


def test_commit_rerun_with_another_size(machine):
    state = machine("btrfs")
    with shows("commit_rerun_unchecked"):
        state.make_pool(seeds=[])
        state.import_begin(size=65536, vid="appvms/a/data")
        state.import_commit(checksum=None, keep=None, size=None, vid="appvms/a/data")
        state.import_commit(checksum=None, keep=None, size=1 << 20, vid="appvms/a/data")


def test_pool_absent_through_a_symlink(machine):
    state = machine("xfs")
    with shows("pool_absent_symlink"):
        state.make_pool(seeds=[])
        state.pool_absent(symlink=True)


@pytest.mark.parametrize("kind", ["ext4", "btrfs"])
def test_check_mode_and_fallback_never(machine, kind):
    """ext4: no reflink at all; btrfs: the source is on XFS (EXDEV)."""
    state = machine(kind)
    with shows("check_mode_fallback_never"):
        state.make_pool(seeds=[])
        state.import_file(checksum=None, data_size=65536, fallback="never", force=False, keep=None, seed=1,
                          size=None, source="file" if kind == "ext4" else "cross", vid="appvms/a/data")


# -- issue 26, the smaller ones ----------------------------------------------------

def test_pool_refusal_with_only_pins_left(machine):
    state = machine("btrfs")
    with shows("pool_refusal_pins_advice"):
        state.make_pool(seeds=[0])
        state.pin(force=False, name="p1", revision="clean", vid="appvms/a/data")
        state.volume_absent(remove_pins=False, size=None, vid="appvms/a/data")
        state.pool_absent(symlink=False)


def test_check_mode_pin_of_a_planned_volume(machine):
    state = machine("xfs")
    with shows("check_mode_pin_of_planned_volume"):
        state.make_pool(seeds=[])
        state.check_play_create_then_pin(vid="appvms/a/data")


def test_junk_revision_zero(machine):
    state = machine("btrfs")
    with shows("revision_zero_listed"):
        state.make_pool(seeds=[0])
        state.plant_leftover(kind="junk0", old=False, seed=0, vid="appvms/a/data")
        state.info(scope="all", vid="appvms/a/data")


def test_revert_latest_restores_junk_revision_zero(machine):
    """Beyond the listed symptom: revert to latest makes the junk file .img.0@... the clean image."""
    state = machine("xfs")
    with shows("revision_zero_listed"):
        state.make_pool(seeds=[0])
        state.plant_leftover(kind="junk0", old=False, seed=0, vid="appvms/a/data")
        state.revert(discard_dirty=False, revision="latest", vid="appvms/a/data")


def test_gc_reason_for_revision_minus_one(machine):
    state = machine("btrfs")
    with shows("gc_reason_negative_revision"):
        state.make_pool(seeds=[0])
        state.plant_leftover(kind="junk-1", old=False, seed=0, vid="appvms/a/data")
        state.gc(keep=None, keep_vids="none", min_age=0, rebuild=False, remove_orphans=False, scope="all",
                 vid="appvms/a/data")


def test_diff_of_a_forced_pin_replacement(machine):
    state = machine("btrfs")
    with shows("diff_empty_forced_pin"):
        state.make_pool(seeds=[])
        for seed in (1, 2):   # two images of 4 KiB with one block of data each: same size, same usage
            state.import_file(checksum=None, data_size=4096, fallback="errno", force=False, keep=None, seed=seed,
                              size=None, source="file", vid="appvms/a/data")
        state.pin(force=False, name="p1", revision="clean", vid="appvms/a/data")
        state.pin(force=True, name="p1", revision=1, vid="appvms/a/data")


def test_negative_lock_timeout(machine):
    state = machine("xfs")
    with shows("lock_timeout_negative"):
        state.make_pool(seeds=[])
        state.odd_argument(module="reflink_volume", variant="lock_timeout", vid="appvms/a/data")


def test_size_with_state_stopped(machine):
    state = machine("btrfs")
    with shows("size_ignored_stopped_absent"):
        state.make_pool(seeds=[0])
        state.volume_stopped(keep=None, size=65536, vid="appvms/a/data")


def test_checksum_refusal_reports_changed(machine):
    state = machine("xfs")
    with shows("failed_but_changed"):
        state.make_pool(seeds=[0])
        state.import_file(checksum="wrong", data_size=4096, fallback="errno", force=False, keep=None, seed=9,
                          size=None, source="file", vid="appvms/a/data")


def test_abort_leaves_the_vm_directory(machine):
    state = machine("btrfs")
    with shows("abort_leaves_vm_dir"):
        state.make_pool(seeds=[])
        state.import_begin(size=65536, vid="appvms/b/private")
        state.import_abort(vid="appvms/b/private")


def test_scoped_gc_removes_another_unreadable_journal(machine):
    state = machine("xfs")
    with shows("gc_scoped_removes_other_journal"):
        state.make_pool(seeds=[0])
        state.plant_corrupt_journal(vid="appvms/a/data")
        state.gc(keep=None, keep_vids="none", min_age=0, rebuild=False, remove_orphans=False, scope="one",
                 vid="appvms/a/data2")


def test_enospc_on_a_precache_copy(machine):
    state = machine("ext4")
    with shows("enospc_precache_advice"):
        state.make_pool(seeds=[0])
        state.plant_leftover(kind="stale_precache", old=False, seed=0, vid="appvms/a/data")
        state.gc(keep=None, keep_vids="none", min_age=0, rebuild=False, remove_orphans=False, scope="all",
                 vid="appvms/a/data")
        state.fill_disk()
        state.volume_present(allow_shrink=False, keep=None, size=65536, vid="appvms/a/data")


# -- found by the machine, beyond issue 26 -------------------------------------------

def test_a_begun_import_whose_journal_does_not_fit_leaves_no_journal_directory(machine):
    """On a full btrfs the journal's write fails: the .reflink/imports directory it made went with it."""
    state = machine("btrfs")
    state.make_pool(seeds=[])
    state.fill_disk()
    state.import_begin(size=65536, vid="appvms/a/data")


def test_an_abort_over_an_unreadable_journal_leaves_no_empty_vm_dir(machine):
    """begin made the VM directory; its journal (which says so) cannot be read; abort still removes the directory."""
    state = machine("btrfs")
    state.make_pool(seeds=[])
    begun = state.import_begin(size=65536, vid="vm-templates/t/root")
    state.plant_corrupt_journal(vid=begun)
    state.import_abort(vid=begun)


@pytest.mark.parametrize("kind", ["btrfs", "ext4"])
def test_scoped_gc_removes_a_begun_import_of_another_volume(machine, kind):
    state = machine(kind)
    with shows("gc_scoped_removes_begun_journal"):
        state.make_pool(seeds=[])
        state.import_begin(size=65536, vid="appvms/a/data")
        state.gc(keep=None, keep_vids="none", min_age=0, rebuild=False, remove_orphans=False, scope="one",
                 vid="appvms/a/data2")


def test_gc_rebuild_replaces_a_held_stale_precache(machine):
    state = machine("xfs")
    with shows("gc_rebuild_replaces_held_precache"):
        state.make_pool(seeds=[0])
        state.plant_leftover(kind="stale_precache", old=False, seed=0, vid="appvms/a/data")
        state.hold_open(vid="appvms/a/data", which="precache")
        state.gc(keep=None, keep_vids="none", min_age=0, rebuild=True, remove_orphans=False, scope="all",
                 vid="appvms/a/data")


def test_commit_of_a_removed_import_image_on_a_reused_inode(machine):
    """ext4 gives the next new file the inode number just freed: here the new clean image gets the removed
    import image's number, which the commit took for its own rename, done and not recorded (it reported
    success); only the commit's own mark on clean says that."""
    state = machine("ext4")
    vid = "appvms/b/private"
    state.make_pool(seeds=[])
    state.import_begin(size=4096, vid=vid)
    state.writer_writes(extend=False, seed=3, vid=vid)
    begun_ino = state.h.model.vol(vid).begun_ino
    state.volume_absent(remove_pins=False, size=None, vid=vid)
    state.volume_present(allow_shrink=False, keep=None, size=1 << 20, vid=vid)
    if os.stat(os.path.join(state.h.pool, vid + ".img")).st_ino != begun_ino:
        pytest.skip("ext4 did not reuse the import image's inode number this time: the case does not apply")
    state.import_commit(checksum=None, keep=None, size=None, vid=vid)


def test_commit_of_an_import_image_made_on_a_reused_inode(machine):
    """The same reuse, of an import image: a file made after the begun one was removed gets its inode number;
    the commit must not take it for the file begin made (the inode's generation tells them apart)."""
    state = machine("ext4")
    vid = "appvms/b/private"
    state.make_pool(seeds=[])
    state.import_begin(size=4096, vid=vid)
    state.writer_writes(extend=False, seed=3, vid=vid)
    begun_ino = state.h.model.vol(vid).begun_ino
    state.volume_absent(remove_pins=False, size=None, vid=vid)
    state.plant_leftover(kind="import", old=False, seed=1, vid=vid)
    if os.stat(os.path.join(state.h.pool, vid + "-import.img")).st_ino != begun_ino:
        pytest.skip("ext4 did not reuse the import image's inode number this time: the case does not apply")
    state.import_commit(checksum=None, keep=None, size=None, vid=vid)


def test_check_mode_writes_no_lock_record(machine):
    """Check mode held the locks exclusively and wrote its holder's record into the existing lock files (the
    volume's, the pool's for gc): a write in check mode, which must write nothing."""
    state = machine("btrfs")
    state.make_pool(seeds=[0])
    state.volume_present(allow_shrink=False, keep=None, size=None, vid="appvms/a/data")
    state.gc(keep=None, keep_vids="none", min_age=0, rebuild=False, remove_orphans=False, scope="all",
             vid="appvms/a/data")


def test_check_mode_of_scheduled_pins_writes_no_lock_record(machine):
    """reflink_pin with schedule in check mode wrote its holder's record into the volume's existing lock
    file (the schedule task missed issue 26's fix of the volume tasks)."""
    state = machine("btrfs")
    state.make_pool(seeds=[0])
    state.scheduled_pins(nights=[(0, False)], schedule={"hourly": 0}, scope="one", vid="appvms/a/data")

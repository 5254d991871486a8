# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which files the dedupe leaves alone: a running VM's dirty image, files held open, anything not a regular file."""

from __future__ import annotations

import os
import subprocess
import threading

from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.extent_maps import read_extent_map
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.images import (
    close_images, held_open, open_images, volume_candidates)
from dedupe_helpers import MIB, PRIVATE_VID, assert_close, fs_settings, run_dedupe, snapshot, used_bytes, write_file

DATA = os.urandom(2 * MIB)
REVISIONS = ["private.img.%d@2023-11-1%dT00:00:00Z" % (number, number) for number in (1, 2, 3, 4)]


def make_volume(base):
    vm_dir = base / "pool" / "appvms" / "work"
    vm_dir.mkdir(parents=True)
    for name in ["private.img", "private-dirty.img", "private-import.img", "private.img.x@2023-11-11T00:00:00Z",
                 "private.img~abcd1234", *REVISIONS[:2]]:
        write_file(vm_dir / name, [(0, DATA)], len(DATA), 1_600_000_000 * 10 ** 9)
    return base / "pool", vm_dir


def extent_map(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_extent_map(fd)
    finally:
        os.close(fd)


def test_dirty_import_and_junk_names_are_skipped_and_stay_unshared(reflink_dir):
    pool, vm_dir = make_volume(reflink_dir)
    maps = {name: extent_map(vm_dir / name) for name in ("private-dirty.img", "private-import.img")}
    before = snapshot(pool)
    used = used_bytes(reflink_dir)
    outcome = run_dedupe(pool, [PRIVATE_VID], "volume", fs_settings(reflink_dir), execute=True)
    reasons = {entry.file: entry.reason for entry in outcome.skipped}
    assert sorted(reasons) == ["appvms/work/private-dirty.img", "appvms/work/private-import.img",
                               "appvms/work/private.img.x@2023-11-11T00:00:00Z"]
    assert "running VM" in reasons["appvms/work/private-dirty.img"]
    assert all(extent_map(vm_dir / name) == extent for name, extent in maps.items())
    # clean and the two revisions: two copies of 2 MiB made to share the clean's.
    assert outcome.report.deduped_bytes == 2 * 2 * MIB
    assert_close(used - used_bytes(reflink_dir), outcome.report.reclaimed_bytes)
    assert snapshot(pool) == before


def test_a_symlink_or_a_fifo_at_an_image_name_is_never_opened(reflink_dir):
    pool, vm_dir = make_volume(reflink_dir)
    os.mkfifo(reflink_dir / "fifo")
    os.symlink(reflink_dir / "fifo", vm_dir / REVISIONS[2])
    os.mkfifo(vm_dir / REVISIONS[3])
    outcome = {}

    def run():
        outcome["done"] = run_dedupe(pool, [PRIVATE_VID], "volume", fs_settings(reflink_dir), execute=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    blocked = thread.is_alive()
    if blocked:   # opening a FIFO for reading waits for a writer: give it one
        for path in (reflink_dir / "fifo", vm_dir / REVISIONS[3]):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
    assert not blocked, "the dedupe opened a FIFO at an image name"
    reasons = {entry.file: entry.reason for entry in outcome["done"].skipped}
    assert reasons["appvms/work/" + REVISIONS[2]] == "a symlink, never opened"
    assert reasons["appvms/work/" + REVISIONS[3]] == "not a regular file, never opened"
    assert outcome["done"].report.deduped_bytes == 2 * 2 * MIB


def test_a_file_held_open_by_another_process_is_skipped(reflink_dir):
    pool, vm_dir = make_volume(reflink_dir)
    revision = vm_dir / REVISIONS[1]
    before = extent_map(revision)
    with open(revision, "rb") as held:
        holder = subprocess.Popen(["sleep", "60"], stdin=held)
    try:
        outcome = run_dedupe(pool, [PRIVATE_VID], "volume", fs_settings(reflink_dir), execute=True)
    finally:
        holder.kill()
        holder.wait()
    reasons = {entry.file: entry.reason for entry in outcome.skipped}
    assert reasons["appvms/work/" + REVISIONS[1]] == "held open by pid %d (sleep): not deduped" % holder.pid
    assert extent_map(revision) == before
    assert outcome.report.deduped_bytes == 2 * MIB


def test_a_second_name_of_one_file_is_taken_once(reflink_dir):
    _pool, vm_dir = make_volume(reflink_dir)
    os.link(vm_dir / REVISIONS[0], vm_dir / REVISIONS[2])
    fd = os.open(vm_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        candidates, skipped = volume_candidates(fd, "appvms/work", PRIVATE_VID, "private")
        assert len(skipped) == 3   # dirty, import, junk revision
        images, duplicates = open_images(candidates, held_open(candidates))
        try:
            assert [image.name for image in images] == ["appvms/work/private.img", "appvms/work/" + REVISIONS[2],
                                                        "appvms/work/" + REVISIONS[1]]
            assert [(entry.file, entry.reason) for entry in duplicates] == [
                ("appvms/work/" + REVISIONS[0],
                 "the same file as appvms/work/%s (a hard link): deduped once, under that name" % REVISIONS[2])]
        finally:
            close_images(images)
    finally:
        os.close(fd)


def test_in_use_files_named_by_the_caller_are_skipped(reflink_dir):
    pool, _vm_dir = make_volume(reflink_dir)
    outcome = run_dedupe(pool, [PRIVATE_VID], "volume", fs_settings(reflink_dir), execute=False,
                         in_use={PRIVATE_VID: {"private.img": "loop device /dev/loop9 is backed by private.img"}})
    reasons = {entry.file: entry.reason for entry in outcome.skipped}
    assert reasons["appvms/work/private.img"] == "loop device /dev/loop9 is backed by private.img"
    assert outcome.report.deduped_bytes == 2 * MIB

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Copies that cannot fit are refused before a byte is written; copies where a reflink was expected are warned about.

Where no reflink is possible (a source on another file system, an ext4 pool,
a btrfs No_COW attribute on one side), the errno gate copies.  The free
space is checked first: an import whose data does not fit fails in its plan,
in check mode too, naming both figures; a copy the plan cannot foresee (a
pin on an ext4 pool) fails in the clone before writing.  Each on a small loop
file system of its own, with the source on the session's XFS.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from module_helpers import MIB, make_pool, make_volume, put_file, same_bytes
from staging_helpers import image, snapshot, vm_dir_of

VID = "appvms/work/private"
loopfs = sys.modules["loopfs"]   # tools/loopfs.py, loaded by conftest
TESTS_BASE_DIR = "/var/tmp/dom0-reflink-tests"
SMALL = {"ext4": 24 * MIB, "btrfs": 128 * MIB}   # 19 MiB and 47 MiB free once made


@pytest.fixture(scope="module")
def small_filesystems(filesystems):
    made = {}
    try:
        for kind, size in SMALL.items():
            made[kind] = loopfs.create(kind, size, TESTS_BASE_DIR)
        yield made
    finally:
        for fs in made.values():
            fs.destroy()


@pytest.fixture(params=sorted(SMALL))
def small_pool(small_filesystems, request):
    """A pool on a small file system of its own (emptied after the test)."""
    pool = make_pool(pathlib.Path(small_filesystems[request.param].path))
    request.addfinalizer(lambda: subprocess.run(["rm", "-rf", str(pool)], check=True))
    return pool


def free_bytes(path):
    os.sync()
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def numbers(message):
    """The byte counts a message names (plain integers, not the human forms)."""
    return [int(text) for text in re.findall(r"\b(\d{6,}) bytes\b", message)]


def test_an_import_that_cannot_fit_fails_before_writing(small_pool, xfs_dir, run_module):
    free = free_bytes(small_pool)
    too_big = xfs_dir / "too-big.img"
    data = (free // MIB + 8) * MIB
    put_file(too_big, data + 16 * MIB, [(0, data)])          # a hole at the end: its data is what counts
    before = snapshot(small_pool)
    for check in (True, False):
        result = run_module("reflink_import", check=check, pool=str(small_pool), vid=VID, src=str(too_big))
        assert result.get("failed") and result["changed"] is False, result
        message = result["msg"]
        need, have = numbers(message)[:2]
        assert need == data and abs(have - free) <= MIB, message
        assert "another file system" in message and "reflink_gc" in message, message
        assert "%d bytes" % (need - have) in message   # what to free
        assert "nothing was changed" in message
        assert snapshot(small_pool) == before     # no VM directory, no tempfile, no journal
        assert abs(free_bytes(small_pool) - free) <= 64 * 1024
    fits = xfs_dir / "fits.img"   # on ext4 the precache is a copy too: the data must fit twice
    put_file(fits, 64 * MIB, [(0, free // 3)], seed=3)
    result = run_module("reflink_import", pool=str(small_pool), vid=VID, src=str(fits))
    assert not result.get("failed"), result.get("msg")
    assert same_bytes(image(small_pool), fits)
    assert "(sparse copy" in next(text for text in result["actions"] if text.startswith("stage "))
    assert not result.get("warnings")   # a copy from another file system is no news


def test_a_pin_that_cannot_fit_on_ext4_fails_before_writing(small_filesystems, run_module):
    """A copy the plan does not foresee: the clone checks the free space before it writes."""
    base = pathlib.Path(small_filesystems["ext4"].path) / "pin-test"
    base.mkdir()
    pool, filler = make_pool(base), base / "filler"
    try:
        make_volume(pool, VID, size=16 * MIB)
        put_file(image(pool), 16 * MIB, [(0, 8 * MIB)], seed=5)
        room = free_bytes(pool) - 6 * MIB                  # leave 6 MiB free: less than the 8 MiB of data
        subprocess.run(["fallocate", "-l", str(room), str(filler)], check=True)
        free, before = free_bytes(pool), snapshot(pool)
        result = run_module("reflink_pin", pool=str(pool), vid=VID, name="keep")
        assert result.get("failed") and result["changed"] is False, result
        need, have = numbers(result["msg"])[:2]
        assert need == 8 * MIB and abs(have - free) <= MIB, result["msg"]
        assert "cannot share blocks" in result["msg"] and "nothing was written" in result["msg"]
        assert snapshot(pool) == before and abs(free_bytes(pool) - free) <= 64 * 1024
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


def test_a_nocow_directory_makes_the_import_a_copy_and_says_so(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    vm_dir = vm_dir_of(pool, VID)
    vm_dir.mkdir()
    subprocess.run(["chattr", "+C", str(vm_dir)], check=True)
    source = btrfs_dir / "source.img"          # on the same btrfs, without the attribute
    put_file(source, 16 * MIB, [(0, 4 * MIB)])
    checked = run_module("reflink_import", check=True, pool=str(pool), vid=VID, src=str(source))
    result = run_module("reflink_import", pool=str(pool), vid=VID, src=str(source))
    assert not result.get("failed"), result.get("msg")
    assert "(sparse copy" in next(text for text in result["actions"] if text.startswith("stage "))
    for outcome in (checked, result):
        [warning] = outcome["warnings"]
        assert "No_COW" in warning and "chattr -C %s" % vm_dir in warning and "run the task again" in warning, warning
    # The way out: the directory without the attribute, and the import again: the staging is a reflink now.
    subprocess.run(["chattr", "-C", str(vm_dir)], check=True)
    again = run_module("reflink_import", pool=str(pool), vid=VID, src=str(source), force=True)
    assert not again.get("failed"), again.get("msg")
    assert next(text for text in again["actions"] if text.startswith("stage ")).endswith("(reflink)")
    # The old image keeps its attribute (btrfs cannot clear it on a file with data): its revision is a copy.
    for warning in again.get("warnings", []):
        assert "the source %s has btrfs's No_COW" % image(pool) in warning, warning


def test_a_nocow_image_makes_a_resize_a_copy_and_says_so(btrfs_dir, run_module):
    """reflink_volume too: an image written while its directory had No_COW keeps it, and clones of it are copies."""
    pool = make_pool(btrfs_dir)
    vm_dir = vm_dir_of(pool, VID)
    vm_dir.mkdir()
    subprocess.run(["chattr", "+C", str(vm_dir)], check=True)
    make_volume(pool, VID, size=4 * MIB)
    subprocess.run(["chattr", "-C", str(vm_dir)], check=True)
    result = run_module("reflink_volume", pool=str(pool), vid=VID, size="8M")
    assert not result.get("failed"), result.get("msg")
    assert result["volume"]["size"] == 8 * MIB
    [warning] = result["warnings"]
    assert "the source %s has btrfs's No_COW" % image(pool) in warning and "cp --reflink=never" in warning, warning

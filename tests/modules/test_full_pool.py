# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A full file system is when gc is needed most: clean-up works on a pool with no free data space.

Each test makes a small file system of its own, fills it for real with a file outside the pool
until the kernel says ENOSPC, and then runs the modules that free space.
"""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys
import time

import pytest

from module_helpers import MIB, make_volume, put_file

SIZES = {"btrfs": 128 * MIB, "xfs": 300 * MIB, "ext4": 64 * MIB}
OLD = time.time() - 7200


@pytest.fixture
def small_fs(filesystems, request):
    """``small_fs(kind)``: the mount point of a loop file system of this test only, removed after it."""
    loopfs = sys.modules["loopfs"]
    made = []

    def make(kind):
        fs = loopfs.create(kind, SIZES[kind], "/var/tmp/dom0-reflink-tests")
        made.append(fs)
        return fs.path

    def destroy():
        for fs in made:
            fs.destroy()

    request.addfinalizer(destroy)
    return make


def free_bytes(path):
    """Free space for an unprivileged writer after a sync: the outside truth of what a removal freed."""
    subprocess.run(["sync", "-f", str(path)], check=True)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(mount):
    """Append to a file outside the pool until the file system has no data space left (ENOSPC)."""
    fd = os.open(os.path.join(mount, "filler"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for piece in (MIB, 4096, 512):
            data = os.urandom(piece)
            while True:
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)


def assert_full(mount):
    """Nothing new fits: a 64 KiB file cannot be written (the kernel says ENOSPC)."""
    with pytest.raises(OSError) as raised:
        fd = os.open(os.path.join(mount, "probe-64k"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.write(fd, os.urandom(65536))
            os.fsync(fd)
        finally:
            os.close(fd)
    assert raised.value.errno == errno.ENOSPC
    if os.path.exists(os.path.join(mount, "probe-64k")):
        os.unlink(os.path.join(mount, "probe-64k"))
    assert free_bytes(mount) < MIB


@pytest.mark.parametrize("kind", ["btrfs", "xfs"])
def test_clean_up_works_on_a_full_file_system(kind, small_fs, tmp_path, run_module):
    mount = small_fs(kind)
    pool = pathlib.Path(mount) / "pool"
    assert not run_module("reflink_pool", path=pool).get("failed")
    for vm, seed in (("a", 1), ("b", 2)):
        src = tmp_path / ("%s.img" % vm)
        put_file(src, 20 * MIB, [(0, 20 * MIB)], seed=seed)
        result = run_module("reflink_import", pool=pool, vid="appvms/%s/private" % vm, src=str(src))
        assert result["changed"] is True and not result.get("failed"), result
    assert run_module("reflink_pin", pool=pool, vid="appvms/a/private", name="keep")["changed"] is True
    # What gc removes: an old tempfile. A volume qubesd made (no lock file of ours yet).
    put_file(pool / "appvms/b/private.img~abcd1234", MIB, [(0, MIB)], seed=3, mtime=OLD)
    make_volume(pool, "appvms/hand/private", size=2 * MIB)
    assert not (pool / ".reflink/locks/appvms-hand-private.lock").exists()
    # Each task runs on a file system filled again right before it (what the one before freed is taken).
    results = {}
    for key, module, args in [
            ("pool", "reflink_pool", {"path": pool}),
            ("gc", "reflink_gc", {"pool": pool}),
            ("unpin", "reflink_pin", {"pool": pool, "vid": "appvms/a/private", "name": "keep", "state": "absent"}),
            ("remove a", "reflink_volume", {"pool": pool, "vid": "appvms/a/private", "state": "absent"}),
            ("remove hand", "reflink_volume", {"pool": pool, "vid": "appvms/hand/private", "state": "absent"})]:
        fill(mount)
        assert_full(mount)
        before = free_bytes(mount)
        results[key] = (run_module(module, **args), free_bytes(mount) - before)
    failed = {key: result["msg"] for key, (result, _freed) in results.items() if result.get("failed")}
    assert failed == {}

    checked = results["pool"][0]
    assert checked["changed"] is False and checked["actions"] == []
    if checked["pool"]["reflink"] is None:   # the probe's test file did not fit: said so, not refused
        assert any("full" in warning for warning in checked["warnings"]), checked
    assert [entry["file"] for entry in results["gc"][0]["removed"]] == ["appvms/b/private.img~abcd1234"]
    assert results["unpin"][0]["changed"] is True
    assert not (pool / "appvms/a/private.img.pin-keep").exists()
    for vm in ("a", "hand"):
        assert results["remove " + vm][0]["changed"] is True
        assert not (pool / "appvms" / vm).exists()
    # The disk got the space back (the outside truth: statvfs after a sync): the tempfile, and a's
    # 20 MiB once its last file went (clean, precache and pin shared them).
    assert results["gc"][1] >= MIB - 64 * 1024
    assert results["remove a"][1] >= 20 * MIB
    again = run_module("reflink_pool", path=pool)
    assert not again.get("failed"), again


def test_no_room_for_a_precache_copy_names_the_way_out(small_fs, run_module):
    """On ext4 a precache is a full copy of the data: without room for it, the error says what helps."""
    pool = pathlib.Path(small_fs("ext4")) / "pool"
    assert not run_module("reflink_pool", path=pool, require_reflink=False).get("failed")
    make_volume(pool, "appvms/work/private", size=8 * MIB, precache=False)
    assert not run_module("reflink_pool", path=pool, require_reflink=False).get("failed")   # its lock files
    fill(pool.parent)
    assert_full(pool.parent)
    args = {"pool": pool, "vid": "appvms/work/private"}
    for _rerun in range(2):
        result = run_module("reflink_volume", **args)
        assert result.get("failed") is True and result["changed"] is False, result
        assert "no space left for the precache" in result["msg"], result["msg"]
        # Refused before the copy began: the figures of the check are kept (the clean image's 76 KiB of data).
        assert "the copy needs %d bytes" % (76 * 1024) in result["msg"] and "nothing was written" in result["msg"]
        assert "revisions_to_keep: -1" in result["msg"] and "reverted" in result["msg"], result["msg"]
        assert "run the task again to finish" not in result["msg"], result["msg"]
        assert not (pool / "appvms/work/private-precache.img").exists()
    # What the message says works: with snapshots disabled the volume needs no precache.
    done = run_module("reflink_volume", revisions_to_keep=-1, **args)
    assert not done.get("failed") and done["changed"] is False, done

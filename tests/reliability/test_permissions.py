# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Modes and owners of everything the modules create, with a umask of 000 (so no mode comes from the umask)."""

from __future__ import annotations

import os
import stat

import pytest

import reliability_helpers as rh
from module_helpers import start_volume

VID = "appvms/work/private"


@pytest.fixture(scope="module")
def careless_umask():
    """A zygote whose module processes run with umask 000."""
    runner = rh.Zygote(umask=0)
    yield runner
    runner.close()


def _ok(result):
    assert not result["failed"], result
    return result


def test_everything_created_is_private(btrfs_dir, modrun, careless_umask):
    def run(module, **args):
        return _ok(rh.run_direct(module, runner=careless_umask, **args))

    pool = btrfs_dir / "pool"
    source = btrfs_dir / "source.img"
    source.write_bytes(os.urandom(65536))
    os.chmod(source, 0o644)
    p = {"pool": str(pool)}
    run("reflink_pool", path=str(pool))
    run("reflink_volume", vid=VID, size="4M", **p)
    run("reflink_volume", vid="vm-templates/tpl/root", size="2M", **p)
    run("reflink_volume", vid=VID, size="8M", **p)                                   # resize stopped
    run("reflink_import", vid=VID, src=str(source), revisions_to_keep=3, **p)        # one shot
    begun = run("reflink_import", vid="vm-templates/tpl/root", state="begin", size="2M", **p)
    with open(begun["import_image"], "r+b") as handle:
        handle.write(b"written by another program")
    run("reflink_import", vid="vm-templates/tpl/root", state="commit", **p)
    run("reflink_import", vid="appvms/other/private", state="begin", size="1M", **p)
    run("reflink_import", vid="appvms/other/private", state="abort", **p)
    run("reflink_revert", vid=VID, revision=1, **p)
    start_volume(pool, VID)
    run("reflink_volume", vid=VID, size="12M", **p)                                  # resize running (dirty)
    run("reflink_volume", vid=VID, state="stopped", **p)                             # commit
    run("reflink_import", vid="appvms/new/private", src_vid=VID, **p)                # import into a new volume
    os.unlink(pool / "appvms/new/private-precache.img")
    run("reflink_gc", min_age=0, rebuild_precache=True, revisions_to_keep=3, **p)

    uid = os.geteuid()
    problems = []
    for root, dirs, files in os.walk(pool):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, pool)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if st.st_uid != uid:
                problems.append("%s is owned by uid %d, not %d" % (rel, st.st_uid, uid))
            if stat.S_ISLNK(st.st_mode):
                problems.append("%s is a symlink" % rel)
            elif stat.S_ISREG(st.st_mode) and mode != 0o600:
                problems.append("%s has mode %04o, not 0600" % (rel, mode))
            elif stat.S_ISDIR(st.st_mode):
                if mode & 0o022:
                    problems.append("directory %s is group- or world-writable (%04o)" % (rel, mode))
                if rel.split("/")[0] == ".reflink" and mode != 0o700:
                    problems.append("directory %s has mode %04o, not 0700" % (rel, mode))
    for rel in (".", "appvms", "vm-templates"):
        mode = stat.S_IMODE(os.stat(pool / rel).st_mode)
        if mode & 0o022:
            problems.append("%s is group- or world-writable (%04o)" % (rel, mode))
    found = {os.path.relpath(os.path.join(root, name), pool) for root, _dirs, files in os.walk(pool) for name in files}
    assert ".reflink/locks/pool.lock" in found and ".reflink/locks/appvms-work-private.lock" in found, sorted(found)
    assert any(name.startswith(".reflink/imports/") for name in found), sorted(found)
    assert not problems, "\n".join(problems)

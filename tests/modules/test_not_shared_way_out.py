# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The way out of reflink_info's finding not_shared, taken as its message names it: reflink_dedupe.

A restored pool (every image written on its own, as a backup restore or a
copy across file systems writes it) has a precache and a revision that share
nothing with the clean image.  reflink_info reports them; reflink_dedupe, run
with the vids the message names, makes them share; reflink_info then reports
nothing, and the file system's free space (statvfs after a sync) grew by the
dedupe's reclaimed_bytes within 1 MiB + 1 %.  On btrfs the revision's own 1
MiB keeps its otherwise shared extent alive unless the dedupe moves it out:
the free space tells whether it did.
"""

from __future__ import annotations

import random
import re

from dedupe_helpers import snapshot, write_file
from module_helpers import make_pool
from space_helpers import MIB, assert_close, fs_kind, large_filesystems, large_reflink_dir, used_bytes

__all__ = ["large_filesystems", "large_reflink_dir"]   # fixtures

VID = "appvms/restored/private"
SIZE = 32 * MIB
CLEAN_MTIME = 1_700_000_000 * 10 ** 9
REVISION = "private.img.1@2023-11-14T22:13:20Z"
# "... dom0.reflink.reflink_dedupe with vids: [appvms/x/private] ..." in a finding's message
_DEDUPE_WAY_OUT = re.compile(r"dom0\.reflink\.reflink_dedupe with vids: \[([^\]]*)\]")


def restore(pool):
    """The volume as a restore leaves it: clean, a fresh precache with the same data and a revision that differs
    in 1 MiB, each a file of its own (written in 1 MiB pieces, fsynced)."""
    rng = random.Random(5)
    data = [rng.randbytes(MIB) for _index in range(SIZE // MIB)]
    vm_dir = pool / "appvms" / "restored"
    vm_dir.mkdir(parents=True)
    older = list(data)
    older[7] = rng.randbytes(MIB)
    for name, pieces, mtime in (("private.img", data, CLEAN_MTIME),
                                ("private-precache.img", data, CLEAN_MTIME),
                                (REVISION, older, CLEAN_MTIME - 3600 * 10 ** 9)):
        write_file(vm_dir / name, [(index * MIB, piece) for index, piece in enumerate(pieces)], SIZE, mtime)


def not_shared(result):
    return [finding for finding in result["findings"] if finding["kind"] == "not_shared"]


def test_not_shared_goes_once_reflink_dedupe_runs_as_the_finding_says(large_reflink_dir, run_module):
    pool = make_pool(large_reflink_dir)
    restore(pool)
    common = {"pool": str(pool), "qubes_xml": "none"}
    found = run_module("reflink_info", space=True, **common)
    assert not found.get("failed"), found
    findings = not_shared(found)
    assert sorted((finding["file"], finding["severity"]) for finding in findings) == [
        ("appvms/restored/private-precache.img", "warning"), ("appvms/restored/%s" % REVISION, "info")], findings

    # The way out, as each message names it: one dedupe of the vids named.
    named = sorted({vid.strip() for finding in findings
                    for vid in _DEDUPE_WAY_OUT.search(finding["msg"]).group(1).split(",")})
    assert named == [VID], findings
    before = snapshot(pool)
    used = used_bytes(pool)
    done = run_module("reflink_dedupe", vids=named, **common)
    freed = used - used_bytes(pool)
    assert not done.get("failed") and done["changed"] is True, done
    assert snapshot(pool) == before, "the dedupe changed an image (content, size, mode, inode, times or holes)"
    assert_close(done["reclaimed_bytes"], freed, "reclaimed_bytes against statvfs")
    # The precache's 32 MiB and the revision's 31 MiB that are the clean image's: the ideal is 63 MiB.
    assert freed >= (2 * SIZE - MIB) * 95 // 100, (freed, done)
    print("\n%s: reclaimed_bytes %d, statvfs freed %d (ideal %d)"
          % (fs_kind(pool), done["reclaimed_bytes"], freed, 2 * SIZE - MIB))

    after = run_module("reflink_info", space=True, **common)
    assert not after.get("failed"), after
    assert after["findings"] == [], after["findings"]

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_gc's reclaimed_bytes held against the file system: what a run frees, as one set, in check mode too.

Revision chains as qubesd's start/stop leaves them (space_helpers.revision_chain:
64 MiB written, then three 16 MiB regions rewritten, revisions kept), pruned by
``revisions_to_keep: 0``.  Measured (space-notes.md): removing the revisions
of a chain written in one go frees 0 bytes on btrfs (one 64 MiB extent, still
referenced in part by the clean image) and 48 MiB on XFS; of a chain written
as four fsynced pieces, 48 MiB on both.  The figure of each run is held
against statvfs's change after a sync; check mode's figure against the real
run's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from space_helpers import (MIB, REGION, Volume, assert_close, fs_kind, large_filesystems, large_reflink_dir,
                           revision_chain, used_bytes, write_data)

__all__ = ["large_filesystems", "large_reflink_dir"]   # fixtures

ONE_WRITE = "appvms/one/private"
FOUR_PIECES = "appvms/four/private"
ORPHAN = "appvms/old/private"
HELD_TEMPFILE = "appvms/four/private.img~0123abcd"


def hold_open(path):
    """A process that holds ``path`` open until it is killed (as qubesd's Import writer holds its image)."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nf = open(sys.argv[1], 'rb')\n"
                               "print('held', flush=True)\ntime.sleep(120)", str(path)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def gc_twice(run_module, pool, **args):
    """reflink_gc in check mode, then for real; returns (checked, result, what statvfs saw the real run free)."""
    checked = run_module("reflink_gc", check=True, pool=str(pool), **args)
    assert not checked.get("failed"), checked.get("msg")
    before = used_bytes(pool)
    result = run_module("reflink_gc", pool=str(pool), **args)
    assert not result.get("failed"), result.get("msg")
    return checked, result, before - used_bytes(pool)


def test_reclaimed_bytes_is_what_the_file_system_gets_back(large_reflink_dir, run_module):
    pool = large_reflink_dir / "pool"
    (pool / "vm-templates").mkdir(parents=True)
    one = revision_chain(pool, ONE_WRITE, pieces=False)
    four = revision_chain(pool, FOUR_PIECES, pieces=True)
    orphan = Volume(pool, ORPHAN, 16 * MIB)
    orphan.session([(0, 8 * MIB)], seed=99)          # 8 MiB of its own; its revision is of the empty image
    write_data(pool / HELD_TEMPFILE, [(0, 4 * MIB)], seed=7, create=True, size=64 * MIB)
    for path in [pool / HELD_TEMPFILE] + list((pool / ORPHAN).parent.iterdir()):
        os.utime(path, (time.time() - 7200,) * 2)   # older than min_age (an orphan's young file is kept)
    btrfs = fs_kind(pool) == "btrfs"
    one_revisions = [os.path.relpath(path, pool) for path in one.revisions()]
    four_revisions = [os.path.relpath(path, pool) for path in four.revisions()]

    # Limited to one volume: the map still covers the whole pool (the other volumes' files are read too).
    checked, result, freed = gc_twice(run_module, pool, vids=[ONE_WRITE], revisions_to_keep=0)
    assert [entry["file"] for entry in result["removed"]] == one_revisions and not one.revisions()
    expected = 0 if btrfs else 3 * REGION
    assert result["reclaimed_bytes"] == checked["reclaimed_bytes"] == expected
    assert_close(result["reclaimed_bytes"], freed, "gc of the chain written in one go")
    # Each file's figure: alone, only the oldest revision frees anything (its first region, on XFS).
    assert [entry["exclusive_bytes"] for entry in result["removed"]] == [0 if btrfs else REGION, 0, 0]
    assert all(entry["bytes"] == 4 * REGION for entry in result["removed"])   # allocated, as before
    assert result["reclaimed_exclusive_bytes"] == result["reclaimed_bytes"]    # the deprecated alias

    # The rest: the other chain pruned, the orphan removed; the held tempfile stays and is not counted.
    holder = hold_open(pool / HELD_TEMPFILE)
    try:
        checked, result, freed = gc_twice(run_module, pool, keep_vids=[ONE_WRITE, FOUR_PIECES], remove_orphans=True,
                                          revisions_to_keep=0)
    finally:
        holder.kill()
        holder.wait()
    assert [item["file"] for item in result["skipped_files"]] == [HELD_TEMPFILE]
    assert (pool / HELD_TEMPFILE).exists() and not four.revisions() and not (pool / "appvms/old").exists()
    assert checked["removed"] == result["removed"]
    assert result["reclaimed_bytes"] == checked["reclaimed_bytes"] == 3 * REGION + 8 * MIB
    assert_close(result["reclaimed_bytes"], freed, "gc of the chain written in pieces and of the orphan")
    by_file = {entry["file"]: entry["exclusive_bytes"] for entry in result["removed"]}
    assert [by_file[name] for name in four_revisions] == [REGION, 0, 0]

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Two-phase imports: every state a user can reach is one a named next step gets out of.

Each test drives reflink_import (and reflink_gc) through ansible-playbook as a
user would: it reaches a half-state (a wrong checksum, an import image qubesd
removed, a corrupt or stale journal, a check-mode begin), checks that the
refusal changed nothing and names a way out, then takes that way out and checks
the bytes, inodes and return values it leads to.
"""

from __future__ import annotations

import os

from module_helpers import MIB, make_pool, make_volume, put_file, start_volume
from staging_helpers import (
    VID,
    assert_no_leftovers,
    assert_ok,
    assert_refused,
    image,
    journals,
    read_only_loop,
    revisions,
    sha256_file,
    snapshot,
)

IMPORT_MARKER = "user.dom0-reflink.imported"
GENERIC_RERUN = "run the task again to finish"


def write_data(path, offset=MIB, seed=b"new data "):
    """What the other program does: write into the begun import image in place."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(seed * 20000)
        handle.flush()
        os.fsync(handle.fileno())


def journal_path(pool):
    names = journals(pool)
    assert len(names) == 1, names
    return pool / ".reflink" / "imports" / names[0]


def test_wrong_checksum_at_commit_changes_nothing_then_commit_or_abort(reflink_dir, run_module):
    pool = make_pool(reflink_dir)
    old_data = make_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID}
    staged = image(pool, kind="import")
    assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    write_data(staged)
    written = staged.read_bytes()
    staged_ino = os.stat(staged).st_ino
    right = sha256_file(staged, size=12 * MIB)   # of the image as it will be at the size committed
    wrong = "0" * 64
    before = snapshot(pool)

    # A typo in the checksum, with a size at commit: verified before the resize, nothing changes.
    failed = run_module("reflink_import", state="commit", size="12M", checksum="sha256:" + wrong, **args)
    msg = assert_refused(failed, "checksum mismatch", wrong, right, "state=commit again", "state=abort")
    assert GENERIC_RERUN not in msg and "was removed" not in msg
    assert snapshot(pool) == before
    assert staged.read_bytes() == written and os.stat(staged).st_ino == staged_ino
    assert os.path.getsize(staged) == 8 * MIB
    assert image(pool).read_bytes() == old_data

    # Way out 1: commit again with the right checksum.
    done = assert_ok(run_module("reflink_import", state="commit", size="12M", checksum="sha256:" + right,
                                **args), True)
    assert image(pool).read_bytes() == written + bytes(4 * MIB)
    assert os.stat(image(pool)).st_ino == staged_ino and not staged.exists()
    assert done["volume"]["size"] == 12 * MIB
    assert revisions(pool)[1].read_bytes() == old_data

    # Way out 2: a second import of the volume whose data is wrong is discarded with abort.
    committed = image(pool).read_bytes()
    assert_ok(run_module("reflink_import", state="begin", size="4M", **args), True)
    write_data(staged, seed=b"bad data ")
    failed = run_module("reflink_import", state="commit", checksum="sha256:" + wrong, **args)
    assert_refused(failed, "checksum mismatch", sha256_file(staged), "state=abort")
    assert staged.exists() and journals(pool)
    assert_ok(run_module("reflink_import", state="abort", **args), True)
    assert not staged.exists() and journals(pool) == []
    assert image(pool).read_bytes() == committed
    assert_no_leftovers(pool)


def test_begin_after_the_import_image_vanished_starts_afresh(reflink_dir, run_module):
    pool = make_pool(reflink_dir)
    old_data = make_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID}
    staged = image(pool, kind="import")
    assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    os.unlink(staged)   # qubesd does this when the VM starts
    before = snapshot(pool)

    gone = run_module("reflink_import", state="commit", **args)
    msg = assert_refused(gone, "is gone", "state=begin again", "state=abort")
    assert GENERIC_RERUN not in msg
    assert snapshot(pool) == before
    refused_again = run_module("reflink_import", state="commit", **args)
    assert refused_again["msg"] == gone["msg"]

    # The way out the message names: begin again (here with another size) starts afresh.
    again = assert_ok(run_module("reflink_import", state="begin", size="16M", **args), True)
    assert any(text.startswith("replace the stale import journal of %s" % VID) for text in again["actions"]), \
        again["actions"]
    assert again["import_image"] == str(staged) and os.path.getsize(staged) == 16 * MIB
    assert staged.read_bytes() == bytes(16 * MIB)
    assert image(pool).read_bytes() == old_data
    write_data(staged)
    wanted, new_ino = staged.read_bytes(), os.stat(staged).st_ino
    done = assert_ok(run_module("reflink_import", state="commit", **args), True)
    assert image(pool).read_bytes() == wanted and os.stat(image(pool)).st_ino == new_ino
    assert done["volume"]["size"] == 16 * MIB
    assert_no_leftovers(pool)


def test_one_shot_and_abort_after_the_import_image_vanished(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID}
    staged = image(pool, kind="import")

    # abort: clears the record of an import whose image is gone.
    assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    os.unlink(staged)
    assert_ok(run_module("reflink_import", state="abort", **args), True)
    assert journals(pool) == []

    # A one-shot import over a stale journal goes ahead and says it removed the journal.
    assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    os.unlink(staged)
    source = btrfs_dir / "source.img"
    source_data = put_file(source, 6 * MIB, [(0, 8192), (3 * MIB, 4096)], seed=5)
    done = assert_ok(run_module("reflink_import", src=str(source), **args), True)
    assert any(text.startswith("remove the import journal of %s (stale" % VID) for text in done["actions"])
    assert image(pool).read_bytes() == source_data and journals(pool) == []
    assert_no_leftovers(pool, btrfs_dir)


def test_rerun_of_a_commit_after_gc_dropped_its_record(reflink_dir, run_module):
    pool = make_pool(reflink_dir)
    make_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID}
    staged = image(pool, kind="import")
    assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    write_data(staged)
    assert_ok(run_module("reflink_import", state="commit", **args), True)
    assert os.getxattr(image(pool), IMPORT_MARKER)   # the commit is remembered on the clean inode

    # Days later, the nightly gc drops the journal's record of the committed import.
    record = journal_path(pool)
    two_days_ago = os.stat(record).st_mtime - 2 * 86400
    os.utime(record, (two_days_ago, two_days_ago))
    gc = assert_ok(run_module("reflink_gc", pool=str(pool)), True)
    assert any("record of a committed import" in text for text in gc["actions"]), gc["actions"]
    assert journals(pool) == []

    before = snapshot(pool)
    rerun = assert_ok(run_module("reflink_import", state="commit", **args), False)
    assert rerun["actions"] == [] and rerun["import_image"] is None
    assert snapshot(pool) == before

    # Once the clean image is replaced (here: an import), that commit is no longer remembered.
    source = reflink_dir / "source.img"
    put_file(source, 4 * MIB, [(0, 4096)], seed=8)
    assert_ok(run_module("reflink_import", src=str(source), **args), True)
    assert_refused(run_module("reflink_import", state="commit", **args), "no two-phase import", "state=begin")
    assert_no_leftovers(pool, reflink_dir)


def test_corrupt_journal_is_cleared_by_abort(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    old_data = make_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID}
    staged = image(pool, kind="import")
    assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    journal_path(pool).write_bytes(b"{not json")
    before = snapshot(pool)

    for refused in (run_module("reflink_import", state="commit", **args),
                    run_module("reflink_import", state="begin", size="8M", **args),
                    run_module("reflink_import", size="4M", **args)):
        assert_refused(refused, "cannot be read", "state=abort")
        assert snapshot(pool) == before
    aborted = assert_ok(run_module("reflink_import", state="abort", **args), True)
    assert not staged.exists() and journals(pool) == []
    assert len(aborted["actions"]) == 2
    assert image(pool).read_bytes() == old_data
    assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    assert staged.exists() and len(journals(pool)) == 1
    assert_ok(run_module("reflink_import", state="abort", **args), True)
    assert_no_leftovers(pool)


def test_refusals_name_a_step_that_works(btrfs_dir, run_module):
    """Commit without begin; a size the writer changed; a replaced image; a volume in use; begin twice."""
    pool = make_pool(btrfs_dir)
    old_data = make_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID}
    staged = image(pool, kind="import")

    # Nothing begun: commit names begin; abort changes nothing.
    assert_refused(run_module("reflink_import", state="commit", **args), "no two-phase import", "state=begin")
    assert_ok(run_module("reflink_import", state="abort", **args), False)
    put_file(staged, MIB, [(0, 4096)], seed=3)   # an import image no journal claims (qubesd's own?)
    unclaimed = staged.read_bytes()
    left = assert_ok(run_module("reflink_import", state="abort", **args), False)
    assert any("left the import image" in warning and "min_age" in warning for warning in left["warnings"])
    assert staged.read_bytes() == unclaimed

    # The writer grew the image: commit names size and abort; commit with size works.
    assert_ok(run_module("reflink_import", state="begin", size="4M", **args), True)
    write_data(staged, offset=5 * MIB)
    grown = os.path.getsize(staged)
    assert_refused(run_module("reflink_import", state="commit", **args), "state=commit with size (%d" % grown,
                   "state=abort")
    wanted = staged.read_bytes()
    assert_ok(run_module("reflink_import", state="commit", size=grown, **args), True)
    assert image(pool).read_bytes() == wanted

    # Begin with another size while one is begun: names commit and abort; abort, then begin, works.
    assert_ok(run_module("reflink_import", state="begin", size="4M", **args), True)
    assert_refused(run_module("reflink_import", state="begin", size="8M", **args), "state=commit", "state=abort")
    assert_ok(run_module("reflink_import", state="abort", **args), True)
    assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    assert os.path.getsize(staged) == 8 * MIB

    # The image was replaced by another file: begin and commit leave it alone and name abort; abort works.
    os.unlink(staged)
    put_file(staged, 8 * MIB, [(0, 4096)], seed=99)
    foreign = snapshot(pool)
    for refused in (run_module("reflink_import", state="commit", **args),
                    run_module("reflink_import", state="begin", size="8M", **args)):
        assert_refused(refused, "not the file that state=begin created", "state=abort", "state=begin")
        assert snapshot(pool) == foreign
    assert_ok(run_module("reflink_import", state="abort", **args), True)
    assert not staged.exists() and journals(pool) == []

    # In use at commit: names commit again and abort; commit works once the loop device is gone.
    committed = image(pool).read_bytes()
    assert committed != old_data
    assert_ok(run_module("reflink_import", state="begin", size="4M", **args), True)
    write_data(staged)
    wanted = staged.read_bytes()
    with read_only_loop(image(pool)):
        busy = run_module("reflink_import", state="commit", **args)
    assert_refused(busy, "in use", "run this again once the VM is stopped", "state=abort")
    assert_ok(run_module("reflink_import", state="commit", **args), True)
    assert image(pool).read_bytes() == wanted
    assert_no_leftovers(pool)


def test_check_mode_commit_and_abort_after_a_planned_begin(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID}
    before = snapshot(pool)

    begin = assert_ok(run_module("reflink_import", check=True, state="begin", size="8M", **args), True)
    commit = assert_ok(run_module("reflink_import", check=True, diff=True, state="commit", **args), True)
    abort = assert_ok(run_module("reflink_import", check=True, state="abort", **args), True)
    assert snapshot(pool) == before
    assert begin.get("warnings") is None
    for result, state in ((commit, "commit"), (abort, "abort")):
        assert any("check mode planned this %s" % state in warning for warning in result["warnings"]), result
    assert "commit: rename appvms/work/private-import.img to appvms/work/private.img" in commit["actions"]
    assert commit["diff"]["after"]["revisions"] == [1]
    assert commit["volume"]["size"] == 4 * MIB
    assert abort["actions"][0].startswith("remove appvms/work/private-import.img")

    # A real run without a begin still fails (and says how to begin).
    assert_refused(run_module("reflink_import", state="commit", **args), "state=begin")
    assert snapshot(pool) == before


def test_a_vm_start_between_begin_and_commit(btrfs_dir, run_module):
    """qubesd starts the VM after begin (deleting the import image) and stops it later: begin again works."""
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID}
    staged = image(pool, kind="import")
    assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    write_data(staged)
    # qubesd's start: the uncommitted import image goes, the precache becomes the dirty image.
    os.unlink(staged)
    running_data = start_volume(pool, VID)

    assert_refused(run_module("reflink_import", state="commit", **args), "is gone", "state=begin again")
    busy = run_module("reflink_import", state="begin", size="8M", **args)
    assert_refused(busy, "in use", "dirty image", "reflink_volume state=stopped", "run this again")
    # The way out the message names (the VM halted without qubesd's commit): state=stopped, then begin.
    assert_ok(run_module("reflink_volume", state="stopped", **args), True)
    assert image(pool).read_bytes() == running_data
    again = assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    assert any(text.startswith("replace the stale import journal") for text in again["actions"])
    write_data(staged, seed=b"second try ")
    wanted, ino = staged.read_bytes(), os.stat(staged).st_ino
    assert_ok(run_module("reflink_import", state="commit", **args), True)
    assert image(pool).read_bytes() == wanted and os.stat(image(pool)).st_ino == ino
    assert revisions(pool)[max(revisions(pool))].read_bytes() == running_data
    assert_no_leftovers(pool)


def test_check_mode_two_phases_into_a_volume_not_made_yet(reflink_dir, run_module):
    """A whole begin/commit in check mode for a new vid predicts the real run's volume."""
    pool = make_pool(reflink_dir)
    vid = "appvms/fresh/private"
    args = {"pool": str(pool), "vid": vid}
    before = snapshot(pool)

    assert_ok(run_module("reflink_import", check=True, state="begin", size="8M", **args), True)
    planned = assert_ok(run_module("reflink_import", check=True, state="commit", **args), True)
    assert snapshot(pool) == before and not (pool / "appvms" / "fresh").exists()
    assert planned["actions"][1] == "create VM directory appvms/fresh", planned["actions"]
    # Nothing tells check mode the begun size: the first action says which size it assumed.
    assert planned["volume"]["size"] == 0 and "at 0 bytes (the size given to commit" in planned["actions"][0]
    assert planned["warnings"]
    sized = assert_ok(run_module("reflink_import", check=True, state="commit", size="8M", **args), True)
    assert sized["volume"]["size"] == 8 * MIB

    assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    planned = assert_ok(run_module("reflink_import", check=True, state="commit", **args), True)
    assert "warnings" not in planned
    real = assert_ok(run_module("reflink_import", state="commit", **args), True)
    assert real["actions"] == planned["actions"]   # "(reflink)" too: check mode knows the pool
    assert real["volume"] == planned["volume"] | {"usage": real["volume"]["usage"]}
    assert real["volume"]["size"] == 8 * MIB and real["volume"]["state"] == "stopped"
    assert image(pool, vid).read_bytes() == bytes(8 * MIB)

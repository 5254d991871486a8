# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qubesd acting on the pool at the worst moment, made deterministic.

qubesd does not take our locks.  Each test holds a module at a chosen system
call (strace injects SIGSTOP after the n-th call of it), does what qubesd does
at that moment (starts the VM: renames the precache to the dirty image, or
copies clean to it when there is no precache, and writes into it; attaches a
loop device; keeps an import image open for writing), then lets the module go
on, and checks bytes, inodes and the result.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import signal
import subprocess
import sys

import pytest

import reliability_helpers as rh
from module_helpers import T0, loop_device, make_pool, make_volume, put_file, start_volume, stamp

VID = "appvms/work/private"
SIZE = 4 * rh.MIB
REVISION_1 = (1, T0 - 86400)
STARTED = "became in use while this task ran"
RERUN = "run the task again once the VM has stopped"


def start_vm_from_clean(pool, vid=VID, seed=3):
    """qubesd's start when there is no precache: the dirty image is a copy of clean; the VM writes to it."""
    vm_dir = pool / os.path.dirname(vid)
    volume = os.path.basename(vid)
    dirty = vm_dir / (volume + "-dirty.img")
    subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(vm_dir / (volume + ".img")), str(dirty)],
                   check=True)
    with open(dirty, "r+b") as handle:
        handle.seek(8192)
        handle.write(random.Random(seed).randbytes(50000))
        os.fsync(handle.fileno())
    return dirty.read_bytes()


def revisions_of(state):
    return {number: (when, facts.digest, facts.ino) for number, (when, facts) in state.revisions.items()}


def identity(facts):
    return None if facts is None else (facts.digest, facts.ino)


def assert_withdrawn(result, *words, changed=False):
    assert result["failed"], result
    assert result["changed"] is changed, result
    for word in (STARTED, RERUN) + words:
        assert word in result["msg"], (word, result["msg"])


def assert_untouched(pool, before, dirty_bytes, vid=VID):
    """Clean and the revisions as before (bytes and inodes), the VM's dirty image as it wrote it, nothing staged."""
    after = rh.read_state(pool, vid)
    assert identity(after.clean) == identity(before.clean)
    assert revisions_of(after) == revisions_of(before)
    assert after.dirty is not None and after.dirty.digest == rh.digest_bytes(dirty_bytes)
    assert after.import_ is None
    assert after.tempfiles == []
    assert after.junk == []
    return after


def source_file(base, seed=50):
    path = base / "source.img"
    data = put_file(path, SIZE, [(4096, 200000), (SIZE - 4096, 4096)], seed=seed)
    return path, data


def commit_after_stop(pool, vid=VID):
    """The VM stops: its dirty image is committed (as qubesd's stop does; here by state=stopped)."""
    result = rh.run_direct("reflink_volume", pool=str(pool), vid=vid, state="stopped", revisions_to_keep=5)
    assert not result["failed"], result
    return result


# ------------------------------------------------------------------ reflink_import

def test_import_vm_started_after_staging(btrfs_dir, modrun):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[REVISION_1])
    source, data = source_file(btrfs_dir)
    args = {"pool": str(pool), "vid": VID, "src": str(source), "revisions_to_keep": 5}
    # renameat #1 puts the staged import image in place.
    with rh.held_after("reflink_import", args, "renameat", 1) as held:
        assert (pool / "appvms/work/private-import.img").read_bytes() == data
        before = rh.read_state(pool, VID)
        dirty = start_volume(pool, VID)
        result = held.resume()
    assert_withdrawn(result, "the dirty image private-dirty.img appeared", "nothing of the volume was replaced",
                     "removed the staged image private-import.img")
    assert_untouched(pool, before, dirty)
    # After the VM stops, the same task does the job.
    commit_after_stop(pool)
    again = rh.run_direct("reflink_import", **args)
    assert not again["failed"] and again["changed"] is True, again
    assert (pool / "appvms/work/private.img").read_bytes() == data


def test_import_vm_started_after_the_checksum(btrfs_dir, modrun):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[REVISION_1])
    source, data = source_file(btrfs_dir)
    args = {"pool": str(pool), "vid": VID, "src": str(source), "revisions_to_keep": 5,
            "checksum": "sha256:" + rh.digest_bytes(data)}
    before = rh.read_state(pool, VID)
    # renameat #2 names the old clean image's revision: the staging and the checksum are done.
    with rh.held_after("reflink_import", args, "renameat", 2) as held:
        assert (pool / ("appvms/work/private.img.2@" + stamp(T0))).exists()
        dirty = start_volume(pool, VID)
        result = held.resume()
    assert_withdrawn(result, "the dirty image private-dirty.img appeared",
                     "removed the new revision private.img.2@" + stamp(T0),
                     "removed the staged image private-import.img")
    assert_untouched(pool, before, dirty)


def test_import_vm_started_just_before_the_commit_rename(btrfs_dir, modrun):
    """Held after its first unlink (the precache): the next step would be the commit rename."""
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[REVISION_1])
    source, _data = source_file(btrfs_dir)
    args = {"pool": str(pool), "vid": VID, "src": str(source), "revisions_to_keep": 5}
    before = rh.read_state(pool, VID)
    with rh.held_after("reflink_import", args, "unlinkat", 1) as held:
        assert not (pool / "appvms/work/private-precache.img").exists()
        dirty = start_vm_from_clean(pool)
        result = held.resume()
    # The removed precache stays removed: a running VM has none, and qubesd's stop makes it anew.
    assert_withdrawn(result, "the dirty image private-dirty.img appeared",
                     "the steps listed in actions were done before it", changed=True)
    assert any("precache" in action for action in result["actions"]), result["actions"]
    after = assert_untouched(pool, before, dirty)
    assert after.precache is None


def test_two_phase_commit_vm_started_right_after_the_commit_rename_keeps_the_commit(btrfs_dir, modrun):
    """Once clean is replaced the job is done: a VM start then withdraws nothing (the new revision holds the old data)."""
    pool = make_pool(btrfs_dir)
    old = make_volume(pool, VID, revisions=[REVISION_1])
    begun = rh.run_direct("reflink_import", pool=str(pool), vid=VID, state="begin", size=SIZE)
    assert not begun["failed"], begun
    image = pathlib.Path(begun["import_image"])
    with open(image, "r+b") as handle:
        handle.write(b"written by another program" * 100)
    data = image.read_bytes()
    args = {"pool": str(pool), "vid": VID, "state": "commit", "revisions_to_keep": 5}
    # renameat #1 names the revision of the old clean, #2 is the commit rename; the precache and
    # the journal's record follow.
    with rh.held_after("reflink_import", args, "renameat", 2) as held:
        assert (pool / "appvms/work/private.img").read_bytes() == data
        dirty = start_vm_from_clean(pool)
        result = held.resume()
    assert not result["failed"] and result["changed"] is True, result
    after = rh.read_state(pool, VID)
    assert after.clean.digest == rh.digest_bytes(data)
    assert sorted(after.revisions) == [1, 2]
    assert after.revisions[2][1].digest == rh.digest_bytes(old)
    assert after.dirty is not None and after.dirty.digest == rh.digest_bytes(dirty)
    assert after.import_ is None
    # The commit is recorded: its rerun changes nothing.
    again = rh.run_direct("reflink_import", **args)
    assert not again["failed"] and again["changed"] is False, again


def test_import_vm_started_after_pruning_keeps_the_new_revision(btrfs_dir, modrun):
    """Withdrawn after a revision was pruned: the new revision, now the only copy of that history step, stays."""
    pool = make_pool(btrfs_dir)
    old = make_volume(pool, VID, revisions=[REVISION_1])
    source, _data = source_file(btrfs_dir)
    args = {"pool": str(pool), "vid": VID, "src": str(source), "revisions_to_keep": 1}
    # unlinkat #1 prunes revision 1 (revision 2, the old clean, is made just before it).
    with rh.held_after("reflink_import", args, "unlinkat", 1) as held:
        assert not (pool / ("appvms/work/private.img.1@" + stamp(REVISION_1[1]))).exists()
        dirty = start_volume(pool, VID)
        result = held.resume()
    assert_withdrawn(result, "the dirty image private-dirty.img appeared",
                     "the steps listed in actions were done before it", changed=True)
    after = rh.read_state(pool, VID)
    assert after.clean.digest == rh.digest_bytes(old)
    assert sorted(after.revisions) == [2]
    assert after.revisions[2][1].digest == rh.digest_bytes(old)
    assert after.dirty is not None and after.dirty.digest == rh.digest_bytes(dirty)
    assert after.import_ is None


def test_two_phase_commit_loop_device_attached_before_the_commit(btrfs_dir, modrun):
    """A loop device on clean appears after the begun import's checksum: the commit is withdrawn, the import stays."""
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[REVISION_1])
    begun = rh.run_direct("reflink_import", pool=str(pool), vid=VID, state="begin", size=SIZE)
    assert not begun["failed"], begun
    image = pathlib.Path(begun["import_image"])
    with open(image, "r+b") as handle:
        handle.write(b"written by another program" * 100)
    data = image.read_bytes()
    args = {"pool": str(pool), "vid": VID, "state": "commit", "revisions_to_keep": 5,
            "checksum": "sha256:" + rh.digest_bytes(data)}
    before = rh.read_state(pool, VID)
    with rh.held_after("reflink_import", args, "renameat", 1) as held:   # the revision of the old clean
        with loop_device(pool / "appvms/work/private.img") as device:
            result = held.resume()
    assert_withdrawn(result, "loop device %s is backed by private.img" % device)
    after = rh.read_state(pool, VID)
    assert identity(after.clean) == identity(before.clean)
    assert revisions_of(after) == revisions_of(before)
    # The begun import is not the task's to remove: it stays, as begin left it, for the commit's rerun.
    assert identity(after.import_) == identity(before.import_)
    again = rh.run_direct("reflink_import", **args)
    assert not again["failed"] and again["changed"] is True, again
    assert (pool / "appvms/work/private.img").read_bytes() == data


# ------------------------------------------------------ revert, stopped, absent

def test_revert_vm_started_after_the_revision_clone(btrfs_dir, modrun):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[REVISION_1])
    before = rh.read_state(pool, VID)
    with rh.held_after("reflink_revert", {"pool": str(pool), "vid": VID, "revision": 1}, "renameat", 1) as held:
        dirty = start_volume(pool, VID)
        result = held.resume()
    assert_withdrawn(result, "the dirty image private-dirty.img appeared")
    assert_untouched(pool, before, dirty)
    revision = pool / ("appvms/work/private.img.1@" + stamp(REVISION_1[1]))
    assert "user.dom0-reflink.reverted-to" not in os.listxattr(revision)


def test_revert_to_a_pin_vm_started_after_the_revision_clone(btrfs_dir, modrun):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[REVISION_1])
    pin = pool / "appvms/work/private.img.pin-good"
    put_file(pin, SIZE, [(0, 8192)], seed=60)
    pin_before = rh.facts_of(pin)
    before = rh.read_state(pool, VID)
    with rh.held_after("reflink_revert", {"pool": str(pool), "vid": VID, "pin": "good"}, "renameat", 1) as held:
        dirty = start_volume(pool, VID)
        result = held.resume()
    assert_withdrawn(result, "the dirty image private-dirty.img appeared")
    assert_untouched(pool, before, dirty)
    assert rh.facts_of(pin) == pin_before


def test_stopped_commit_loop_device_attached_mid_plan(btrfs_dir, modrun):
    """state=stopped commits a dirty image it saw (no false alarm), but not one a loop device took meanwhile."""
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[REVISION_1])
    dirty = start_volume(pool, VID)   # halted with a pending commit
    before = rh.read_state(pool, VID)
    args = {"pool": str(pool), "vid": VID, "state": "stopped", "revisions_to_keep": 5}
    with rh.held_after("reflink_volume", args, "renameat", 1) as held:   # the revision of the old clean
        with loop_device(pool / "appvms/work/private-dirty.img") as device:
            result = held.resume()
    assert_withdrawn(result, "loop device %s is backed by private-dirty.img" % device)
    assert identity(assert_untouched(pool, before, dirty).dirty) == identity(before.dirty)
    committed = rh.run_direct("reflink_volume", **args)
    assert not committed["failed"] and committed["changed"] is True, committed
    assert (pool / "appvms/work/private.img").read_bytes() == dirty


def test_resize_of_a_stopped_volume_vm_started_after_planning(btrfs_dir, modrun):
    """Held after planning read the loop devices: the new inode of clean is never made."""
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[REVISION_1])
    before = rh.read_state(pool, VID)
    args = {"pool": str(pool), "vid": VID, "size": "8M"}
    with rh.held_after("reflink_volume", args, "openat", 1, path="/sys/block") as held:
        dirty = start_volume(pool, VID)
        result = held.resume()
    assert_withdrawn(result, "the dirty image private-dirty.img appeared", "nothing of the volume was replaced")
    assert result["actions"] == []
    assert_untouched(pool, before, dirty)


def test_absent_vm_started_mid_plan(btrfs_dir, modrun):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[REVISION_1])
    before = rh.read_state(pool, VID)
    with rh.held_after("reflink_volume", {"pool": str(pool), "vid": VID, "state": "absent"}, "unlinkat", 1) as held:
        dirty = start_volume(pool, VID)
        result = held.resume()
    assert_withdrawn(result, "the dirty image private-dirty.img appeared", changed=True)
    after = rh.read_state(pool, VID)
    assert after.revisions == {}   # the first removal was done before the VM started
    assert identity(after.clean) == identity(before.clean)
    assert after.dirty.digest == rh.digest_bytes(dirty)


# ------------------------------------------------------------------ reflink_gc

@contextlib.contextmanager
def writer_holding(path):
    """A process with ``path`` open for writing, as qubesd's Import writer keeps it while data streams in."""
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys, time\nf = open(sys.argv[1], 'r+b')\nprint('open', flush=True)\n"
                              "time.sleep(600)\n", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        yield child
    finally:
        child.kill()
        child.wait()


def test_gc_leaves_an_import_image_a_writer_holds_open(btrfs_dir, modrun):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    image = pool / "appvms/work/private-import.img"
    put_file(image, SIZE, [(0, 65536)], seed=9, mtime=T0)   # two hours old and more, no journal claims it
    tempfile_ = pool / "appvms/work/private.img~abcd1234"
    put_file(tempfile_, 65536, [(0, 4096)], seed=10, mtime=T0)
    inode = os.stat(image).st_ino
    with writer_holding(image) as writer:
        command = pathlib.Path("/proc/%d/comm" % writer.pid).read_text().strip()
        planned = rh.run_direct("reflink_gc", check=True, pool=str(pool), min_age="1h")
        collected = rh.run_direct("reflink_gc", pool=str(pool), min_age="1h")
        for result in (planned, collected):
            assert not result["failed"], result
            assert [entry["file"] for entry in result["removed"]] == ["appvms/work/private.img~abcd1234"]
            [skipped] = result["skipped_files"]
            assert skipped["file"] == "appvms/work/private-import.img"
            assert skipped["holders"] == [{"pid": writer.pid, "command": command}]
            assert "held open by pid %d (%s)" % (writer.pid, command) in skipped["reason"]
            assert "import image that no begun import claims" in skipped["reason"]
        assert os.stat(image).st_ino == inode
        assert not tempfile_.exists()
    # The writer is gone: the next gc removes the image.
    collected = rh.run_direct("reflink_gc", pool=str(pool), min_age="1h")
    assert collected["skipped_files"] == []
    assert [entry["file"] for entry in collected["removed"]] == ["appvms/work/private-import.img"]


def test_gc_leaves_a_volume_whose_vm_started_mid_run(btrfs_dir, modrun):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[REVISION_1, (2, T0 - 3600)])
    vm_dir = pool / "appvms/work"
    for suffix in ("aaaa1111", "bbbb2222"):
        put_file(vm_dir / ("private.img~" + suffix), 65536, [(0, 4096)], seed=11, mtime=T0)
    before = rh.read_state(pool, VID)
    with rh.held_after("reflink_gc", {"pool": str(pool), "min_age": "1h", "revisions_to_keep": 0},
                       "unlinkat", 1) as held:
        dirty = start_volume(pool, VID)
        result = held.resume()
    assert not result["failed"], result
    assert result["changed"] is True
    # One tempfile was removed before the VM started; the guard stopped gc before the next removal.
    [removed] = [entry["file"] for entry in result["removed"]]
    assert removed in ("appvms/work/private.img~aaaa1111", "appvms/work/private.img~bbbb2222")
    [skipped] = result["skipped_volumes"]
    assert skipped["vid"] == VID
    assert "became in use while gc ran" in skipped["reason"] and "private-dirty.img appeared" in skipped["reason"]
    after = rh.read_state(pool, VID)
    assert revisions_of(after) == revisions_of(before)
    assert identity(after.clean) == identity(before.clean)
    assert after.dirty.digest == rh.digest_bytes(dirty)
    assert [name for name in ("aaaa1111", "bbbb2222") if (vm_dir / ("private.img~" + name)).exists()] != []


@pytest.mark.parametrize("kind", ["import"])
def test_window_between_the_last_check_and_the_commit_rename(btrfs_dir, modrun, kind):
    """Measures (prints; asserts no time) how long after the last in-use check the commit rename comes.

    The check starts with the listing of the VM directory (getdents64): a VM start after that listing
    is not seen.  strace -ttt stamps each call; strace itself slows the calls it traces down.
    """
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[REVISION_1])
    source, _data = source_file(btrfs_dir)
    windows = []
    for _round in range(5):
        with rh._workdir() as work:
            rh.write_args(work / "args.json", {"pool": str(pool), "vid": VID, "src": str(source),
                                               "revisions_to_keep": 5, "force": True})
            runner = rh.zygote()
            pid = runner.spawn("reflink_import", work / "args.json", work / "out.txt", stop=True)
            trace = work / "trace.txt"
            tracer = rh.attach_strace(pid, trace, ["--seccomp-bpf", "-ttt", "-e", "trace=getdents64,openat,renameat"])
            os.kill(pid, signal.SIGCONT)
            runner.wait(pid)
            tracer.wait(timeout=60)
            lines = trace.read_text().splitlines()
        stamps = [(float(line.split()[1]), line) for line in lines if "(" in line and line.split()[1][0].isdigit()]
        commit = next(i for i, (_t, line) in enumerate(stamps)
                      if line.split()[2].startswith("renameat(") and '"private-import.img",' in line
                      and line.rstrip().endswith('"private.img") = 0'))
        # The last check before it: its VM-directory listing comes right before its open of /sys/block.
        sys_block = max(i for i in range(commit) if '"/sys/block"' in stamps[i][1])
        listing = max(i for i in range(sys_block)
                      if "getdents64(" in stamps[i][1] and "/* 0 entries */" not in stamps[i][1])
        windows.append(stamps[commit][0] - stamps[listing][0])
    figures = (min(windows) * 1e3, sorted(windows)[2] * 1e3, max(windows) * 1e3)
    print("\nwindow from the last in-use check's VM-directory listing to the commit rename (under strace): "
          "min %.3f ms, median %.3f ms, max %.3f ms" % figures)


# ------------------------------------------------------- reflink_volume volumes

BATCH_FIRST, BATCH_THIRD = "appvms/first/private", "appvms/third/private"


@pytest.mark.parametrize("hold", [("renameat", 2), ("fsync", 6)],
                         ids=["after-the-first-items-rename", "between-the-items"])
def test_batch_vm_of_the_second_item_started_mid_batch(btrfs_dir, modrun, hold):
    """qubesd starts the VM of item 2 after the batch planned: item 1 stays done, item 2 is withdrawn, 3 not begun.

    Held after item 1's last rename (its precache's), or after the fsync of item 1's VM directory that
    ends it (fsync #1 and #2 are of the new .reflink and .reflink/locks directories).  Item 2's resize is
    one step (clone, then rename over clean): the guard checks right before it; a start inside that
    step is the window docs/reliability.md describes, as for a single-volume resize.
    """
    pool = make_pool(btrfs_dir)
    first = make_volume(pool, BATCH_FIRST, seed=4)
    make_volume(pool, VID, revisions=[REVISION_1])
    volumes = [{"vid": BATCH_FIRST, "size": "8M"}, {"vid": VID, "size": "8M"}, {"vid": BATCH_THIRD, "size": "4M"}]
    args = {"pool": str(pool), "volumes": volumes}
    before = rh.read_state(pool, VID)
    with rh.held_after("reflink_volume", args, *hold) as held:
        assert os.path.getsize(pool / (BATCH_FIRST + ".img")) == 8 * rh.MIB
        dirty = start_volume(pool, VID)
        result = held.resume()
    assert_withdrawn(result, "volumes item 2 (%s): " % VID, "the dirty image private-dirty.img appeared",
                     "nothing of the volume was replaced",
                     "the items before it were done (%s)" % BATCH_FIRST, "the items after it were not started",
                     changed=True)
    # Item 1's work is reported as done, and stays done.
    [report] = result["volumes"]
    assert report["vid"] == BATCH_FIRST and report["changed"] is True and report["size"] == 8 * rh.MIB, report
    assert report["actions"] and set(report["actions"]) <= set(result["actions"]), result
    assert not any(VID in text or BATCH_THIRD in text for text in result["actions"]), result["actions"]
    with open(pool / (BATCH_FIRST + ".img"), "rb") as handle:
        assert handle.read() == first + bytes(4 * rh.MIB)
    # Item 2: clean and revisions as they were, the VM's dirty image as it wrote it, no grown copy left.
    assert_untouched(pool, before, dirty)
    assert os.path.getsize(pool / (VID + ".img")) == SIZE
    # Item 3 was not begun: not even its VM directory.
    assert not (pool / os.path.dirname(BATCH_THIRD)).exists()

    # The VM stops (its dirty image committed); the same task then finishes the batch.
    commit_after_stop(pool)
    rerun = rh.run_direct("reflink_volume", **args)
    assert not rerun["failed"], rerun
    assert [item["changed"] for item in rerun["volumes"]] == [False, True, True], rerun
    assert (pool / (VID + ".img")).read_bytes() == dirty + bytes(4 * rh.MIB)
    assert os.path.getsize(pool / (BATCH_THIRD + ".img")) == 4 * rh.MIB
    again = rh.run_direct("reflink_volume", **args)
    assert not again["failed"] and again["changed"] is False, again

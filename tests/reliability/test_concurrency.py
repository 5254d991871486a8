# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Modules run at the same time in separate processes: the locks serialise what must be, and only that."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

import reliability_helpers as rh
from module_helpers import T0, copy_file, put_file

VID = "appvms/work/private"
SIZE = 4 * rh.MIB


def make_pool(base):
    pool = base / "pool"
    for path in (pool, pool / "appvms", pool / "vm-templates"):
        path.mkdir(mode=0o755)
    return pool


def make_volume(pool, vid=VID, size=SIZE, seed=1):
    vm_dir = pool / os.path.dirname(vid)
    vm_dir.mkdir(exist_ok=True)
    clean = vm_dir / (os.path.basename(vid) + ".img")
    data = put_file(clean, size, [(0, 65536), (size - 8192, 8192)], seed=seed, mtime=T0)
    copy_file(clean, vm_dir / (os.path.basename(vid) + "-precache.img"))
    return data


def assert_ok(result):
    assert not result["failed"], result
    return result


def assert_tidy(pool, vid=VID):
    """No tempfile, no import image, a fresh precache."""
    state = rh.read_state(pool, vid)
    assert state.tempfiles == [], state.tempfiles
    assert state.import_ is None
    assert state.precache_fresh
    return state


def test_eight_imports_into_one_volume_are_serialised(btrfs_dir, modrun):
    pool = make_pool(btrfs_dir)
    old = make_volume(pool)
    sources = {}
    for i in range(8):
        path = btrfs_dir / ("source%d.img" % i)
        sources[str(path)] = put_file(path, SIZE, [(i * 65536, 65536), (SIZE // 2, 4096 + i)], seed=100 + i)
    calls = [("reflink_import", {"pool": str(pool), "vid": VID, "src": src, "revisions_to_keep": 10,
                                 "lock_timeout": 300}) for src in sources]
    results = rh.run_many(calls, workers=8)
    for result in results:
        assert_ok(result)
        assert result["changed"] is True
    # Each import committed once, one after the other: the n-th to commit saw n revisions afterwards.
    order = sorted(range(8), key=lambda i: len(results[i]["volume"]["revisions"]))
    assert [len(results[i]["volume"]["revisions"]) for i in order] == list(range(1, 9))
    state = assert_tidy(pool)
    assert sorted(state.revisions) == list(range(1, 9))   # consecutive ids
    committed = [old] + [sources[calls[i][1]["src"]] for i in order]
    chain = [facts.digest for _id, (_stamp, facts) in sorted(state.revisions.items())] + [state.clean.digest]
    assert chain == [rh.digest_bytes(data) for data in committed], "revisions are not the imports in commit order"
    assert (pool / "appvms/work/private.img").read_bytes() == sources[calls[order[-1]][1]["src"]]


def test_import_and_gc_at_once(ext4_dir, modrun):
    """gc (min_age=0, in a loop) while imports copy data: gc never removes what an import is making."""
    pool = make_pool(ext4_dir)
    make_volume(pool)
    sources = []
    for i in range(4):
        path = ext4_dir / ("source%d.img" % i)
        put_file(path, 3 * rh.MIB, [(j * rh.MIB, rh.MIB) for j in range(3)], seed=200 + i)
        sources.append(path)
    imports = []
    gcs = []
    done = threading.Event()

    def importer():
        try:
            for path in sources:
                imports.append(rh.run_direct("reflink_import", pool=str(pool), vid=VID, src=str(path),
                                             revisions_to_keep=2, lock_timeout=120))
        finally:
            done.set()

    def collector():
        while not done.is_set():
            gcs.append(rh.run_direct("reflink_gc", pool=str(pool), min_age=0, revisions_to_keep=2, lock_timeout=120))

    threads = [threading.Thread(target=importer), threading.Thread(target=collector)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(gcs) >= 2
    for result in imports + gcs:
        assert_ok(result)
    for result in gcs:
        assert result["removed"] == [], "gc removed something while imports ran: %s" % result["removed"]
    state = assert_tidy(pool)
    assert len(state.revisions) == 2
    assert (pool / "appvms/work/private.img").read_bytes() == sources[-1].read_bytes()


@pytest.mark.parametrize("round_", range(3))
def test_resize_and_import_at_once(btrfs_dir, modrun, round_):
    pool = make_pool(btrfs_dir)
    old = make_volume(pool)
    # .reflink/locks/ made beforehand: this test is about the two tasks, not the pool's first use (see below).
    assert_ok(rh.run_direct("reflink_volume", pool=str(pool), vid=VID, size=SIZE))
    source = btrfs_dir / "source.img"
    new = put_file(source, SIZE, [(8192, 100000)], seed=300)
    resize, imported = rh.run_many([
        ("reflink_volume", {"pool": str(pool), "vid": VID, "size": "8M", "lock_timeout": 60}),
        ("reflink_import", {"pool": str(pool), "vid": VID, "src": str(source), "lock_timeout": 60,
                            "revisions_to_keep": 5}),
    ], workers=2)
    assert_ok(resize)
    assert_ok(imported)
    state = assert_tidy(pool)
    clean = (pool / "appvms/work/private.img").read_bytes()
    revision = [(pool / "appvms/work" / facts.name).read_bytes() for _id, (_s, facts) in sorted(state.revisions.items())]
    assert imported["volume"]["size"] == SIZE  # an import's result has the source's size
    if state.clean.size == SIZE:
        # Resize first: the import then replaced the 8 MiB image by the 4 MiB source.
        assert clean == new and revision == [old + bytes(4 * rh.MIB)]
    else:
        # Import first, then the resize grew the imported data.
        assert state.clean.size == 8 * rh.MIB
        assert clean == new + bytes(4 * rh.MIB) and revision == [old]


def _volume_locks_held(lock_inodes):
    """{inode: pid} of the exclusive flocks held now on the given lock-file inodes (from /proc/locks)."""
    held = {}
    with open("/proc/locks", encoding="ascii") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE":
                inode = int(fields[5].rsplit(":", 1)[1])
                if inode in lock_inodes:
                    held[inode] = int(fields[4])
    return held


def test_two_volumes_are_not_serialised(xfs_dir, btrfs_dir, modrun):
    """Two slow imports (copied from btrfs to XFS) into two volumes hold their volume locks at the same time."""
    pool = make_pool(xfs_dir)
    vids = ["appvms/one/private", "appvms/two/private"]
    sources = []
    for i, vid in enumerate(vids):
        make_volume(pool, vid, seed=10 + i)
        assert_ok(rh.run_direct("reflink_volume", pool=str(pool), vid=vid, size=SIZE))  # makes its lock file
        path = btrfs_dir / ("source%d.img" % i)
        put_file(path, 48 * rh.MIB, [(j * rh.MIB, rh.MIB) for j in range(48)], seed=400 + i)
        sources.append(path)
    locks = {os.stat(pool / ".reflink" / "locks" / (vid.replace("/", "-") + ".lock")).st_ino: vid for vid in vids}
    samples = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append((time.monotonic(), _volume_locks_held(set(locks))))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        results = rh.run_many([("reflink_import", {"pool": str(pool), "vid": vid, "src": str(src)})
                               for vid, src in zip(vids, sources, strict=True)], workers=2)
    finally:
        done.set()
        sampler.join()
    for result in results:
        assert_ok(result)
        assert any("sparse copy" in action for action in result["actions"]), result["actions"]
    held_by_each = {vid: [t for t, held in samples if any(locks[i] == vid for i in held)] for vid in vids}
    both = [t for t, held in samples if len(held) == 2]
    assert all(held_by_each.values()), "a volume lock was never seen held: %s" % {v: len(t) for v, t in held_by_each.items()}
    assert both, ("the two imports never held their volume locks at the same time: one held %.3f-%.3f s, "
                  "the other %.3f-%.3f s" % (min(held_by_each[vids[0]]), max(held_by_each[vids[0]]),
                                             min(held_by_each[vids[1]]), max(held_by_each[vids[1]])))
    for vid, src in zip(vids, sources, strict=True):
        assert (pool / vid).with_suffix(".img").read_bytes() == src.read_bytes()


def _text(path):
    return pathlib.Path(path).read_text(errors="replace") if os.path.exists(path) else ""


def test_lock_of_a_killed_module_is_free_again(btrfs_dir, modrun):
    """An import stopped in the middle (strace SIGSTOP) holds the volume lock; killed, it frees it."""
    pool = make_pool(btrfs_dir)
    old = make_volume(pool)
    source = btrfs_dir / "source.img"
    new = put_file(source, SIZE, [(8192, 100000)], seed=500)
    args = {"pool": str(pool), "vid": VID, "src": str(source), "lock_timeout": 1}
    # Stopped by strace (SIGSTOP, which lets the call run first) at its first unlink, the old precache's:
    # staged, old image kept as a revision, precache removed, not committed; it holds its locks.
    work = tempfile.mkdtemp()
    try:
        rh.write_args(os.path.join(work, "args.json"), args)
        runner = rh.zygote()
        pid = runner.spawn("reflink_import", os.path.join(work, "args.json"), os.path.join(work, "out.txt"), stop=True)
        rh.wait_for(lambda: rh.process_state(pid) == "T", "the module to stop itself")
        trace = os.path.join(work, "trace.txt")
        tracer = subprocess.Popen(["strace", "-f", "-o", trace, "-p", str(pid), "-e", "trace=unlinkat,unlink",
                                   "-e", "inject=unlinkat,unlink:signal=SIGSTOP:when=1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rh.wait_for(lambda: "stopped by SIGSTOP" in _text(trace), "strace")
        os.kill(pid, signal.SIGCONT)
        rh.wait_for(lambda: "unlinkat(" in _text(trace) and _text(trace).count("stopped by SIGSTOP") >= 2,
                    "the import to stop before its commit")
        assert not (pool / "appvms/work/private-precache.img").exists()
        assert (pool / "appvms/work/private-import.img").exists()
        waiting = rh.run_direct("reflink_volume", pool=str(pool), vid=VID, size="8M", lock_timeout=1)
        assert waiting["failed"], waiting
        assert "pid %d" % pid in waiting["msg"] and "reflink_import" in waiting["msg"], waiting["msg"]
        os.kill(pid, signal.SIGKILL)
        status = runner.wait(pid)
        tracer.wait(timeout=30)
        assert status == {"signal": signal.SIGKILL}, status
    finally:
        shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    after = rh.run_direct("reflink_volume", pool=str(pool), vid=VID, size="8M", lock_timeout=5)
    assert_ok(after)
    assert time.monotonic() - started < 3
    assert (pool / "appvms/work/private.img").read_bytes() == old + bytes(4 * rh.MIB)
    again = rh.run_direct("reflink_import", pool=str(pool), vid=VID, src=str(source), lock_timeout=5)
    assert_ok(again)
    assert (pool / "appvms/work/private.img").read_bytes() == new


def test_directories_made_by_another_process_at_the_same_moment(btrfs_dir, modrun):
    """Two tasks on a pool's first use (or two new volumes of one new VM) both create the same directory.

    The loser of that race sees mkdir fail with EEXIST after its open said
    ENOENT.  strace makes each mkdirat of a task fail that way in turn
    (deterministically, where a real race is a matter of luck); the task must
    open the directory the other process made and go on.
    """
    def fresh(name):
        return make_pool(btrfs_dir / name)

    btrfs_dir.joinpath("ref").mkdir()
    reference = rh.run_traced("reflink_import", {"pool": str(fresh("ref")), "vid": "appvms/new/private",
                                                 "state": "begin", "size": "1M"})
    assert_ok(reference.result)
    made = [str(call) for call in reference.calls if call.name in ("mkdir", "mkdirat")]
    assert len(made) == 4, made   # .reflink, .reflink/locks, the VM directory, .reflink/imports
    problems = []
    for k, call in enumerate(made, 1):
        btrfs_dir.joinpath("case%d" % k).mkdir()
        pool = fresh("case%d" % k)
        run = rh.run_traced("reflink_import", {"pool": str(pool), "vid": "appvms/new/private", "state": "begin",
                                               "size": "1M"}, fault=("mkdirat", "EEXIST", str(k)))
        if run.result["failed"]:
            problems.append("%s failing with EEXIST (made by another process) makes the task fail: %s"
                            % (call.split(" = ")[0], run.result["msg"]))
    assert not problems, "\n".join(problems)

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Modules run at the same time in separate processes: the locks serialise what must be, and only that."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import reliability_helpers as rh
from dedupe_helpers import PRIVATE_VID, ROOT_VIDS, build_restored_pool, snapshot
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
    gc_starting = threading.Event()

    def importer():
        try:
            for path in sources:
                # Each import starts together with a gc run of its own, whatever the speed of either:
                # a free-running loop of gc runs can be outpaced by the imports on a fast machine.
                gc_starting.clear()
                if not gc_starting.wait(timeout=120):
                    raise RuntimeError("no gc run started within 120 s")
                imports.append(rh.run_direct("reflink_import", pool=str(pool), vid=VID, src=str(path),
                                             revisions_to_keep=2, lock_timeout=120))
        finally:
            done.set()

    def collector():
        while not done.is_set():
            gc_starting.set()
            gcs.append(rh.run_direct("reflink_gc", pool=str(pool), min_age=0, revisions_to_keep=2, lock_timeout=120))

    threads = [threading.Thread(target=importer), threading.Thread(target=collector)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(imports) == len(sources)
    assert len(gcs) >= len(sources), "fewer gc runs than imports: %d" % len(gcs)
    for result in imports + gcs:
        assert_ok(result)
    for result in gcs:
        assert result["removed"] == [], "gc removed something while imports ran: %s" % result["removed"]
    state = assert_tidy(pool)
    assert len(state.revisions) == 2
    assert (pool / "appvms/work/private.img").read_bytes() == sources[-1].read_bytes()


def test_gc_waits_for_an_import_in_the_middle(btrfs_dir, modrun):
    """An import stopped with its file staged and the old image already a revision: gc does not touch it."""
    pool = make_pool(btrfs_dir)
    old = make_volume(pool)
    source = btrfs_dir / "source.img"
    new = put_file(source, SIZE, [(8192, 100000)], seed=600)
    with rh.held_after("reflink_import", {"pool": str(pool), "vid": VID, "src": str(source)}, "unlinkat,unlink") as stopped:
        assert (pool / "appvms/work/private-import.img").read_bytes() == new
        before = rh.listing(pool)
        collected = rh.run_direct("reflink_gc", pool=str(pool), min_age=0, revisions_to_keep=0, lock_timeout=1)
        assert collected["failed"], collected
        assert "pid %d" % stopped.pid in collected["msg"], collected["msg"]
        assert rh.listing(pool) == before, "gc changed the pool while an import held it"
        imported = stopped.resume()
    assert_ok(imported)
    assert (pool / "appvms/work/private.img").read_bytes() == new
    collected = assert_ok(rh.run_direct("reflink_gc", pool=str(pool), min_age=0, revisions_to_keep=1))
    assert collected["removed"] == []
    state = assert_tidy(pool)
    assert [facts.digest for _stamp, facts in state.revisions.values()] == [rh.digest_bytes(old)]


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
    """An import of one volume, held stopped with its locks taken, does not hold up an import of another.

    Deterministic where a timing race is not: import one is stopped (strace SIGSTOP) in the middle of its
    commit, import two must then run to the end with lock_timeout 1 s. The overlap is printed.
    """
    pool = make_pool(xfs_dir)
    vids = ["appvms/one/private", "appvms/two/private"]
    sources = []
    for i, vid in enumerate(vids):
        make_volume(pool, vid, seed=10 + i)
        assert_ok(rh.run_direct("reflink_volume", pool=str(pool), vid=vid, size=SIZE))  # makes its lock file
        path = btrfs_dir / ("source%d.img" % i)
        put_file(path, 8 * rh.MIB, [(j * rh.MIB, rh.MIB) for j in range(8)], seed=400 + i)
        sources.append(path)
    lock_one = os.stat(pool / ".reflink" / "locks" / "appvms-one-private.lock").st_ino
    with rh.held_after("reflink_import", {"pool": str(pool), "vid": vids[0], "src": str(sources[0])}, "unlinkat,unlink") as one:
        assert lock_one in _volume_locks_held({lock_one}), "the stopped import does not hold its volume lock"
        started = time.monotonic()
        two = rh.run_direct("reflink_import", pool=str(pool), vid=vids[1], src=str(sources[1]), lock_timeout=1)
        overlap = time.monotonic() - started
        assert_ok(two)
        assert any("sparse copy" in action for action in two["actions"]), two["actions"]
        assert (pool / vids[1]).with_suffix(".img").read_bytes() == sources[1].read_bytes()
        # Import one is still where it was stopped: staged, not committed.
        assert (pool / "appvms/one/private-import.img").exists()
        assert lock_one in _volume_locks_held({lock_one})
        result_one = one.resume()
    print("\nimport of volume two ran to the end in %.3f s while volume one's import held its lock" % overlap)
    assert_ok(result_one)
    assert result_one["changed"] is True
    for vid, src in zip(vids, sources, strict=True):
        assert (pool / vid).with_suffix(".img").read_bytes() == src.read_bytes()
        assert_tidy(pool, vid)


def test_lock_of_a_killed_module_is_free_again(btrfs_dir, modrun):
    """An import stopped in the middle (strace SIGSTOP) holds the volume lock; killed, it frees it."""
    pool = make_pool(btrfs_dir)
    old = make_volume(pool)
    source = btrfs_dir / "source.img"
    new = put_file(source, SIZE, [(8192, 100000)], seed=500)
    args = {"pool": str(pool), "vid": VID, "src": str(source), "lock_timeout": 1}
    # Stopped at its first unlink, the old precache's: staged, old image kept as a revision, precache
    # removed, not committed; it holds its locks.
    with rh.held_after("reflink_import", args, "unlinkat,unlink") as stopped:
        assert not (pool / "appvms/work/private-precache.img").exists()
        assert (pool / "appvms/work/private-import.img").exists()
        waiting = rh.run_direct("reflink_volume", pool=str(pool), vid=VID, size="8M", lock_timeout=1)
        assert waiting["failed"], waiting
        assert "pid %d" % stopped.pid in waiting["msg"] and "reflink_import" in waiting["msg"], waiting["msg"]
        assert stopped.kill() == {"signal": signal.SIGKILL}
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


def _flock_holders(lock_dir, known_pid):
    """{lock file name: {pid: "READ" or "WRITE"}} of the flocks held now on the files of ``lock_dir``.

    /proc/locks names a file by device and inode, and for btrfs its device is not stat's st_dev (a
    subvolume's): the device is the one of the pool lock that ``known_pid`` holds.
    """
    inodes = {os.stat(os.path.join(lock_dir, name)).st_ino: name for name in os.listdir(lock_dir)}
    pool_inode = os.stat(os.path.join(lock_dir, "pool.lock")).st_ino
    entries = []
    with open("/proc/locks", encoding="ascii") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "FLOCK":
                device, inode = fields[5].rsplit(":", 1)
                entries.append((device, int(inode), int(fields[4]), fields[3]))
    [device] = {entry[0] for entry in entries if entry[1] == pool_inode and entry[2] == known_pid}
    held = {}
    for entry_device, inode, pid, mode in entries:
        if entry_device == device and inode in inodes:
            held.setdefault(inodes[inode], {})[pid] = mode
    return held


def test_batches_in_opposite_orders_and_a_single_task_take_the_locks_in_vid_order(btrfs_dir, modrun):
    """Batch A (vids in order), held right after it took its first volume lock; then batch B (the same vids
    in reverse) and a single-volume task S on B's first item start.

    S needs only its own volume: it runs to the end while A is held.  B must wait for the first vid in
    vid order, which A holds, holding no volume lock itself: had it taken its locks in its own order
    (the last vid first), A and B would each hold what the other waits for until lock_timeout.  Once A
    goes on, A and B succeed, and each volume is made exactly once.
    """
    pool = make_pool(btrfs_dir)
    vids = ["appvms/vm%d/private" % number for number in range(4)]
    locks = pool / ".reflink" / "locks"
    names = [vid.replace("/", "-") + ".lock" for vid in vids]

    def batch(order):
        return {"pool": str(pool), "volumes": [{"vid": vid, "size": "4M"} for vid in order], "lock_timeout": 30}

    # pwrite64 #1: the record of who holds the first volume lock (the pool lock is taken shared, with no record).
    with rh.held_after("reflink_volume", batch(vids), "pwrite64", 1) as held_a:
        assert _flock_holders(locks, held_a.pid) == {"pool.lock": {held_a.pid: "READ"}, names[0]: {held_a.pid: "WRITE"}}
        with ThreadPoolExecutor(max_workers=2) as executor:
            single = executor.submit(rh.run_direct, "reflink_volume", pool=str(pool), vid=vids[-1], size="4M",
                                     lock_timeout=30)
            b_future = executor.submit(rh.run_direct, "reflink_volume", **batch(list(reversed(vids))))
            result_s = assert_ok(single.result(timeout=60))
            assert result_s["changed"] is True
            # B is in volume_locks once it shares the pool lock with A.
            rh.wait_for(lambda: len(_flock_holders(locks, held_a.pid).get("pool.lock", {})) >= 2, "batch B to take the pool lock")
            time.sleep(0.5)   # far longer than B needs to take any lock that is free
            assert not b_future.done(), b_future.result()
            held = _flock_holders(locks, held_a.pid)
            [pid_b] = set(held["pool.lock"]) - {held_a.pid}
            assert {name: pids for name, pids in held.items() if name != "pool.lock"} == \
                {names[0]: {held_a.pid: "WRITE"}}, "batch B (pid %d) holds a volume lock while it waits" % pid_b
            result_a = assert_ok(held_a.resume())
            result_b = assert_ok(b_future.result(timeout=60))
    made = {vid: [] for vid in vids}
    for who, result in (("A", result_a), ("B", result_b)):
        for item in result["volumes"]:
            if item["changed"]:
                made[item["vid"]].append(who)
    made[vids[-1]].append("S")
    assert made == {vids[0]: ["A"], vids[1]: ["A"], vids[2]: ["A"], vids[3]: ["S"]}, made
    for vid in vids:
        assert os.path.getsize(pool / (vid + ".img")) == SIZE
        assert_tidy(pool, vid)


# -- reflink_dedupe next to itself, an import and gc ---------------------------------------------

def _dedupe_pool(base):
    """The dedupe tests' small restored pool (five volumes) and the args of a dedupe over all of it."""
    pool = build_restored_pool(base / "pool")
    return pool, {"pool": str(pool), "scope": "pool", "qubes_xml": "none"}


def _held_dedupe(args):
    """A dedupe stopped right after it took all its locks (the holder record of its fifth and last volume lock)."""
    return rh.held_after("reflink_dedupe", args, "pwrite64", len(ROOT_VIDS) + 1)


def test_two_dedupes_of_the_same_volumes_wait_for_each_other(btrfs_dir, modrun):
    """Dedupe A, held with its locks taken: B times out naming A; started with time to wait, B holds the pool lock
    (shared, as A does) and no volume lock until A is done, and then finds nothing left to do."""
    pool, args = _dedupe_pool(btrfs_dir)
    before = snapshot(pool)
    locks = pool / ".reflink" / "locks"
    with _held_dedupe(args) as held_a:
        held = _flock_holders(locks, held_a.pid)
        assert held.pop("pool.lock") == {held_a.pid: "READ"} and len(held) == len(ROOT_VIDS) + 1, held
        assert all(pids == {held_a.pid: "WRITE"} for pids in held.values()), held
        waited = rh.run_direct("reflink_dedupe", lock_timeout=1, **args)
        assert waited["failed"] and "pid %d" % held_a.pid in waited["msg"] and "reflink_dedupe" in waited["msg"], waited
        assert waited["changed"] is False
        with ThreadPoolExecutor(max_workers=1) as executor:
            b_future = executor.submit(rh.run_direct, "reflink_dedupe", lock_timeout=60, **args)
            rh.wait_for(lambda: len(_flock_holders(locks, held_a.pid).get("pool.lock", {})) >= 2, "dedupe B to take the pool lock")
            time.sleep(0.5)
            assert not b_future.done(), b_future.result()
            held = _flock_holders(locks, held_a.pid)
            [pid_b] = set(held["pool.lock"]) - {held_a.pid}
            assert all(pids == {held_a.pid: "WRITE"} for name, pids in held.items() if name != "pool.lock"), \
                "dedupe B (pid %d) holds a volume lock while it waits: %s" % (pid_b, held)
            result_a = assert_ok(held_a.resume())
            result_b = assert_ok(b_future.result(timeout=120))
    assert result_a["changed"] is True and result_a["deduped_bytes"] > 0
    assert result_b["changed"] is False and result_b["deduped_bytes"] == 0, result_b
    assert snapshot(pool) == before


def test_a_dedupe_and_an_import_into_one_of_its_volumes_wait_for_each_other(btrfs_dir, modrun):
    pool, args = _dedupe_pool(btrfs_dir)
    source = btrfs_dir / "source.img"
    new = put_file(source, 4 * rh.MIB, [(8192, 100000)], seed=700)
    before = snapshot(pool)
    with _held_dedupe(args) as held:
        imported = rh.run_direct("reflink_import", pool=str(pool), vid=PRIVATE_VID, src=str(source), lock_timeout=1)
        assert imported["failed"] and "pid %d" % held.pid in imported["msg"], imported
        assert snapshot(pool) == before
        assert_ok(held.resume())
    # The other way round: an import stopped with its file staged and the old clean image already a revision.
    with rh.held_after("reflink_import", {"pool": str(pool), "vid": PRIVATE_VID, "src": str(source)},
                       "unlinkat,unlink") as held:
        staged = rh.listing(pool)
        deduped = rh.run_direct("reflink_dedupe", lock_timeout=1, **args)
        assert deduped["failed"] and "pid %d" % held.pid in deduped["msg"] and "reflink_import" in deduped["msg"], deduped
        assert rh.listing(pool) == staged, "the dedupe changed the pool while an import held one of its volumes"
        assert_ok(held.resume())
    assert (pool / "appvms/work/private.img").read_bytes() == new


def test_a_dedupe_and_gc_wait_for_each_other(btrfs_dir, modrun):
    pool, args = _dedupe_pool(btrfs_dir)
    before = snapshot(pool)
    with _held_dedupe(args) as held:
        collected = rh.run_direct("reflink_gc", pool=str(pool), min_age=0, lock_timeout=1)
        assert collected["failed"] and "pid %d" % held.pid in collected["msg"], collected
        assert_ok(held.resume())
    assert snapshot(pool) == before
    # gc stopped with its exclusive pool lock taken (the holder record is its first pwrite64)
    with rh.held_after("reflink_gc", {"pool": str(pool), "min_age": 0}, "pwrite64") as held:
        listed = rh.listing(pool)
        deduped = rh.run_direct("reflink_dedupe", lock_timeout=1, **args)
        assert deduped["failed"] and "pid %d" % held.pid in deduped["msg"] and "reflink_gc" in deduped["msg"], deduped
        assert rh.listing(pool) == listed
        assert_ok(held.resume())

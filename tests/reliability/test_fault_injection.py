# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Faults: FICLONE and fsync made to fail by strace, a full filesystem, a pool remounted read-only.

strace's ``-e inject=ioctl:error=E:when=K`` cannot select an ioctl by its
request number, so the ordinal K of the FICLONE call wanted is read from a
trace of the same task first, and the injected run's own trace must show
that this very call was the one that failed (``(INJECTED)``); if another
process changed the count of ioctls in between, neighbouring K are tried.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

import reliability_helpers as rh
from module_helpers import T0, copy_file, put_file, start_volume

VID = "appvms/work/private"
SIZE = 4 * rh.MIB
SEGMENTS = [(0, 64 * 1024), (SIZE // 2, 4096), (SIZE - 8192, 8192)]
SOURCE_SEGMENTS = [(4096, 200000), (SIZE // 2 + 8192, 100000), (SIZE - 4096, 4096)]
GATED = ["EBADF", "EINVAL", "EOPNOTSUPP", "EXDEV"]
REAL_ERRORS = ["EIO", "ENOSPC", "EPERM", "ENOTTY", "EAGAIN"]


def make_pool(base):
    pool = base / "pool"
    for path in (pool, pool / "appvms", pool / "vm-templates"):
        path.mkdir(mode=0o755)
    return pool


def make_volume(pool, vid=VID, revisions=((1, T0 - 86400),)):
    vm_dir = pool / os.path.dirname(vid)
    volume = os.path.basename(vid)
    vm_dir.mkdir(exist_ok=True)
    clean = put_file(vm_dir / (volume + ".img"), SIZE, SEGMENTS, seed=1, mtime=T0)
    copy_file(vm_dir / (volume + ".img"), vm_dir / (volume + "-precache.img"))
    for number, mtime in revisions:
        put_file(vm_dir / ("%s.img.%d@%s" % (volume, number, rh.stamp(mtime))), SIZE, [(0, 4096)],
                 seed=1000 + number, mtime=mtime)
    return clean


def make_source(path, size=SIZE, segments=None, seed=77):
    return put_file(path, size, SOURCE_SEGMENTS if segments is None else segments, seed=seed)


def snapshot(pool):
    """The pool's listing without lock files (a refused run may create its lock file, by design)."""
    return {name: facts for name, facts in rh.listing(pool).items()
            if not name.startswith(".reflink")}


def _ficlone(call):
    return call.name == "ioctl" and "FICLONE" in call.args


def run_with_fault(module, args, syscall, errno_name, nth, is_target, onwards=False):
    """Run ``module`` with the ``nth`` call matching ``is_target`` failing with ``errno_name``.

    With ``onwards``, that call and every later call of ``syscall`` fail.
    Returns the TracedRun whose trace shows that call as ``(INJECTED)``.
    """
    reference_args = args["make"]()
    reference = rh.run_traced(module, reference_args)
    same = [i + 1 for i, call in enumerate(c for c in reference.calls if c.name == syscall)]
    ordinals = [k for k, call in zip(same, [c for c in reference.calls if c.name == syscall], strict=True) if is_target(call)]
    assert len(ordinals) >= nth, "the reference run made only %d such calls: %s" % (
        len(ordinals), [str(c) for c in reference.calls])
    wanted = ordinals[nth - 1]
    tried = []
    for k in sorted(range(max(1, wanted - 12), wanted + 13), key=lambda k: abs(k - wanted)):
        run_args = args["make"]()
        run = rh.run_traced(module, run_args, fault=(syscall, errno_name, "%d%s" % (k, "+" if onwards else "")))
        injected = [c for c in run.calls if c.ret.endswith("(INJECTED)")]
        targets = [c for c in run.calls if c.name == syscall and is_target(c)]
        if injected and is_target(injected[0]) and targets.index(injected[0]) == nth - 1:
            return run, run_args
        tried.append((k, [str(c) for c in injected]))
        args["reset"]()
    pytest.fail("could not hit call %d of %s: tried %s" % (nth, syscall, tried))


class ImportCase:
    """A pool with a volume and a source file on the same filesystem, remade on demand."""

    def __init__(self, base, **extra):
        self.base = base
        self.extra = extra
        self.count = 0

    def make(self):
        self.count += 1
        work = self.base / ("case%d" % self.count)
        work.mkdir()
        self.pool = make_pool(work)
        self.old = make_volume(self.pool)
        self.new = make_source(work / "source.img")
        self.revision = (self.pool / "appvms" / "work" / ("private.img.1@%s" % rh.stamp(T0 - 86400))).read_bytes()
        return dict({"pool": str(self.pool), "vid": VID, "src": str(work / "source.img"), "revisions_to_keep": 2},
                    **self.extra)

    def reset(self):
        pass

    @property
    def vm_dir(self):
        return self.pool / "appvms" / "work"

    def clean(self):
        return (self.vm_dir / "private.img").read_bytes()

    def names(self):
        return sorted(os.listdir(self.vm_dir))


# ------------------------------------------------------------------- FICLONE

class PinCase:
    """A stopped volume and, for a revert, a pin "good" with its own data; remade on demand."""

    def __init__(self, base, **args):
        self.base = base
        self.args = args
        self.count = 0

    def make(self):
        self.count += 1
        work = self.base / ("pin%d" % self.count)
        work.mkdir()
        self.pool = make_pool(work)
        self.old = make_volume(self.pool)
        self.pinned = put_file(self.vm_dir / "private.img.pin-good", SIZE, SOURCE_SEGMENTS, seed=55, mtime=T0 - 7200)
        self.before = self.files()
        return dict({"pool": str(self.pool), "vid": VID}, **self.args)

    def reset(self):
        pass

    @property
    def vm_dir(self):
        return self.pool / "appvms" / "work"

    def files(self):
        """The pool's listing but the pool directory's own facts (the first run makes .reflink/ in it)."""
        return {name: facts for name, facts in snapshot(self.pool).items() if name != "."}


def test_ficlone_eio_while_pinning_fails_and_leaves_nothing(reflink_dir, modrun):
    case = PinCase(reflink_dir, name="trial")
    run, args = run_with_fault("reflink_pin", {"make": case.make, "reset": case.reset}, "ioctl", "EIO", 1, _ficlone)
    result = run.result
    assert result["failed"] and not result["changed"], result
    assert "EIO" in result["msg"] and "no copy was attempted" in result["msg"], result["msg"]
    assert case.files() == case.before   # no pin, no tempfile, the volume as it was
    again = rh.run_direct("reflink_pin", **args)
    assert not again["failed"] and again["changed"], again
    assert (case.vm_dir / "private.img.pin-trial").read_bytes() == case.old


def test_gated_ficlone_errno_while_pinning_gives_a_sparse_copy(reflink_dir, modrun):
    case = PinCase(reflink_dir, name="trial")
    run, _args = run_with_fault("reflink_pin", {"make": case.make, "reset": case.reset}, "ioctl", "EOPNOTSUPP", 1,
                                _ficlone, onwards=True)
    assert not run.result["failed"] and "sparse copy" in run.result["actions"][0], run.result
    pin = case.vm_dir / "private.img.pin-trial"
    assert pin.read_bytes() == case.old and os.stat(pin).st_mtime == T0
    assert os.stat(pin).st_ino != os.stat(case.vm_dir / "private.img").st_ino


def test_ficlone_eio_of_the_revert_to_a_pin_keeps_the_clean_image(reflink_dir, modrun):
    """The second clone of a revert to a pin (the pin's clone that would become clean) fails."""
    case = PinCase(reflink_dir, pin="good")
    run, args = run_with_fault("reflink_revert", {"make": case.make, "reset": case.reset}, "ioctl", "EIO", 2,
                               _ficlone)
    assert run.result["failed"], run.result
    assert "EIO" in run.result["msg"], run.result
    assert (case.vm_dir / "private.img").read_bytes() == case.old
    assert (case.vm_dir / "private.img.pin-good").read_bytes() == case.pinned
    assert rh.pool_tempfiles(case.pool) == []
    state = rh.read_state(case.pool, VID)
    assert state.precache is None or state.precache_fresh
    again = rh.run_direct("reflink_revert", **args)
    assert not again["failed"] and again["changed"], again
    assert (case.vm_dir / "private.img").read_bytes() == case.pinned
    state = rh.read_state(case.pool, VID)
    # The revision the failed run kept is not kept twice.
    assert [facts.digest for _n, (_s, facts) in sorted(state.revisions.items())][-1] == rh.digest_bytes(case.old)
    assert len(state.revisions) == 2 and state.precache_fresh


@pytest.mark.parametrize("errno_name", GATED)
def test_gated_ficlone_errno_falls_back_to_a_correct_copy(reflink_dir, modrun, errno_name):
    """Every FICLONE of an import fails with a gated errno: every clone becomes a sparse copy, the result is right.

    The ioctls fail from the first FICLONE on (the FIEMAP ioctls of the
    comparison with the current image come before it and are left alone).
    """
    case = ImportCase(reflink_dir)
    run, _args = run_with_fault("reflink_import", {"make": case.make, "reset": case.reset}, "ioctl", errno_name,
                                1, _ficlone, onwards=True)
    assert not [c for c in run.calls if "FIEMAP" in c.args and c.ret.endswith("(INJECTED)")]
    clones = [c for c in run.calls if _ficlone(c)]
    assert len(clones) == 3 and all(c.ret.endswith("(INJECTED)") and errno_name in c.ret for c in clones), \
        [str(c) for c in clones]
    result = run.result
    assert not result["failed"] and result["changed"], result
    copies = [action for action in result["actions"] if "sparse copy" in action]
    assert len(copies) == 3, result["actions"]   # staged data, the old image kept as a revision, the precache
    assert case.clean() == case.new
    state = rh.read_state(case.pool, VID)
    assert [facts.digest for _n, (_s, facts) in sorted(state.revisions.items())] == [
        rh.digest_bytes(case.revision), rh.digest_bytes(case.old)]
    assert state.precache_fresh and state.precache.digest == state.clean.digest
    assert state.import_ is None and state.tempfiles == []
    # The copy is sparse: it allocates about the data, not the nominal size.
    assert state.clean.size == SIZE
    assert os.stat(case.vm_dir / "private.img").st_blocks * 512 < SIZE // 2


@pytest.mark.parametrize("errno_name", REAL_ERRORS)
def test_real_ficlone_error_of_the_staging_fails_and_leaves_nothing(reflink_dir, modrun, errno_name):
    case = ImportCase(reflink_dir)
    run, _args = run_with_fault("reflink_import", {"make": case.make, "reset": case.reset}, "ioctl", errno_name,
                                1, _ficlone)
    before_names = sorted(["private.img", "private-precache.img", "private.img.1@%s" % rh.stamp(T0 - 86400)])
    result = run.result
    assert result["failed"], result
    assert errno_name in result["msg"] and "no copy was attempted" in result["msg"], result["msg"]
    assert not any("sparse copy" in a for a in result.get("actions", [])), result
    assert case.clean() == case.old
    assert case.names() == before_names
    assert rh.pool_tempfiles(case.pool) == []
    # Without the fault the same task then succeeds.
    again = rh.run_direct("reflink_import", **_args)
    assert not again["failed"] and case.clean() == case.new, again


def test_ficlone_eio_while_keeping_the_old_image_leaves_the_volume_and_no_import(reflink_dir, modrun):
    """The second clone of an import (the old clean image kept as a revision) fails: nothing is committed."""
    case = ImportCase(reflink_dir)
    run, _args = run_with_fault("reflink_import", {"make": case.make, "reset": case.reset}, "ioctl", "EIO", 2, _ficlone)
    assert run.result["failed"], run.result
    assert case.clean() == case.old
    assert "private.img.2@%s" % rh.stamp(T0) not in case.names()
    assert rh.pool_tempfiles(case.pool) == []
    assert "private-import.img" not in case.names(), (
        "the staged import image is left behind after the failed import: %s" % case.names())


def test_ficlone_eio_of_the_new_precache_fails_after_the_commit(reflink_dir, modrun):
    """The third clone (the precache, after the commit) fails: the task fails, the new data is committed whole."""
    case = ImportCase(reflink_dir)
    run, args = run_with_fault("reflink_import", {"make": case.make, "reset": case.reset}, "ioctl", "EIO", 3, _ficlone)
    assert run.result["failed"], run.result
    assert "EIO" in run.result["msg"], run.result
    assert case.clean() == case.new
    state = rh.read_state(case.pool, VID)
    # Either no precache, or (the failed task's undo made it again) a fresh one: never a stale one.
    assert (state.precache is None or state.precache_fresh) and state.tempfiles == []
    again = rh.run_direct("reflink_import", **args)
    assert not again["failed"], again
    state = rh.read_state(case.pool, VID)
    assert state.precache_fresh, ("a rerun of the failed import leaves the volume without a precache: %s"
                                  % again.get("actions"))


# --------------------------------------------------------------------- fsync

def test_fsync_eio_at_each_fsync_of_an_import(reflink_dir, modrun):
    """Each fsync of an import in turn fails with EIO: the task fails; before the commit nothing is committed."""
    case = ImportCase(reflink_dir)
    reference = rh.run_traced("reflink_import", case.make())
    fsyncs = [c for c in reference.calls if c.name == "fsync"]
    commit_at = next(i for i, c in enumerate(reference.calls)
                     if c.name.startswith("rename") and c.signature.endswith('"private-import.img", "private.img")'))
    before_commit = sum(1 for c in reference.calls[:commit_at] if c.name == "fsync")
    assert len(fsyncs) >= 6, [str(c) for c in reference.calls]
    problems = []
    for k in range(1, len(fsyncs) + 1):
        args = case.make()
        run = rh.run_traced("reflink_import", args, fault=("fsync", "EIO", str(k)))
        where = "fsync #%d (%s)" % (k, fsyncs[k - 1])
        if not run.result["failed"]:
            problems.append("%s failed with EIO but the task reported success" % where)
        clean = case.clean()
        if k <= before_commit and clean != case.old:
            problems.append("%s is before the commit but the clean image changed" % where)
        if clean not in (case.old, case.new):
            problems.append("%s: the clean image is neither old nor new" % where)
        if rh.pool_tempfiles(case.pool):
            problems.append("%s: tempfiles left: %s" % (where, rh.pool_tempfiles(case.pool)))
        if k <= before_commit and "private-import.img" in case.names():
            problems.append("%s: the staged import image is left behind" % where)
        again = rh.run_direct("reflink_import", **args)
        state = rh.read_state(case.pool, VID)
        if again["failed"] or case.clean() != case.new or not state.precache_fresh:
            problems.append("%s: the rerun without fault did not converge (%s; precache %s)"
                            % (where, again.get("msg") or "ok", "fresh" if state.precache_fresh else "not fresh"))
    assert not problems, "\n".join(problems)


def test_fsync_eio_of_a_stopped_commit_commits_nothing(btrfs_dir, modrun):
    """reflink_volume state=stopped: the dirty image's fsync fails, so it is not renamed over clean."""
    pool = make_pool(btrfs_dir)
    old = make_volume(pool)
    dirty = start_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID, "state": "stopped"}
    run = rh.run_traced("reflink_volume", args, fault=("fsync", "EIO", "1+"))
    assert run.result["failed"], run.result
    assert "Input/output error" in run.result["msg"], run.result
    assert (pool / "appvms/work/private.img").read_bytes() == old
    assert (pool / "appvms/work/private-dirty.img").read_bytes() == dirty
    assert rh.pool_tempfiles(pool) == []


# ----------------------------------------------------------- full filesystem

def _free_bytes(path):
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def test_full_filesystem_during_a_fallback_copy(loopfs_factory, btrfs_dir, modrun):
    """A 64 MiB ext4 pool, filled up; an import from btrfs (EXDEV: copied) that does not fit.

    Refused before a byte is written, naming the data's and the free bytes.  A
    copy that passes that check and still runs out of space (ENOSPC of a write,
    injected: another writer filled the file system meanwhile) leaves nothing
    behind either, and gives the space back.
    """
    fs = loopfs_factory("ext4", 64 * rh.MIB)
    base = pathlib.Path(fs.path)
    pool = make_pool(base)
    old = make_volume(pool)
    source = btrfs_dir / "big-source.img"
    # 24 MiB of incompressible data in 1 MiB pieces: the copy writes chunk after chunk.
    new = make_source(source, size=24 * rh.MIB, segments=[(i * rh.MIB, rh.MIB) for i in range(24)], seed=5)
    filler = base / "filler"
    free = _free_bytes(base)
    subprocess.run(["fallocate", "-l", str(free - 8 * rh.MIB), str(filler)], check=True)
    primed = rh.run_direct("reflink_volume", pool=str(pool), vid=VID, size=SIZE)  # makes .reflink/locks/
    assert not primed["failed"] and not primed["changed"], primed
    os.sync()
    before = snapshot(pool)
    free_before = _free_bytes(base)
    assert free_before < 10 * rh.MIB, free_before
    result = rh.run_direct("reflink_import", pool=str(pool), vid=VID, src=str(source))
    assert result["failed"], result
    assert "no room for a copy" in result["msg"] and "needs %d bytes" % (24 * rh.MIB) in result["msg"], result["msg"]
    assert "nothing was changed" in result["msg"], result["msg"]
    _assert_left_as_it_was(pool, base, old, before, free_before)
    # Room made for the data; the copy's writes fail once it has begun: the same clean-up.
    filler.unlink()
    os.sync()
    free_before = _free_bytes(base)
    run = rh.run_traced("reflink_import", {"pool": str(pool), "vid": VID, "src": str(source)},
                        fault=("pwritev2", "ENOSPC", "3+"))
    assert run.result["failed"], run.result
    assert "No space left on device" in run.result["msg"], run.result["msg"]
    _assert_left_as_it_was(pool, base, old, before, free_before)
    # Without the fault, the same task succeeds.
    again = rh.run_direct("reflink_import", pool=str(pool), vid=VID, src=str(source))
    assert not again["failed"], again
    assert (pool / "appvms/work/private.img").read_bytes() == new


def _assert_left_as_it_was(pool, base, old, before, free_before):
    assert (pool / "appvms/work/private.img").read_bytes() == old
    assert snapshot(pool) == before
    assert rh.pool_tempfiles(pool) == []
    os.sync()
    free_after = _free_bytes(base)
    assert abs(free_after - free_before) <= 512 * 1024, (
        "space not given back: %d bytes free before, %d after" % (free_before, free_after))


# ------------------------------------------------------- read-only remount

def test_read_only_pool(loopfs_factory, modrun):
    fs = loopfs_factory("btrfs", 128 * rh.MIB)
    base = pathlib.Path(fs.path)
    pool = make_pool(base)
    make_volume(pool)
    make_volume(pool, "appvms/work/data")
    make_volume(pool, "appvms/halted/private")
    start_volume(pool, "appvms/halted/private")
    source = base / "source.img"
    make_source(source)
    (pool / "appvms/work/private.img~abcd1234").write_bytes(b"stale tempfile")
    begun = rh.run_direct("reflink_import", pool=str(pool), vid="appvms/work/data", state="begin", size="4M")
    assert not begun["failed"], begun
    info_rw = rh.run_direct("reflink_info", pool=str(pool))
    assert not info_rw["failed"], info_rw
    subprocess.run(["mount", "-o", "remount,ro", fs.path], check=True)
    before = rh.listing(pool)
    p = {"pool": str(pool)}
    cases = [
        ("reflink_volume", dict(p, vid="appvms/new/private", size="1M")),
        ("reflink_volume", dict(p, vid=VID, size="8M")),
        ("reflink_volume", dict(p, vid=VID, state="absent")),
        ("reflink_volume", dict(p, vid="appvms/halted/private", state="stopped")),
        ("reflink_import", dict(p, vid=VID, src=str(source))),
        ("reflink_import", dict(p, vid=VID, size="4M", force=True)),
        ("reflink_import", dict(p, vid=VID, state="begin", size="4M")),
        ("reflink_import", dict(p, vid="appvms/work/data", state="commit")),
        ("reflink_import", dict(p, vid="appvms/work/data", state="abort")),
        ("reflink_revert", dict(p, vid=VID, revision=1)),
        ("reflink_gc", dict(p, min_age=0)),
        ("reflink_pool", {"path": str(pool), "state": "absent"}),
        ("reflink_pool", {"path": str(base / "newpool")}),
    ]
    results = rh.run_many(cases)
    problems = []
    for (module, args), result in zip(cases, results, strict=True):
        if not result["failed"]:
            problems.append("%s %s did not fail: %s" % (module, args, result.get("actions")))
        elif "read-only" not in result["msg"].lower():
            problems.append("%s %s failed without saying the filesystem is read-only: %s" % (module, args, result["msg"]))
    info = rh.run_direct("reflink_info", pool=str(pool))
    if info["failed"]:
        problems.append("reflink_info fails on a read-only pool: %s" % info["msg"])
    else:
        assert info["volumes"] == info_rw["volumes"]
        # None: the probe could not run (a read-only filesystem cannot hold even an unnamed file).
        assert info["pool"]["reflink"] in (True, False, None)
    assert rh.listing(pool) == before
    assert not problems, "\n".join(problems)

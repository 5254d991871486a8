# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Crash matrix: each multi-step operation killed (SIGKILL, by strace) at each of its system calls.

See crash_engine.py for the procedure and the checks made at each kill point;
this file defines the operations: their initial state, their task, what may be
on disk after a kill, and the intended result.  The counts are printed at the
end of the session and written to tests/output/reliability/kill-points.json.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

import crash_engine as ce
import reliability_helpers as rh
from dedupe_scenario import Dedupe
from module_helpers import T0, copy_file, put_file, start_volume

VID = "appvms/work/private"
SIZE = 4 * rh.MIB
DAY = 86400
# Data where a volume of SIZE has it: three 1 MiB chunks hold data, so a copy writes in several steps.
SEGMENTS = [(0, 64 * 1024), (SIZE // 2, 4096), (SIZE - 8192, 8192)]
SOURCE_SEGMENTS = [(4096, 200000), (SIZE // 2 + 8192, 100000), (SIZE - 4096, 4096)]


def _blank_context(base, args, vid=VID):
    pool = base / "pool"
    for path in (pool, pool / "appvms", pool / "vm-templates"):
        path.mkdir(mode=0o755)
    args = dict(args, pool=str(pool), vid=vid)
    return ce.Context(base=base, pool=pool, vid=vid, args=args, labels=rh.Labels())


def _vm_dir(ctx, vid=VID):
    return ctx.pool / os.path.dirname(vid)


def _image(ctx, suffix, vid=VID):
    return _vm_dir(ctx, vid) / (os.path.basename(vid) + suffix)


def _stopped_volume(ctx, revisions=(), vid=VID, seed=1, precache=True):
    """Clean image "old clean" (mtime T0) with its precache, and revisions [(id, label, mtime)]."""
    _vm_dir(ctx, vid).mkdir(exist_ok=True)
    clean = put_file(_image(ctx, ".img", vid), SIZE, SEGMENTS, seed=seed, mtime=T0)
    ctx.labels.add("old clean", clean)
    ctx.stamps["old clean"] = rh.stamp(T0)
    if precache:
        copy_file(_image(ctx, ".img", vid), _image(ctx, "-precache.img", vid))
    for number, label, mtime in revisions:
        name = "%s.img.%d@%s" % (os.path.basename(vid), number, rh.stamp(mtime))
        data = put_file(_vm_dir(ctx, vid) / name, SIZE, [(number * 8192, 4096)], seed=1000 + number, mtime=mtime)
        ctx.labels.add(label, data)
        ctx.stamps[label] = rh.stamp(mtime)
    return clean


def _source(ctx, name="source.img"):
    path = ctx.base / name
    data = put_file(path, SIZE, SOURCE_SEGMENTS, seed=77)
    ctx.labels.add("new data", data)
    return path


# ------------------------------------------------------------------ scenarios

class Create(ce.Scenario):
    """reflink_volume state=present on a vid that has only leftovers of an earlier volume."""

    name = "create"
    module = "reflink_volume"

    def setup(self, base):
        ctx = _blank_context(base, {"size": "4M"})
        vm_dir = _vm_dir(ctx)
        vm_dir.mkdir()
        old_rev = put_file(vm_dir / ("private.img.3@%s" % rh.stamp(T0 - DAY)), SIZE, [(0, 4096)], seed=5, mtime=T0 - DAY)
        old_import = put_file(vm_dir / "private-import.img", SIZE, [(0, 4096)], seed=6)
        old_precache = put_file(vm_dir / "private-precache.img", SIZE, [(0, 4096)], seed=7, mtime=T0)
        put_file(vm_dir / "private.img~abcd1234", SIZE, [(0, 4096)], seed=8)
        ctx.labels.add("leftover revision", old_rev)
        ctx.labels.add("leftover import", old_import)
        ctx.labels.add("leftover precache", old_precache)
        ctx.labels.add("zeros", bytes(SIZE))
        return ctx

    def crash_problems(self, ctx, state):
        if state.clean is None:
            rules = ce.Rules(clean={None}, import_={None, "leftover import"},
                             revisions={3: {"leftover revision"}})
            problems = ce.check_rules(ctx, state, rules)
            if state.precache is not None and ctx.labels.of(state.precache) != "leftover precache":
                problems.append("a new precache exists without a clean image")
            return problems
        # Once the new clean image exists, nothing of the earlier volume may be left.
        return ce.check_rules(ctx, state, ce.Rules(clean={"zeros"}))

    def final_problems(self, ctx, state):
        return ce.check_final(ctx, state, clean="zeros", revisions=[])


class ResizeStopped(ce.Scenario):
    name = "resize-stopped"
    module = "reflink_volume"

    def setup(self, base):
        ctx = _blank_context(base, {"size": "8M"})
        clean = _stopped_volume(ctx, [(1, "revision 1", T0 - DAY)])
        ctx.labels.add("old clean grown to 8 MiB", clean + bytes(4 * rh.MIB))
        return ctx

    def crash_rules(self, ctx):
        return ce.Rules(clean={"old clean", "old clean grown to 8 MiB"}, revisions={1: {"revision 1"}},
                        precious=("revision 1",))

    def final_problems(self, ctx, state):
        return ce.check_final(ctx, state, clean="old clean grown to 8 MiB", revisions=["revision 1"])


class ResizeRunning(ce.Scenario):
    """A running volume (dirty image attached to a loop device) grown in place."""

    name = "resize-running"
    module = "reflink_volume"

    def setup(self, base):
        ctx = _blank_context(base, {"size": "8M"})
        _stopped_volume(ctx, [(1, "revision 1", T0 - DAY)])
        dirty = start_volume(ctx.pool, VID)
        ctx.labels.add("dirty", dirty)
        ctx.labels.add("dirty grown to 8 MiB", dirty + bytes(4 * rh.MIB))
        ctx.extra["clean_ino"] = os.stat(_image(ctx, ".img")).st_ino
        device = subprocess.run(["losetup", "--find", "--show", str(_image(ctx, "-dirty.img"))], check=True,
                                capture_output=True, text=True).stdout.strip()
        ctx.extra["device"] = device
        ctx.cleanups.append(lambda: subprocess.run(["losetup", "-d", device], check=False))
        return ctx

    def _clean_kept(self, ctx, state):
        if state.clean is not None and state.clean.ino != ctx.extra["clean_ino"]:
            return ["the clean image got a new inode although the volume is running"]
        return []

    def crash_problems(self, ctx, state):
        rules = ce.Rules(clean={"old clean"}, dirty={"dirty", "dirty grown to 8 MiB"},
                         revisions={1: {"revision 1"}}, precious=("revision 1", "old clean"))
        return ce.check_rules(ctx, state, rules) + self._clean_kept(ctx, state)

    def final_problems(self, ctx, state):
        problems = ce.check_final(ctx, state, clean="old clean", dirty="dirty grown to 8 MiB",
                                  revisions=["revision 1"], precache=None)
        capacity = int(subprocess.run(["blockdev", "--getsize64", ctx.extra["device"]], check=True,
                                      capture_output=True, text=True).stdout)
        if capacity != 8 * rh.MIB:
            problems.append("loop device %s still has %d bytes, intended %d (LOOP_SET_CAPACITY not done)"
                            % (ctx.extra["device"], capacity, 8 * rh.MIB))
        return problems + self._clean_kept(ctx, state)


class ImportOneShot(ce.Scenario):
    """reflink_import from a file, keeping 2 revisions (so the existing revision must survive)."""

    module = "reflink_import"

    def __init__(self, fs):
        self.fs = fs
        self.name = "import-one-shot"

    def setup(self, base):
        ctx = _blank_context(base, {"revisions_to_keep": 2})
        _stopped_volume(ctx, [(1, "revision 1", T0 - DAY)])
        ctx.args["src"] = str(_source(ctx))
        return ctx

    def crash_rules(self, ctx):
        return ce.Rules(clean={"old clean", "new data"}, import_={None, "new data"},
                        revisions={1: {"revision 1"}, 2: {"old clean"}}, precious=("revision 1", "old clean"))

    def final_problems(self, ctx, state):
        return ce.check_final(ctx, state, clean="new data", revisions=["revision 1", "old clean"])


class ImportNewVolume(ce.Scenario):
    """reflink_import into a vid with no volume, only leftovers of an earlier one: the import creates it."""

    name = "import-new-volume"
    module = "reflink_import"

    def setup(self, base):
        ctx = _blank_context(base, {})
        vm_dir = _vm_dir(ctx)
        vm_dir.mkdir()
        ctx.labels.add("leftover revision", put_file(vm_dir / ("private.img.4@%s" % rh.stamp(T0 - DAY)), SIZE,
                                                     [(0, 4096)], seed=5, mtime=T0 - DAY))
        ctx.labels.add("leftover precache", put_file(_image(ctx, "-precache.img"), SIZE, [(0, 4096)], seed=7))
        put_file(vm_dir / "private-import.img~abcd1234", SIZE, [(0, 4096)], seed=8)
        ctx.args["src"] = str(_source(ctx))
        return ctx

    def crash_problems(self, ctx, state):
        if state.clean is None:
            return ce.check_rules(ctx, state, ce.Rules(clean={None}, import_={None, "new data"},
                                                       revisions={4: {"leftover revision"}}))
        # The import became the first clean image: nothing of the earlier volume may be left.
        problems = ce.check_rules(ctx, state, ce.Rules(clean={"new data"}))
        if state.precache is not None and not state.precache_fresh:
            problems.append("a stale precache of the earlier volume survived the new clean image")
        return problems

    def final_problems(self, ctx, state):
        return ce.check_final(ctx, state, clean="new data", revisions=[])


class ImportCommit(ce.Scenario):
    """Two-phase import: begin (done in the setup), data written by "another program", then commit."""

    name = "import-commit"
    module = "reflink_import"

    def setup(self, base):
        ctx = _blank_context(base, {"state": "commit", "revisions_to_keep": 2})
        _stopped_volume(ctx, [(1, "revision 1", T0 - DAY)])
        begun = rh.run_direct("reflink_import", pool=str(ctx.pool), vid=VID, state="begin", size=SIZE)
        assert not begun["failed"], begun
        data = bytearray(SIZE)
        source = _source(ctx).read_bytes()
        with open(begun["import_image"], "r+b") as handle:
            for offset, length in SOURCE_SEGMENTS:
                handle.seek(offset)
                handle.write(source[offset:offset + length])
                data[offset:offset + length] = source[offset:offset + length]
        assert bytes(data) == source
        return ctx

    def crash_rules(self, ctx):
        return ce.Rules(clean={"old clean", "new data"}, import_={None, "new data"},
                        revisions={1: {"revision 1"}, 2: {"old clean"}},
                        precious=("revision 1", "old clean", "new data"))

    def final_problems(self, ctx, state):
        problems = ce.check_final(ctx, state, clean="new data", revisions=["revision 1", "old clean"])
        journal = ctx.pool / ".reflink" / "imports" / "appvms-work-private.json"
        if journal.exists() and json.loads(journal.read_text()).get("state") != "committed":
            problems.append("the import journal still says %s" % journal.read_text())
        return problems


class Revert(ce.Scenario):
    name = "revert"
    module = "reflink_revert"

    def setup(self, base):
        ctx = _blank_context(base, {"revision": 1})
        _stopped_volume(ctx, [(1, "revision 1", T0 - 2 * DAY), (2, "revision 2", T0 - DAY)])
        return ctx

    def crash_rules(self, ctx):
        return ce.Rules(clean={"old clean", "revision 1"},
                        revisions={1: {"revision 1"}, 2: {"revision 2"}, 3: {"old clean"}},
                        precious=("revision 1", "revision 2", "old clean"))

    def final_problems(self, ctx, state):
        return ce.check_final(ctx, state, clean="revision 1", revisions=["revision 2", "old clean"])


def _pin_file(ctx, name, vid=VID):
    return _vm_dir(ctx, vid) / ("%s.img.pin-%s" % (os.path.basename(vid), name))


def _pin_problems(ctx, state, name, allowed, final=None, mtime=None):
    """A pin is always whole (one of ``allowed``, None: absent); at the end ``final``, with the data's time."""
    facts = state.pins.get(name)
    found = ctx.labels.of(facts)
    problems = []
    if final is None and found not in allowed:
        problems.append("pin %s is %s; allowed: %s" % (name, found or "absent", ce.allowed_text(allowed)))
    if final is not None and found != final:
        problems.append("pin %s is %s, intended %s" % (name, found or "absent", final))
    if final is not None and facts is not None:
        if mtime is not None and facts.mtime_ns != mtime * 10 ** 9:
            problems.append("pin %s has mtime %d, not the pinned data's time %d" % (name, facts.mtime_ns, mtime))
        if state.clean is not None and facts.ino == state.clean.ino:
            problems.append("pin %s shares its inode with the clean image" % name)
    return problems


class PinReplace(ce.Scenario):
    """reflink_pin force=true: the pin "keep" held revision 1's data; it is replaced by revision 2's."""

    name = "pin-replace"
    module = "reflink_pin"

    def setup(self, base):
        ctx = _blank_context(base, {"name": "keep", "revision": 2, "force": True})
        _stopped_volume(ctx, [(1, "revision 1", T0 - 2 * DAY), (2, "revision 2", T0 - DAY)])
        copy_file(_vm_dir(ctx) / ("private.img.1@%s" % rh.stamp(T0 - 2 * DAY)), _pin_file(ctx, "keep"))
        # qubesd's revisions carry their copy time as mtime; the pin takes the time in the name.
        os.utime(_vm_dir(ctx) / ("private.img.2@%s" % rh.stamp(T0 - DAY)), (T0 + 60, T0 + 60))
        return ctx

    def crash_rules(self, ctx):
        return ce.Rules(clean={"old clean"}, revisions={1: {"revision 1"}, 2: {"revision 2"}},
                        precious=("revision 1", "revision 2", "old clean"))

    def crash_problems(self, ctx, state):
        return super().crash_problems(ctx, state) + _pin_problems(ctx, state, "keep", {"revision 1", "revision 2"})

    def final_problems(self, ctx, state):
        return ce.check_final(ctx, state, clean="old clean", revisions=["revision 1", "revision 2"]) + \
            _pin_problems(ctx, state, "keep", (), final="revision 2", mtime=T0 - DAY)


class RevertToPin(ce.Scenario):
    """reflink_revert pin=good: the pin's data becomes the clean image, the old clean revision 2; the pin stays."""

    name = "revert-to-pin"
    module = "reflink_revert"

    def setup(self, base):
        ctx = _blank_context(base, {"pin": "good"})
        _stopped_volume(ctx, [(1, "revision 1", T0 - DAY)])
        ctx.labels.add("pinned", put_file(_pin_file(ctx, "good"), SIZE, [(8192, 300000)], seed=55, mtime=T0 - 3 * DAY))
        return ctx

    def crash_rules(self, ctx):
        return ce.Rules(clean={"old clean", "pinned"}, revisions={1: {"revision 1"}, 2: {"old clean"}},
                        precious=("revision 1", "old clean", "pinned"))

    def crash_problems(self, ctx, state):
        return super().crash_problems(ctx, state) + _pin_problems(ctx, state, "good", {"pinned"})

    def final_problems(self, ctx, state):
        problems = ce.check_final(ctx, state, clean="pinned", revisions=["revision 1", "old clean"])
        if state.clean is not None and state.clean.mtime_ns != (T0 - 3 * DAY) * 10 ** 9:
            problems.append("the clean image does not carry the pin's time")
        return problems + _pin_problems(ctx, state, "good", (), final="pinned")


class StoppedCommit(ce.Scenario):
    """reflink_volume state=stopped: commit the dirty image a halted VM left (keeping 2 revisions)."""

    name = "stopped-commit"
    module = "reflink_volume"

    def setup(self, base):
        ctx = _blank_context(base, {"state": "stopped", "revisions_to_keep": 2})
        _stopped_volume(ctx, [(1, "revision 1", T0 - DAY)])
        ctx.labels.add("dirty", start_volume(ctx.pool, VID))
        return ctx

    def crash_rules(self, ctx):
        return ce.Rules(clean={"old clean", "dirty"}, dirty={None, "dirty"},
                        revisions={1: {"revision 1"}, 2: {"old clean"}},
                        precious=("revision 1", "old clean", "dirty"))

    def final_problems(self, ctx, state):
        return ce.check_final(ctx, state, clean="dirty", revisions=["revision 1", "old clean"])


class Remove(ce.Scenario):
    """reflink_volume state=absent; another volume of another VM must not be touched."""

    name = "remove"
    module = "reflink_volume"

    def setup(self, base):
        ctx = _blank_context(base, {"state": "absent"})
        _stopped_volume(ctx, [(1, "revision 1", T0 - 2 * DAY), (2, "revision 2", T0 - DAY)])
        ctx.labels.add("leftover import", put_file(_image(ctx, "-import.img"), SIZE, [(0, 4096)], seed=6))
        put_file(_vm_dir(ctx) / "private.img~abcd1234", SIZE, [(0, 4096)], seed=8)
        other = "appvms/other/private"
        _stopped_volume(ctx, [(1, "other revision", T0 - DAY)], vid=other, seed=9)
        ctx.extra["other"] = rh.listing(_vm_dir(ctx, other))
        return ctx

    def _other_kept(self, ctx):
        return ["another volume changed: %s" % item
                for item in rh.diff_listings(ctx.extra["other"], rh.listing(_vm_dir(ctx, "appvms/other/private")))]

    def crash_rules(self, ctx):
        return ce.Rules(clean={None, "old clean"}, import_={None, "leftover import"},
                        revisions={1: {"revision 1"}, 2: {"revision 2"}})

    def crash_problems(self, ctx, state):
        return super().crash_problems(ctx, state) + self._other_kept(ctx)

    def final_problems(self, ctx, state):
        problems = self._other_kept(ctx)
        if state.vm_dir_exists:
            problems.append("VM directory still exists: %s" % sorted(os.listdir(_vm_dir(ctx))))
        return problems


class Batch(ce.Scenario):
    """reflink_volume with ``volumes``: grow a stopped volume, create one in a new VM, remove a third.

    ctx.vid is the grown volume (the engine reads it); the other two items are
    checked here, each with labels of its own, so that no item's data can pass
    for another's.  Besides each item's own rules, a kill must respect the
    order: an item that started (its files differ from the initial state)
    comes after items that are done, never before an item left half-way.
    """

    module = "reflink_volume"
    grown, created, removed = VID, "appvms/new/private", "appvms/old/private"
    noise_kills = False   # its in-use checks read every loop device of the host a dozen times

    def __init__(self, fs):
        self.fs = fs
        self.name = "batch-grow-create-remove"

    def setup(self, base):
        ctx = _blank_context(base, {"volumes": [{"vid": self.grown, "size": "8M"},
                                                {"vid": self.created, "size": "4M"},
                                                {"vid": self.removed, "state": "absent"}]})
        del ctx.args["vid"]   # mutually exclusive with volumes
        clean = _stopped_volume(ctx, [(1, "revision 1", T0 - DAY)])
        ctx.labels.add("old clean grown to 8 MiB", clean + bytes(4 * rh.MIB))
        new = ctx.extra["created"] = ce.Context(base, ctx.pool, self.created, {}, rh.Labels())
        new.labels.add("zeros", bytes(SIZE))
        old = ctx.extra["removed"] = ce.Context(base, ctx.pool, self.removed, {}, rh.Labels())
        _stopped_volume(old, [(1, "revision 1", T0 - 2 * DAY), (2, "revision 2", T0 - DAY)], vid=self.removed,
                        seed=9)
        ctx.extra["initial"] = {vid: self._listing(ctx, vid) for vid in (self.grown, self.removed)}
        return ctx

    def _listing(self, ctx, vid):
        vm_dir = _vm_dir(ctx, vid)
        return rh.listing(vm_dir) if vm_dir.is_dir() else None

    def _progress(self, ctx, grown, created, removed):
        """Each item in order: "untouched", "done" or "started" (changed, not yet done)."""
        initial = ctx.extra["initial"]
        return [
            ("untouched" if self._listing(ctx, self.grown) == initial[self.grown] else
             "done" if ctx.labels.of(grown.clean) == "old clean grown to 8 MiB" and grown.precache_fresh
             else "started"),
            ("untouched" if not created.vm_dir_exists else
             "done" if ctx.extra["created"].labels.of(created.clean) == "zeros" and created.precache_fresh
             else "started"),
            ("untouched" if self._listing(ctx, self.removed) == initial[self.removed] else
             "done" if not removed.vm_dir_exists else "started"),
        ]

    def crash_problems(self, ctx, state):
        new, old = ctx.extra["created"], ctx.extra["removed"]
        created, removed = rh.read_state(ctx.pool, new.vid), rh.read_state(ctx.pool, old.vid)
        problems = ce.check_rules(ctx, state, ce.Rules(clean={"old clean", "old clean grown to 8 MiB"},
                                                       revisions={1: {"revision 1"}}, precious=("revision 1",)))
        if created.clean is None:
            problems += ["new volume: %s" % p for p in ce.check_rules(new, created, ce.Rules(clean={None}))]
            if created.precache is not None:
                problems.append("new volume: a precache exists without a clean image")
        else:
            problems += ["new volume: %s" % p for p in ce.check_rules(new, created, ce.Rules(clean={"zeros"}))]
        problems += ["removed volume: %s" % p for p in ce.check_rules(old, removed, ce.Rules(
            clean={None, "old clean"}, revisions={1: {"revision 1"}, 2: {"revision 2"}}))]
        progress = self._progress(ctx, state, created, removed)
        for position, how in enumerate(progress):
            if how != "untouched" and any(before != "done" for before in progress[:position]):
                problems.append("volumes item %d %s while the items before it are %s"
                                % (position + 1, how, ", ".join(progress[:position])))
        return problems

    def final_problems(self, ctx, state):
        new = ctx.extra["created"]
        problems = ce.check_final(ctx, state, clean="old clean grown to 8 MiB", revisions=["revision 1"])
        problems += ["new volume: %s" % p for p in ce.check_final(new, rh.read_state(ctx.pool, new.vid),
                                                                  clean="zeros", revisions=[])]
        if _vm_dir(ctx, self.removed).exists():
            problems.append("removed volume: VM directory still exists: %s"
                            % sorted(os.listdir(_vm_dir(ctx, self.removed))))
        return problems


class Gc(ce.Scenario):
    """reflink_gc min_age=0 revisions_to_keep=1 rebuild_precache on a pool with every kind of leftover."""

    name = "gc"
    module = "reflink_gc"
    run_gc = False  # the operation is gc itself

    def setup(self, base):
        ctx = _blank_context(base, {})
        ctx.args = {"pool": str(ctx.pool), "min_age": 0, "revisions_to_keep": 1, "rebuild_precache": True}
        _stopped_volume(ctx, [(1, "revision 1", T0 - 3 * DAY), (2, "revision 2", T0 - 2 * DAY),
                              (3, "revision 3", T0 - DAY)], precache=False)
        vm_dir = _vm_dir(ctx)
        ctx.labels.add("stale precache", put_file(_image(ctx, "-precache.img"), SIZE, [(0, 4096)], seed=4,
                                                  mtime=T0 - DAY))
        ctx.labels.add("unclaimed import", put_file(_image(ctx, "-import.img"), SIZE, [(0, 4096)], seed=6,
                                                    mtime=T0))
        put_file(vm_dir / "private.img~abcd1234", SIZE, [(0, 4096)], seed=8, mtime=T0)
        put_file(vm_dir / "private-precache.img~zz99zz99", SIZE, [(0, 4096)], seed=8, mtime=T0)
        (vm_dir / "notes.txt").write_text("not an image\n")
        (ctx.pool / "appvms" / "empty").mkdir()
        work2 = "appvms/work2/private"
        _stopped_volume(ctx, vid=work2, seed=3, precache=True)
        start_volume(ctx.pool, work2)
        os.rename(_image(ctx, ".img", work2), _vm_dir(ctx, work2) / "keep-me-clean.bak")  # a dirty-only volume
        ctx.extra["work2"] = rh.listing(_vm_dir(ctx, work2))
        imports = ctx.pool / ".reflink" / "imports"
        imports.mkdir(parents=True, mode=0o700)
        (imports / "appvms-gone-private.json").write_text(json.dumps({"vid": "appvms/gone/private", "state": "begun",
                                                                      "size": SIZE}))
        os.chmod(imports / "appvms-gone-private.json", 0o600)
        ctx.extra["clean_ino"] = os.stat(_image(ctx, ".img")).st_ino
        return ctx

    def _kept(self, ctx, state):
        problems = ["the dirty-only volume changed: %s" % item
                    for item in rh.diff_listings(ctx.extra["work2"], rh.listing(_vm_dir(ctx, "appvms/work2/private")))]
        if state.clean is None or state.clean.ino != ctx.extra["clean_ino"]:
            problems.append("gc replaced or removed the clean image")
        if (_vm_dir(ctx) / "notes.txt").read_text() != "not an image\n":
            problems.append("gc touched a file that is not an image")
        return problems

    def crash_rules(self, ctx):
        return ce.Rules(clean={"old clean"}, import_={None, "unclaimed import"},
                        revisions={1: {"revision 1"}, 2: {"revision 2"}, 3: {"revision 3"}},
                        precious=("revision 3", "old clean"))

    def crash_problems(self, ctx, state):
        problems = super().crash_problems(ctx, state) + self._kept(ctx, state)
        if state.precache is not None and ctx.labels.of(state.precache) not in ("stale precache", "old clean"):
            problems.append("precache is %s" % ctx.labels.of(state.precache))
        return problems

    def final_problems(self, ctx, state):
        problems = ce.check_final(ctx, state, clean="old clean", revisions=["revision 3"]) + self._kept(ctx, state)
        if (ctx.pool / "appvms" / "empty").exists():
            problems.append("the empty VM directory appvms/empty is still there")
        if (ctx.pool / ".reflink" / "imports" / "appvms-gone-private.json").exists():
            problems.append("the journal of an import whose image is gone is still there")
        return problems


SCENARIOS = [
    ("create", Create()),
    ("resize-stopped", ResizeStopped()),
    ("resize-running", ResizeRunning()),
    ("import-one-shot-btrfs", ImportOneShot("btrfs")),
    ("import-one-shot-xfs", ImportOneShot("xfs")),
    ("import-one-shot-ext4-copy", ImportOneShot("ext4")),
    ("import-new-volume", ImportNewVolume()),
    ("import-commit", ImportCommit()),
    ("revert", Revert()),
    ("pin-replace", PinReplace()),
    ("revert-to-pin", RevertToPin()),
    ("stopped-commit", StoppedCommit()),
    ("remove", Remove()),
    ("gc", Gc()),
    ("batch-btrfs", Batch("btrfs")),
    ("batch-xfs", Batch("xfs")),
    ("dedupe-btrfs", Dedupe("btrfs")),
    ("dedupe-xfs", Dedupe("xfs")),
]


@pytest.mark.parametrize("scenario", [s for _id, s in SCENARIOS], ids=[i for i, _s in SCENARIOS])
def test_crash_matrix(scenario, filesystems, modrun, kill_point_reports, request):
    root = pathlib.Path(tempfile.mkdtemp(prefix="crash-%s-" % scenario.name, dir=filesystems[scenario.fs].path))
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    report = ce.run_matrix(scenario, root)
    if report["problems"] and all("was never a kill point" in p for p in report["problems"]):
        # The number of unrelated calls before a step (ioctls on the terminal, ...) can move
        # between runs so that a step escapes every kill; one more whole matrix finds it.
        report = ce.run_matrix(scenario, root)
    kill_point_reports.append(report)
    assert report["kill_points"] > 0, report
    # A step that twice escaped every kill (the count of unrelated ioctls before it moves with
    # the host's loop devices) is reported in the table, not failed: every other problem fails.
    problems = [p for p in report["problems"] if "was never a kill point" not in p]
    assert report["steps_covered"] >= report["steps"] - 1, report
    assert not problems, "%s on %s: %d problem(s) over %d kill points:\n  %s" % (
        scenario.name, scenario.fs, len(problems), report["kill_points"], "\n  ".join(problems))


def test_the_zygote_runs_a_module_as_python_m_does(btrfs_dir, modrun):
    """The suite's module processes (forked from module_zygote.py) give what ``python -m <module> args.json`` gives."""
    pool = btrfs_dir / "pool"
    for path in (pool, pool / "appvms", pool / "vm-templates"):
        path.mkdir()
    args = {"pool": str(pool), "vid": VID, "size": "4M"}
    forked = rh.run_direct("reflink_volume", **args)
    assert not forked["failed"] and forked["changed"], forked
    args_file = btrfs_dir / "args.json"
    rh.write_args(args_file, dict(args, size="8M"))
    env = dict(os.environ, PYTHONPATH=str(rh.PYTEST_COLLECTIONS))
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.dom0.reflink.plugins.modules.reflink_volume",
                           str(args_file)], capture_output=True, text=True, env=env, check=False)
    direct = rh.parse_result(proc.stdout, {"exit": proc.returncode})
    again = rh.run_direct("reflink_volume", **{**args, "size": "8M"})
    assert not direct["failed"] and direct["changed"], direct
    assert again["changed"] is False and again["volume"] == direct["volume"], (again, direct)

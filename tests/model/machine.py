# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rule-based state machine: random sequences of tasks and hand-planted states on one small pool.

Each rule is one task (run through Harness.perform: check mode, real run,
rerun, properties) or one planted state (planting.py).  Arguments are plain
values, so that a failure prints as a short Python sequence that
test_regressions.py can replay as it is.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, multiple, precondition, rule

import predict as p
import predict_gc
import predict_import as pi
import predict_schedule as ps
from core_api import run
from harness import Harness
from planting import Planting, make_content

VIDS = ("appvms/a/data", "appvms/a/data2", "appvms/b/private", "vm-templates/t/root")
vids = st.sampled_from(VIDS)
seeds = st.integers(0, 255)
data_sizes = st.sampled_from([4096, 65536, 65536 + 512, 1 << 20, 3 << 20])
# Mostly plausible values, some odd ones (zero, negative, malformed, huge, a boolean).
volume_sizes = st.sampled_from([4096, 65536, 65536, 65536, 1 << 20, 1 << 20, 1 << 20, 2 << 20, 2 << 20, "64K",
                                "1.5M", 0, -1, "abc", 2 ** 64, 2 ** 40, True])
optional_sizes = st.sampled_from([None, None, None, None, 65536, 4096, 1 << 20, 0, "1M"])
keeps = st.sampled_from([None, None, None, 1, 2, 0, -1, 3, -2])
checksums = st.sampled_from([None, None, None, "right", "wrong", "bad"])
# auto-before-upgrade: a user's pin that the schedule never touches; auto-20210104t120000: a user's pin with a
# scheduled pin's name (the schedule counts it at the time in its name, whatever its data).
pin_names = st.sampled_from(["p1", "p1", "p1", "keep", "a-b_c", "Bad", "x.y", "", "a\n", "a" * 41,
                             "auto-before-upgrade", "auto-20210104t120000"])
revisions = st.sampled_from(["latest", "latest", 1, 2, 3, 4, "2", 0, -1, "abc"])
pin_sources = st.sampled_from(["clean", "clean", "latest", 1, 2, 3, None, 0, "x"])
scopes = st.sampled_from(["all", "all", "empty", "one", "two"])
# Small schedules, mostly good; some that the spec refuses (and a digit string, which is taken).
good_schedules = st.dictionaries(st.sampled_from(ps.CLASSES), st.integers(0, 3), min_size=1, max_size=3)
schedules = st.one_of(
    good_schedules, good_schedules, good_schedules, good_schedules,
    st.sampled_from([{}, {"daily": "2"}, {"dayly": 1}, {"weekly": -1}, {"monthly": True}, {"daily": 1.5},
                     {"hourly": None}, "daily"]))
# How far "now" moves on before a scheduled run: a second to a year, around the periods' edges.
advances = st.sampled_from([0, 1, 59, 3599, 3600, 86399, 86400, 3 * 86400, 7 * 86400, 31 * 86400, 92 * 86400,
                            366 * 86400])
CLOCK_START = 1609113600        # 2020-12-28T00:00:00Z, a Monday: ISO week 53 of 2020 runs into 2021
CLOCK_END = CLOCK_START + 5 * 365 * 86400


class PoolMachine(RuleBasedStateMachine):
    """A pool on the file system ``fs_root`` (``kind``); ``other_root`` is on another file system."""

    # The vids of the two-phase imports begun: commit, abort and the writer aim at them more often.
    begun = Bundle("begun")

    def __init__(self, fs_root: str, kind: str, other_root: str) -> None:
        super().__init__()
        self.fs_root = fs_root
        base = tempfile.mkdtemp(prefix="model-", dir=fs_root)
        other = tempfile.mkdtemp(prefix="model-src-", dir=other_root)
        self.h = Harness(base, kind, other)
        self.clock = CLOCK_START      # the "now" of the scheduled runs (data times are file mtimes)
        self.plant = Planting(self.h, fs_root)
        os.mkdir(os.path.join(base, "src"))          # made now: a full file system refuses even a directory
        os.symlink("pool", os.path.join(base, "pool-link"))

    def teardown(self) -> None:
        self.h.release_holders()
        self.h.free_disk()
        shutil.rmtree(self.h.base, ignore_errors=True)
        shutil.rmtree(self.h.other_fs, ignore_errors=True)

    def opts(self, **options):
        return dict(options, qubes_xml="none")

    # -- the pool --------------------------------------------------------------

    @initialize(seeds=st.lists(seeds, max_size=4))
    def make_pool(self, seeds) -> None:
        """The pool, and a few volumes with data (each import after the first of a vid adds a revision)."""
        self.pool_present()
        for number, seed in enumerate(seeds):
            self.import_file(VIDS[seed % 3], "file", 65536, seed + number, None, None, False, 2, "errno")

    @rule()
    def pool_present(self) -> None:
        def expect(_model, ctx):
            ctx.allocates = not all(os.path.isdir(os.path.join(self.h.pool, prefix))
                                    for prefix in ("appvms", "vm-templates"))

        self.h.perform("pool present", "reflink_pool",
                       self.opts(path=self.h.pool, require_reflink=self.h.kind != "ext4"), expect)

    @precondition(lambda self: self.h.filler is None)
    @rule(symlink=st.booleans())
    def pool_absent(self, symlink) -> None:
        path = os.path.join(self.h.base, "pool-link") if symlink else self.h.pool
        names = os.listdir(self.h.pool)
        result = self.h.perform("pool absent", "reflink_pool", self.opts(path=path, state="absent"),
                                lambda m, c: predict_gc.pool_absent(m, names, symlink))
        if result is not None and result.failed and not symlink:
            only_pins = all(not vol.has_files for vol in self.h.model.vols.values()) and \
                any(vol.pins for vol in self.h.model.vols.values())
            if only_pins and "remove_pins" not in result.msg:
                self.h.flag("pool_refusal_pins_advice", "the pool holds only pins and the refusal does not "
                            "name remove_pins: %s" % result.msg, "pool_refusal_pins_advice")
        if not all(os.path.isdir(os.path.join(self.h.pool, prefix)) for prefix in ("appvms", "vm-templates")):
            self.pool_present()

    # -- reflink_volume ----------------------------------------------------------

    @rule(vid=vids, size=volume_sizes, allow_shrink=st.booleans(), keep=keeps)
    def volume_present(self, vid, size, allow_shrink, keep) -> None:
        item = {"vid": vid, "size": size, "allow_shrink": allow_shrink, "revisions_to_keep": keep}
        self.h.perform("volume present", "reflink_volume", self.opts(pool=self.h.pool, **item),
                       lambda m, c: p.volume_task(m, item, c), vm_dir=os.path.dirname(vid))

    @rule(vid=vids, remove_pins=st.booleans(), size=st.sampled_from([None] * 6 + [65536]))
    def volume_absent(self, vid, remove_pins, size) -> None:
        item = {"vid": vid, "state": "absent", "remove_pins": remove_pins, "size": size}
        self.h.perform("volume absent", "reflink_volume", self.opts(pool=self.h.pool, **item),
                       lambda m, c: p.volume_task(m, item, c), vm_dir=os.path.dirname(vid))

    @rule(vid=vids, keep=keeps, size=st.sampled_from([None] * 6 + [65536]))
    def volume_stopped(self, vid, keep, size) -> None:
        item = {"vid": vid, "state": "stopped", "revisions_to_keep": keep, "size": size}
        self.h.perform("volume stopped", "reflink_volume", self.opts(pool=self.h.pool, **item),
                       lambda m, c: p.volume_task(m, item, c), vm_dir=os.path.dirname(vid))

    @rule(items=st.lists(st.tuples(vids, st.sampled_from(["present", "present", "absent", "stopped"]),
                                   st.sampled_from([None, 65536, 1 << 20, 4096])), max_size=3),
          remove_pins=st.booleans(), unknown_key=st.sampled_from([False] * 5 + [True]))
    def volume_batch(self, items, remove_pins, unknown_key) -> None:
        volumes = [{"vid": vid, "state": state, "size": size} for vid, state, size in items]
        if unknown_key and volumes:
            volumes[-1]["colour"] = "red"
        self.h.perform("volume batch", "reflink_volume", self.opts(pool=self.h.pool, volumes=volumes, remove_pins=remove_pins),
                       lambda m, c: p.batch(m, volumes, remove_pins, c))

    # -- reflink_import ----------------------------------------------------------

    @rule(vid=vids, source=st.sampled_from(["file", "file", "file", "empty", "missing", "dir", "cross", "none"]),
          data_size=data_sizes, seed=seeds, size=optional_sizes, checksum=checksums, force=st.booleans(),
          keep=keeps, fallback=st.sampled_from(["errno", "errno", "never"]))
    def import_file(self, vid, source, data_size, seed, size, checksum, force, keep, fallback) -> None:
        src, path = self.plant.source(source, data_size, seed)
        options = self.opts(vid=vid, pool=self.h.pool, size=size, force=force, revisions_to_keep=keep,
                            fallback=fallback)
        if path is not None:
            options["src"] = path
        options["checksum"] = self.checksum(checksum, src.content, size)
        self.h.perform("import %s" % source, "reflink_import", options,
                       lambda m, c: pi.run_import(m, vid, options, src, c), rerun=not force,
                       vm_dir=os.path.dirname(vid))

    @rule(vid=vids, src_vid=vids, size=optional_sizes, checksum=checksums, force=st.booleans(), keep=keeps)
    def import_volume(self, vid, src_vid, size, checksum, force, keep) -> None:
        source = pi.Source("vid", vid=src_vid)
        src_vol = self.h.model.vols.get(src_vid)
        options = self.opts(vid=vid, pool=self.h.pool, src_vid=src_vid, size=size, force=force,
                            revisions_to_keep=keep)
        options["checksum"] = self.checksum(checksum, src_vol.clean if src_vol else None, size)
        self.h.perform("import from volume", "reflink_import", options,
                       lambda m, c: pi.run_import(m, vid, options, source, c), rerun=not force,
                       vm_dir=os.path.dirname(vid))

    def checksum(self, choice, content, size):
        """The checksum option: None, a malformed one, the right one or a wrong one for the data imported.

        None too where the image would be larger than 64 MiB: the core hashes holes as zeros, and a
        checksum of a 1 TiB sparse image takes minutes.
        """
        try:
            target = p.size_of(size)
        except p.Refuse:
            target = None
        if content is None:
            content = make_content(0, 0).resized(target or 0)
        new = content.resized(target if target is not None else content.size)
        if choice is None or new.size > 64 << 20:
            return None
        if choice == "bad":
            return "sha256:xyz"
        if choice == "right":
            return "sha256:" + new.sha256()
        return "sha256:" + "0" * 64

    @rule(target=begun, vid=vids, size=st.sampled_from([65536, 65536, 1 << 20, 4096, None, 0]))
    def import_begin(self, vid, size):
        options = self.opts(vid=vid, pool=self.h.pool, state="begin", size=size)
        self.h.perform("import begin", "reflink_import", options,
                       lambda m, c: pi.run_import(m, vid, options, pi.Source("none"), c), vm_dir=os.path.dirname(vid))
        return vid if self.h.model.vol(vid).journal == "begun" else multiple()

    @precondition(lambda self: any(vol.journal for vol in self.h.model.vols.values()))
    @rule(vid=begun | vids, size=st.sampled_from([None] * 5 + [65536, 1 << 20, 0]), checksum=checksums, keep=keeps)
    def import_commit(self, vid, size, checksum, keep) -> None:
        vol = self.h.model.vols.get(vid)
        staged = vol.import_ if vol is not None and vol.journal == "begun" else vol.clean if vol else None
        options = self.opts(vid=vid, pool=self.h.pool, state="commit", size=size, revisions_to_keep=keep)
        options["checksum"] = self.checksum(checksum, staged, size)
        self.h.perform("import commit", "reflink_import", options,
                       lambda m, c: pi.run_import(m, vid, options, pi.Source("none"), c), vm_dir=os.path.dirname(vid))

    @precondition(lambda self: any(vol.journal for vol in self.h.model.vols.values()))
    @rule(vid=begun | vids)
    def import_abort(self, vid) -> None:
        options = self.opts(vid=vid, pool=self.h.pool, state="abort")
        self.h.perform("import abort", "reflink_import", options,
                       lambda m, c: pi.run_import(m, vid, options, pi.Source("none"), c), vm_dir=os.path.dirname(vid))

    # -- reflink_revert and reflink_pin --------------------------------------------

    @precondition(lambda self: any(vol.revisions for vol in self.h.model.vols.values()))
    @rule(vid=vids, revision=revisions, discard_dirty=st.booleans())
    def revert(self, vid, revision, discard_dirty) -> None:
        options = self.opts(vid=vid, pool=self.h.pool, revision=revision, discard_dirty=discard_dirty)
        self.h.perform("revert", "reflink_revert", options,
                       lambda m, c: p.revert(m.vol(vid), revision, discard_dirty, c), vm_dir=os.path.dirname(vid))

    @precondition(lambda self: any(vol.pins for vol in self.h.model.vols.values()))
    @rule(vid=vids, name=pin_names, discard_dirty=st.booleans())
    def revert_to_pin(self, vid, name, discard_dirty) -> None:
        options = self.opts(vid=vid, pool=self.h.pool, pin=name, discard_dirty=discard_dirty)
        self.h.perform("revert to pin", "reflink_revert", options,
                       lambda m, c: p.revert_to_pin(m.vol(vid), name, discard_dirty, c), vm_dir=os.path.dirname(vid))

    @rule(vid=vids, name=pin_names, revision=pin_sources, force=st.booleans())
    def pin(self, vid, name, revision, force) -> None:
        options = self.opts(vid=vid, pool=self.h.pool, name=name, force=force)
        if revision is not None:
            options["revision"] = revision
        self.h.perform("pin", "reflink_pin", options,
                       lambda m, c: p.pin(m.vol(vid), name, revision, force, c))

    @precondition(lambda self: any(vol.pins for vol in self.h.model.vols.values()))
    @rule(vid=vids, name=pin_names)
    def unpin(self, vid, name) -> None:
        options = self.opts(vid=vid, pool=self.h.pool, name=name, state="absent")
        self.h.perform("unpin", "reflink_pin", options, lambda m, c: p.unpin(m.vol(vid), name))

    @rule(vid=vids)
    def check_play_create_then_pin(self, vid) -> None:
        """A --check play: create a volume, then pin it; the pin must be planned (with a warning), not fail."""
        if self.h.model.vol(vid).exists:
            return
        self.h.steps.append("check-mode play: create %s then pin it" % vid)
        run("reflink_volume", self.opts(vid=vid, pool=self.h.pool, size=65536), check=True)
        outcome = run("reflink_pin", self.opts(vid=vid, pool=self.h.pool, name="p1"), check=True)
        if outcome.failed:
            self.h.flag("check_mode_pin_of_planned_volume", "check mode failed: %s" % outcome.msg,
                        "check_mode_pin_of_planned_volume")

    @rule(scope=st.sampled_from(["one", "one", "two", "existing", "existing", "existing", "all", "empty", "twice"]),
          vid=vids, schedule=schedules, nights=st.lists(st.tuples(advances, st.booleans()), min_size=1, max_size=3))
    def scheduled_pins(self, scope, vid, schedule, nights) -> None:
        """reflink_pin with schedule on a few nights: each (advance, stopped) moves "now" on; ``stopped``:
        vid's VM stopped at that moment.

        The calendar takes no clock: a run's "now" is the data time of the newest
        image, so the clock moves the clean image's mtime (as qubesd's commit at a
        VM's stop does) and the next commit stamps the revision it makes with it.
        Several nights in one rule: a history of scheduled pins needs runs at
        several times on the same volumes.
        """
        for advance, stopped in nights:
            self.clock = min(self.clock + advance, CLOCK_END)
            if stopped:
                self.plant.data_time(vid, self.clock)
            options = self.opts(pool=self.h.pool, schedule=schedule)
            if scope == "one":
                options["vid"] = vid
            else:
                existing = [one for one in VIDS if self.h.model.vol(one).exists]
                options["vids"] = {"two": [vid, VIDS[(VIDS.index(vid) + 1) % len(VIDS)]], "all": list(VIDS),
                                   "existing": existing, "empty": [], "twice": [vid, vid]}[scope]
            expected: dict = {}
            before = self.h.snapshot()
            result = self.h.perform("scheduled pins", "reflink_pin", options,
                                    lambda m, c, options=options, expected=expected: ps.run_schedule(m, options, c,
                                                                                                     expected))
            if result is None:
                return
            ps.check_run(self.h, before, options, expected, result)
            if result.failed:
                return

    # -- reflink_gc and reflink_info -------------------------------------------------

    def scope(self, choice, vid):
        others = [other for other in VIDS if other != vid]
        return {"all": None, "empty": [], "one": [vid], "two": [vid, others[0]]}[choice]

    @rule(scope=scopes, vid=vids, keep_vids=st.sampled_from(["none", "none", "none", "empty", "one", "two"]),
          remove_orphans=st.booleans(), min_age=st.sampled_from([0, 0, "0", "1h", "0s", -1]),
          keep=st.sampled_from([None, None, 0, 1, 2, -1]), rebuild=st.booleans(),
          import_max_age=st.sampled_from(["1d", "1d", "1d", 0]))
    def gc(self, scope, vid, keep_vids, remove_orphans, min_age, keep, rebuild, import_max_age="1d") -> None:
        """import_max_age 0: as if the journals were days old (a begun import then expires)."""
        options = self.opts(pool=self.h.pool, vids=self.scope(scope, vid), remove_orphans=remove_orphans,
                            min_age=min_age, revisions_to_keep=keep, rebuild_precache=rebuild,
                            import_max_age=import_max_age)
        options["keep_vids"] = None if keep_vids == "none" else self.scope(
            keep_vids if keep_vids != "two" else "two", VIDS[-1])
        before = self.h.model.copy()
        result = self.h.perform("gc", "reflink_gc", options, lambda m, c: predict_gc.gc(m, options, c))
        if result is not None and not result.failed:
            scope = options["vids"]
            pending = sorted(vid for vid, vol in before.vols.items()
                             if vol.dirty is not None and (scope is None or vid in scope))
            reported = sorted(item["vid"] for item in result.result.get("pending_commit", []))
            if reported != pending:
                self.h.flag("gc_pending_commit", "reported %s, dirty images of %s" % (reported, pending),
                            "empty_vids_widen" if scope == [] else None)
            for key, vids_expected in predict_gc.expected_reports(before, options).items():
                vids_reported = sorted({item["vid"] for item in result.result.get(key, [])})
                if vids_reported != vids_expected:
                    self.h.flag("gc_" + key, "reported %s, expected %s" % (vids_reported, vids_expected),
                                "empty_vids_widen" if scope == [] else None)
            for entry in result.result.get("removed", []):
                if ".img.-1@" in entry["file"] and "not an integer" in entry["reason"]:
                    self.h.flag("gc_reason_negative_revision", entry["reason"], "gc_reason_negative_revision")

    @rule(scope=scopes, vid=vids)
    def info(self, scope, vid) -> None:
        options = self.opts(pool=self.h.pool, vids=self.scope(scope, vid))
        holder = {}

        def expect(model, _ctx):
            holder["listed"], holder["known"] = predict_gc.expected_info(model, options)

        result = self.h.perform("info", "reflink_info", options, expect)
        if result is None or result.failed or "listed" not in holder:
            return
        volumes = result.result["volumes"]
        if [volume["vid"] for volume in volumes] != holder["listed"]:
            self.h.flag("info_volumes", "listed %s, expected %s" % ([v["vid"] for v in volumes], holder["listed"]),
                        holder["known"])
            return
        for volume in volumes:
            vol = self.h.model.vols.get(volume["vid"])
            ids = [revision["id"] for revision in volume["revisions"]]
            if any(number < 1 for number in ids):
                self.h.flag("info_revision_ids", "%s lists revision ids %s" % (volume["vid"], ids),
                            "revision_zero_listed")
                continue
            if vol is not None and volume.get("artifacts") != predict_gc.expected_artifacts(volume["vid"], vol):
                self.h.flag("info_artifacts", "%s: reported %s, expected %s" % (
                    volume["vid"], volume.get("artifacts"), predict_gc.expected_artifacts(volume["vid"], vol)))
            if vol is not None and (ids != vol.revision_ids() or [pin["name"] for pin in volume["pins"]]
                                    != sorted(vol.pins)):
                self.h.flag("info_volume", "%s: revisions %s pins %s, model %s %s"
                            % (volume["vid"], ids, volume["pins"], vol.revision_ids(), sorted(vol.pins)))

    # -- odd arguments -----------------------------------------------------------------

    @rule(module=st.sampled_from(["reflink_volume", "reflink_import", "reflink_gc", "reflink_info", "reflink_pin"]),
          variant=st.sampled_from(["lock_timeout", "bad_vid", "bad_vid2", "bad_vid3"]), vid=vids)
    def odd_argument(self, module, variant, vid) -> None:
        bad = {"bad_vid": "appvms/a", "bad_vid2": "appvms/../x/y", "bad_vid3": "appvms/a/b-dirty"}.get(variant)
        if module in ("reflink_gc", "reflink_info"):
            options = self.opts(pool=self.h.pool, vids=[bad] if bad else None)
        else:
            options = self.opts(pool=self.h.pool, vid=bad or vid)
            options.update({"reflink_volume": {"size": 65536}, "reflink_import": {"size": 65536},
                            "reflink_pin": {"name": "p1"}}[module])
        if variant == "lock_timeout":
            options["lock_timeout"] = -1

        def expect(_model, _ctx):
            if variant == "lock_timeout":
                p.lock_timeout_ok(-1)
            raise p.Refuse("bad vid %r" % bad)

        self.h.perform("odd %s %s" % (module, variant), module, options, expect)

    # -- planted states ----------------------------------------------------------------

    @rule(vid=vids, kind=st.sampled_from(["clean~", "import~", "revision~", "pin~", "junk0", "junkx", "junk-1",
                                          "import", "stale_precache"]), old=st.booleans(), seed=seeds)
    def plant_leftover(self, vid, kind, old, seed) -> None:
        self.plant.leftover(vid, kind, old, seed)

    @precondition(lambda self: any(vol.clean is not None for vol in self.h.model.vols.values()))
    @rule(vid=vids, seed=seeds)
    def plant_dirty(self, vid, seed) -> None:
        self.plant.dirty(vid, seed)

    @precondition(lambda self: any(vol.import_ is not None for vol in self.h.model.vols.values()))
    @rule(vid=begun | vids, seed=seeds, extend=st.booleans())
    def writer_writes(self, vid, seed, extend) -> None:
        self.plant.write_import(vid, seed, extend)

    @rule(vm_dir=st.sampled_from(["appvms/a", "appvms/b", "vm-templates/t", "."]))
    def plant_foreign(self, vm_dir) -> None:
        self.plant.foreign(vm_dir)

    @rule(vid=vids)
    def plant_corrupt_journal(self, vid) -> None:
        self.plant.corrupt_journal(vid)

    @precondition(lambda self: len(self.h.holders) < 3 and any(vol.has_files for vol in self.h.model.vols.values()))
    @rule(vid=vids, which=st.sampled_from(["import", "import", "revision", "leftover", "clean", "precache"]))
    def hold_open(self, vid, which) -> None:
        self.plant.hold(vid, which)

    @precondition(lambda self: bool(self.h.holders))
    @rule()
    def release_held(self) -> None:
        self.h.steps.append("release held files")
        self.h.release_holders()

    @precondition(lambda self: self.h.filler is None)
    @rule()
    def fill_disk(self) -> None:
        self.plant.fill()

    @precondition(lambda self: self.h.filler is not None)
    @rule()
    def free_disk(self) -> None:
        self.h.steps.append("free the disk")
        self.h.free_disk()

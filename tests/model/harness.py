# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One step of the model-based test: predict, run in check mode, run for real, run again; check each.

Properties checked around every task (``Harness.perform``):
(a) what a user keeps is where the model says (clean, dirty, revisions, pins,
    files the collection does not own);
(b) a refusal changes nothing on disk and its message says why;
(c) check mode predicts the real run and itself changes nothing;
(d) the same task run again right after changes nothing;
and the contract's invariants (modes, precache, revision ids, no stray tempfiles).
A violation raises an AssertionError subclass named after it (so that
Hypothesis shrinks each kind on its own), unless known_defects.py lists it.
"""

from __future__ import annotations

import collections
import os
import time

import core_api as api
import known_defects
from disk import listing, parse_name, syncfs
from checks import brief, changes, dict_difference, gc_space_problems, is_bare, lost, report_differences, shown_by_diff, strip
from pool_model import PoolModel, Vol
from predict import Ctx, Refuse, RefuseOrWarn, Unsure

_VIOLATIONS: dict[str, type] = {}
STATS: collections.Counter = collections.Counter()   # (task label, how the real run ended) -> count


class KnownDefectSeen(Exception):
    """A known defect showed; the step stops checking and the model is read again."""


def violation_type(name: str) -> type:
    if name not in _VIOLATIONS:
        _VIOLATIONS[name] = type("Violation_" + name, (AssertionError,), {})
    return _VIOLATIONS[name]


class Harness:
    """The pool under test, its model, and the checks around each task."""

    def __init__(self, base: str, kind: str, other_fs: str) -> None:
        self.base = base                      # this example's directory on the file system under test
        self.kind = kind
        self.pool = os.path.join(base, "pool")
        self.other_fs = other_fs              # a directory on another file system (cross-fs sources)
        self.model = PoolModel()
        self.holders: list = []               # (Popen, st_ino) of child processes holding a file open
        self.filler: str | None = None        # the file that fills the file system
        self.steps: list = []                 # what the machine did so far, for the reports
        # vid -> (st_ino, generation) of the import image each begin made, as the disk showed it right after:
        # the model's own record of the begun file (not the journal's).
        self.begun: dict = {}
        self.counter = 0

    # -- the disk ------------------------------------------------------------

    def snapshot(self, locks: bool = False) -> dict:
        found = listing(self.base, locks=locks)
        found.update(listing(self.other_fs, prefix="@other"))
        return found

    def read_model(self) -> PoolModel:
        model = PoolModel.read(self.pool, self.model.foreign.keys())
        for vid, (ino, generation) in self.begun.items():
            vol = model.vols.get(vid)
            if vol is not None and vol.journal == "begun" and vol.begun_ino == ino:
                vol.begun_gen = generation
        return model

    def ctx(self, snap: dict) -> Ctx:
        held_inos = {ino for _proc, ino in self.holders}
        held = set()
        ages = {}
        now = _now()
        for rel, entry in snap.items():
            parts = rel.split("/")
            if len(parts) != 4 or parts[0] != "pool" or entry.kind != "file":
                continue
            image = parse_name(parts[3])
            if image is None:
                continue
            vid = "%s/%s/%s" % (parts[1], parts[2], image.volume)
            ages[(vid, parts[3])] = now - entry.mtime_ns / 1e9
            if entry.ino in held_inos:
                held.add((vid, parts[3]))
                if image.kind == "import" and not image.tempfile:
                    held.add((vid, "import"))
        return Ctx(reflink=self.kind != "ext4", held=held, full=self.filler is not None, ages=ages)

    # -- violations ----------------------------------------------------------

    def violation(self, name: str, text: str, known: str | None = None) -> None:
        if known is None and ".img.0@" in text:
            known = "revision_zero_listed"   # a junk revision 0 taken for a revision (revert, prune, info)
        text = "%s: %s\n  steps so far:\n    %s" % (name, text, "\n    ".join(self.steps[-40:]))
        if known_defects.is_lenient(known):
            known_defects.record(known, text.split("\n")[0], self.steps)
            raise KnownDefectSeen(known)
        raise violation_type(name)(text + ("\n  (known defect %s, strict)" % known if known else ""))

    def flag(self, name: str, text: str, known: str | None = None) -> None:
        """A violation found outside perform (by a rule looking at a result): a known one is reported."""
        try:
            self.violation(name, text, known)
        except KnownDefectSeen:
            self.model = self.read_model()

    # -- one task --------------------------------------------------------------

    def perform(self, label: str, module: str, options: dict, predict, rerun: bool = True,
                vm_dir: str | None = None) -> api.Outcome | None:
        """Predict, check mode, real run, rerun; check the properties; keep the model in step."""
        self.steps.append("%s %s" % (label, brief(options)))
        before = self.snapshot()
        ctx = self.ctx(before)
        expected = self.model.copy()
        outcome, why, known, explains = "ok", "", None, None
        try:
            explains = predict(expected, ctx)
        except RefuseOrWarn as exc:
            outcome, why, known = "refuse_or_warn", str(exc), exc.known
        except Refuse as exc:
            outcome, why, known = "refuse" if exc.check_knows else "refuse_at_run", str(exc), exc.known
        except Unsure as exc:
            outcome, why = "any", str(exc)
        try:
            return self._perform(module, options, before, ctx, expected, outcome, why, known, explains, rerun, vm_dir)
        except KnownDefectSeen:
            self.model = self.read_model()
            return None

    def _perform(self, module, options, before, ctx, expected, outcome, why, known, explains, rerun, vm_dir):
        with_locks = self.snapshot(locks=True)
        check = api.run(module, options, check=True)
        after_check = self.snapshot(locks=True)
        if after_check != with_locks:
            self.violation("check_mode_changed_disk", "%s: %s" % (module, changes(with_locks, after_check)))
        real = api.run(module, options)
        after = self.snapshot()
        STATS[(self.steps[-1].split(" {")[0], "refused" if real.refusal else "failed" if real.failed
               else "changed" if real.result.get("changed") else "unchanged")] += 1
        planned_only = any("check mode planned" in warning for warning in check.warnings)
        self._check_outcome(check, real, outcome, why, known, ctx, planned_only)
        if real.failed:
            self._after_failure(module, options, real, before, after, expected, ctx, known)
        else:
            self._after_success(module, options, check, real, before, after, expected, outcome, explains, ctx,
                                planned_only, vm_dir)
        if rerun:
            self._rerun(module, options, real, after, ctx, known)
        return real

    def _check_outcome(self, check, real, outcome, why, known, ctx, planned_only):
        if outcome == "refuse_or_warn" and not real.failed and not real.warnings:
            self.violation("ignored_without_warning", "expected a refusal or a warning (%s), the task succeeded "
                           "silently: %s" % (why, brief(real.result)), known)
        if outcome in ("refuse", "refuse_at_run") and not real.failed:
            self.violation("should_refuse", "expected a refusal (%s), the task succeeded: %s"
                           % (why, brief(real.result)), known)
        # A copy refused before it began for want of room (clone.require_room_for_copy) is a lack of space too.
        enospc = "No space left" in real.msg or "no room for a copy" in real.msg
        if outcome in ("refuse", "refuse_or_warn") and real.failed and not check.failed and not planned_only \
                and not (ctx.full and enospc):
            self.violation("check_mode_missed_refusal", "the real run failed (%s) where check mode succeeded: %s"
                           % (real.msg, brief(check.result)), known)
        if outcome == "ok" and real.failed:
            if ctx.full and enospc and ctx.allocates:
                return
            if ctx.full and enospc:
                self.violation("full_disk_failure", "a task that needs no new space failed on a full file system: "
                               "%s" % real.msg, "full_disk_cleanup")
            self.violation("unexpected_failure", "expected success, got: %s" % real.msg)
        if not real.failed and check.failed:
            self.violation("check_failed_real_ok", "check mode failed (%s), the real run succeeded" % check.msg)

    def _after_failure(self, module, options, real, before, after, expected, ctx, known):
        disk_changed = after != before
        if real.refusal and disk_changed:
            self.violation("refusal_changed_disk", "%s; changes: %s" % (real.msg, changes(before, after)), known)
        if not disk_changed and real.result.get("changed"):
            self.violation("failed_but_changed", "nothing changed on disk but changed: true (%s)" % real.msg,
                           "failed_but_changed")
        if disk_changed and not real.result.get("changed"):
            self.violation("failed_changed_false", "the disk changed but changed: false (%s): %s"
                           % (real.msg, changes(before, after)))
        if not real.msg.strip() or is_bare(real.msg):
            self.violation("bare_message", "the message does not say why: %r" % real.msg,
                           "full_disk_cleanup" if ctx.full else None)
        if "No space left" in real.msg and "precache" in real.msg and "revisions_to_keep" not in real.msg:
            self.violation("enospc_precache_advice", real.msg, "enospc_precache_advice")
        if real.refusal:
            self._way_out(module, options, real.msg)
        found = self.read_model()
        gone = lost(self.model, expected, found)
        if gone:
            self.violation("failure_lost_data", "%s; lost: %s" % (real.msg, gone), known)
        self.model = found

    def _way_out(self, module, options, msg):
        """A refusal that names a way out (another task, or an option to set): that task works (in check mode)."""
        vid = options.get("vid")
        shared = {"pool": options.get("pool"), "vid": vid, "qubes_xml": "none"}
        ways = []
        if vid and "state=abort" in msg:
            ways.append(("reflink_import", dict(shared, state="abort")))
        if vid and "reflink_volume state=stopped" in msg:
            ways.append(("reflink_volume", dict(shared, state="stopped")))
        for option in ("discard_dirty", "force", "allow_shrink"):
            # Not for a batch: setting it for the task does not settle another item's refusal.
            if "%s: true" % option in msg and option in api.DEFAULTS[module] and not options.get("volumes"):
                ways.append((module, dict(options, **{option: True})))
        for way_module, way_options in ways:
            outcome = api.run(way_module, way_options, check=True)
            if outcome.failed:
                self.violation("way_out_fails", "the refusal (%s) names a way out, %s %s, which fails: %s"
                               % (msg, way_module, brief(way_options), outcome.msg))

    def _after_success(self, module, options, check, real, before, after, expected, outcome, explains, ctx,
                       planned_only, vm_dir):
        found = self.read_model()
        if module == "reflink_import" and options.get("state") == "begin" and real.result.get("changed"):
            vol = found.vols.get(options.get("vid"))
            if vol is not None and vol.import_ino is not None:
                self.begun[options["vid"]] = (vol.import_ino, vol.import_gen)
                vol.begun_gen = vol.import_gen
        if outcome == "ok":
            differences = expected.differences(found)
            if differences:
                known = explains
                if any(".img.0@" in text for text in differences):
                    known = "revision_zero_listed"
                self.violation("model_mismatch", "; ".join(differences), known)
        self.model = found
        reports = [real.result["volume"]] if isinstance(real.result.get("volume"), dict) else []
        reports += [item for item in real.result.get("volumes", [])
                    if module == "reflink_volume" or options.get("schedule") is not None]
        for report in reports:
            wrong = report_differences(report, found)
            if wrong:
                zero = any(revision["id"] < 1 for revision in report.get("revisions", []))
                self.violation("report_differs", "%s: %s" % (report.get("vid"), "; ".join(wrong)),
                               "revision_zero_listed" if zero else None)
        if module == "reflink_gc":
            self._check_gc_report(real.result, before, after)
        vol = found.vols.get(options.get("vid")) or Vol()
        if "kept_pins" in real.result and real.result["kept_pins"] != sorted(vol.pins):
            self.violation("report_differs", "kept_pins %s, pins on disk %s" % (real.result["kept_pins"], sorted(vol.pins)))
        pin = real.result.get("pin")
        if isinstance(pin, dict):
            on_disk = vol.pins.get(pin.get("name"))
            if on_disk is None or (pin.get("size"), pin.get("timestamp")) != (on_disk[0].size, on_disk[1]):
                self.violation("report_differs", "pin %s, on disk %s" % (pin, on_disk))
        changed = bool(real.result.get("changed"))
        if changed != (after != before):
            self.violation("changed_flag_wrong", "changed: %s but the disk %s: %s"
                           % (changed, "changed" if after != before else "did not change",
                              changes(before, after)))
        if not check.failed and not planned_only:
            left, right = strip(check.result), strip(real.result)
            if left != right:
                self.violation("check_mode_differs", dict_difference(left, right))
        diff = real.result.get("diff")
        # What diff mode shows of a volume: its files' names and sizes (not their inodes).
        images_changed = any(shown_by_diff(rel, before, after) for rel in set(before) | set(after))
        forced_pin = module == "reflink_pin" and options.get("force") and changed
        if (images_changed or forced_pin) and isinstance(diff, dict) and "before" in diff \
                and diff["before"] == diff["after"]:
            self.violation("diff_empty", "changed: true but --diff shows no difference: %s"
                           % brief(real.result.get("actions")), "diff_empty_forced_pin" if forced_pin else None)
        self._invariants(before, after, vm_dir, module, options)

    def _check_gc_report(self, result, before, after):
        """gc's ``removed`` names every image file it removed, and only files that were there."""
        reported = {"pool/" + entry["file"] for entry in result.get("removed", [])}
        images = {rel for rel in before if rel.startswith(("pool/appvms/", "pool/vm-templates/"))
                  and rel.count("/") == 3 and before[rel].kind == "file"}
        gone = {rel for rel in images if rel not in after}
        if gone - reported or reported - images:
            self.violation("gc_report", "removed without a report: %s; reported but not there before: %s"
                           % (sorted(gone - reported), sorted(reported - images)))
        problems = gc_space_problems(result, self.kind)
        if problems:
            self.violation("gc_space", "; ".join(problems))

    def _invariants(self, before, after, vm_dir, module, options):
        temp_before = {rel for rel in before if "~" in rel}
        stray = sorted(rel for rel in after if "~" in rel and rel not in temp_before)
        if stray:
            self.violation("stray_tempfiles", "tempfiles left after a successful task: %s" % stray)
        for rel, entry in after.items():
            parts = rel.split("/")
            ours = (len(parts) == 4 and parts[0] == "pool" and parse_name(parts[3]) is not None) or \
                rel.startswith("pool/.reflink/")
            if ours and entry.kind == "file" and entry.mode != 0o600:
                self.violation("file_mode", "%s has mode %o" % (rel, entry.mode))
        if vm_dir is None and module == "reflink_volume" and options.get("volumes"):
            vm_dir = sorted({os.path.dirname(str(item.get("vid"))) for item in options["volumes"]})
        for one in [vm_dir] if isinstance(vm_dir, str) else vm_dir or []:
            path = os.path.join(self.pool, one)
            was_empty = "pool/" + one in before and not any(rel.startswith("pool/%s/" % one) for rel in before)
            if os.path.isdir(path) and not os.listdir(path) and not was_empty:
                self.violation("empty_vm_dir", "%s is left empty after %s" % (one, module),
                               "abort_leaves_vm_dir" if options.get("state") == "abort" else None)
        ids = {}
        for rel in after:
            parts = rel.split("/")
            image = parse_name(parts[-1]) if len(parts) == 4 and parts[0] == "pool" else None
            if image is not None and image.revision is not None and not image.tempfile:
                ids.setdefault((parts[1], parts[2], image.volume, image.revision), []).append(rel)
        twice = [files for files in ids.values() if len(files) > 1]
        if twice:
            self.violation("revision_id_twice", "two revision files with one id: %s" % twice)

    def _rerun(self, module, options, real, after, ctx, known):
        again = api.run(module, options)
        now = self.snapshot()
        if real.failed:
            converges = "run the task again to finish" in real.msg
            if converges and not ctx.full and again.failed:
                self.violation("rerun_does_not_converge", "the failure said to run the task again, and that "
                               "fails too: %s" % again.msg, known)
            if not again.failed or converges:
                self.model = self.read_model()
                return
            if now != after:
                self.violation("rerun_of_refusal_changed_disk", changes(after, now), known)
            return
        if again.failed:
            self.violation("rerun_failed", again.msg,
                           "full_disk_cleanup" if ctx.full and "No space left" in again.msg else None)
        if again.result.get("changed") or now != after:
            self.violation("rerun_changed", "changed: %s, actions %s; disk: %s"
                           % (again.result.get("changed"), again.result.get("actions"), changes(after, now)))

    # -- holders and the full file system ------------------------------------

    def release_holders(self) -> None:
        for proc, _ino in self.holders:
            proc.kill()
            proc.wait()
        self.holders = []

    def free_disk(self) -> None:
        if self.filler is not None:
            os.unlink(self.filler)
            syncfs(os.path.dirname(self.filler))
            self.filler = None


def _now() -> float:
    return time.time()

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The crash matrix: kill a module with SIGKILL at each of its system calls in turn and check what is left.

For one operation (a Scenario: an initial pool, a module task, and what may be
on disk during and after it):

1. reference run: the task under strace, not killed, in a fresh copy of the
   initial state; it lists the calls per syscall (see reliability_helpers.TRACED)
   and must itself give the intended result;
2. for each syscall S the reference made n times, and each K = 1 .. n+1: a
   fresh initial state, the task under ``strace -e inject=S:signal=SIGKILL:when=K``
   (K = n+1, or more if the count moved, is the run that completes), then:
     - the state right after the kill obeys the scenario's crash rules (clean
       image entirely old or entirely new content, no revision lost that the
       task did not mean to prune, every file with a final name complete, a
       precache with clean's mtime and size has clean's bytes, modes 0600);
     - the same task run again (no strace) succeeds;
     - ``reflink_gc min_age=0`` succeeds and no tempfile is left in the pool;
     - the result is the intended one (bytes, revisions, precache fresh);
     - the task run once more reports ``changed: false``;
3. every step of the reference run (a call that is not a terminal query or
   the module printing its result) must have been a kill point; steps missed
   because the count of an earlier call moved are retried near their position.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import reliability_helpers as rh


@dataclasses.dataclass
class Context:
    """One fresh initial state of a scenario."""

    base: pathlib.Path
    pool: pathlib.Path
    vid: str
    args: dict
    labels: rh.Labels
    stamps: dict = dataclasses.field(default_factory=dict)      # label -> revision timestamp it must carry
    extra: dict = dataclasses.field(default_factory=dict)
    cleanups: list = dataclasses.field(default_factory=list)
    gc_keep: int = 10

    def cleanup(self):
        while self.cleanups:
            self.cleanups.pop()()


@dataclasses.dataclass
class Rules:
    """What a volume may look like: sets of labels (None: the file may be absent)."""

    clean: set
    dirty: set = dataclasses.field(default_factory=lambda: {None})
    import_: set = dataclasses.field(default_factory=lambda: {None})
    revisions: dict = dataclasses.field(default_factory=dict)   # id -> set of labels allowed under that id
    precious: tuple = ()                                        # labels that must be somewhere in the volume


def check_images(ctx, state):
    """Rules that hold in every state: complete known contents, modes, a fresh precache is clean's bytes."""
    problems = []
    uid = __import__("os").geteuid()
    for facts in state.images():
        label = ctx.labels.of(facts)
        if label.startswith("UNKNOWN"):
            problems.append("%s holds %s: neither the old nor the new data" % (facts.name, label))
        if facts.mode != 0o600:
            problems.append("%s has mode %04o, not 0600" % (facts.name, facts.mode))
        if facts.uid != uid:
            problems.append("%s is owned by uid %d, not %d" % (facts.name, facts.uid, uid))
    if state.precache_fresh and state.precache.digest != state.clean.digest:
        problems.append("the precache has clean's mtime and size but %s instead of clean's %s"
                        % (ctx.labels.of(state.precache), ctx.labels.of(state.clean)))
    for name in state.junk:
        problems.append("unexpected file %s" % name)
    for number, (timestamp, facts) in sorted(state.revisions.items()):
        wanted = ctx.stamps.get(ctx.labels.of(facts))
        if wanted is not None and timestamp != wanted:
            problems.append("revision %d (%s) is named with timestamp %s, not %s (the mtime of the clean image it was)"
                            % (number, ctx.labels.of(facts), timestamp, wanted))
    return problems


def check_rules(ctx, state, rules):
    problems = check_images(ctx, state)
    for what, allowed in (("clean", rules.clean), ("dirty", rules.dirty), ("import", rules.import_)):
        found = ctx.labels.of(getattr(state, what if what != "import" else "import_"))
        if found not in allowed:
            problems.append("%s image is %s; allowed: %s" % (what, found or "absent", allowed_text(allowed)))
    for number, (_stamp, facts) in sorted(state.revisions.items()):
        allowed = rules.revisions.get(number)
        if allowed is None:
            problems.append("revision %d (%s) should not exist" % (number, ctx.labels.of(facts)))
        elif ctx.labels.of(facts) not in allowed:
            problems.append("revision %d is %s; allowed: %s" % (number, ctx.labels.of(facts), allowed_text(allowed)))
    present = [ctx.labels.of(facts) for facts in state.images()]
    for label in rules.precious:
        if label not in present:
            problems.append("%s is lost: it is in no image of the volume" % label)
    return problems


def check_final(ctx, state, clean, revisions, dirty=None, precache=True, import_=None):
    """The intended result: exact contents, revisions (by content, oldest first), a fresh precache."""
    problems = check_images(ctx, state)
    for what, wanted, facts in (("clean", clean, state.clean), ("dirty", dirty, state.dirty),
                                ("import", import_, state.import_)):
        if ctx.labels.of(facts) != wanted:
            problems.append("%s image is %s, intended %s" % (what, ctx.labels.of(facts) or "absent", wanted or "absent"))
    found = [ctx.labels.of(facts) for _number, (_stamp, facts) in sorted(state.revisions.items())]
    if found != list(revisions):
        problems.append("revisions are %s (ids %s), intended %s"
                        % (found or "none", sorted(state.revisions) or "none", list(revisions) or "none"))
    if precache is True and not state.precache_fresh:
        problems.append("the precache is %s, intended fresh" % ("stale" if state.precache else "missing"))
    if precache is None and state.precache is not None:
        problems.append("a precache exists, intended none")
    return problems


def allowed_text(labels):
    """A set of labels in words (None: absent), for messages."""
    return ", ".join(sorted("absent" if label is None else label for label in labels))


class Scenario:
    """An operation of the crash matrix.  Subclasses define setup(), crash_rules(), final_problems()."""

    name = ""
    module = ""
    fs = "btrfs"
    run_gc = True
    noise_kills = True   # also kill at the noise calls before the last step (see _jobs)

    def setup(self, base):
        raise NotImplementedError

    def crash_problems(self, ctx, state):
        return check_rules(ctx, state, self.crash_rules(ctx))

    def crash_rules(self, ctx):
        raise NotImplementedError

    def final_problems(self, ctx, state):
        raise NotImplementedError


@dataclasses.dataclass
class Outcome:
    inject: tuple | None
    killed: bool
    killed_call: rh.Call | None
    calls: list
    problems: list


def run_point(scenario, root, inject):
    """One run of the scenario from a fresh initial state, killed at ``inject`` (None: not killed)."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="%s-" % scenario.name, dir=root))
    problems = []
    ctx = None
    try:
        ctx = scenario.setup(base)
        run = rh.run_traced(scenario.module, ctx.args, inject=inject)
        where = "reference run" if inject is None else "kill at %s #%d" % inject
        if run.killed and run.killed_call is not None:
            where += " [%s]" % run.killed_call.signature

        def note(stage, found):
            problems.extend("%s, %s: %s" % (where, stage, item) for item in found)

        if run.killed:
            state = rh.read_state(ctx.pool, ctx.vid)
            note("after the kill", scenario.crash_problems(ctx, state))
            rerun = rh.run_direct(scenario.module, **ctx.args)
            if rerun["failed"]:
                note("rerun", ["the same task run again failed: %s" % rerun.get("msg")])
        elif run.result["failed"]:
            note("run", ["the task failed: %s" % run.result.get("msg")])
        if scenario.run_gc:
            gc = rh.run_direct("reflink_gc", pool=str(ctx.pool), min_age=0, revisions_to_keep=ctx.gc_keep)
            if gc["failed"]:
                note("gc", ["reflink_gc failed: %s" % gc.get("msg")])
        state = rh.read_state(ctx.pool, ctx.vid)
        if state.tempfiles:
            note("after rerun and gc", ["tempfiles left: %s" % ", ".join(state.tempfiles)])
        note("after rerun and gc", scenario.final_problems(ctx, state))
        again = rh.run_direct(scenario.module, **ctx.args)
        if again["failed"] or again.get("changed"):
            note("converged?", ["the task run once more %s: %s" % (
                "failed" if again["failed"] else "still changes something",
                again.get("msg") or again.get("actions"))])
        return Outcome(inject, run.killed, run.killed_call, run.calls, problems)
    finally:
        if ctx is not None:
            ctx.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def _seek(scenario, root, signature, per_name, outcomes):
    """Kill at the step ``signature`` of the reference run, wherever the noise before it moved it.

    The steps (calls that are not noise) of one syscall come in the same order
    in every run; only the number of noise calls between them varies.  From
    each try, the number of steps seen before the kill tells how far to move K.
    """
    name = signature.split("(", 1)[0]
    steps = [call for call in per_name[name] if not call.noise]
    for target in [i for i, call in enumerate(steps) if call.signature == signature]:
        k = per_name[name].index(steps[target]) + 1
        visited = set()
        for _attempt in range(60):
            visited.add(k)
            if (name, k) not in outcomes:
                outcomes[(name, k)] = run_point(scenario, root, (name, k))
            outcome = outcomes[(name, k)]
            if not outcome.killed:
                step = -1           # past the last call: go back
            else:
                passed = len([call for call in outcome.calls if call.name == name and not call.noise])
                if outcome.killed_call is not None and not outcome.killed_call.noise:
                    passed -= 1     # the killed step did not run
                    if passed == target:
                        break       # killed at the step itself
                    step = target - passed
                else:               # killed at noise, after ``passed`` steps
                    step = target + 1 - passed if passed <= target else target - passed
            k = max(1, k + step)
            while k in visited:
                k += 1 if step > 0 else -1
                if k < 1:
                    return


def _jobs(scenario, calls, counts):
    """The kill points (syscall, K) of the matrix: every call of the reference run, and the run past the last.

    A scenario with ``noise_kills = False`` is not killed at the noise calls before its last step: such a
    kill leaves the disk as the kill at the next step does (every call that changes it is traced, and a
    killed call does not run), so only its runtime differs (a batch's in-use checks make dozens of them,
    one per loop device of the host each time).
    """
    last_step = max((i for i, call in enumerate(calls) if not call.noise), default=-1)
    seen = collections.Counter()
    jobs = [(name, counts[name] + 1) for name in counts]
    for i, call in enumerate(calls):
        seen[call.name] += 1
        if scenario.noise_kills or not call.noise or i > last_step:
            jobs.append((call.name, seen[call.name]))
    return sorted(jobs)


def run_matrix(scenario, root, workers=2):
    """Run the whole matrix of ``scenario`` under directory ``root``; returns the report dict."""
    started = time.monotonic()
    reference = run_point(scenario, root, None)
    counts = rh.count_calls(reference.calls)
    per_name = collections.defaultdict(list)
    for call in reference.calls:
        per_name[call.name].append(call)
    jobs = _jobs(scenario, reference.calls, counts)
    outcomes = {}
    with ThreadPoolExecutor(max_workers=workers) as executor:
        for job, outcome in zip(jobs, executor.map(lambda job: run_point(scenario, root, job), jobs), strict=True):
            outcomes[job] = outcome
        # Counts can move between runs (loop devices appear, ...): go on until a run completes.
        for name in sorted(counts):
            k = counts[name] + 1
            while outcomes[(name, k)].killed and k < 3 * counts[name] + 10:
                k += 1
                outcomes[(name, k)] = run_point(scenario, root, (name, k))
        # Every step of the reference run must have been killed at once.
        wanted = collections.Counter(call.signature for call in reference.calls if not call.noise)
        covered = collections.Counter(o.killed_call.signature for o in outcomes.values()
                                      if o.killed_call is not None and not o.killed_call.noise)
        missing = wanted - covered
        # (Other processes attaching loop devices change how many ioctls a run makes before the step.)
        for signature in sorted(missing):
            _seek(scenario, root, signature, per_name, outcomes)
        covered = collections.Counter(o.killed_call.signature for o in outcomes.values()
                                      if o.killed_call is not None and not o.killed_call.noise)
    killed = [o for o in outcomes.values() if o.killed]
    problems = list(reference.problems)
    for job in sorted(outcomes):
        problems.extend(outcomes[job].problems)
    still_missing = wanted - covered
    problems.extend("step %s of the reference run was never a kill point" % s for s in sorted(still_missing))
    return {
        "operation": scenario.name,
        "fs": scenario.fs,
        "module": scenario.module,
        "reference_calls": dict(sorted(counts.items())),
        "steps": sum(wanted.values()),
        "steps_covered": sum((wanted & covered).values()),
        "kill_points": len(killed),
        "disk_kill_points": sum(1 for o in killed if o.killed_call is not None and not o.killed_call.noise),
        "other_kill_points": sum(1 for o in killed if o.killed_call is None or o.killed_call.noise),
        "runs": len(outcomes) + 1,
        "reference_steps": [str(call) for call in reference.calls if not call.noise],
        "problems": problems,
        "seconds": round(time.monotonic() - started, 1),
    }

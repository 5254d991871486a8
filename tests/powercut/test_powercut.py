# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Power cut at any moment: each operation recorded on a write-logging disk and replayed at its crash states.

See powercut_engine.py for the procedure.  The operations are the crash matrix's
scenarios (tests/reliability/test_crash_matrix.py: initial pool, task, crash rules,
intended result); OPERATIONS adds one line per operation and file system.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

import powercut_engine as pe
import reliability_helpers as rh
import test_crash_matrix as cm
import write_log as wl
from dedupe_scenario import Dedupe

BROKEN_COMMIT = pathlib.Path(__file__).resolve().parent / "broken_commit.py"

# Sample sizes between two flushes: chosen so that the whole suite stays within about
# 5 minutes on 2 cores.  POWERCUT_PREFIXES, POWERCUT_SUBSETS and POWERCUT_SEED override
# them for a deeper run (POWERCUT_SUBSETS=20 make test-powercut).
SAMPLING = pe.Sampling(prefixes=int(os.environ.get("POWERCUT_PREFIXES", "2")),
                       subsets=int(os.environ.get("POWERCUT_SUBSETS", "2")),
                       seed=int(os.environ.get("POWERCUT_SEED", "15")))


class ImportSparseCopy(cm.ImportOneShot):
    """reflink_import from a file on another file system: no clone (EXDEV), a sparse copy instead."""

    def __init__(self, fs, outside):
        super().__init__(fs)
        self.name = "import-copy"
        self.outside = outside

    def setup(self, base):
        ctx = super().setup(base)
        source = pathlib.Path(ctx.args["src"])
        away = pathlib.Path(tempfile.mkdtemp(prefix="powercut-src-", dir=self.outside))
        ctx.cleanups.append(lambda: shutil.rmtree(away, ignore_errors=True))
        shutil.copyfile(source, away / source.name)
        source.unlink()
        ctx.args["src"] = str(away / source.name)
        return ctx


# (id, file system, scenario made from ``outside``: a directory on another file system).
OPERATIONS = [
    ("create", "btrfs", lambda outside: cm.Create()),
    ("create", "xfs", lambda outside: cm.Create()),
    ("resize-stopped", "btrfs", lambda outside: cm.ResizeStopped()),
    ("resize-stopped", "xfs", lambda outside: cm.ResizeStopped()),
    ("import-reflink", "btrfs", lambda outside: cm.ImportOneShot("btrfs")),
    ("import-reflink", "xfs", lambda outside: cm.ImportOneShot("xfs")),
    ("import-copy", "btrfs", lambda outside: ImportSparseCopy("btrfs", outside)),
    ("import-copy", "xfs", lambda outside: ImportSparseCopy("xfs", outside)),
    ("import-new-volume", "btrfs", lambda outside: cm.ImportNewVolume()),
    ("import-new-volume", "xfs", lambda outside: cm.ImportNewVolume()),
    ("import-commit", "btrfs", lambda outside: cm.ImportCommit()),
    ("import-commit", "xfs", lambda outside: cm.ImportCommit()),
    ("revert", "btrfs", lambda outside: cm.Revert()),
    ("revert", "xfs", lambda outside: cm.Revert()),
    ("stopped-commit", "btrfs", lambda outside: cm.StoppedCommit()),
    ("stopped-commit", "xfs", lambda outside: cm.StoppedCommit()),
    ("remove", "btrfs", lambda outside: cm.Remove()),
    ("remove", "xfs", lambda outside: cm.Remove()),
    ("gc", "btrfs", lambda outside: cm.Gc()),
    ("gc", "xfs", lambda outside: cm.Gc()),
    ("pin-replace", "btrfs", lambda outside: cm.PinReplace()),
    ("pin-replace", "xfs", lambda outside: cm.PinReplace()),
    ("revert-to-pin", "btrfs", lambda outside: cm.RevertToPin()),
    ("revert-to-pin", "xfs", lambda outside: cm.RevertToPin()),
    ("dedupe", "btrfs", lambda outside: Dedupe("btrfs")),
    ("dedupe", "xfs", lambda outside: Dedupe("xfs")),
]


# One test per operation; its file systems are recorded and replayed at the same time
# (each in a rig of its own: own mount points, own file system UUID), which on 2 cores
# keeps the suite near half its sequential time.
OPERATION_NAMES = list(dict.fromkeys(name for name, _kind, _make in OPERATIONS))
WORKERS = 2


@pytest.mark.parametrize("name", OPERATION_NAMES)
def test_power_cut(name, powercut_tools, powercut_reports):
    runs = [(kind, make_scenario(powercut_tools["ext4"].path))
            for entry_name, kind, make_scenario in OPERATIONS if entry_name == name]
    with ThreadPoolExecutor(max_workers=WORKERS) as executor:
        reports = list(executor.map(
            lambda run: pe.run_operation(powercut_tools["btrfs"].path, name, run[1], run[0], SAMPLING), runs))
    powercut_reports.extend(reports)
    failures = ["%s on %s: %d of %d crash states lose or break something:\n  %s"
                % (name, report["fs"], report["states_with_problems"], report["states"], "\n  ".join(report["problems"]))
                for report in reports if report["problems"]]
    assert all(report["flushes"] > 0 for report in reports), reports
    assert not failures, "\n".join(failures)


def run_broken_commit(module, args):
    """The module run by broken_commit.py (directory fsyncs after renames left out); its result dict."""
    with tempfile.TemporaryDirectory(prefix="powercut-broken-") as work:
        args_path = pathlib.Path(work) / "args.json"
        rh.write_args(args_path, args)
        env = dict(os.environ, PYTHONPATH=str(rh.PYTEST_COLLECTIONS), PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run([sys.executable, str(BROKEN_COMMIT), module, str(args_path)], capture_output=True,
                              text=True, env=env, check=False)
        return rh.parse_result(proc.stdout, {"exit": proc.returncode})


@pytest.mark.parametrize("kind", ["btrfs", "xfs"])
def test_the_harness_finds_renames_without_their_directory_fsync(kind, powercut_tools, powercut_reports):
    """Without the fsync of the directory after each rename, what the module acknowledged is not all durable.

    On btrfs the commit itself (dirty image renamed to the clean one) is lost at the
    module's exit.  On XFS a later fsync of another file forces the whole log, which
    carries the commit's renames too; the last rename (the precache's) has nothing
    after it and is lost.
    """
    report = pe.run_operation(powercut_tools["btrfs"].path, "broken-commit", cm.StoppedCommit(), kind, SAMPLING,
                              runner=run_broken_commit)
    report["broken"] = True
    powercut_reports.append(report)
    at_exit = [problem for problem in report["problems"] if "(the module's exit): acknowledged" in problem]
    wanted = "clean image is old clean, intended dirty" if kind == "btrfs" else "the precache is missing"
    assert any(wanted in problem for problem in at_exit), (
        "the harness did not find what the broken run lost (%s):\n  %s" % (wanted, "\n  ".join(report["problems"])))


def test_crash_states_take_every_flush_point_and_samples_between():
    """The state list of a made-up log: each flush point, the exit's flush, and only writes of one gap added."""
    write, flush = wl.Event(wl.WRITE, 0, 1, b"x"), wl.Event(wl.FLUSH)
    events = [write, write, flush, write, write, write, write, flush, write, write]
    recording = pe.Recording("btrfs", pathlib.Path("base.img"), events, exit_events=8, ctx=None, result={},
                             recorded=pathlib.Path("recorded.img"))
    states = pe.crash_states(recording, pe.Sampling(prefixes=2, subsets=3, seed=1), "made-up")
    plain = sorted(state.durable for state in states if not state.extra)
    assert plain == [0, 2, 7, 10], states
    assert [state.durable for state in states if state.at_exit] == [7], states
    assert all(state.acknowledged == (state.durable >= 7) for state in states), states
    gaps = {0: {0, 1}, 2: {3, 4, 5, 6}, 7: {8, 9}}
    for state in states:
        if state.extra:
            assert set(state.extra) < gaps[state.durable], state
    assert len(states) == len(set(states)), states
    assert pe.crash_states(recording, pe.Sampling(prefixes=2, subsets=3, seed=1), "made-up") == states

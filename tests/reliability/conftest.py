# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the reliability suite (crash matrix, faults, concurrency, bad input, permissions).

The filesystem fixtures (btrfs_dir, xfs_dir, ext4_dir, ...) come from
tests/conftest.py; tests/modules is put on sys.path for module_helpers.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

_HERE = pathlib.Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent, _HERE.parent / "modules"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import reliability_helpers as rh  # noqa: E402

REPORT_PATH = _HERE.parent / "output" / "reliability" / "kill-points.json"
_REPORTS = []


@pytest.fixture(scope="session")
def modrun():
    """``modrun(module, check=False, diff=False, **args)``: the module's result dict (a bare process, no Ansible)."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (make deps)")
    try:
        yield rh.run_direct
    finally:
        rh.close_zygotes()


@pytest.fixture(scope="session")
def kill_point_reports():
    """A list the crash matrix appends its per-operation reports to; written to tests/output/reliability/."""
    return _REPORTS


@pytest.fixture
def loopfs_factory(filesystems, request):
    """``loopfs_factory(kind, size)``: a loop filesystem of this test only, destroyed after it."""
    loopfs = sys.modules["loopfs"]
    made = []

    def make(kind, size):
        fs = loopfs.create(kind, size, "/var/tmp/dom0-reflink-tests")
        made.append(fs)
        return fs

    def destroy():
        for fs in made:
            if os.path.ismount(fs.path):
                # A test that remounted it read-only, or left a process in it, must not block the others.
                subprocess.run(["mount", "-o", "remount,rw", fs.path], capture_output=True, check=False)
            fs.destroy()

    request.addfinalizer(destroy)
    return make


def pytest_terminal_summary(terminalreporter):
    if not _REPORTS:
        return
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    REPORT_PATH.write_text(json.dumps(_REPORTS, indent=2, sort_keys=True) + "\n")
    terminalreporter.write_sep("-", "crash matrix: kill points per operation")
    for report in _REPORTS:
        terminalreporter.write_line(
            "%-28s %-6s %3d kill points (%3d at steps that change the disk, %3d elsewhere), "
            "%3d/%3d steps of the reference run covered, %d problem(s), %.1f s"
            % (report["operation"], report["fs"], report["kill_points"], report["disk_kill_points"],
               report["other_kill_points"], report["steps_covered"], report["steps"], len(report["problems"]),
               report["seconds"]))
    terminalreporter.write_line("details: %s" % REPORT_PATH)

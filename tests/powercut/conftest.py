# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the power-cut suite (tests/powercut, run by ``make test-powercut``).

The session's loop filesystems (``filesystems``) come from tests/conftest.py;
tests/reliability (crash engine, scenarios, module runner) and tests/modules are
put on sys.path.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil
import sys

import pytest

_HERE = pathlib.Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent / "reliability", _HERE.parent, _HERE.parent / "modules"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import powercut_engine as pe  # noqa: E402
import reliability_helpers as rh  # noqa: E402

REPORT_PATH = _HERE.parent / "output" / "powercut" / "crash-states.json"
_REPORTS = []


@pytest.fixture(scope="session")
def powercut_tools(request):
    """The session's loop filesystems, once FUSE, fusermount3 (Debian fuse3) and mfusepy are known to be there.

    What an aborted earlier session left (mounts, loop devices, FUSE mounts) is
    removed first, before the loop filesystems it may hold busy are cleaned up;
    the module runners are closed at the end.
    """
    missing = [name for name in ("fusermount3", "losetup", "mkfs.btrfs", "mkfs.xfs", "btrfs")
               if shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin") is None]
    if importlib.util.find_spec("mfusepy") is None:
        missing.append("mfusepy (tests/requirements.txt)")
    if not pathlib.Path("/dev/fuse").exists():
        missing.append("/dev/fuse")
    if missing:
        pytest.skip("power-cut tests need %s (make deps, make venv)" % ", ".join(missing))
    removed = pe.cleanup_stale_rigs()
    if removed:
        print("powercut: removed leftovers of an earlier session: %s" % ", ".join(removed), file=sys.stderr)
    filesystems = request.getfixturevalue("filesystems")
    try:
        yield filesystems
    finally:
        rh.close_zygotes()


@pytest.fixture(scope="session")
def powercut_reports():
    """A list the tests append their per-operation reports to; printed and written to tests/output/powercut/."""
    return _REPORTS


def pytest_terminal_summary(terminalreporter):
    if not _REPORTS:
        return
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    REPORT_PATH.write_text(json.dumps(_REPORTS, indent=2, sort_keys=True) + "\n")
    terminalreporter.write_sep("-", "power cuts: crash states per operation")
    for report in _REPORTS:
        terminalreporter.write_line(
            "%-24s %-6s %4d writes, %3d flushes, %4d states checked (%3d after the exit), %3d with problems, %5.1f s%s"
            % (report["operation"], report["fs"], report["writes"], report["flushes"], report["states"],
               report["acknowledged_states"], report["states_with_problems"], report["seconds"], "  (expected to fail)" if report.get("broken") else ""))
    terminalreporter.write_line("sampling: %s" % _REPORTS[0]["sampling"])
    terminalreporter.write_line("details: %s" % REPORT_PATH)

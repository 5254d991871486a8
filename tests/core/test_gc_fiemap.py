# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gc's FIEMAP read of a file to remove, when the file was swapped for something else after the scan."""

from __future__ import annotations

import os
import threading
import time

import pytest

from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._plans.gc import GcPlanner, parse_gc_options
from ansible_collections.dom0.reflink.plugins.module_utils._plans.pool import PoolScan
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import Surroundings

REVISION = "private.img.1@2026-01-02T03:04:05Z"
PARAMS = {"min_age": "1h", "import_max_age": "1d", "revisions_to_keep": 0, "revisions_to_keep_per_volume": {},
          "rebuild_precache": False, "remove_orphans": False, "keep_vids": None}


def make_pool_with_a_revision(base):
    pool = base / "pool"
    vm_dir = pool / "appvms" / "work"
    vm_dir.mkdir(parents=True)
    (pool / "vm-templates").mkdir()
    for name in ("private.img", REVISION):
        with open(vm_dir / name, "wb") as handle:
            handle.write(os.urandom(65536))
        os.chmod(vm_dir / name, 0o600)
    return pool, vm_dir


def plan_with(pool, swap):
    """Scan, then ``swap()`` the revision, then plan (the FIEMAP read) in a thread; returns the removal entries."""
    outcome = {}
    with Directory.open_pool(str(pool)) as pool_dir:
        scan = PoolScan.read(pool_dir)
        swap()
        planner = GcPlanner(pool_dir, parse_gc_options(PARAMS), time.time())

        def plan():
            try:
                planner.plan(scan, Surroundings.read(str(pool)), {}, {})
                outcome["entries"] = [action.entry for action in planner.per_volume["appvms/work/private"][1]]
            finally:
                planner.close()

        thread = threading.Thread(target=plan, daemon=True)
        thread.start()
        thread.join(10)
        blocked = thread.is_alive()
        if blocked:   # free it: a writer opening the FIFO releases the reader's open
            os.close(os.open(pool / "appvms" / "work" / REVISION, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(10)
    assert not blocked, "gc blocked opening a FIFO swapped in for an image after the scan"
    return outcome["entries"]


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_file_swapped_after_the_scan_gets_no_figure_and_does_not_block(reflink_dir, kind):
    pool, vm_dir = make_pool_with_a_revision(reflink_dir)
    target = vm_dir / REVISION

    def swap():
        os.unlink(target)
        if kind == "fifo":
            os.mkfifo(target, 0o600)
        else:
            os.symlink(vm_dir / "private.img", target)

    entries = plan_with(pool, swap)
    assert [entry["file"] for entry in entries] == ["appvms/work/" + REVISION]
    assert "exclusive_bytes" not in entries[0]   # no figure for something that is not the scanned image
    assert entries[0]["bytes"] >= 65536          # the scan's own figure stands
    assert os.path.lexists(target)               # planning removes nothing


def test_the_regular_file_scanned_gets_its_figure(reflink_dir):
    pool, _vm_dir = make_pool_with_a_revision(reflink_dir)
    entries = plan_with(pool, lambda: None)
    assert entries[0]["exclusive_bytes"] == 65536

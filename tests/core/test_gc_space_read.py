# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gc's read of the pool's extent maps (what its removals free), when a file was swapped for something else after the scan."""

from __future__ import annotations

import os
import threading
import time

import pytest

from space_helpers import MIB, assert_close, clone, revision_chain, used_bytes

from ansible_collections.dom0.reflink.plugins.module_utils._base.names import parse_vid
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._plans.gc import GcPlanner
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.gc import parse_gc_options
from ansible_collections.dom0.reflink.plugins.module_utils._state.scan import PoolScan
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings

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
    """Scan, then ``swap()`` the revision, then plan (the extent map read) in a thread; returns the removal entries."""
    outcome = {}
    with Directory.open_pool(str(pool)) as pool_dir:
        scan = PoolScan.read(pool_dir)
        swap()
        planner = GcPlanner(pool_dir, parse_gc_options(PARAMS), time.time())

        def plan():
            planner.plan(scan, Surroundings.read(str(pool)), {}, {})
            outcome["entries"] = [action.entry for action in planner.per_volume["appvms/work/private"][1]]

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
    # No figure (XFS: the name is no regular file now), or the scanned inode's (btrfs reads it by its number:
    # gone, it frees nothing); never the figure of what the name leads to now.
    assert entries[0].get("exclusive_bytes", 0) == 0
    assert entries[0]["bytes"] >= 65536          # the scan's own figure stands
    assert os.path.lexists(target)               # planning removes nothing


def test_the_regular_file_scanned_gets_its_figure(reflink_dir):
    pool, _vm_dir = make_pool_with_a_revision(reflink_dir)
    entries = plan_with(pool, lambda: None)
    assert entries[0]["exclusive_bytes"] == 65536


def test_gc_limited_to_some_volumes_counts_what_the_others_share(xfs_dir):
    """vids limits what gc removes, never the map: a block also held by another volume's file is kept.

    On XFS, FIEMAP flags a block shared without naming who shares it: a block
    held by two of the pruned revisions and by a VM cloned from one of them
    would count as freed if that clone were left out of the map.
    """
    region = 4 * MIB
    pool = xfs_dir / "pool"
    chain = revision_chain(pool, "appvms/work/private", pieces=False, region=region)
    oldest, middle, _newest = chain.revisions()
    (pool / "appvms" / "copy").mkdir()
    clone(middle, pool / "appvms" / "copy" / "private.img")   # a VM cloned from an old revision
    with Directory.open_pool(str(pool)) as pool_dir:
        scan = PoolScan.read(pool_dir, [parse_vid("appvms/work/private")])
        planner = GcPlanner(pool_dir, parse_gc_options(PARAMS), time.time())
        planner.plan(scan, Surroundings.read(str(pool)), {}, {})
        entries = [action.entry for action in planner.per_volume["appvms/work/private"][1]]
        figure = planner.reclaimed_bytes(entries)
    # The pruned revisions alone hold only the oldest's first region: their old second and third regions are
    # in the clone too (its newer regions in clean).  Without the clone in the map it would be three regions.
    assert figure == region
    before = used_bytes(pool)
    for path in chain.revisions():
        os.unlink(path)
    assert_close(figure, before - used_bytes(pool), "the revisions, a VM cloned from one of them kept")
    assert oldest.name in entries[0]["file"]

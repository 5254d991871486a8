# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_dedupe's task without Ansible: check mode's figures, the exact accounting, both scopes, on btrfs and XFS.

The module test (tests/modules/test_dedupe.py) runs the whole module on a
larger pool; here the flow is called directly, so that each scope's check
mode can be held against its real run and the file system cheaply.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.extent_maps import read_extent_map
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.space import SpaceMap
from ansible_collections.dom0.reflink.plugins.module_utils._state.scan import PoolScan
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.dedupe import run_dedupe_task
from dedupe_helpers import MIB, PRIVATE_VID, ROOT_VIDS, build_restored_pool, ideal_bytes, image_paths, snapshot
from space_helpers import assert_close, pool_images, used_bytes

ALL_VIDS = sorted([PRIVATE_VID] + ROOT_VIDS)


def physical_maps(paths):
    """{path: ((logical, physical, length), ...)} of the images, dirty pages written first."""
    found = {}
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            found[path] = tuple((extent.logical, extent.physical, extent.length) for extent in read_extent_map(fd))
        finally:
            os.close(fd)
    return found


def run(pool, check, scope, **params):
    return run_dedupe_task(dict({"pool": str(pool), "vids": None, "scope": scope, "lock_timeout": 10,
                                 "qubes_xml": "none"}, **params), check, True)


@pytest.mark.parametrize("scope", ["volume", "pool"])
def test_check_mode_predicts_the_real_run_and_the_figures_are_the_file_systems(reflink_dir, scope):
    pool = build_restored_pool(reflink_dir / "pool")
    paths = image_paths(pool)
    ideal = ideal_bytes(pool) if scope == "pool" else ideal_bytes(pool, [path for path in paths if "private" in path])
    before = snapshot(pool)
    used = used_bytes(reflink_dir)
    maps = physical_maps(paths)
    predicted = run(pool, True, scope)
    # Check mode moved no extent (the kernel's FIEMAP), rather than statvfs: btrfs may still be freeing what
    # an earlier test of the session removed, and the syncfs of the task's reading lets that show here.
    assert physical_maps(paths) == maps and snapshot(pool) == before
    done = run(pool, False, scope)
    freed = used - used_bytes(reflink_dir)
    assert snapshot(pool) == before
    assert "warnings" not in done, done["warnings"]
    assert_close(done["reclaimed_bytes"], freed, "reclaimed_bytes against statvfs")
    assert freed >= ideal * 95 // 100, (freed, ideal)
    for key in ("changed", "actions", "deduped_bytes", "rewritten_bytes", "skipped"):
        assert predicted[key] == done[key], key
    assert_close(predicted["reclaimed_bytes"], done["reclaimed_bytes"], "check mode's reclaimed_bytes")
    assert [entry["vid"] for entry in done["volumes"]] == ALL_VIDS
    assert sum(entry["reclaimed_bytes"] for entry in done["volumes"]) == done["reclaimed_bytes"]
    for guess, real in zip(predicted["volumes"], done["volumes"], strict=True):
        assert guess["deduped_bytes"] == real["deduped_bytes"], real["vid"]
        assert_close(guess["reclaimed_bytes"], real["reclaimed_bytes"], real["vid"])
        assert_close(predicted["diff"]["after"][real["vid"]]["allocated"], done["diff"]["after"][real["vid"]]["allocated"],
                     real["vid"])
    if scope == "volume":
        assert {entry["vid"]: entry["deduped_bytes"] for entry in done["volumes"]} == dict.fromkeys(ROOT_VIDS, 0) | {
            PRIVATE_VID: 4 * 4 * MIB}
    again = run(pool, False, scope)
    assert (again["changed"], again["deduped_bytes"], again["reclaimed_bytes"], again["actions"]) == (False, 0, 0, [])
    assert again["bytes_read"] < sum(entry["size"] for entry in before.values()) * 5 // 100


def test_the_units_of_a_reading_add_up_to_its_table(reflink_dir):
    """Where each unit lies (what the dedupe's accounting compares) covers every byte the space figures count."""
    pool = build_restored_pool(reflink_dir / "pool")
    with Directory.open_pool(str(pool)) as pool_dir:
        space = SpaceMap.read(pool_dir, pool_images(pool), units=True)
    by_key = {}
    for _start, size, owners, kept in space.sharing.units:
        by_key[(owners, kept)] = by_key.get((owners, kept), 0) + size
    assert by_key == {key: size for key, (size, _stranded) in space.sharing.groups.items()}
    assert sum(by_key.values()) == space.pool.allocated


def test_vids_name_the_volumes_an_empty_list_none_and_an_unknown_one_is_warned_about(reflink_dir):
    pool = build_restored_pool(reflink_dir / "pool")
    with Directory.open_pool(str(pool)) as pool_dir:
        assert sorted(PoolScan.read(pool_dir).volumes) == ALL_VIDS
    nothing = run(pool, False, "volume", vids=[])
    assert (nothing["changed"], nothing["volumes"], nothing["actions"]) == (False, [], [])
    one = run(pool, False, "volume", vids=[PRIVATE_VID, "appvms/nobody/private"])
    assert [entry["vid"] for entry in one["volumes"]] == ["appvms/nobody/private", PRIVATE_VID]
    assert one["warnings"] == ["appvms/nobody/private has no image in the pool: nothing to dedupe"]
    assert one["deduped_bytes"] == 4 * 4 * MIB
    assert all("private" in action for action in one["actions"])

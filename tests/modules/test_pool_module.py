# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_pool through ansible-playbook: set-up on btrfs and XFS, refusal on ext4, removal."""

from __future__ import annotations

import os

from module_helpers import (
    MIB,
    POOL_KEYS,
    assert_failed,
    listing,
    make_pool,
    make_volume,
    pool_listing,
    run_parallel,
)


def _statvfs_size(path):
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def test_pool_present_on_reflink_filesystems(reflink_dir, run_module, request):
    kind = request.node.callspec.params["reflink_dir"]
    pool = reflink_dir / "pool"
    expected = [
        "create pool directory %s" % pool,
        "create %s/appvms/" % pool,
        "create %s/vm-templates/" % pool,
    ]
    check = run_module("reflink_pool", check=True, path=str(pool))
    assert check["changed"] is True and check["actions"] == expected, check
    assert os.listdir(reflink_dir) == []

    result = run_module("reflink_pool", path=str(pool))
    assert result["changed"] is True and not result.get("failed"), result
    assert result["actions"] == expected
    assert sorted(os.listdir(pool)) == ["appvms", "vm-templates"]
    assert all((pool / name).is_dir() and not (pool / name).is_symlink() for name in ("appvms", "vm-templates"))
    report = result["pool"]
    assert set(report) >= POOL_KEYS
    assert report["path"] == str(pool)
    assert report["fstype"] == kind
    assert report["reflink"] is True
    assert report["size"] == _statvfs_size(pool)
    assert 0 < report["usage"] <= report["size"]
    assert check["pool"]["fstype"] == kind and check["pool"]["reflink"] is True

    def outside_metadata(found):
        # The rerun may take the pool lock under pool/.reflink/ (and so touch the pool's mtime).
        return {name: facts for name, facts in found.items() if ".reflink" not in name and name != "pool"}

    before = listing(reflink_dir)
    rerun = run_module("reflink_pool", path=str(pool))
    assert rerun["changed"] is False and rerun["actions"] == [], rerun
    assert rerun["pool"]["reflink"] is True and rerun["pool"]["fstype"] == kind
    assert outside_metadata(listing(reflink_dir)) == outside_metadata(before)


def test_pool_on_ext4_refused_unless_require_reflink_false(ext4_dir, run_module):
    pool = ext4_dir / "pool"
    refused = run_module("reflink_pool", path=str(pool))
    assert_failed(refused, "reflink", "ext4", "require_reflink")
    assert os.listdir(ext4_dir) == []  # the probe left nothing, the pool was not created

    accepted = run_module("reflink_pool", path=str(pool), require_reflink=False)
    assert accepted["changed"] is True and not accepted.get("failed"), accepted
    assert sorted(os.listdir(pool)) == ["appvms", "vm-templates"]
    assert accepted["pool"]["fstype"] == "ext4"
    assert accepted["pool"]["reflink"] is False
    assert accepted["pool"]["size"] == _statvfs_size(pool)


def test_pool_errors_and_removal(btrfs_dir, run_module):
    # Parent missing: an error, nothing made.
    missing = btrfs_dir / "no" / "such" / "pool"
    # A pool with an image: absent refused.  An empty pool (with an empty VM directory): removed.
    (btrfs_dir / "f").mkdir()
    (btrfs_dir / "e").mkdir()
    full = make_pool(btrfs_dir / "f")
    make_volume(full, "appvms/work/private", size=MIB)
    empty = make_pool(btrfs_dir / "e")
    (empty / "vm-templates" / "gone").mkdir()
    before = listing(btrfs_dir)
    parent_missing, full_absent, empty_absent = run_parallel(run_module, [
        ("reflink_pool", {"path": str(missing)}),
        ("reflink_pool", {"path": str(full), "state": "absent"}),
        ("reflink_pool", {"path": str(empty), "state": "absent"}),
    ], workers=3)

    assert_failed(parent_missing, "parent", str(missing.parent))
    assert not (btrfs_dir / "no").exists()

    msg = assert_failed(full_absent, "image", "appvms/work/private.img")
    assert "reflink_volume" in msg
    assert pool_listing(full) == {k[len("f/pool/"):]: v for k, v in before.items()
                                  if k.startswith("f/pool/") and ".reflink" not in k}

    assert empty_absent["changed"] is True and not empty_absent.get("failed"), empty_absent
    assert not empty.exists()
    assert empty_absent["actions"][-1] == "remove pool directory %s" % empty
    assert "remove empty VM directory %s/vm-templates/gone" % empty in empty_absent["actions"]
    assert empty_absent["pool"]["fstype"] == "btrfs"

    rerun = run_module("reflink_pool", path=str(empty), state="absent")
    assert rerun["changed"] is False and rerun["actions"] == [] and not rerun.get("failed"), rerun
    assert sorted(os.listdir(btrfs_dir)) == ["e", "f"]

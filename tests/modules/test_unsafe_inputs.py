# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bad volume ids and planted symlinks: the modules fail clearly and touch nothing."""

from __future__ import annotations

import os

from module_helpers import (
    MIB,
    assert_failed,
    listing,
    make_pool,
    make_volume,
    pool_listing,
    run_parallel,
)


def test_bad_vids_fail_and_change_nothing(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, "appvms/work/private", size=MIB)
    (btrfs_dir / "etc").mkdir()  # what appvms/../../etc would reach from the VM directory level
    absolute = str(pool / "appvms" / "work" / "private")
    cases = [
        ("reflink_volume", {"vid": "appvms/../../etc", "size": "1M"}, ["appvms/../../etc"]),
        ("reflink_volume", {"vid": "appvms/../../etc", "state": "absent"}, ["appvms/../../etc"]),
        ("reflink_volume", {"vid": "appvms/../etc", "size": "1M"}, ["VM name", "'..'"]),
        ("reflink_volume", {"vid": absolute, "state": "absent"}, ["absolute"]),
        ("reflink_volume", {"vid": "other/work/private", "size": "1M"}, ["prefix", "appvms", "vm-templates"]),
        ("reflink_info", {"vids": ["appvms/work/private", "appvms/../../etc"]}, ["appvms/../../etc"]),
    ]
    before = listing(btrfs_dir)
    results = run_parallel(run_module, [(name, dict(args, pool=str(pool))) for name, args, _expected in cases], workers=3)
    for (_name, _args, words), result in zip(cases, results, strict=True):
        assert_failed(result, *words)
    assert listing(btrfs_dir) == before


def test_planted_symlinks_are_refused(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    outside = btrfs_dir / "outside"
    outside.mkdir()
    (outside / "private.img").write_bytes(b"not a volume\n")
    (outside / "secret.img").write_bytes(b"secret\n")
    os.symlink(outside, pool / "appvms" / "evil")                       # a VM directory
    make_volume(pool, "appvms/work/data", size=MIB)
    os.symlink(outside / "secret.img", pool / "appvms" / "work" / "private.img")  # an image name
    outside_before = listing(outside)
    pool_before = pool_listing(pool)
    cases = [
        {"vid": "appvms/evil/private", "size": "1M"},
        {"vid": "appvms/evil/private", "size": "2M"},
        {"vid": "appvms/evil/private", "state": "absent"},
        {"vid": "appvms/evil/private", "state": "stopped"},
        {"vid": "appvms/work/private", "size": "1M"},
    ]
    results = run_parallel(run_module, [("reflink_volume", dict(args, pool=str(pool))) for args in cases],
                           workers=3)
    for args, result in zip(cases, results, strict=True):
        msg = assert_failed(result, "symlink")
        assert ("appvms/evil" if "evil" in args["vid"] else "private.img") in msg, msg
    assert listing(outside) == outside_before
    assert (outside / "private.img").read_bytes() == b"not a volume\n"
    assert (outside / "secret.img").read_bytes() == b"secret\n"
    assert pool_listing(pool) == pool_before
    assert os.readlink(pool / "appvms" / "evil") == str(outside)

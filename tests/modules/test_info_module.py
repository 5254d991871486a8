# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_info through ansible-playbook on a pool holding every kind of leftover."""

from __future__ import annotations

import os

from module_helpers import (
    MIB,
    T0,
    VOLUME_KEYS,
    allocated,
    listing,
    make_pool,
    make_volume,
    put_file,
    run_parallel,
    stamp,
    start_volume,
)

JUNK = "private.img.x@2026-01-01T00:00:00Z"


def _messy_pool(base):
    pool = make_pool(base)
    work = pool / "appvms" / "work"
    # data and data2: tempfiles of each must go to the right volume (Qubes' glob mixes them up).
    make_volume(pool, "appvms/work/data", size=2 * MIB)
    put_file(work / "data.img~abcd1234", MIB)
    put_file(work / "data-precache.img~a1b2c3d4", MIB)
    make_volume(pool, "appvms/work/data2", size=MIB, seed=3)
    put_file(work / "data2.img~zzzz9999", MIB)
    # private: an import image, a junk revision name, one good revision.
    make_volume(pool, "appvms/work/private", size=MIB, revisions=[(1, T0 - 60)])
    put_file(work / "private-import.img", MIB, [(0, 4096)])
    put_file(work / JUNK, MIB)
    (work / "firewall.xml").write_text("<firewall/>\n")
    # A stale precache (its mtime differs from clean's).
    make_volume(pool, "vm-templates/tpl/root", size=MIB)
    os.utime(pool / "vm-templates" / "tpl" / "root-precache.img", (T0 - 5, T0 - 5))
    # A halted VM with a pending commit.
    make_volume(pool, "appvms/halted/private", size=MIB)
    start_volume(pool, "appvms/halted/private")
    # A volume with revisions only (its clean image is gone).
    (pool / "appvms" / "oldvm").mkdir()
    put_file(pool / "appvms" / "oldvm" / ("private.img.1@" + stamp(T0 - 20)), MIB, mtime=T0 - 20)
    put_file(pool / "appvms" / "oldvm" / ("private.img.2@" + stamp(T0 - 10)), MIB, mtime=T0 - 10)
    # Planted symlinks: as an image name, and as a VM directory.
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.img").write_bytes(b"secret\n")
    (pool / "appvms" / "linked").mkdir()
    os.symlink(outside / "secret.img", pool / "appvms" / "linked" / "root.img")
    os.symlink(outside, pool / "appvms" / "evil")
    return pool


def test_info_reports_every_leftover(btrfs_dir, run_module):
    pool = _messy_pool(btrfs_dir)
    before = listing(btrfs_dir)
    real, check, only = run_parallel(run_module, [
        ("reflink_info", {"pool": str(pool)}),
        ("reflink_info", {"pool": str(pool), "check": True}),
        ("reflink_info", {"pool": str(pool), "vids": ["vm-templates/nothere/root", "appvms/work/data2"]}),
    ], workers=3)
    assert listing(btrfs_dir) == before  # read-only, check mode or not

    for result in (real, check, only):
        assert result["changed"] is False and not result.get("failed"), result
    assert check["volumes"] == real["volumes"]

    report = real["pool"]
    assert report["path"] == str(pool) and report["fstype"] == "btrfs" and report["reflink"] is True
    assert {"appvms/linked/root.img", "appvms/evil"} <= set(report["unsafe_entries"])

    volumes = {volume["vid"]: volume for volume in real["volumes"]}
    expected_vids = ["appvms/halted/private", "appvms/oldvm/private", "appvms/work/data", "appvms/work/data2",
                     "appvms/work/private", "vm-templates/tpl/root"]
    vids = [volume["vid"] for volume in real["volumes"]]
    assert vids == sorted(vids)
    assert [vid for vid in vids if not vid.startswith("appvms/linked/")] == expected_vids
    for volume in real["volumes"]:
        assert VOLUME_KEYS | {"artifacts"} <= set(volume) and "path" not in volume

    def artifacts(vid):
        return volumes[vid]["artifacts"]

    assert artifacts("appvms/work/data")["tempfiles"] == ["data-precache.img~a1b2c3d4", "data.img~abcd1234"]
    assert artifacts("appvms/work/data2")["tempfiles"] == ["data2.img~zzzz9999"]
    for vid in ("appvms/work/data", "appvms/work/data2"):
        assert volumes[vid]["state"] == "stopped" and volumes[vid]["precache"] == "fresh"
        assert artifacts(vid)["import_image"] is None and artifacts(vid)["junk_revisions"] == []
    assert volumes["appvms/work/data"]["size"] == 2 * MIB
    assert volumes["appvms/work/data2"]["size"] == MIB

    private = volumes["appvms/work/private"]
    assert private["artifacts"] == {"tempfiles": [], "import_image": "private-import.img",
                                    "junk_revisions": [JUNK], "stale_precache": None}
    assert private["revisions"] == [{"id": 1, "timestamp": stamp(T0 - 60)}]
    assert private["state"] == "stopped" and private["in_use"] is False and private["in_use_reasons"] == []
    assert private["image"] == str(pool / "appvms" / "work" / "private.img")
    assert private["usage"] == allocated(pool / "appvms" / "work" / "private.img")

    tpl = volumes["vm-templates/tpl/root"]
    assert tpl["precache"] == "stale" and tpl["artifacts"]["stale_precache"] == "root-precache.img"

    halted = volumes["appvms/halted/private"]
    dirty = pool / "appvms" / "halted" / "private-dirty.img"
    assert halted["state"] == "dirty" and halted["in_use"] is True
    assert any("private-dirty.img" in reason for reason in halted["in_use_reasons"]), halted
    assert halted["size"] == os.stat(dirty).st_size and halted["usage"] == allocated(dirty)
    assert halted["precache"] == "missing"

    oldvm = volumes["appvms/oldvm/private"]
    assert oldvm["state"] == "absent" and oldvm["size"] == 0 and oldvm["usage"] == 0
    assert oldvm["revisions"] == [{"id": 1, "timestamp": stamp(T0 - 20)}, {"id": 2, "timestamp": stamp(T0 - 10)}]
    assert oldvm["in_use"] is False and oldvm["precache"] == "missing"

    # vids: only those, sorted, a missing one reported absent.
    assert [volume["vid"] for volume in only["volumes"]] == ["appvms/work/data2", "vm-templates/nothere/root"]
    assert only["volumes"][0] == volumes["appvms/work/data2"]
    nothere = only["volumes"][1]
    assert (nothere["state"], nothere["size"], nothere["revisions"], nothere["in_use"]) == ("absent", 0, [], False)
    assert nothere["artifacts"]["tempfiles"] == []

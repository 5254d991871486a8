# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_info's findings: each kind planted for real, and gone once the way out its message names is taken.

A pool made and used only by the modules and qubesd has no warning: that is
held in test_info_space.py, on the pool its figures are checked on.
"""

from __future__ import annotations

import contextlib
import os
import subprocess

from qubes_xml_helpers import Domain, qubes_xml, reflink_pool
from qubes_xml_helpers import Volume as XmlVolume
from space_helpers import (MIB, Volume, fs_kind, large_filesystems, large_reflink_dir, tool_env, used_bytes,
                           write_fragmented)

from module_helpers import T0, make_pool, make_volume, run_parallel, start_volume

__all__ = ["large_filesystems", "large_reflink_dir"]   # fixtures

NOCOW_VID = "vm-templates/nocow/root"
DIO_VID = "appvms/dio/private"
SIZE_VID = "appvms/size/private"
STALE_VID = "appvms/stale/private"
PENDING_VID = "appvms/pending/private"


def ok(result):
    assert not result.get("failed"), result
    return result


def kinds(result):
    """(kind, vid, file, severity) of every finding, in the order reported."""
    return [(finding["kind"], finding["vid"], finding["file"], finding["severity"]) for finding in result["findings"]]


def message(result, kind, vid, file=None):
    """The message of the first finding of ``kind`` about ``vid`` (and ``file``, if given)."""
    return next(finding["msg"] for finding in result["findings"] if (finding["kind"], finding["vid"]) == (kind, vid)
                and file in (None, finding["file"]))


def chattr(flag, *paths):
    subprocess.run(["chattr", flag] + [str(path) for path in paths], check=True, env=tool_env())


@contextlib.contextmanager
def direct_io_loop(path):
    """A loop device over ``path`` with direct I/O on, detached at the end whatever happens."""
    device = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(path)], check=True,
                            capture_output=True, text=True, env=tool_env()).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False, env=tool_env())


def write_xml(base, pool, sizes):
    domains = [Domain("AppVM", vid.split("/")[1], [XmlVolume(vid.split("/")[2], "varlibqubes", vid, False, True,
                                                             size)], number)
               for number, (vid, size) in enumerate(sorted(sizes.items()), start=2)]
    path = base / "qubes.xml"
    path.write_text(qubes_xml([reflink_pool("varlibqubes", pool)], domains), encoding="utf-8")
    return str(path)


def test_cheap_findings_and_their_ways_out(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    chattr("+C", pool, pool / "vm-templates")   # appvms/ is made already: it does not inherit it
    make_volume(pool, NOCOW_VID, size=2 * MIB)  # its VM directory and images inherit No_COW
    for vid in (DIO_VID, SIZE_VID, STALE_VID, PENDING_VID):
        make_volume(pool, vid, size=2 * MIB)
    os.utime(pool / (STALE_VID + "-precache.img"), (T0 - 5, T0 - 5))
    start_volume(pool, PENDING_VID)   # a VM that started, wrote, and never stopped cleanly
    sizes = dict.fromkeys((NOCOW_VID, DIO_VID, SIZE_VID, STALE_VID, PENDING_VID), 2 * MIB)
    xml = write_xml(btrfs_dir, pool, dict(sizes, **{SIZE_VID: 3 * MIB}))
    common = {"pool": str(pool), "qubes_xml": xml}
    with direct_io_loop(pool / (DIO_VID + ".img")) as device:
        found, cheap = run_parallel(run_module, [("reflink_info", dict(space=True, **common)),
                                                 ("reflink_info", dict(check=True, **common))])
        # Without space, an image's No_COW is not read (its directory's is): only the cheap checks run.
        assert kinds(ok(cheap)) == [entry for entry in kinds(ok(found)) if entry[:2] != ("nocow", NOCOW_VID)]
        assert kinds(found) == [
            ("nocow", None, None, "warning"),
            ("nocow", None, "vm-templates", "warning"),
            ("nocow", None, "vm-templates/nocow", "warning"),
            ("direct_io_loop", DIO_VID, DIO_VID + ".img", "warning"),
            ("pending_commit", PENDING_VID, PENDING_VID + "-dirty.img", "warning"),
            ("size_mismatch", SIZE_VID, SIZE_VID + ".img", "info"),
            ("stale_precache", STALE_VID, STALE_VID + "-precache.img", "info"),
            ("nocow", NOCOW_VID, NOCOW_VID + "-precache.img", "warning"),
            ("nocow", NOCOW_VID, NOCOW_VID + ".img", "warning"),
        ]
        for finding in found["findings"]:
            assert "way out" in finding["msg"], finding
        clean = pool / (NOCOW_VID + ".img")
        assert "chattr -C %s" % pool in message(found, "nocow", None)
        assert "cp --reflink=never --preserve=timestamps %s %s.copy && mv %s.copy %s" % (clean, clean, clean, clean) \
            in message(found, "nocow", NOCOW_VID, NOCOW_VID + ".img")
        assert "rm %s" % (pool / (NOCOW_VID + "-precache.img")) in message(found, "nocow", NOCOW_VID)
        assert "losetup --direct-io=off %s" % device in message(found, "direct_io_loop", DIO_VID)
        assert "state: stopped" in message(found, "pending_commit", PENDING_VID)
        assert "size: %d" % (3 * MIB) in message(found, "size_mismatch", SIZE_VID)
        assert "reflink_volume with vid: %s" % STALE_VID in message(found, "stale_precache", STALE_VID)

        # The ways out, as the messages name them.
        chattr("-C", pool, pool / "vm-templates", pool / "vm-templates" / "nocow")
        way_out = f"cp --reflink=never --preserve=timestamps {clean} {clean}.copy && mv {clean}.copy {clean}"
        subprocess.run(way_out, shell=True, check=True)  # noqa: S602  (the command as the message gives it)
        os.unlink(pool / (NOCOW_VID + "-precache.img"))
        subprocess.run(["losetup", "--direct-io=off", device], check=True, env=tool_env())
        ok(run_module("reflink_volume", volumes=[{"vid": NOCOW_VID}, {"vid": SIZE_VID, "size": 3 * MIB},
                                                 {"vid": STALE_VID}, {"vid": PENDING_VID, "state": "stopped"}],
                      **common))
        after = ok(run_module("reflink_info", space=True, **common))
        assert after["findings"] == []
        assert next(volume for volume in after["volumes"] if volume["vid"] == DIO_VID)["in_use"]   # still attached


def test_extent_findings_and_their_ways_out(large_reflink_dir, run_module):
    kind = fs_kind(large_reflink_dir)
    pool = make_pool(large_reflink_dir)
    copied = Volume(pool, "appvms/copied/private", 32 * MIB)
    copied.session([(0, 32 * MIB)], seed=1)
    # A precache made by a copy, not a reflink.
    subprocess.run(["cp", "--reflink=never", "--preserve=timestamps", "--remove-destination", str(copied.clean),
                    str(copied.precache)], check=True)
    full = Volume(pool, "appvms/full/private", 32 * MIB)
    full.session([(0, 32 * MIB)], seed=2)
    full.session([(0, MIB)], seed=3)
    revision = full.revisions()[-1]   # made a full copy of what it holds
    subprocess.run(["cp", "--reflink=never", "--preserve=timestamps", str(revision), str(revision) + ".copy"],
                   check=True)
    os.rename(str(revision) + ".copy", revision)
    frag = Volume(pool, "appvms/frag/private", 12 * MIB)
    frag.precache.unlink()
    write_fragmented(frag.clean, 3 * 1024)   # 3,072 extents in 12 MiB
    subprocess.run(["cp", "--reflink=always", "--preserve=timestamps", str(frag.clean), str(frag.precache)], check=True)
    strand = Volume(pool, "appvms/strand/private", 64 * MIB)
    strand.session([(0, 64 * MIB)], seed=4, keep=0)          # one 64 MiB extent on btrfs
    strand.session([(16 * MIB, 48 * MIB)], seed=5, keep=0)   # rewrites 48 MiB of it; no revision kept
    common = {"pool": str(pool), "qubes_xml": "none"}
    used_bytes(pool)
    found = ok(run_module("reflink_info", space=True, **common))
    expected = [
        ("not_shared", "appvms/copied/private", "appvms/copied/private-precache.img", "warning"),
        ("fragmented", "appvms/frag/private", "appvms/frag/private.img", "info"),
        ("not_shared", "appvms/full/private", os.path.relpath(revision, pool), "info"),
    ]
    if kind == "btrfs":
        expected.append(("stranded", "appvms/strand/private", None, "info"))
    assert kinds(found) == expected
    assert "in 3072 extents" in message(found, "fragmented", "appvms/frag/private")
    assert "reflink_dedupe" in message(found, "not_shared", "appvms/full/private")
    strand_space = next(volume for volume in found["volumes"] if volume["vid"] == "appvms/strand/private")["space"]
    clean = strand.clean
    rewrite = f"cp --reflink=never --preserve=timestamps {clean} {clean}.copy && mv {clean}.copy {clean}"
    if kind == "btrfs":
        assert strand_space["stranded"] == 48 * MIB and strand_space["allocated"] == 112 * MIB
        assert rewrite in message(found, "stranded", strand.vid)
    else:
        assert strand_space["stranded"] == 0

    # The ways out, as the messages name them.  The stranded bytes first, alone: the filesystem's own count of
    # what its way out frees is the truth for the figure (on XFS, where nothing is stranded, the same rewrite
    # frees nothing).
    before = used_bytes(pool)
    subprocess.run(rewrite, shell=True, check=True)  # noqa: S602  (the command as the message gives it)
    strand.precache.unlink()
    freed = before - used_bytes(pool)
    tolerance = MIB + 0.01 * strand_space["stranded"]
    assert abs(freed - strand_space["stranded"]) <= tolerance, (freed, strand_space["stranded"])
    defragment = ["btrfs", "filesystem", "defragment", "-t", "128M"] if kind == "btrfs" else ["xfs_fsr"]
    assert " ".join(defragment + [str(frag.clean)]) in message(found, "fragmented", frag.vid)
    subprocess.run(defragment + [str(frag.clean)], check=True, capture_output=True, env=tool_env())
    for volume in (copied, frag):
        volume.precache.unlink()
    ok(run_module("reflink_gc", revisions_to_keep=0, vids=[full.vid], **common))
    ok(run_module("reflink_volume", volumes=[{"vid": volume.vid} for volume in (copied, frag, strand)], **common))
    used_bytes(pool)
    after = ok(run_module("reflink_info", space=True, **common))
    assert after["findings"] == []

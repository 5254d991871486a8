# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_info's reading of a whole pool's space: files that vanish meanwhile, extent counts, shared bytes."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

from space_helpers import MIB, Volume, space_map, tool_env, used_bytes, write_fragmented

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.pool_space import PoolSpaceReport
from ansible_collections.dom0.reflink.plugins.module_utils._state.scan import PoolScan

VID = "appvms/work/private"
COLLECTIONS = str(pathlib.Path(__file__).resolve().parents[2] / "build" / "pytest-collections")   # conftest's


def make_pool(base):
    for prefix in names.PREFIXES:
        (base / prefix).mkdir()
    volume = Volume(base, VID, 8 * MIB)
    volume.session([(0, 4 * MIB)], seed=1)
    Volume(base, "vm-templates/tpl/root", 8 * MIB).session([(0, 2 * MIB)], seed=2)
    return volume


def test_a_file_that_vanishes_before_its_extents_are_read(reflink_dir):
    """qubesd removes or renames files at any moment: a file gone since the scan counts as empty and is named."""
    volume = make_pool(reflink_dir)
    used_bytes(reflink_dir)
    with Directory.open_pool(str(reflink_dir)) as pool_dir:
        scan = PoolScan.read(pool_dir)
        revision = volume.revisions()[0]
        os.unlink(revision)
        os.rename(volume.precache, volume.dirty)   # a start: the precache's name is gone, its inode is not
        report = PoolSpaceReport.read(pool_dir, scan)
    gone = os.path.relpath(revision, reflink_dir)
    assert gone in report.vanished
    (warning,) = report.warnings("btrfs" if "btrfs" in str(reflink_dir) else "xfs")
    assert gone in warning and "run reflink_info again" in warning
    assert report.volume(VID)["allocated"] == 4 * MIB   # the clean image's data, which the others shared


def test_limited_scan_is_the_scan_of_those_volumes(btrfs_dir):
    make_pool(btrfs_dir)
    (btrfs_dir / "appvms" / "evil").symlink_to("/tmp")
    only = [names.parse_vid(VID), names.parse_vid("appvms/nothere/private")]
    with Directory.open_pool(str(btrfs_dir)) as pool_dir:
        limited = PoolScan.read(pool_dir).limited_to(only)
        direct = PoolScan.read(pool_dir, only)
    assert limited.volumes.keys() == direct.volumes.keys()
    assert [files.all_with_pins() for files in limited.sorted_volumes()] == \
        [files.all_with_pins() for files in direct.sorted_volumes()]
    assert (limited.vm_dirs, sorted(limited.unsafe)) == (direct.vm_dirs, sorted(direct.unsafe))


def test_extent_counts_and_shared_bytes(reflink_dir):
    """A file of 1,024 scattered 4 KiB writes has 1,024 extents (filefrag agrees); its clone shares them all."""
    volume = make_pool(reflink_dir)
    scattered = reflink_dir / "appvms" / "frag" / "private.img"
    scattered.parent.mkdir()
    with open(scattered, "wb") as handle:
        handle.truncate(4 * MIB)
    write_fragmented(scattered, 1024)
    filefrag = subprocess.run(["filefrag", str(scattered)], check=True, capture_output=True, text=True,
                              env=tool_env()).stdout
    space = space_map(reflink_dir)
    assert space.extents_of("appvms/frag/private.img") == int(filefrag.split(":")[1].split()[0]) == 1024
    clean, precache = VID + ".img", VID + "-precache.img"
    revision = os.path.relpath(volume.revisions()[0], reflink_dir)
    shared = space.shared_bytes({precache: clean, revision: clean, "appvms/frag/private.img": clean,
                                 "not/a/file.img": clean})
    assert shared == {precache: 4 * MIB, revision: 0, "appvms/frag/private.img": 0, "not/a/file.img": 0}


NOCOW_READER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.pool_extents import read_sharing
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.space import ImageFile, SpaceMap
files = [ImageFile(name, name.rpartition(".img")[0]) for name in sys.argv[3:]]
space = SpaceMap(files, read_sharing(int(sys.argv[2]), [entry.file for entry in files]))
print(json.dumps({"methods": sorted(space.sharing.methods), "nocow": space.nocow_files()}))
"""


def test_nocow_images_are_read_with_their_extents(btrfs_dir):
    """btrfs's No_COW attribute of each image, from its inode item (root) or its flags (FIEMAP, without root)."""
    make_pool(btrfs_dir)
    flagged = btrfs_dir / "appvms" / "nocow"
    flagged.mkdir()
    subprocess.run(["chattr", "+C", str(flagged)], check=True, env=tool_env())
    nocow = Volume(btrfs_dir, "appvms/nocow/private", 8 * MIB)   # its images inherit the attribute
    nocow.session([(0, MIB)], seed=3)
    expected = sorted(os.path.relpath(path, btrfs_dir) for path in flagged.iterdir())
    assert len(expected) == 3   # clean, precache, the revision
    space = space_map(btrfs_dir)
    assert sorted(space.nocow_files()) == expected
    assert space.sharing.methods == {"btrfs extents"}
    for path in [btrfs_dir, btrfs_dir / "appvms", flagged, btrfs_dir / "vm-templates"] + list(flagged.iterdir()):
        path.chmod(0o755)
    names_read = [entry.file for entry in space.files]
    fd = os.open(btrfs_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        out = subprocess.run(["/usr/bin/python3", "-c", NOCOW_READER, COLLECTIONS, str(fd)] + names_read,
                             user=65534, group=65534, pass_fds=[fd], capture_output=True, text=True, check=False)
    finally:
        os.close(fd)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["methods"] == ["fiemap blocks"]
    assert sorted(found["nocow"]) == expected

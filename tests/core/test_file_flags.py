# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_fs/file_flags.py against chattr and lsattr on real filesystems."""

from __future__ import annotations

import os
import struct
import subprocess

from ansible_collections.dom0.reflink.plugins.module_utils._fs.file_flags import file_flags, getflags_request, has_nocow


def _lsattr_has_c(path):
    out = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return "C" in out.split()[0]


def test_nocow_as_chattr_sets_it(btrfs_dir):
    plain = btrfs_dir / "plain.img"
    marked = btrfs_dir / "marked.img"
    plain.touch()
    marked.touch()   # No_COW takes effect only on an empty file
    subprocess.run(["chattr", "+C", str(marked)], check=True)
    subprocess.run(["chattr", "+C", str(btrfs_dir)], check=True)
    for path, expected in ((plain, False), (marked, True), (btrfs_dir, True)):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert has_nocow(fd) is expected is _lsattr_has_c(path), path
        finally:
            os.close(fd)


def test_other_filesystems_report_no_nocow(xfs_dir, ext4_dir):
    for directory in (xfs_dir, ext4_dir):
        fd = os.open(directory, os.O_RDONLY)
        try:
            assert file_flags(fd) is not None
            assert not has_nocow(fd)
        finally:
            os.close(fd)


def test_request_numbers_of_the_encodings():
    size = struct.calcsize("l") << 16   # _IOR('f', 1, long), as <linux/fs.h> builds it
    assert getflags_request("x86_64") == 0x80006601 | size
    assert getflags_request("aarch64") == 0x80006601 | size
    assert getflags_request("ppc64le") == 0x40006601 | size

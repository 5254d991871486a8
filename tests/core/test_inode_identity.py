# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_fs/inode_identity.py against lsattr -v, and what it is for: a reused inode number gets a new generation."""

from __future__ import annotations

import os
import struct
import subprocess

from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.file_flags import read_long_request
from ansible_collections.dom0.reflink.plugins.module_utils._fs.inode_identity import generation_of, inode_generation


def _lsattr_generation(path):
    out = subprocess.run(["lsattr", "-v", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def test_generation_is_what_lsattr_shows(any_fs_dir):
    path = any_fs_dir / "image.img"
    path.write_bytes(b"x" * 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert inode_generation(fd) == _lsattr_generation(path)
    finally:
        os.close(fd)
    with Directory.open_pool(str(any_fs_dir)) as directory:
        assert generation_of(directory, "image.img") == _lsattr_generation(path)
        assert generation_of(directory, "gone.img") is None


def test_a_reused_inode_number_has_another_generation(ext4_dir):
    # ext4 gives a freed inode number to the next file made: the number alone names two files.
    seen = []
    with Directory.open_pool(str(ext4_dir)) as directory:
        for _round in range(3):
            path = ext4_dir / "import.img"
            path.write_bytes(b"x" * 4096)
            seen.append((os.stat(path).st_ino, generation_of(directory, "import.img")))
            path.unlink()
    assert len({ino for ino, _generation in seen}) == 1, seen
    assert len({generation for _ino, generation in seen}) == 3, seen


def test_no_generation_where_the_filesystem_has_none():
    # A pipe has no inode generation to tell (ENOTTY).
    read_end, write_end = os.pipe()
    try:
        assert inode_generation(read_end) is None
    finally:
        os.close(read_end)
        os.close(write_end)


def test_request_number_of_the_encodings():
    size = struct.calcsize("l") << 16   # FS_IOC_GETVERSION is _IOR('v', 1, long)
    assert read_long_request("v", 1, "x86_64") == 0x80007601 | size
    assert read_long_request("v", 1, "ppc64le") == 0x40007601 | size

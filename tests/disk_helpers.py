# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small helpers shared by the core tests: test images and what is on disk."""

from __future__ import annotations

import os
import random

MIB = 1024 * 1024


def write_image(path, size, segments, seed=1):
    """A sparse file of ``size`` with random data at ``segments`` [(offset, length)]; returns its bytes map."""
    rng = random.Random(seed)
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, length in segments:
            handle.seek(offset)
            handle.write(rng.randbytes(length))
    return path


def allocated(path):
    return os.stat(path).st_blocks * 512


def same_bytes(a, b):
    with open(a, "rb") as left, open(b, "rb") as right:
        while True:
            x = left.read(4 * MIB)
            y = right.read(4 * MIB)
            if x != y:
                return False
            if not x:
                return True


def listing(directory):
    """Every entry below ``directory``: relative path -> (mode, inode, size, mtime_ns)."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            found[os.path.relpath(path, directory)] = (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns)
    return found

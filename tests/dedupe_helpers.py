# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers of the dedupe tests: a small "restored pool", what every image looks like, free space, the ideal."""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import random
import subprocess

from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.extent_maps import read_extent_map
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.run import VolumeDir, dedupe_volumes, settings_for

MIB = 1024 * 1024
KIB = 1024
FICLONE = 0x40049409
T0 = 1_700_000_000 * 10 ** 9
_LIBC = ctypes.CDLL(None, use_errno=True)

ROOT_SIZE = 8 * MIB
PRIVATE_SIZE = 4 * MIB
# Each copy of the root changes 512 KiB at its own offset.
CHANGED = {"tpl-r1": 1 * MIB, "tpl-r2": 3 * MIB, "tpl-r3": 6 * MIB + 256 * KIB}
# Ranges that are holes in every root image, and one that is a hole in tpl-r2 only (data elsewhere).
HOLE = (5 * MIB, 6 * MIB)
HOLE_IN_R2 = (7 * MIB, 7 * MIB + 512 * KIB)
ROOT_VIDS = ["vm-templates/tpl/root"] + ["vm-templates/%s/root" % vm for vm in sorted(CHANGED)]
PRIVATE_VID = "appvms/work/private"


def write_file(path, pieces, size, mtime_ns):
    """A new file of ``size``: ``pieces`` [(offset, bytes)] written, the rest a hole; fsynced; mtime set."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        for offset, data in pieces:
            os.pwrite(fd, data, offset)
        os.fsync(fd)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


def reflink_copy(src, dst):
    """A precache: a reflink of ``src`` with its mtime."""
    src_fd = os.open(src, os.O_RDONLY)
    dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        os.fsync(dst_fd)
        st = os.fstat(src_fd)
        os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(src_fd)
        os.close(dst_fd)


def build_restored_pool(pool, seed=7):
    """A template root and three full copies (512 KiB changed in each), each with a precache; a private
    volume whose three revisions and one pin are full copies of its clean, with a precache."""
    rng = random.Random(seed)
    root = rng.randbytes(ROOT_SIZE)
    private = rng.randbytes(PRIVATE_SIZE)
    (pool / "appvms" / "work").mkdir(parents=True)
    for number, vm in enumerate(["tpl"] + sorted(CHANGED)):
        vm_dir = pool / "vm-templates" / vm
        vm_dir.mkdir(parents=True)
        data = bytearray(root)
        if vm in CHANGED:
            data[CHANGED[vm]:CHANGED[vm] + 512 * KIB] = rng.randbytes(512 * KIB)
        pieces = [(0, bytes(data[:HOLE[0]])), (HOLE[1], bytes(data[HOLE[1]:]))]
        if vm == "tpl-r2":
            pieces = [(0, bytes(data[:HOLE[0]])), (HOLE[1], bytes(data[HOLE[1]:HOLE_IN_R2[0]])),
                      (HOLE_IN_R2[1], bytes(data[HOLE_IN_R2[1]:]))]
        write_file(vm_dir / "root.img", pieces, ROOT_SIZE, T0 + number * 10 ** 9)
        reflink_copy(vm_dir / "root.img", vm_dir / "root-precache.img")
    vm_dir = pool / "appvms" / "work"
    for number in (1, 2, 3):
        write_file(vm_dir / ("private.img.%d@2023-11-1%dT00:00:00Z" % (number, number)), [(0, private)],
                   PRIVATE_SIZE, T0 - (4 - number) * 86400 * 10 ** 9)
    write_file(vm_dir / "private.img.pin-daily", [(0, private)], PRIVATE_SIZE, T0 - 86400 * 10 ** 9)
    write_file(vm_dir / "private.img", [(0, private)], PRIVATE_SIZE, T0)
    reflink_copy(vm_dir / "private.img", vm_dir / "private-precache.img")
    return pool


def image_paths(pool):
    found = []
    for prefix in ("appvms", "vm-templates"):
        for root, _dirs, files in os.walk(pool / prefix):
            found.extend(os.path.join(root, name) for name in files if ".img" in name)
    return sorted(found)


def data_map(fd, size):
    """The (start, end) data segments of an open file (SEEK_DATA/SEEK_HOLE)."""
    segments = []
    position = 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        segments.append((start, end))
        position = end
    return segments


def snapshot(pool):
    """Per image: sha256, size, mode, inode, mtime, ctime and its data segments."""
    found = {}
    for path in image_paths(pool):
        st = os.lstat(path)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        digest = hashlib.sha256()
        fd = os.open(path, os.O_RDONLY)
        try:
            while True:
                data = os.read(fd, 4 * MIB)
                if not data:
                    break
                digest.update(data)
            holes = data_map(fd, st.st_size)
        finally:
            os.close(fd)
        found[os.path.relpath(path, pool)] = {
            "sha256": digest.hexdigest(), "size": st.st_size, "mode": st.st_mode, "inode": st.st_ino,
            "mtime": st.st_mtime_ns, "ctime": st.st_ctime_ns, "data": holes}
    return found


def used_bytes(path):
    """Bytes in use on the file system of ``path`` (statvfs), after everything is written and committed."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _LIBC.syncfs(fd)
    finally:
        os.close(fd)
    if subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True,
                      check=True).stdout.strip() == "btrfs":
        subprocess.run(["btrfs", "filesystem", "sync", str(path)], capture_output=True, check=True)
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def ideal_bytes(pool, paths=None, block=4096):
    """Per offset: distinct physical blocks minus distinct contents, over the given images (all by default)."""
    paths = paths or image_paths(pool)
    fds = [os.open(path, os.O_RDONLY) for path in paths]
    try:
        maps = [[extent for extent in read_extent_map(fd) if extent.dedupable] for fd in fds]
        cursor = [0] * len(fds)
        size = max(os.fstat(fd).st_size for fd in fds)
        total = 0
        for chunk in range(0, size, MIB):
            datas = [os.pread(fd, MIB, chunk) for fd in fds]
            for offset in range(chunk, min(chunk + MIB, size), block):
                physical, contents = set(), set()
                for index, extents in enumerate(maps):
                    while cursor[index] < len(extents) and \
                            extents[cursor[index]].logical + extents[cursor[index]].length <= offset:
                        cursor[index] += 1
                    if cursor[index] < len(extents) and extents[cursor[index]].logical <= offset:
                        extent = extents[cursor[index]]
                        physical.add(extent.physical + offset - extent.logical)
                        contents.add(datas[index][offset - chunk:offset - chunk + block])
                total += (len(physical) - len(contents)) * block
        return total
    finally:
        for fd in fds:
            os.close(fd)


def restored_pool(pool, root_size, changed, private_size, seed=11):
    """The spec's "restored pool", as a restore writes it (1 MiB pieces, one fsync per file).

    A template root (vm-templates/tpl/root) and three full copies of it
    (tpl-r1..3) with ``changed`` bytes rewritten, each at a place of its own;
    every root has a hole of 1 MiB at the same place and a precache (a reflink
    with its mtime).  A private volume (appvms/work/private) whose three
    revisions and one pin are full copies of its clean, with a precache.
    Returns {vid: [paths of its images]}.
    """
    rng = random.Random(seed)
    root = [rng.randbytes(MIB) for _index in range(root_size // MIB)]
    private = [rng.randbytes(MIB) for _index in range(private_size // MIB)]
    hole = root_size // MIB // 2
    images = {}
    for number, vm in enumerate(["tpl", "tpl-r1", "tpl-r2", "tpl-r3"]):
        vm_dir = pool / "vm-templates" / vm
        vm_dir.mkdir(parents=True)
        data = list(root)
        if number:
            first = max(0, number * len(root) // 4 - changed // MIB)
            first = first if not first <= hole < first + changed // MIB else hole + 1
            for index in range(first, first + changed // MIB):
                data[index] = rng.randbytes(MIB)
        pieces = [(index * MIB, piece) for index, piece in enumerate(data) if index != hole]
        write_file(vm_dir / "root.img", pieces, root_size, T0 + number * 10 ** 9)
        reflink_copy(vm_dir / "root.img", vm_dir / "root-precache.img")
        images["vm-templates/%s/root" % vm] = [vm_dir / "root.img", vm_dir / "root-precache.img"]
    vm_dir = pool / "appvms" / "work"
    vm_dir.mkdir(parents=True)
    pieces = [(index * MIB, piece) for index, piece in enumerate(private)]
    names = ["private.img.%d@2023-11-1%dT00:00:00Z" % (number, number) for number in (1, 2, 3)]
    for number, name in enumerate(names, 1):
        write_file(vm_dir / name, pieces, private_size, T0 - (4 - number) * 86400 * 10 ** 9)
    write_file(vm_dir / "private.img.pin-daily", pieces, private_size, T0 - 86400 * 10 ** 9)
    write_file(vm_dir / "private.img", pieces, private_size, T0)
    reflink_copy(vm_dir / "private.img", vm_dir / "private-precache.img")
    images[PRIVATE_VID] = [vm_dir / name for name in ["private.img", "private-precache.img", "private.img.pin-daily"]
                           + names]
    return images


def volume_dirs(pool, vids):
    """Open VM directories (closed by the caller with close_dirs) for dedupe_volumes."""
    found = []
    opened = {}
    for vid in vids:
        prefix, vm, volume = vid.split("/")
        vm_dir = "%s/%s" % (prefix, vm)
        if vm_dir not in opened:
            opened[vm_dir] = os.open(pool / vm_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        found.append(VolumeDir(vid, opened[vm_dir], vm_dir, volume))
    return found


def run_dedupe(pool, vids, scope, settings, execute, in_use=None):
    volumes = volume_dirs(pool, vids)
    try:
        return dedupe_volumes(volumes, scope, settings, execute, in_use)
    finally:
        for fd in {volume.dir_fd for volume in volumes}:
            os.close(fd)


def fs_settings(directory):
    """The engine's settings for the test file system holding ``directory``."""
    fstype = subprocess.run(["stat", "-f", "-c", "%T", str(directory)], capture_output=True, text=True,
                            check=True).stdout.strip()
    fd = os.open(directory, os.O_RDONLY)
    try:
        return settings_for(fstype, fd)
    finally:
        os.close(fd)


def assert_close(freed, claimed):
    """The space accounting's tolerance: 1 MiB + 1 %."""
    assert abs(freed - claimed) <= MIB + abs(claimed) // 100, (freed, claimed)

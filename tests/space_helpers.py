# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers of the space tests: pools made the way qubesd makes them, and the filesystem's own count.

``Volume`` does what qubesd's file-reflink driver does to a volume's files
(on-disk contract, section 4): start renames the precache to the dirty
image, the VM writes into it, stop adds a revision (a clone of clean named
after clean's mtime), renames dirty over clean and makes a new precache.

``used_bytes`` is the outside truth: statvfs's (f_blocks - f_bfree) * f_frsize
after a sync (and ``btrfs filesystem sync``), read until two reads agree.
"""

from __future__ import annotations

import datetime
import fcntl
import mmap
import os
import pathlib
import random
import shutil
import struct
import subprocess
import sys
import tempfile

import pytest

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._fs.clone import ficlone_request
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.space import ImageFile, SpaceMap

MIB = 1024 * 1024
KIB = 1024
# The spec's tolerance: within 1 MiB + 1 % of the filesystem's own change.
TOLERANCE_BYTES = MIB
TOLERANCE_SHARE = 0.01
_FICLONERANGE = 0x4020940D   # _IOW(0x94, 13, struct file_clone_range), asm-generic encoding (x86_64, arm64)


GIB = 1024 * MIB
TESTS_BASE_DIR = "/var/tmp/dom0-reflink-tests"   # conftest's: a later session removes what an aborted one left


@pytest.fixture(scope="module")
def large_filesystems(filesystems):
    """A btrfs and an XFS of 1 GiB for this test module: on the session's 256 MiB btrfs, data block groups
    are too small for a 64 MiB extent, so a 64 MiB write would not be one extent as on a real pool."""
    loopfs = sys.modules["loopfs"]   # tools/loopfs.py, loaded by conftest
    made = {}
    try:
        for kind in ("btrfs", "xfs"):
            made[kind] = loopfs.create(kind, GIB, TESTS_BASE_DIR)
        yield {kind: pathlib.Path(fs.path) for kind, fs in made.items()}
    finally:
        for fs in made.values():
            fs.destroy()


@pytest.fixture(params=["btrfs", "xfs"])
def large_reflink_dir(large_filesystems, request):
    """A fresh directory on the module's 1 GiB btrfs, then XFS."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="space-", dir=large_filesystems[request.param]))
    request.addfinalizer(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


@pytest.fixture
def large_btrfs_dir(large_filesystems, request):
    path = pathlib.Path(tempfile.mkdtemp(prefix="space-", dir=large_filesystems["btrfs"]))
    request.addfinalizer(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


def fs_kind(path) -> str:
    """'btrfs', 'xfs' or 'ext4': the type of the filesystem holding ``path`` (from /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    best, kind = "", ""
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            left, _sep, right = line.partition(" - ")
            point = left.split()[4].replace("\\040", " ")
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind = point, right.split()[0]
    return kind


def sync_all(path) -> None:
    """Everything written, and everything removed given back.

    XFS inactivates unlinked files in the background (a file of thousands of
    extents takes a while); ``xfs_spaceman prealloc -s`` waits for that work
    (and drops speculative preallocations, which only makes the count steadier).
    """
    os.sync()
    kind = fs_kind(path)
    if kind == "btrfs":
        subprocess.run(["btrfs", "filesystem", "sync", str(path)], check=True, capture_output=True, env=tool_env())
    elif kind == "xfs":
        subprocess.run(["xfs_spaceman", "-c", "prealloc -s", str(path)], check=True, capture_output=True,
                       env=tool_env())


def used_bytes(path) -> int:
    """Bytes in use on the filesystem of ``path``, after a sync; read until two reads agree."""
    previous = None
    for _attempt in range(20):
        sync_all(path)
        st = os.statvfs(path)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        if used == previous:
            return used
        previous = used
    return previous


def assert_close(figure: int, measured: int, what: str = "") -> None:
    """The spec's promise: the figure equals the filesystem's change within 1 MiB + 1 %."""
    allowed = TOLERANCE_BYTES + TOLERANCE_SHARE * max(abs(measured), abs(figure))
    assert abs(figure - measured) <= allowed, "%s: figure %d (%.2f MiB), filesystem %d (%.2f MiB)" % (
        what, figure, figure / MIB, measured, measured / MIB)


def freed_by_removing(pool, files) -> int:
    """Remove ``files`` (paths), sync, and return how much the filesystem got back."""
    before = used_bytes(pool)
    for path in files:
        os.unlink(path)
    return before - used_bytes(pool)


def pool_images(pool) -> list[ImageFile]:
    """Every image file of the pool (tempfiles and pins included), with its volume and whether it is a revision."""
    pool = pathlib.Path(pool)
    found = []
    for prefix in names.PREFIXES:
        if not (pool / prefix).is_dir():
            continue
        for vm in sorted(os.listdir(pool / prefix)):
            for name in sorted(os.listdir(pool / prefix / vm)):
                image = names.classify(name)
                if image is None:
                    continue
                revision = image.kind == names.REVISION and not image.tempfile
                found.append(ImageFile("%s/%s/%s" % (prefix, vm, name), "%s/%s/%s" % (prefix, vm, image.volume),
                                       revision))
    return found


def space_map(pool) -> SpaceMap:
    """The space figures of every image of the pool, as reflink_info will read them.

    First the filesystem settles (a sync, statvfs read until it is stable):
    XFS inactivates unlinked files in the background, and until it has, their
    blocks still count as shared (FIEMAP) with the files they were cloned from.
    A test that removes a file and reads the figures at once would otherwise
    measure that moment, which no playbook sees.
    """
    used_bytes(pool)
    with Directory.open_pool(str(pool)) as pool_dir:
        return SpaceMap.read(pool_dir, pool_images(pool))


def tool_env() -> dict[str, str]:
    return dict(os.environ, PATH=os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin", LC_ALL="C")


def compsize(*paths) -> tuple[int, int]:
    """(disk usage, referenced bytes) of ``compsize -b`` over ``paths`` (Debian's btrfs-compsize)."""
    if shutil.which("compsize", path=tool_env()["PATH"]) is None:
        pytest.fail("compsize is missing: `make deps` installs btrfs-compsize")
    out = subprocess.run(["compsize", "-b"] + [str(path) for path in paths], check=True, capture_output=True,
                         text=True, env=tool_env()).stdout
    for line in out.splitlines():
        if line.startswith("TOTAL"):
            fields = line.split()
            return int(fields[2]), int(fields[4])
    raise AssertionError("no TOTAL line in compsize's output:\n" + out)


def btrfs_du(*paths) -> dict[str, tuple[int, int]]:
    """{path: (total, exclusive)} of ``btrfs filesystem du --raw`` (one line per file)."""
    out = subprocess.run(["btrfs", "filesystem", "du", "--raw"] + [str(path) for path in paths], check=True,
                         capture_output=True, text=True, env=tool_env()).stdout
    found = {}
    for line in out.splitlines()[1:]:
        total, exclusive, _shared, path = line.split(None, 3)
        found[path] = (int(total), int(exclusive))
    return found


def clone(src, dst) -> None:
    with open(src, "rb") as source, open(dst, "wb") as target:
        fcntl.ioctl(target.fileno(), ficlone_request(), source.fileno())


def clone_range(src, src_offset, length, dst, dst_offset) -> None:
    """FICLONERANGE: ``dst`` at ``dst_offset`` shares ``length`` bytes of ``src`` from ``src_offset``."""
    with open(src, "rb") as source, open(dst, "r+b") as target:
        request = struct.pack("=qQQQ", source.fileno(), src_offset, length, dst_offset)
        fcntl.ioctl(target.fileno(), _FICLONERANGE, request)


def write_data(path, pieces, seed=1, fsync_each=False, create=False, size=None) -> None:
    """Write random data at ``pieces`` [(offset, length)] of ``path`` (one write each), then fsync."""
    rng = random.Random(seed)
    with open(path, "w+b" if create else "r+b") as handle:
        if size is not None:
            handle.truncate(size)
        for offset, length in pieces:
            handle.seek(offset)
            handle.write(rng.randbytes(length))
            if fsync_each:
                handle.flush()
                os.fsync(handle.fileno())
        handle.flush()
        os.fsync(handle.fileno())


class Volume:
    """One volume's files, changed as qubesd's file-reflink driver changes them."""

    def __init__(self, pool, vid, size=64 * MIB, create=True):
        """A new volume of ``size`` as qubesd's create makes it; ``create=False`` takes over the volume's files
        as they are (made by the modules, say)."""
        self.pool = pathlib.Path(pool)
        self.vid = vid
        self.base = self.pool / vid
        self.base.parent.mkdir(parents=True, exist_ok=True)
        self.clean = pathlib.Path(str(self.base) + ".img")
        self.dirty = pathlib.Path(str(self.base) + "-dirty.img")
        self.precache = pathlib.Path(str(self.base) + "-precache.img")
        self.mtime = 1_700_000_000
        self.next_revision = 1
        if not create:
            self.mtime = int(os.stat(self.clean).st_mtime)
            numbers = [int(path.name[len(self.clean.name) + 1:].split("@")[0]) for path in self.revisions()]
            self.next_revision = max(numbers, default=0) + 1
            return
        with open(self.clean, "wb") as handle:
            handle.truncate(size)
        os.utime(self.clean, (self.mtime, self.mtime))
        clone(self.clean, self.precache)
        os.utime(self.precache, (self.mtime, self.mtime))   # qubesd's precache has clean's mtime

    def revisions(self) -> list[pathlib.Path]:
        prefix = os.path.basename(self.clean) + "."
        found = [p for p in self.clean.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith("Z")]
        return sorted(found, key=lambda p: int(p.name[len(prefix):].split("@")[0]))

    def pin(self, name) -> pathlib.Path:
        path = pathlib.Path(str(self.clean) + ".pin-" + name)
        clone(self.clean, path)
        return path

    def session(self, pieces, seed, fsync_each=False, keep=None) -> None:
        """Start the VM, let it write ``pieces`` [(offset, length)] of random data, stop it (a commit)."""
        os.rename(self.precache, self.dirty)
        write_data(self.dirty, pieces, seed=seed, fsync_each=fsync_each)
        stamp = datetime.datetime.fromtimestamp(self.mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        revision = pathlib.Path("%s.%d@%s" % (self.clean, self.next_revision, stamp))
        self.next_revision += 1
        clone(self.clean, revision)
        if keep is not None:
            for old in self.revisions()[:-keep] if keep else self.revisions():
                old.unlink()
        os.rename(self.dirty, self.clean)
        self.mtime += 3600
        os.utime(self.clean, (self.mtime, self.mtime))
        clone(self.clean, self.precache)
        os.utime(self.precache, (self.mtime, self.mtime))


REGION = 16 * MIB


def revision_chain(pool, vid, pieces: bool, region: int = REGION) -> Volume:
    """A volume of four regions after qubesd's sessions, three revisions kept (space-notes.md).

    The first session writes all four regions (in one write, or as four fsynced
    pieces: one extent or four on btrfs); the next three rewrite the first,
    second and third region.  The revision of the empty image from before the
    first session is removed.
    """
    volume = Volume(pool, vid, 4 * region)
    if pieces:
        volume.session([(index * region, region) for index in range(4)], seed=1, fsync_each=True)
    else:
        volume.session([(0, 4 * region)], seed=1)
    for index in range(3):
        volume.session([(index * region, region)], seed=10 + index)
    volume.revisions()[0].unlink()
    assert len(volume.revisions()) == 3
    return volume


def write_fragmented(path, blocks) -> None:
    """Write ``blocks`` 4 KiB blocks of ``path`` (an existing file) with O_DIRECT, each followed by one of a
    scratch file next to it, then fsync and remove the scratch file: every block of ``path`` lies apart from its
    neighbours on disk (one extent each), as a VM's scattered small writes leave an image.  Writing only
    ``path`` is not enough: XFS places a block next to its logical neighbour's whenever it can."""
    buffer = mmap.mmap(-1, 4096)
    buffer.write(os.urandom(4096))
    scratch = str(path) + ".scatter"
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    other = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
    try:
        for block in range(blocks):
            os.pwrite(fd, buffer, block * 4096)
            os.pwrite(other, buffer, block * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.close(other)
        os.unlink(scratch)

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for the module tests: pools and volumes made by hand, what is on disk, loop devices.

Volumes are laid out by hand (following the on-disk contract, as qubesd would
leave them) so that each test spends its ansible-playbook runs on the module
behaviour under test only.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import re
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

# allocated and same_bytes are re-exported for the test files.
from disk_helpers import MIB, allocated, listing, same_bytes, write_image  # noqa: F401  # pylint: disable=unused-import

# A fixed clean-image mtime: 2026-01-02T03:04:05Z.
T0 = 1767323045
T0_STAMP = "2026-01-02T03:04:05Z"

VOLUME_KEYS = {"vid", "image", "size", "usage", "revisions", "state", "in_use", "in_use_reasons", "precache",
               "pins"}
POOL_KEYS = {"path", "fstype", "reflink", "size", "usage"}

_HOW_SUFFIX = re.compile(r" \((?:reflink|sparse copy[^)]*)\)\Z")


def stamp(seconds):
    """Revision timestamp of an mtime, as the contract writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


def strip_how(action):
    """An action text without the "(reflink)" / "(sparse copy...)" that only a real run knows."""
    return _HOW_SUFFIX.sub("", action)


def how_suffix(kind):
    """What a real run appends to a clone action on filesystem ``kind``."""
    return " (sparse copy" if kind == "ext4" else " (reflink)"


def make_pool(base):
    """A set-up pool directory (as reflink_pool makes it) below ``base``."""
    pool = base / "pool"
    for path in (pool, pool / "appvms", pool / "vm-templates"):
        path.mkdir(mode=0o755)
    return pool


def put_file(path, size, segments=(), seed=1, mtime=None):
    """A sparse 0600 file of ``size`` with random data at ``segments``; returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, size, segments, seed=seed)
    _fsync(path)
    os.chmod(path, 0o600)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path.read_bytes()


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_file(src, dst, keep_mtime=True):
    """A sparse (reflink where possible) copy of ``src`` with its mtime, mode 0600."""
    subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(src), str(dst)], check=True)
    os.chmod(dst, 0o600)
    if keep_mtime:
        st = os.stat(src)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def make_volume(pool, vid, size=4 * MIB, seed=1, mtime=T0, precache=True, revisions=()):
    """An origin volume as qubesd leaves a stopped one: clean (with some data), precache, revisions.

    ``revisions`` is a list of (id, mtime).  Returns the clean image's bytes.
    """
    vm_dir = pool / os.path.dirname(vid)
    volume = os.path.basename(vid)
    vm_dir.mkdir(exist_ok=True)
    data = put_file(vm_dir / (volume + ".img"), size, [(0, 64 * 1024), (size // 2, 4096), (size - 8192, 8192)],
                    seed=seed, mtime=mtime)
    if precache:
        copy_file(vm_dir / (volume + ".img"), vm_dir / (volume + "-precache.img"))
    for number, rev_mtime in revisions:
        put_file(vm_dir / ("%s.img.%d@%s" % (volume, number, stamp(rev_mtime))), size, [(0, 4096)],
                 seed=1000 + number, mtime=rev_mtime)
    return data


def start_volume(pool, vid, seed=2):
    """What qubesd does when the VM starts: rename precache to dirty; then the VM writes to it.

    Returns the dirty image's bytes after the write.
    """
    vm_dir = pool / os.path.dirname(vid)
    volume = os.path.basename(vid)
    dirty = vm_dir / (volume + "-dirty.img")
    os.rename(vm_dir / (volume + "-precache.img"), dirty)
    with open(dirty, "r+b") as handle:
        handle.seek(4096)
        handle.write(random.Random(seed).randbytes(100000))
        handle.flush()
        os.fsync(handle.fileno())  # so that allocated bytes are final (XFS delayed allocation)
    return dirty.read_bytes()


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def pool_listing(pool):
    """listing() of a pool without the collection's own lock files under .reflink/."""
    return {name: facts for name, facts in listing(pool).items()
            if name != ".reflink" and not name.startswith(".reflink/")}


def run_parallel(run_module, calls, workers=2):
    """Run several independent modules at once; ``calls`` is a list of (name, kwargs)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_module, name, **kwargs) for name, kwargs in calls]
        return [future.result() for future in futures]


@contextlib.contextmanager
def loop_device(path):
    """Attach ``path`` to a free loop device for the ``with`` block; yields /dev/loopN."""
    device = subprocess.run(["losetup", "--find", "--show", str(path)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def blockdev_size(device):
    return int(subprocess.run(["blockdev", "--getsize64", device], check=True,
                              capture_output=True, text=True).stdout)


def assert_failed(result, *words):
    """The module failed, changed nothing it reports, and its msg contains each of ``words``."""
    assert result.get("failed") is True, result
    assert result.get("changed") is False, result
    msg = result.get("msg", "")
    for word in words:
        assert word.lower() in msg.lower(), "%r not in msg %r" % (word, msg)
    return msg


@contextlib.contextmanager
def holding_open(path):
    """A process with ``path`` open for writing (as qubesd's Import writer keeps an import image); yields (pid, command)."""
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys, time\nf = open(sys.argv[1], 'r+b')\nprint('open', flush=True)\n"
                              "time.sleep(600)\n", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        yield child.pid, pathlib.Path("/proc/%d/comm" % child.pid).read_text().strip()
    finally:
        child.kill()
        child.wait()

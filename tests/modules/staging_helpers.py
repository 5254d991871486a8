# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for the reflink_import and reflink_revert tests: source images, snapshots, leftovers.

Pools and volumes come from module_helpers (laid out by hand as qubesd would
leave them); this file adds what the import/revert tests assert on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import subprocess

import machine_lock
from module_helpers import MIB, listing, put_file

VID = "appvms/work/private"

# A source image: 32 MiB nominal, a few MiB of random data between holes.
SOURCE_SIZE = 32 * MIB
SOURCE_SEGMENTS = [(0, MIB), (5 * MIB, 2 * MIB), (20 * MIB + 12345, 700000), (SOURCE_SIZE - 4096, 4096)]

_TEMPFILE_RE = re.compile(r"~[a-z0-9_]{8}\Z")
_REVISION_RE = re.compile(r"\A(?P<volume>[^/]+)\.img\.(?P<id>[^@/]+)@(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\Z")


def make_source(path, seed=11, size=SOURCE_SIZE, segments=tuple(SOURCE_SEGMENTS)):
    """A sparse source image with random data and holes; returns its bytes."""
    return put_file(path, size, segments, seed=seed)


def sha256_file(path, size=None):
    """SHA-256 of the file's bytes, padded with zeros (or cut) to ``size``."""
    with open(path, "rb") as handle:
        data = handle.read()
    if size is not None:
        data = data[:size] + bytes(max(0, size - len(data)))
    return hashlib.sha256(data).hexdigest()


def vm_dir_of(pool, vid=VID):
    return pool / os.path.dirname(vid)


def image(pool, vid=VID, kind="clean"):
    """Path of one of the volume's files: clean, dirty, precache or import."""
    volume = os.path.basename(vid)
    suffix = {"clean": ".img", "dirty": "-dirty.img", "precache": "-precache.img", "import": "-import.img"}[kind]
    return vm_dir_of(pool, vid) / (volume + suffix)


def revisions(pool, vid=VID):
    """{id: path} of the volume's revision files (ids as ints)."""
    vm_dir = vm_dir_of(pool, vid)
    found = {}
    if not vm_dir.is_dir():
        return found
    for name in os.listdir(vm_dir):
        match = _REVISION_RE.match(name)
        if match and match.group("volume") == os.path.basename(vid):
            found[int(match.group("id"))] = vm_dir / name
    return found


def revision_ids(result):
    return [item["id"] for item in result["volume"]["revisions"]]


def snapshot(pool):
    """Everything under the pool (mode, inode, size, mtime) except the collection's lock files.

    Lock files under .reflink/locks/ are created by any run that locks (also a
    refused one) and are not part of the volume; the import journals under
    .reflink/imports/ are included.
    """
    return {name: facts for name, facts in listing(pool).items()
            if name not in (".reflink", ".reflink/locks") and not name.startswith(".reflink/locks/")}


def files_only(snap):
    """A snapshot without the directories' own facts (a file made and removed again changes their mtime)."""
    return {name: facts for name, facts in snap.items() if not stat.S_ISDIR(facts[0])}


def journals(pool):
    """Names of the import journals of the pool."""
    directory = pool / ".reflink" / "imports"
    if not directory.is_dir():
        return []
    return sorted(name for name in os.listdir(directory) if not _TEMPFILE_RE.search(name))


def leftovers(pool):
    """Tempfiles (``*~XXXXXXXX``) and import images anywhere under the pool."""
    found = []
    for root, _dirs, names in os.walk(pool):
        for name in names:
            if _TEMPFILE_RE.search(name) or name.endswith("-import.img"):
                found.append(os.path.relpath(os.path.join(root, name), pool))
    return sorted(found)


def assert_no_leftovers(*pools, imports=()):
    """No tempfile anywhere, and no import image but those named in ``imports`` (paths)."""
    wanted = {os.fspath(path) for path in imports}
    for pool in pools:
        left = [name for name in leftovers(pool) if os.path.join(os.fspath(pool), name) not in wanted]
        assert left == [], "left behind in %s: %s" % (pool, left)


def assert_refused(result, *words):
    """Failed, reported no change and no action, and the message has each of ``words`` (case-insensitive)."""
    assert result.get("failed") is True, result
    assert result.get("changed") is False, result
    assert not result.get("actions"), result
    msg = result.get("msg", "")
    for word in words:
        assert word.lower() in msg.lower(), "%r not in msg %r" % (word, msg)
    return msg


def assert_ok(result, changed):
    assert not result.get("failed"), result
    assert result.get("changed") is changed, result
    return result


@contextlib.contextmanager
def read_only_loop(path):
    """Attach ``path`` read-only to a free loop device for the ``with`` block; always detached."""
    device = subprocess.run(["losetup", "--find", "--show", "--read-only", str(path)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


@contextlib.contextmanager
def qubes_running_file(name):
    """qubesd's running-state file /var/run/qubes/volume-running-<name> for the ``with`` block.

    The whole machine sees it: the test must be marked ``@pytest.mark.serial``."""
    machine_lock.require_serial("/var/run/qubes/volume-running-" + name)
    directory = "/var/run/qubes"
    made_dir = not os.path.isdir(directory)
    if made_dir:
        os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "volume-running-" + name)
    with open(path, "x", encoding="ascii"):
        pass
    try:
        yield path
    finally:
        os.unlink(path)
        if made_dir:
            with contextlib.suppress(OSError):  # someone else put a file there meanwhile
                os.rmdir(directory)

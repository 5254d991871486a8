# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The dedupe operation of the crash matrix and the power-cut suite.

A small restored pool: a template's root and a copy of it with 256 KiB
changed in the middle (each written as a restore writes it, in one extent,
with a reflinked precache), and a private volume whose revision is a full
copy of its clean image.  reflink_dedupe with scope ``pool`` makes them share;
on btrfs the copy's extent then stays referenced by its changed 256 KiB
alone, which the engine writes once more through its unnamed (O_TMPFILE)
scratch file before deduping it back: that path is killed and cut too.

In every state: every image of the pool is there under its name, with its
content, size, mtime, inode and mode 0600, and nothing else is.  The
intended result (after the rerun; from the module's exit on, in the power-cut
suite: the run syncs before it returns) is also the sharing itself: every
block the copies have in common lies at the same physical address, and on
btrfs no extent stays allocated for a part of it (the rewrite happened).
"""

from __future__ import annotations

import os
import random

import crash_engine as ce
import reliability_helpers as rh
from dedupe_helpers import reflink_copy, write_file

from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.extent_maps import read_disk_extents, read_extent_map

MIB = rh.MIB
BLOCK = 4096
ROOT_SIZE = 4 * MIB
CHANGED = (3 * MIB // 2, 256 * 1024)   # offset, length of what the copy changed
PRIVATE_SIZE = 2 * MIB
T0 = 1_700_000_000 * 10 ** 9
IMAGES = ("vm-templates/base/root.img", "vm-templates/base/root-precache.img", "vm-templates/copy/root.img",
          "vm-templates/copy/root-precache.img", "appvms/work/private.img", "appvms/work/private-precache.img",
          "appvms/work/private.img.1@2023-11-14T22:13:20Z")
# Images whose blocks must end up at the same physical addresses (the base and the copy but in what it changed).
SHARING = (("vm-templates/base/root.img", "vm-templates/base/root-precache.img", range(0)),
           ("vm-templates/base/root.img", "vm-templates/copy/root.img", range(CHANGED[0], CHANGED[0] + CHANGED[1])),
           ("vm-templates/copy/root.img", "vm-templates/copy/root-precache.img", range(0)),
           ("appvms/work/private.img", "appvms/work/private-precache.img", range(0)),
           ("appvms/work/private.img", "appvms/work/private.img.1@2023-11-14T22:13:20Z", range(0)))


def _write(path, data, mtime_ns):
    """A restore's write: 1 MiB pieces, one fsync, the mtime set, mode 0600 (dedupe_helpers.write_file)."""
    write_file(path, [(offset, data[offset:offset + MIB]) for offset in range(0, len(data), MIB)], len(data), mtime_ns)


def _facts(pool):
    """{pool-relative name: (sha256, size, mtime, inode, mode)} of every file below appvms/ and vm-templates/."""
    found = {}
    for prefix in ("appvms", "vm-templates"):
        for root, dirs, files in os.walk(pool / prefix):
            for name in dirs + files:
                path = os.path.join(root, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    continue
                facts = rh.facts_of(path)
                found[os.path.relpath(path, pool)] = (facts.digest, facts.size, facts.mtime_ns, facts.ino, facts.mode)
    return found


def _physical_blocks(path):
    """{offset: physical address} of each data block of the file (FIEMAP)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return {extent.logical + offset: extent.physical + offset for extent in read_extent_map(fd)
                for offset in range(0, extent.length, BLOCK)}
    finally:
        os.close(fd)


class Dedupe(ce.Scenario):
    """reflink_dedupe, scope pool, over a small restored pool (see the module's docstring)."""

    module = "reflink_dedupe"
    run_gc = True

    def __init__(self, fs):
        self.fs = fs
        self.name = "dedupe"

    def setup(self, base):
        pool = base / "pool"
        for path in (pool, pool / "appvms", pool / "vm-templates", pool / "appvms" / "work",
                     pool / "vm-templates" / "base", pool / "vm-templates" / "copy"):
            path.mkdir(mode=0o755)
        rng = random.Random(31)
        root = rng.randbytes(ROOT_SIZE)
        offset, length = CHANGED
        copy = root[:offset] + rng.randbytes(length) + root[offset + length:]
        private = rng.randbytes(PRIVATE_SIZE)
        for vm, data, mtime in (("base", root, T0), ("copy", copy, T0 + 10 ** 9)):
            _write(pool / "vm-templates" / vm / "root.img", data, mtime)
            reflink_copy(pool / "vm-templates" / vm / "root.img", pool / "vm-templates" / vm / "root-precache.img")
        _write(pool / IMAGES[6], private, T0 - 86400 * 10 ** 9)
        _write(pool / "appvms/work/private.img", private, T0)
        reflink_copy(pool / "appvms/work/private.img", pool / "appvms/work/private-precache.img")
        ctx = ce.Context(base=base, pool=pool, vid="appvms/work/private",
                         args={"pool": str(pool), "scope": "pool", "qubes_xml": "none"}, labels=rh.Labels())
        for label, data in (("base root", root), ("copy root", copy), ("private", private)):
            ctx.labels.add(label, data)
        ctx.extra["facts"] = _facts(pool)
        if sorted(ctx.extra["facts"]) != sorted(IMAGES):
            raise RuntimeError("the dedupe scenario's pool is not as described: %s" % sorted(ctx.extra["facts"]))
        return ctx

    def crash_problems(self, ctx, state):
        problems = []
        found = _facts(ctx.pool)
        for name in sorted(set(found) | set(ctx.extra["facts"])):
            if name not in found:
                problems.append("%s is gone" % name)
            elif name not in ctx.extra["facts"]:
                problems.append("%s appeared" % name)
            elif found[name] != ctx.extra["facts"][name]:
                what = [field for field, old, new in zip(("content", "size", "mtime", "inode", "mode"),
                                                         ctx.extra["facts"][name], found[name], strict=True)
                        if old != new]
                problems.append("%s changed (%s)" % (name, ", ".join(what)))
        return problems

    def final_problems(self, ctx, state):
        problems = self.crash_problems(ctx, state)
        blocks = {name: _physical_blocks(ctx.pool / name) for name in IMAGES}
        if self.fs == "btrfs":
            extents = {}
            for name in IMAGES:
                fd = os.open(ctx.pool / name, os.O_RDONLY)
                try:
                    extents.update(read_disk_extents(fd, os.fstat(fd).st_ino))
                finally:
                    os.close(fd)
            used = len({physical for found in blocks.values() for physical in found.values()}) * BLOCK
            if sum(extents.values()) != used:
                problems.append("the images' extents take %d bytes, of which they use %d: a partly used extent "
                                "was not rewritten" % (sum(extents.values()), used))
        for first, second, changed in SHARING:
            apart = [offset for offset in sorted(blocks[first])
                     if offset not in changed and blocks[first][offset] != blocks[second].get(offset)]
            if apart:
                problems.append("%s and %s do not share %d of their common blocks (first at %d)"
                                % (first, second, len(apart), apart[0]))
        return problems

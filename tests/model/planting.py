# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""States planted by hand, as qubesd, a crash, another program or a person leaves them.

Leftovers (tempfiles, junk revisions, an unclaimed import image, a stale
precache), a dirty image (a halted VM with a pending commit), a writer
writing into a begun import, files the collection does not own, an
unreadable journal, a file held open by a child process, a full file system.
After each, the model is read again from the disk: a planted state is a
given, not a prediction.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import shutil
import subprocess
import time

from disk import BLOCK, Content, syncfs
from pool_model import escape_vid, journal_path
from predict_import import Source

FICLONE = 0x40049409
OLD = 2 * 3600          # older than gc's default min_age of 1h


def make_content(size: int, seed: int) -> Content:
    """Some data at a few places of an image of ``size`` bytes (the rest a hole), the same for the same seed."""
    rng = random.Random(seed)
    if size == 0:
        return Content.zeros(0)
    pieces = []
    for _segment in range(rng.randint(1, 3)):
        length = min(rng.randint(1, 8192), size)
        start = rng.randrange(0, size - length + 1)
        pieces.append((start, rng.randbytes(length)))
    return Content.from_pieces(pieces, size)


def write_content(path: str, content: Content, mtime: float | None = None, mode: int = 0o600) -> None:
    """A new file at ``path`` with ``content`` (zero blocks left as holes), fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        for index, block in content.blocks:
            os.pwrite(fd, block, index * BLOCK)
        os.ftruncate(fd, content.size)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def clone_or_copy(src: str, dst: str) -> None:
    with open(src, "rb") as source, open(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as target:
        try:
            fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
        except OSError:
            shutil.copyfileobj(source, target)
        os.fchmod(target.fileno(), 0o600)
        os.fsync(target.fileno())


class Planting:
    """Plants states into the Harness ``h``'s pool; ``fs_root`` is the file system's mount point."""

    def __init__(self, h, fs_root: str) -> None:
        self.h = h
        self.fs_root = fs_root

    def _done(self, text: str) -> None:
        self.h.steps.append("plant: " + text)
        self.h.model = self.h.read_model()

    def _vm_dir(self, vid: str, create: bool = True) -> str | None:
        path = os.path.join(self.h.pool, os.path.dirname(vid))
        if not os.path.isdir(path):
            if not create or not os.path.isdir(os.path.dirname(path)):
                return None
            os.mkdir(path, 0o755)
        return path

    def _try(self, text: str, action) -> None:
        """Plant with ``action()``; on a full file system the plant is skipped (its partial file removed)."""
        try:
            action()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            text += " (skipped: %s)" % exc.strerror
        self._done(text)

    def source(self, kind: str, data_size: int, seed: int) -> tuple:
        """The source of a one-shot import: (Source, path or None)."""
        self.h.counter += 1
        where = self.h.other_fs if kind == "cross" else os.path.join(self.h.base, "src")
        path = os.path.join(where, "source-%d.img" % self.h.counter)
        if kind == "none":
            return Source("none"), None
        if kind == "missing":
            return Source("missing"), path
        if kind == "dir":
            try:
                os.mkdir(path)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return Source("missing"), path
            return Source("dir"), path
        content = Content.zeros(0) if kind == "empty" else make_content(data_size, seed)
        try:
            write_content(path, content)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            if os.path.lexists(path):
                os.unlink(path)
            return Source("missing"), path
        return Source("empty" if kind == "empty" else "file", content, cross_fs=kind == "cross"), path

    def leftover(self, vid: str, kind: str, old: bool, seed: int) -> None:
        try:
            vm_dir = self._vm_dir(vid)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            vm_dir = None
        if vm_dir is None:
            return
        volume = os.path.basename(vid)
        stamp = "2026-01-02T03:04:05Z"
        name = {
            "clean~": volume + ".img~tmp%05d" % seed,
            "import~": volume + "-import.img~imp%05d" % seed,
            "revision~": "%s.img.7@%s~rev%05d" % (volume, stamp, seed),
            "pin~": volume + ".img.pin-p1~pin%05d" % seed,
            "junk0": "%s.img.0@%s" % (volume, stamp),
            "junkx": "%s.img.x@%s" % (volume, stamp),
            "junk-1": "%s.img.-1@%s" % (volume, stamp),
            "import": volume + "-import.img",
            "stale_precache": volume + "-precache.img",
        }[kind]
        path = os.path.join(vm_dir, name)
        if kind == "import" and self.h.model.vol(vid).journal == "begun" and os.path.exists(path):
            return   # a begun import's image is the writer's, not a leftover
        mtime = time.time() - OLD if old else None
        if kind == "stale_precache":
            mtime = time.time() - OLD

        def plant():
            try:
                write_content(path, make_content(4096, seed), mtime)
            except OSError:
                if os.path.lexists(path) and os.path.getsize(path) != 4096:
                    os.unlink(path)
                raise
        self._try("%s %s%s" % (kind, name, " (old)" if old else ""), plant)

    def dirty(self, vid: str, seed: int) -> None:
        """A halted VM with a pending commit: qubesd renamed the precache to dirty at start, the VM wrote."""
        vm_dir = self._vm_dir(vid, create=False)
        volume = os.path.basename(vid)
        if vm_dir is None or not os.path.exists(os.path.join(vm_dir, volume + ".img")):
            return
        dirty = os.path.join(vm_dir, volume + "-dirty.img")

        def plant():
            if not os.path.exists(dirty):
                precache = os.path.join(vm_dir, volume + "-precache.img")
                if os.path.exists(precache):
                    os.rename(precache, dirty)
                else:
                    clone_or_copy(os.path.join(vm_dir, volume + ".img"), dirty)
            rng = random.Random(seed)
            with open(dirty, "r+b") as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(rng.randrange(0, max(size - 100, 1)))
                handle.write(rng.randbytes(min(100, size)))
                os.fsync(handle.fileno())
        self._try("dirty image of %s" % vid, plant)

    def data_time(self, vid: str, seconds: int) -> None:
        """The VM of ``vid`` stopped at ``seconds``: its clean image's data time (mtime) is that moment.

        A fresh precache gets the same mtime (qubesd makes it from the new clean
        image), so that it stays fresh; a stale one stays stale.
        """
        vm_dir = self._vm_dir(vid, create=False)
        volume = os.path.basename(vid)
        clean = os.path.join(vm_dir or "", volume + ".img")
        if vm_dir is None or not os.path.isfile(clean) or os.path.islink(clean):
            return
        precache = os.path.join(vm_dir, volume + "-precache.img")
        fresh = self.h.model.vol(vid).precache == "fresh" and os.path.isfile(precache)
        os.utime(clean, ns=(seconds * 10 ** 9, seconds * 10 ** 9), follow_symlinks=False)
        if fresh:
            os.utime(precache, ns=(seconds * 10 ** 9, seconds * 10 ** 9), follow_symlinks=False)
        self._done("%s stopped at %s" % (vid, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))))

    def write_import(self, vid: str, seed: int, extend: bool) -> None:
        """The other program of a two-phase import writes into the import image in place."""
        vm_dir = self._vm_dir(vid, create=False)
        path = os.path.join(vm_dir or "/nonexistent", os.path.basename(vid) + "-import.img")
        if not os.path.isfile(path):
            return
        rng = random.Random(seed)

        def write():
            with open(path, "r+b") as handle:
                size = os.fstat(handle.fileno()).st_size
                start = size if extend else rng.randrange(0, max(size - 64, 1))
                handle.seek(start)
                handle.write(rng.randbytes(64))
                os.fsync(handle.fileno())
        self._try("the writer writes into %s%s" % (path[len(self.h.pool) + 1:], " past its end" if extend else ""),
                  write)

    def foreign(self, vm_dir: str) -> None:
        """A file the collection does not own (qubesd's firewall.xml, a note) in a VM directory or the pool."""
        where = os.path.join(self.h.pool, vm_dir)
        if not os.path.isdir(where):
            return
        rel = os.path.normpath(os.path.join(vm_dir, "firewall.xml" if vm_dir != "." else "NOTES.txt"))

        def plant():
            write_content(os.path.join(self.h.pool, rel), Content.of(b"<firewall/>\n", 12), mode=0o644)
        self._try("file %s" % rel, plant)
        if os.path.exists(os.path.join(self.h.pool, rel)):
            self.h.model.foreign[rel] = None
            self.h.model = self.h.read_model()

    def corrupt_journal(self, vid: str) -> None:
        path = journal_path(self.h.pool, vid)

        def plant():
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            write_content(path, Content.of(b"{not json", 9))
        self._try("unreadable journal %s" % escape_vid(vid), plant)

    def hold(self, vid: str, which: str) -> None:
        """A child process holds one of the volume's files open (qubesd's Import writer, a backup)."""
        vm_dir = os.path.join(self.h.pool, os.path.dirname(vid))
        volume = os.path.basename(vid)
        vol = self.h.model.vols.get(vid)
        if vol is None or not os.path.isdir(vm_dir):
            return
        if which == "import":
            name = volume + "-import.img"
        elif which == "clean":
            name = volume + ".img"
        elif which == "revision" and vol.revisions:
            number = max(vol.revisions)
            name = "%s.img.%d@%s" % (volume, number, vol.revisions[number][1])
        elif which == "leftover" and vol.leftovers:
            name = sorted(vol.leftovers)[0]
        elif which == "precache":
            name = volume + "-precache.img"
        else:
            return
        path = os.path.join(vm_dir, name)
        if not os.path.isfile(path):
            return
        with open(path, "rb") as handle:
            proc = subprocess.Popen(["sleep", "3600"], stdin=handle, close_fds=True)   # pylint: disable=consider-using-with
            self.h.holders.append((proc, os.fstat(handle.fileno()).st_ino))
        self._done("hold %s open (pid %d)" % (name, proc.pid))

    def restored(self, vid: str, which: str) -> None:
        """A restore (or a copy across file systems) wrote one of the volume's images anew: the same bytes, size,
        inode and mtime, but none of its blocks shared any more (the dedupe's work)."""
        vol = self.h.model.vols.get(vid)
        vm_dir = self._vm_dir(vid, create=False)
        if vol is None or vm_dir is None:
            return
        volume = os.path.basename(vid)
        name = {"clean": volume + ".img", "precache": volume + "-precache.img", "dirty": volume + "-dirty.img"}.get(which)
        if which == "revision" and vol.revisions:
            number = min(vol.revisions)
            name = "%s.img.%d@%s" % (volume, number, vol.revisions[number][1])
        elif which == "pin" and vol.pins:
            name = "%s.img.pin-%s" % (volume, sorted(vol.pins)[0])
        path = os.path.join(vm_dir, name) if name else None
        if path is None or os.path.islink(path) or not os.path.isfile(path):
            return

        def plant():
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            st = os.fstat(fd)
            try:
                for start, end in _data_segments(fd, st.st_size):
                    for offset in range(start, end, 1 << 20):
                        data = os.pread(fd, min(end - offset, 1 << 20), offset)
                        os.pwrite(fd, data, offset)   # the same bytes: new blocks (copy on write)
                os.fsync(fd)
            finally:
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                os.close(fd)
        self._try("%s written anew (a restore: the same bytes, nothing shared)" % name, plant)

    def fill(self) -> None:
        """Fill the file system with one file outside the pool (freed by free_disk)."""
        if self.h.filler is not None:
            return
        path = os.path.join(self.fs_root, "model-filler")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self.h.filler = path
        try:
            offset = 0
            step = 1 << 30
            while step >= 4096:
                try:
                    os.posix_fallocate(fd, offset, step)
                    offset += step
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    step //= 2
            os.fsync(fd)
        finally:
            os.close(fd)
        syncfs(self.fs_root)
        self._done("fill the file system (%d MiB)" % (offset >> 20))


def _data_segments(fd: int, size: int) -> list:
    """(start, end) of each run of data of the open file ``fd`` (holes left out)."""
    found = []
    position = 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        position = os.lseek(fd, start, os.SEEK_HOLE)
        found.append((start, position))
    return found

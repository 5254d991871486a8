# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is on disk, read independently of the core: contents, full listings, the files of each volume.

The names of the on-disk contract are parsed here with a regular expression of
their own (not the core's classifier), so that a defect in the core's naming
cannot hide itself from the test.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import os
import re
import stat
import struct

ZERO_CHUNK = bytes(1 << 20)

# <volume>(.img | -dirty.img | -precache.img | -import.img | .img.<id>@<ts> | .img.pin-<name>)[~XXXXXXXX]
_NAME_RE = re.compile(
    r"(?P<volume>[^/~]+?)"
    r"(?:(?P<clean>\.img)|(?P<dirty>-dirty\.img)|(?P<precache>-precache\.img)|(?P<import>-import\.img)"
    r"|\.img\.(?P<rev>[^/]+?)@(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"
    r"|\.img\.pin-(?P<pin>[a-z0-9][a-z0-9_-]{0,39}))"
    r"(?P<tmp>~[a-z0-9_]{8})?\Z")

XATTRS = ("user.dom0-reflink.reverted-to", "user.dom0-reflink.imported")


BLOCK = 4096


@dataclasses.dataclass(frozen=True)
class Content:
    """An image's bytes, sparse: ``blocks`` holds (index, bytes) of each 4 KiB block that is not all zero.

    Each block holds the image's bytes of its range (the last one ends at
    ``size``), so that two images with the same bytes have equal Contents
    whatever their holes; a far-off byte of a 1 TiB image costs one block.
    """

    blocks: tuple
    size: int

    @classmethod
    def zeros(cls, size: int) -> Content:
        return cls((), size)

    @classmethod
    def of(cls, data: bytes, size: int) -> Content:
        return cls.from_pieces([(0, data)], size)

    @classmethod
    def from_pieces(cls, pieces, size: int) -> Content:
        """The content of an image of ``size`` bytes with ``pieces`` ((offset, bytes)) written into zeros."""
        blocks: dict = {}
        for offset, piece in pieces:
            data = piece[:max(size - offset, 0)]
            position = 0
            while position < len(data):
                index, within = divmod(offset + position, BLOCK)
                step = min(BLOCK - within, len(data) - position)
                block = blocks.setdefault(index, bytearray(min(BLOCK, size - index * BLOCK)))
                block[within:within + step] = data[position:position + step]
                position += step
        return cls(tuple((index, bytes(block)) for index, block in sorted(blocks.items()) if any(block)), size)

    @property
    def key(self) -> tuple:
        """What two images with the same content share: the size and a digest of the blocks."""
        digest = hashlib.sha256()
        for index, block in self.blocks:
            digest.update(index.to_bytes(8, "little"))
            digest.update(block)
        return self.size, digest.hexdigest()[:16]

    def resized(self, size: int) -> Content:
        return Content.from_pieces([(index * BLOCK, block) for index, block in self.blocks], size)

    def sha256(self) -> str:
        """SHA-256 of the whole image (what reflink_import's checksum is of)."""
        digest = hashlib.sha256()
        position = 0
        for index, block in self.blocks + ((self.size // BLOCK + 1, b""),):
            gap = min(index * BLOCK, self.size) - position
            while gap > 0:
                step = min(gap, len(ZERO_CHUNK))
                digest.update(ZERO_CHUNK[:step])
                gap -= step
            digest.update(block)
            position = index * BLOCK + len(block)
        return digest.hexdigest()

    def __repr__(self) -> str:
        return "Content(size=%d, %d blocks %s)" % (self.size, len(self.blocks), self.key[1])


_CACHE: dict[tuple, Content] = {}


def read_content(path: str) -> Content:
    """The content of the regular file ``path``; holes are not read (SEEK_DATA)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = _CACHE.get(identity)
        if cached is not None:
            return cached
        pieces = []
        position = 0
        while position < st.st_size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            pieces.append((start, os.pread(fd, end - start, start)))
            position = end
        content = Content.from_pieces(pieces, st.st_size)
    finally:
        os.close(fd)
    if len(_CACHE) > 4096:
        _CACHE.clear()
    _CACHE[identity] = content
    return content


@dataclasses.dataclass(frozen=True)
class Entry:
    """One entry of a listing: what a change to it would change."""

    kind: str              # "file", "dir", "link", "other"
    mode: int
    ino: int
    mtime_ns: int
    size: int = 0
    key: tuple | None = None        # Content.key of a file
    xattrs: tuple = ()              # the collection's markers, (name, value)
    target: str | None = None       # a symlink's target


def _xattrs(path: str) -> tuple:
    found = []
    for name in XATTRS:
        with contextlib.suppress(OSError):
            found.append((name, os.getxattr(path, name, follow_symlinks=False).decode("ascii", "replace")))
    return tuple(found)


def entry_of(path: str, st: os.stat_result, contents: bool = True) -> Entry:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        key = read_content(path).key if contents else None
        return Entry("file", mode, st.st_ino, st.st_mtime_ns, st.st_size, key, _xattrs(path))
    if stat.S_ISDIR(st.st_mode):
        return Entry("dir", mode, st.st_ino, st.st_mtime_ns)
    if stat.S_ISLNK(st.st_mode):
        return Entry("link", mode, st.st_ino, 0, target=os.readlink(path))
    return Entry("other", mode, st.st_ino, st.st_mtime_ns)


def listing(root: str, prefix: str = "", locks: bool = False) -> dict[str, Entry]:
    """Every entry below ``root`` (not following symlinks), by path relative to it (``prefix`` in front).

    Lock files (and the directories made for them) are the collection's own
    machinery: left out, unless ``locks`` (check mode must not make one, nor
    write the holder's record that a real run's exclusive lock writes into an
    existing one); so is the journals' directory (its journals are not).  A directory's mtime is left
    out (its entries are compared instead).
    """
    found: dict[str, Entry] = {}
    if not os.path.lexists(root):
        return found
    for directory, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(directory, root)
        for name in sorted(dirs + files):
            path = os.path.join(directory, name)
            rel = os.path.normpath(os.path.join(prefix, rel_dir, name))
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            is_lock = "/.reflink/locks/" in "/" + rel
            # The journals' directory itself too (its journals are compared): like .reflink, an empty
            # directory of the collection's that a failed begin may leave is no change a user sees.
            if not locks and (is_lock or rel.endswith((".reflink/locks", ".reflink", ".reflink/imports"))):
                continue
            entry = entry_of(path, st)
            if entry.kind == "dir":
                entry = dataclasses.replace(entry, mtime_ns=0)
            found[rel] = entry
    return found


@dataclasses.dataclass(frozen=True)
class ImageName:
    volume: str
    kind: str                 # clean dirty precache import revision pin
    tempfile: bool
    rev_text: str | None = None
    timestamp: str | None = None
    pin: str | None = None

    @property
    def revision(self) -> int | None:
        """The revision id, or None for a junk revision (an id that is not a positive integer)."""
        if self.rev_text is not None and self.rev_text.isascii() and self.rev_text.isdigit() \
                and int(self.rev_text) >= 1 and self.rev_text == str(int(self.rev_text)):
            return int(self.rev_text)
        return None


def parse_name(name: str) -> ImageName | None:
    match = _NAME_RE.match(name)
    if match is None:
        return None
    for kind in ("clean", "dirty", "precache", "import", "pin"):
        if match.group(kind):
            return ImageName(match.group("volume"), kind, bool(match.group("tmp")), pin=match.group("pin"))
    return ImageName(match.group("volume"), "revision", bool(match.group("tmp")), match.group("rev"),
                     match.group("ts"))


def vid_of(rel_path: str) -> str | None:
    """The vid an image file at ``rel_path`` (relative to the pool) belongs to, or None."""
    parts = rel_path.split("/")
    if len(parts) != 3 or parts[0] not in ("appvms", "vm-templates"):
        return None
    image = parse_name(parts[2])
    return None if image is None else "%s/%s/%s" % (parts[0], parts[1], image.volume)


def file_mtime(path: str) -> int:
    return os.lstat(path).st_mtime_ns


# FS_IOC_FIEMAP (linux/fiemap.h): struct fiemap (32 bytes), then struct fiemap_extent (56 bytes) each.
_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_HEAD = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQ16xI12x")
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_LAST = 0x1
_EXTENTS_PER_CALL = 64


def extent_map(path: str) -> tuple:
    """((logical, physical, length), ...) of the file ``path``: where its data lies on the disk (FIEMAP, synced)."""
    found = []
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        start = 0
        while True:
            request = bytearray(_FIEMAP_HEAD.size + _EXTENTS_PER_CALL * _FIEMAP_EXTENT.size)
            _FIEMAP_HEAD.pack_into(request, 0, start, 2 ** 64 - 1 - start, _FIEMAP_FLAG_SYNC, 0, _EXTENTS_PER_CALL, 0)
            fcntl.ioctl(fd, _FS_IOC_FIEMAP, request)
            mapped = _FIEMAP_HEAD.unpack_from(request)[3]
            last = False
            for number in range(mapped):
                logical, physical, length, flags = _FIEMAP_EXTENT.unpack_from(
                    request, _FIEMAP_HEAD.size + number * _FIEMAP_EXTENT.size)
                found.append((logical, physical, length))
                start = logical + length
                last = bool(flags & _FIEMAP_EXTENT_LAST)
            if mapped == 0 or last:
                return tuple(found)
    finally:
        os.close(fd)


def syncfs(path: str) -> None:
    """Commit the file system holding ``path`` (btrfs frees the space of a removed file only then)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc.syncfs(fd)
    finally:
        os.close(fd)

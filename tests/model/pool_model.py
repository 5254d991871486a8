# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The model of a pool: per volume what a user keeps (contents of clean, dirty, revisions, pins) and the rest.

``PoolModel.read(pool)`` reads the same model back from the disk (with the
test's own name parser, disk.py), so that after every step the predicted model
and the disk can be compared field by field, and so that the model can be set
again from the disk after a step whose outcome the spec leaves open.
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import json
import os
import struct
import time

from disk import Content, parse_name, read_content

PREFIXES = ("appvms", "vm-templates")
REVERT_XATTR = "user.dom0-reflink.reverted-to"
IMPORT_XATTR = "user.dom0-reflink.imported"
# FS_IOC_GETVERSION, _IOR('v', 1, long) on x86-64 and arm64: the inode's generation, which tells a file
# from a later one that got its freed inode number (ext4 gives it to the next file made).
FS_IOC_GETVERSION = 0x80087601 if struct.calcsize("l") == 8 else 0x80047601


def stamp(mtime_ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime_ns // 10 ** 9))


def escape_vid(vid: str) -> str:
    """qubesd's escaping of a vid into one file name (the contract's journal and lock names)."""
    return vid.replace("-", "--").replace("/", "-")


def unescape_vid(name: str) -> str:
    out = []
    i = 0
    while i < len(name):
        if name[i] == "-" and name[i + 1:i + 2] == "-":
            out.append("-")
            i += 2
        else:
            out.append("/" if name[i] == "-" else name[i])
            i += 1
    return "".join(out)


@dataclasses.dataclass
class Vol:
    """One volume as the model knows it."""

    clean: Content | None = None
    clean_ts: str | None = None          # revision timestamp the clean image's mtime gives
    clean_ino: int | None = None
    dirty: Content | None = None
    precache: str = "missing"            # fresh, stale, missing
    revisions: dict = dataclasses.field(default_factory=dict)   # id -> (Content, timestamp)
    pins: dict = dataclasses.field(default_factory=dict)        # name -> (Content, timestamp)
    marker: str | None = None            # the revert mark on clean (a revision id or pin-<name>)
    imported: bool = False               # clean carries the mark of a two-phase commit
    import_: Content | None = None       # the -import.img
    import_ino: int | None = None
    import_gen: int | None = None        # the import image's inode generation
    journal: str | None = None           # begun, committed, corrupt (the .reflink/imports record)
    journal_size: int | None = None      # the size a begun import was begun with
    begun_ino: int | None = None         # the inode of the import image that begin made (from the journal)
    begun_gen: int | None = None         # and its generation (as the disk showed it after the begin: harness.py)
    leftovers: frozenset = frozenset()   # names of tempfiles and junk revisions

    @property
    def exists(self) -> bool:
        return self.clean is not None or self.dirty is not None

    @property
    def has_files(self) -> bool:
        """Whether the volume has any file besides pins (what gc and remove look at)."""
        return bool(self.exists or self.revisions or self.import_ is not None or self.leftovers
                    or self.precache != "missing")

    def revision_ids(self) -> list:
        return sorted(self.revisions)

    def next_revision(self) -> int:
        return max(self.revisions) + 1 if self.revisions else 1

    def brief(self) -> dict:
        """What the comparison with the disk looks at (contents by key)."""
        return {
            "clean": self.clean.key if self.clean else None,
            "dirty": self.dirty.key if self.dirty else None,
            "precache": self.precache,
            "revisions": {number: (content.key, ts) for number, (content, ts) in sorted(self.revisions.items())},
            "pins": {name: (content.key, ts) for name, (content, ts) in sorted(self.pins.items())},
            "marker": self.marker,
            "imported": self.imported,
            "import": self.import_.key if self.import_ else None,
            "journal": self.journal,
            "leftovers": sorted(self.leftovers),
        }


@dataclasses.dataclass
class PoolModel:
    """Every volume of the pool, and the files in it that the collection does not own."""

    vols: dict = dataclasses.field(default_factory=dict)      # vid -> Vol
    foreign: dict = dataclasses.field(default_factory=dict)   # path relative to the pool -> Content key

    def vol(self, vid: str) -> Vol:
        return self.vols.setdefault(vid, Vol())

    def copy(self) -> PoolModel:
        return copy.deepcopy(self)

    def known(self) -> dict:
        """The volumes that have any file, pins included."""
        return {vid: vol for vid, vol in self.vols.items() if vol.has_files or vol.pins or vol.journal}

    @classmethod
    def read(cls, pool: str, foreign_paths=()) -> PoolModel:
        model = cls()
        for prefix in PREFIXES:
            prefix_dir = os.path.join(pool, prefix)
            if not os.path.isdir(prefix_dir):
                continue
            for vm in sorted(os.listdir(prefix_dir)):
                vm_dir = os.path.join(prefix_dir, vm)
                if os.path.islink(vm_dir) or not os.path.isdir(vm_dir):
                    continue
                for name in sorted(os.listdir(vm_dir)):
                    image = parse_name(name)
                    if image is not None:
                        _read_image(model.vol("%s/%s/%s" % (prefix, vm, image.volume)), vm_dir, name, image)
        journals = os.path.join(pool, ".reflink", "imports")
        for name in sorted(os.listdir(journals)) if os.path.isdir(journals) else ():
            if name.endswith(".json"):
                vid = unescape_vid(name[:-len(".json")])
                _read_journal(model.vol(vid), pool, vid)
        for vid, vol in model.vols.items():
            if vol.clean is not None and vol.precache == "present":
                precache = os.path.join(pool, os.path.dirname(vid), os.path.basename(vid) + "-precache.img")
                clean = os.path.join(pool, vid + ".img")
                same = (os.lstat(precache).st_mtime_ns, os.lstat(precache).st_size) == \
                    (os.lstat(clean).st_mtime_ns, os.lstat(clean).st_size)
                vol.precache = "fresh" if same else "stale"
            elif vol.precache == "present":
                vol.precache = "stale"
        for rel in foreign_paths:
            path = os.path.join(pool, rel)
            if os.path.lexists(path):
                model.foreign[rel] = read_content(path).key
        return model

    def differences(self, other: PoolModel) -> list:
        """What differs between this model (expected) and ``other`` (found), in words."""
        found = []
        for vid in sorted(set(self.known()) | set(other.known())):
            mine = self.vols.get(vid, Vol()).brief()
            theirs = other.vols.get(vid, Vol()).brief()
            for field, value in mine.items():
                if theirs[field] != value:
                    found.append("%s %s: expected %r, found %r" % (vid, field, value, theirs[field]))
            expected_ts = self.vols.get(vid, Vol()).clean_ts
            found_ts = other.vols.get(vid, Vol()).clean_ts
            if expected_ts is not None and mine["clean"] is not None and found_ts != expected_ts:
                # Known where the task keeps clean (or makes it from a pin, with the pin's time).
                found.append("%s clean's mtime: expected %s, found %s" % (vid, expected_ts, found_ts))
        for rel in sorted(set(self.foreign) | set(other.foreign)):
            if self.foreign.get(rel) != other.foreign.get(rel):
                found.append("file %s the collection does not own: expected %r, found %r"
                             % (rel, self.foreign.get(rel), other.foreign.get(rel)))
        return found


def _read_image(vol: Vol, vm_dir: str, name: str, image) -> None:
    path = os.path.join(vm_dir, name)
    st = os.lstat(path)
    if image.tempfile or (image.kind == "revision" and image.revision is None):
        vol.leftovers = vol.leftovers | {name}
        return
    if image.kind == "precache":
        vol.precache = "present"
        return
    content = read_content(path)
    if image.kind == "clean":
        vol.clean = content
        vol.clean_ts = stamp(st.st_mtime_ns)
        vol.clean_ino = st.st_ino
        vol.marker = _xattr(path, REVERT_XATTR)
        vol.imported = _xattr(path, IMPORT_XATTR) is not None
    elif image.kind == "dirty":
        vol.dirty = content
    elif image.kind == "import":
        vol.import_ = content
        vol.import_ino = st.st_ino
        vol.import_gen = inode_generation(path)
    elif image.kind == "revision":
        vol.revisions[image.revision] = (content, image.timestamp)
    elif image.kind == "pin":
        vol.pins[image.pin] = (content, stamp(st.st_mtime_ns))


def inode_generation(path: str) -> int | None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        buffer = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETVERSION, buffer)
    except OSError:
        return None
    finally:
        os.close(fd)
    return struct.unpack_from("=I", buffer)[0]


def _xattr(path: str, name: str) -> str | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False).decode("ascii", "replace")
    except OSError:
        return None


def _read_journal(vol: Vol, pool: str, vid: str) -> None:
    path = os.path.join(pool, ".reflink", "imports", escape_vid(vid) + ".json")
    try:
        with open(path, "rb") as handle:
            record = json.loads(handle.read())
    except FileNotFoundError:
        return
    except ValueError:
        vol.journal = "corrupt"
        return
    if not isinstance(record, dict):
        vol.journal = "corrupt"
        return
    vol.journal = record.get("state")
    vol.journal_size = record.get("size")
    vol.begun_ino = record.get("import_ino")


def journal_path(pool: str, vid: str) -> str:
    return os.path.join(pool, ".reflink", "imports", escape_vid(vid) + ".json")

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a volume is on disk: its image files, classified, with their sizes.

State is always read from the files (the contract: "the file is the truth"),
with one directory listing per VM directory and one ``lstat`` per image file.
The same :class:`VolumeFiles` is built from a real listing and from the
simulated listing of a check-mode plan, so both report alike.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory, allocated_bytes

# Precache states.
FRESH = "fresh"
STALE = "stale"
MISSING = "missing"


@dataclass(frozen=True)
class FileInfo:
    """The facts about one image file that the modules use."""

    name: str
    size: int
    usage: int
    mtime_ns: int = 0
    ino: int = 0
    dev: int = 0

    @classmethod
    def from_stat(cls, name: str, st: os.stat_result) -> FileInfo:
        return cls(name, st.st_size, allocated_bytes(st), st.st_mtime_ns, st.st_ino, st.st_dev)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "usage": self.usage}


@dataclass
class VolumeFiles:
    """The image files of one volume in its VM directory, classified."""

    vid: names.Vid
    clean: FileInfo | None = None
    dirty: FileInfo | None = None
    precache: FileInfo | None = None
    import_: FileInfo | None = None
    revisions: list[tuple[int, FileInfo]] = field(default_factory=list)   # (id, FileInfo), sorted by id
    junk_revisions: list[FileInfo] = field(default_factory=list)
    tempfiles: list[FileInfo] = field(default_factory=list)
    pins: dict[str, FileInfo] = field(default_factory=dict)             # pin name -> FileInfo

    @classmethod
    def from_infos(cls, vid: names.Vid, infos: Iterable[FileInfo]) -> VolumeFiles:
        """Classify ``infos`` (FileInfo of files in the VM directory; others are ignored)."""
        files = cls(vid)
        for info in infos:
            files.add(info, names.classify(info.name))
        files.revisions.sort(key=lambda item: item[0])
        return files

    def add(self, info: FileInfo, image: names.ImageName | None) -> None:
        """Record ``info`` if ``image`` (its classified name) belongs to this volume."""
        if image is None or image.volume != self.vid.volume:
            return
        if image.tempfile:
            self.tempfiles.append(info)
        elif image.kind == names.REVISION:
            if image.revision is None:
                self.junk_revisions.append(info)
            else:
                self.revisions.append((image.revision, info))
        elif image.kind == names.CLEAN:
            self.clean = info
        elif image.kind == names.DIRTY:
            self.dirty = info
        elif image.kind == names.PRECACHE:
            self.precache = info
        elif image.kind == names.IMPORT:
            self.import_ = info
        elif image.kind == names.PIN and image.pin is not None:
            self.pins[image.pin] = info

    def all(self) -> list[FileInfo]:
        """Every file of the volume but its pins, as FileInfo.

        Pins are left out on purpose: whatever works on "the volume's files"
        (removal, gc's orphans, the in-use check's loop devices) must not see them.
        """
        found = [info for info in (self.clean, self.dirty, self.precache, self.import_) if info]
        found.extend(info for _number, info in self.revisions)
        found.extend(self.junk_revisions)
        found.extend(self.tempfiles)
        return found

    def all_with_pins(self) -> list[FileInfo]:
        """Every file of the volume, pins included."""
        return self.all() + [self.pins[name] for name in sorted(self.pins)]

    def pin_report(self) -> list[dict[str, object]]:
        """The ``pins`` list of the volume dict: name, size and the pinned data's time, by name."""
        return [{"name": name, "size": self.pins[name].size,
                 "timestamp": names.format_timestamp(self.pins[name].mtime_ns // 10 ** 9)}
                for name in sorted(self.pins)]

    @property
    def exists(self) -> bool:
        return self.clean is not None or self.dirty is not None

    @property
    def size(self) -> int:
        """The volume's size: dirty's if it exists, else clean's, else 0 (absent)."""
        image = self.dirty or self.clean
        return image.size if image else 0

    @property
    def usage(self) -> int:
        image = self.dirty or self.clean
        return image.usage if image else 0

    @property
    def precache_state(self) -> str:
        if self.precache is None:
            return MISSING
        if self.clean is not None and (self.precache.mtime_ns, self.precache.size) == (
                self.clean.mtime_ns, self.clean.size):
            return FRESH
        return STALE

    def next_revision(self) -> int:
        return self.revisions[-1][0] + 1 if self.revisions else 1

    def revision_timestamp(self, revision_id: int) -> str | None:
        for number, info in self.revisions:
            if number == revision_id:
                return names.timestamp_of(info.name)
        return None

    def summary(self) -> dict[str, object]:
        """What diff mode shows of the volume: its files and revision ids."""
        return {
            "vid": str(self.vid),
            "size": self.size,
            "revisions": [number for number, _info in self.revisions],
            "files": [info.as_dict() for info in sorted(self.all_with_pins(), key=lambda item: item.name)],
        }


def scan_names(vm_dir: Directory, entries: Iterable[str],
               wanted_volume: str | None = None) -> tuple[list[FileInfo], list[str]]:
    """FileInfo of every regular image file among ``entries`` of ``vm_dir``.

    Returns ``(infos, unsafe)``: ``unsafe`` lists the image-like names that are
    not regular files (symlinks, directories, devices), which the caller either
    refuses (single-volume work) or reports (pool-wide scans).
    """
    infos = []
    unsafe = []
    for name in entries:
        image = names.classify(name)
        if image is None or (wanted_volume is not None and image.volume != wanted_volume):
            continue
        st = vm_dir.lstat(name)
        if st is None:
            continue  # removed between listing and lstat
        if stat.S_ISREG(st.st_mode):
            infos.append(FileInfo.from_stat(name, st))
        else:
            unsafe.append(name)
    return infos, unsafe


def read_volume(vm_dir: Directory | None, vid: names.Vid, entries: Iterable[str] | None = None) -> VolumeFiles:
    """The VolumeFiles of ``vid`` in the open VM directory ``vm_dir`` (None: VM dir missing).

    ``entries``: the directory's names if the caller listed it already (a batch
    lists each VM directory once for all its volumes).  A file named like one
    of the volume's images that is not a regular file (a planted symlink, say)
    raises UnsafePath.
    """
    if vm_dir is None:
        return VolumeFiles(vid)
    infos, unsafe = scan_names(vm_dir, vm_dir.names() if entries is None else entries, vid.volume)
    if unsafe:
        vm_dir.regular_lstat(sorted(unsafe)[0])  # raises UnsafePath with the details
    return VolumeFiles.from_infos(vid, infos)

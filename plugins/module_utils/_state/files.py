# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a volume is on disk: its files, its size, whether it is in use.

State is always read from the files (the contract: "the file is the truth"),
with one directory listing per VM directory and one ``lstat`` per image file.
The same :class:`VolumeFiles` is built from a real listing and from the
simulated listing of a check-mode plan, so both report alike.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass, field

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import allocated_bytes

QUBES_RUNNING_GLOB = "/var/run/qubes/volume-running-*"
_SYS_BLOCK = "/sys/block"

# Volume states, as returned to the user.
ABSENT = "absent"
STOPPED = "stopped"
RUNNING = "running"
DIRTY = "dirty"

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
    def from_stat(cls, name, st):
        return cls(name, st.st_size, allocated_bytes(st), st.st_mtime_ns, st.st_ino, st.st_dev)

    def as_dict(self):
        return {"name": self.name, "size": self.size, "usage": self.usage}


@dataclass
class VolumeFiles:
    """The image files of one volume in its VM directory, classified."""

    vid: names.Vid
    clean: FileInfo | None = None
    dirty: FileInfo | None = None
    precache: FileInfo | None = None
    import_: FileInfo | None = None
    revisions: list = field(default_factory=list)        # [(id, FileInfo)], sorted by id
    junk_revisions: list = field(default_factory=list)   # [FileInfo]
    tempfiles: list = field(default_factory=list)        # [FileInfo]
    pins: dict = field(default_factory=dict)             # pin name -> FileInfo

    @classmethod
    def from_infos(cls, vid, infos):
        """Classify ``infos`` (FileInfo of files in the VM directory; others are ignored)."""
        files = cls(vid)
        for info in infos:
            files.add(info, names.classify(info.name))
        files.revisions.sort(key=lambda item: item[0])
        return files

    def add(self, info, image):
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
        elif image.kind == names.PIN:
            self.pins[image.pin] = info

    def all(self):
        """Every file of the volume but its pins, as FileInfo.

        Pins are left out on purpose: whatever works on "the volume's files"
        (removal, gc's orphans, the in-use check's loop devices) must not see them.
        """
        found = [info for info in (self.clean, self.dirty, self.precache, self.import_) if info]
        found.extend(info for _number, info in self.revisions)
        found.extend(self.junk_revisions)
        found.extend(self.tempfiles)
        return found

    def all_with_pins(self):
        """Every file of the volume, pins included."""
        return self.all() + [self.pins[name] for name in sorted(self.pins)]

    def pin_report(self):
        """The ``pins`` list of the volume dict: name, size and the pinned data's time, by name."""
        return [{"name": name, "size": self.pins[name].size,
                 "timestamp": names.format_timestamp(self.pins[name].mtime_ns // 10 ** 9)}
                for name in sorted(self.pins)]

    @property
    def exists(self):
        return self.clean is not None or self.dirty is not None

    @property
    def size(self):
        """The volume's size: dirty's if it exists, else clean's, else 0 (absent)."""
        image = self.dirty or self.clean
        return image.size if image else 0

    @property
    def usage(self):
        image = self.dirty or self.clean
        return image.usage if image else 0

    @property
    def precache_state(self):
        if self.precache is None:
            return MISSING
        if self.clean is not None and (self.precache.mtime_ns, self.precache.size) == (
                self.clean.mtime_ns, self.clean.size):
            return FRESH
        return STALE

    def next_revision(self):
        return self.revisions[-1][0] + 1 if self.revisions else 1

    def revision_timestamp(self, revision_id):
        for number, info in self.revisions:
            if number == revision_id:
                return names.classify(info.name).timestamp
        return None

    def summary(self):
        """What diff mode shows of the volume: its files and revision ids."""
        return {
            "vid": str(self.vid),
            "size": self.size,
            "revisions": [number for number, _info in self.revisions],
            "files": [info.as_dict() for info in sorted(self.all_with_pins(), key=lambda item: item.name)],
        }


def scan_names(vm_dir, entries, wanted_volume=None):
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


def read_volume(vm_dir, vid, entries=None):
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


# -- in use ----------------------------------------------------------------

def loop_devices():
    """Map of backing file path -> list of loop devices (``/dev/loopN``) backed by it."""
    backed = {}
    try:
        entries = os.listdir(_SYS_BLOCK)
    except OSError:
        return backed
    for entry in entries:
        if not entry.startswith("loop"):
            continue
        try:
            with open(os.path.join(_SYS_BLOCK, entry, "loop", "backing_file"), encoding="utf-8",
                      errors="surrogateescape") as handle:
                backing = handle.read().rstrip("\n")
        except OSError:
            continue  # not attached
        if backing.endswith(" (deleted)"):
            backing = backing[:-len(" (deleted)")]
        backed.setdefault(backing, []).append("/dev/" + entry)
    return backed


def loop_size(device):
    """Size in bytes the loop device ``/dev/loopN`` presents now, or None if unknown."""
    try:
        with open(os.path.join(_SYS_BLOCK, os.path.basename(device), "size"), encoding="ascii") as handle:
            return int(handle.read()) * 512
    except (OSError, ValueError):
        return None


def qubes_running_names():
    """What follows ``volume-running-`` in each of qubesd's running-state files: escaped "<pool>:<vid>"."""
    return {os.path.basename(path)[len("volume-running-"):] for path in glob.glob(QUBES_RUNNING_GLOB)}


def _vid_of_running_name(escaped):
    # The file names "<pool>:<vid>" escaped; a vid never contains ':'.
    return escaped.rpartition(":")[2]


@dataclass
class Surroundings:
    """What outside the pool says about its volumes: loop devices and qubesd's running files.

    Read once per task (or once per pool-wide scan).  ``pool_name`` is the
    pool's Qubes name when qubes.xml says it: then only the running-state file
    of that name counts; unknown (None), a file of any pool name counts.
    """

    pool_realpath: str
    loops: dict
    running: set            # escaped "<pool>:<vid>" of each running-state file
    pool_name: str | None = None

    @classmethod
    def read(cls, pool_path, pool_name=None):
        return cls(os.path.realpath(pool_path), loop_devices(), qubes_running_names(), pool_name)

    def image_realpath(self, vid, name):
        return os.path.join(self.pool_realpath, vid.vm_dir, name)

    def loops_of(self, vid, name):
        if not self.loops:
            return []   # no loop device at all: the common case, and a batch asks for every file of every volume
        return self.loops.get(self.image_realpath(vid, name), [])

    def running_reasons(self, files):
        """Why the volume counts as running: loop devices on its images, qubesd's running file."""
        reasons = []
        for info in files.all():
            for device in self.loops_of(files.vid, info.name):
                reasons.append("loop device %s is backed by %s" % (device, info.name))
        if self.pool_name is not None:
            exact = names.escape_vid("%s:%s" % (self.pool_name, files.vid))
            if exact in self.running:
                reasons.append("qubesd's running-state file %s exists" % QUBES_RUNNING_GLOB.replace("*", exact))
            return reasons
        escaped = names.escape_vid(str(files.vid))
        if any(_vid_of_running_name(name) == escaped for name in self.running):
            reasons.append("qubesd's running-state file %s exists"
                           % QUBES_RUNNING_GLOB.replace("*", "<pool>:" + escaped))
        return reasons

    def in_use_reasons(self, files, running=None):
        """``running``: the volume's running_reasons if the caller has them already."""
        reasons = list(self.running_reasons(files) if running is None else running)
        if files.dirty is not None:
            reasons.append("dirty image %s exists (the volume is started, or halted with a "
                           "commit pending)" % files.dirty.name)
        return reasons

    def state(self, files, running=None):
        if self.running_reasons(files) if running is None else running:
            return RUNNING
        if files.dirty is not None:
            return DIRTY
        if files.clean is not None:
            return STOPPED
        return ABSENT


def volume_report(pool_path, files, surroundings):
    """The ``volume`` dict every module returns."""
    running = surroundings.running_reasons(files)
    reasons = surroundings.in_use_reasons(files, running)
    return {
        "vid": str(files.vid),
        "image": os.path.join(pool_path, files.vid.vm_dir, files.vid.clean),
        "size": files.size,
        "usage": files.usage,
        "revisions": [
            {"id": number, "timestamp": names.classify(info.name).timestamp}
            for number, info in files.revisions
        ],
        "state": surroundings.state(files, running),
        "in_use": bool(reasons),
        "in_use_reasons": reasons,
        "precache": files.precache_state,
        "pins": files.pin_report(),
    }

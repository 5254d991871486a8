# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a volume is in use: what outside the pool says about it (loop devices, qubesd's running files).

Read once per task (or once per pool-wide scan); the in-use guard of the
executor reads it again, cheaply, to see what changed while a plan ran.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles

QUBES_RUNNING_GLOB = "/var/run/qubes/volume-running-*"
_SYS_BLOCK = "/sys/block"

# Volume states, as returned to the user.
ABSENT = "absent"
STOPPED = "stopped"
RUNNING = "running"
DIRTY = "dirty"


def _read_attribute(path: str) -> str:
    """A sysfs attribute's text, read without Python's file layer, whose isatty() check is an ioctl per file: the
    crash matrix counts a task's ioctls, and the number of loop devices on the host must not move them."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536).decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)


def loop_devices() -> dict[str, list[str]]:
    """Map of backing file path -> list of loop devices (``/dev/loopN``) backed by it."""
    backed: dict[str, list[str]] = {}
    try:
        entries = os.listdir(_SYS_BLOCK)
    except OSError:
        return backed
    for entry in entries:
        if not entry.startswith("loop"):
            continue
        try:
            backing = _read_attribute(os.path.join(_SYS_BLOCK, entry, "loop", "backing_file")).rstrip("\n")
        except OSError:
            continue  # not attached
        if backing.endswith(" (deleted)"):
            backing = backing[:-len(" (deleted)")]
        backed.setdefault(backing, []).append("/dev/" + entry)
    return backed


def loop_size(device: str) -> int | None:
    """Size in bytes the loop device ``/dev/loopN`` presents now, or None if unknown."""
    try:
        with open(os.path.join(_SYS_BLOCK, os.path.basename(device), "size"), encoding="ascii") as handle:
            return int(handle.read()) * 512
    except (OSError, ValueError):
        return None


def loop_direct_io(device: str) -> bool | None:
    """Whether the loop device ``/dev/loopN`` reads and writes its backing file with direct I/O; None if unknown."""
    try:
        with open(os.path.join(_SYS_BLOCK, os.path.basename(device), "loop", "dio"), encoding="ascii") as handle:
            return handle.read().strip() == "1"
    except OSError:
        return None


def qubes_running_names() -> set[str]:
    """What follows ``volume-running-`` in each of qubesd's running-state files: escaped "<pool>:<vid>"."""
    return {os.path.basename(path)[len("volume-running-"):] for path in glob.glob(QUBES_RUNNING_GLOB)}


def _vid_of_running_name(escaped: str) -> str:
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
    loops: dict[str, list[str]]   # backing file path -> loop devices
    running: set[str]       # escaped "<pool>:<vid>" of each running-state file
    pool_name: str | None = None

    @classmethod
    def read(cls, pool_path: str, pool_name: str | None = None) -> Surroundings:
        return cls(os.path.realpath(pool_path), loop_devices(), qubes_running_names(), pool_name)

    def image_realpath(self, vid: names.Vid, name: str) -> str:
        return os.path.join(self.pool_realpath, vid.vm_dir, name)

    def loops_of(self, vid: names.Vid, name: str) -> list[str]:
        if not self.loops:
            return []   # no loop device at all: the common case, and a batch asks for every file of every volume
        return self.loops.get(self.image_realpath(vid, name), [])

    def running_reasons(self, files: VolumeFiles) -> list[str]:
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

    def in_use_reasons(self, files: VolumeFiles, running: list[str] | None = None) -> list[str]:
        """``running``: the volume's running_reasons if the caller has them already."""
        reasons = list(self.running_reasons(files) if running is None else running)
        if files.dirty is not None:
            reasons.append("dirty image %s exists (the volume is started, or halted with a "
                           "commit pending)" % files.dirty.name)
        return reasons

    def state(self, files: VolumeFiles, running: list[str] | None = None) -> str:
        if self.running_reasons(files) if running is None else running:
            return RUNNING
        if files.dirty is not None:
            return DIRTY
        if files.clean is not None:
            return STOPPED
        return ABSENT

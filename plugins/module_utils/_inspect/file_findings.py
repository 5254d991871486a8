# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cheap findings: what the names, sizes, inode flags and loop devices of a pool's files say.

They read nothing but what the scan already has, qubes.xml, /sys/block and
(on btrfs only) each directory's and image's inode flags: one open and one
ioctl per file.  Each message names the way out.
"""

from __future__ import annotations

import errno
import os

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import UnsafePath
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.file_flags import has_nocow
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.finding import (
    DIRECT_IO_LOOP, INFO, NO_REFLINK, NOCOW, PENDING_COMMIT, SIZE_MISMATCH, STALE_PRECACHE, WARNING, Finding, PoolFacts,
    relative, shell_path)
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import STALE, FileInfo, VolumeFiles
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import QUBESD_OWNED_KINDS
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import DIRTY, loop_direct_io

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ELOOP, errno.ENXIO)


def file_findings(facts: PoolFacts) -> list[Finding]:
    """Every cheap finding of the pool and of the volumes the report covers."""
    found = no_reflink(facts)
    if facts.fstype == "btrfs":
        found.extend(nocow(facts))
        found.extend(direct_io_loops(facts))
    for files in facts.volumes:
        found.extend(pending_commit(facts, files))
        found.extend(stale_precache(facts, files))
        found.extend(size_mismatch(facts, files))
    return found


def no_reflink(facts: PoolFacts) -> list[Finding]:
    if facts.reflink is not False:
        return []
    return [Finding(NO_REFLINK, None, None, WARNING, (
        "the filesystem of pool %s (%s) cannot share blocks between files (the reflink probe failed): every clone "
        "(a precache, a revision, a pin, an import from a volume) is a full copy, and nothing is shared; the way out "
        "is to move the pool to btrfs, or to XFS made with reflink=1 (mkfs.xfs -m reflink=1, the default of current "
        "xfsprogs)" % (facts.path, facts.fstype)))]


# -- btrfs's No_COW attribute -------------------------------------------------------------------------------------

def nocow(facts: PoolFacts) -> list[Finding]:
    """The pool directory, its prefix directories, the VM directories and images of the covered volumes (btrfs)."""
    found = []
    if has_nocow(facts.pool_dir.open_fd()):
        found.append(_nocow_directory(None, facts.path))
    by_vm_dir: dict[str, list[VolumeFiles]] = {}
    for files in facts.volumes:
        by_vm_dir.setdefault(files.vid.vm_dir, []).append(files)
    for prefix in names.PREFIXES:
        prefix_dir = _open_dir(facts.pool_dir, prefix)
        if prefix_dir is None:
            continue
        with prefix_dir:
            if has_nocow(prefix_dir.open_fd()):
                found.append(_nocow_directory(prefix, prefix_dir.path))
            for vm_dir_name in sorted(by_vm_dir):
                vm_prefix, _sep, vm = vm_dir_name.partition("/")
                if vm_prefix != prefix:
                    continue
                vm_dir = _open_dir(prefix_dir, vm)
                if vm_dir is not None:
                    with vm_dir:
                        found.extend(_nocow_in_vm_dir(facts, vm_dir, vm_dir_name, by_vm_dir[vm_dir_name]))
    return found


def _nocow_in_vm_dir(facts: PoolFacts, vm_dir: Directory, vm_dir_name: str, volumes: list[VolumeFiles]) -> list[Finding]:
    found = []
    if has_nocow(vm_dir.open_fd()):
        found.append(_nocow_directory(vm_dir_name, vm_dir.path))
    for files in volumes:
        for info in files.all_with_pins():
            try:
                fd = os.open(info.name, _OPEN_FLAGS, dir_fd=vm_dir.open_fd())
            except OSError as exc:
                if exc.errno in _GONE:
                    continue   # removed or replaced since the scan: nothing to say about it
                raise
            try:
                flagged = has_nocow(fd)
            finally:
                os.close(fd)
            if flagged:
                found.append(_nocow_image(facts, files, info))
    return found


def _open_dir(parent: Directory, name: str) -> Directory | None:
    try:
        return parent.open_dir(name)
    except UnsafePath:
        return None   # a symlink or a file: the report lists it under unsafe_entries


def _nocow_directory(name: str | None, path: str) -> Finding:
    what = "pool directory" if name is None else "directory"
    return Finding(NOCOW, None, name, WARNING, (
        "%s %s has btrfs's No_COW attribute (chattr +C): every file or directory made in it inherits it, and a "
        "reflink between a No_COW file and any other fails, so clones of such images silently become full copies "
        "(and btrfs keeps no checksums of their data); the way out is chattr -C %s, which new files then follow; "
        "images that already have the attribute keep it (see their own findings)" % (what, path, shell_path(path))))


def _nocow_image(facts: PoolFacts, files: VolumeFiles, info: FileInfo) -> Finding:
    path = facts.image_path(files, info.name)
    directory = os.path.dirname(path)
    problem = ("image %s of volume %s has btrfs's No_COW attribute (chattr +C): no reflink to or from it is possible, "
               "so its clones are full copies, and btrfs keeps no checksums of its data; the attribute cannot be "
               "taken off a file that holds data, so the way out is to " % (relative(files, info.name), files.vid))
    if files.precache is info:
        way_out = ("remove it (rm %s) and run dom0.reflink.reflink_volume with vid: %s, which makes a fresh "
                   "precache as a reflink of the clean image (chattr -C %s first if the directory has the attribute)"
                   % (shell_path(path), files.vid, shell_path(directory)))
    else:
        copy = shell_path(path + ".copy")
        way_out = ("copy it, while its VM is stopped, into a new file of a directory without the attribute and rename "
                   "the copy over it: chattr -C %s (if the directory has it), then cp --reflink=never "
                   "--preserve=timestamps %s %s && mv %s %s; the copy shares nothing with the volume's other images "
                   "until dom0.reflink.reflink_dedupe shares them again"
                   % (shell_path(directory), shell_path(path), copy, copy, shell_path(path)))
    return Finding(NOCOW, str(files.vid), relative(files, info.name), WARNING, problem + way_out)


# -- loop devices ---------------------------------------------------------------------------------------------------

def direct_io_loops(facts: PoolFacts) -> list[Finding]:
    """Loop devices with direct I/O over images of the covered volumes (btrfs: qubes-issues #9488)."""
    found: list[Finding] = []
    if not facts.surroundings.loops:
        return found
    for files in facts.volumes:
        for info in files.all_with_pins():
            for device in facts.surroundings.loops_of(files.vid, info.name):
                if loop_direct_io(device):
                    found.append(Finding(DIRECT_IO_LOOP, str(files.vid), relative(files, info.name), WARNING, (
                        "loop device %s reads and writes image %s of volume %s with direct I/O, on btrfs: a page "
                        "that changes while it is being written gets a checksum that does not match the data on "
                        "disk, and reads of it then fail with checksum errors (qubes-issues #9488); the way out is "
                        "losetup --direct-io=off %s now, and attaching the image without --direct-io (losetup's "
                        "default) from now on" % (device, relative(files, info.name), files.vid, device))))
    return found


# -- what the volume's files say -----------------------------------------------------------------------------------

def pending_commit(facts: PoolFacts, files: VolumeFiles) -> list[Finding]:
    """A dirty image of a volume that is not running (an origin volume: qubesd discards the others' own)."""
    if files.dirty is None or facts.surroundings.state(files) != DIRTY:
        return []
    listed = facts.qubes.volume(files.vid) if facts.qubes is not None else None
    if listed is not None and listed.kind in QUBESD_OWNED_KINDS:
        return []
    path = facts.image_path(files, files.dirty.name)
    return [Finding(PENDING_COMMIT, str(files.vid), relative(files, files.dirty.name), WARNING, (
        "volume %s has a dirty image (%s) but is not running: its VM stopped without the commit (a crash or a power "
        "cut), so the data in it is not the volume's clean image yet; the way out is dom0.reflink.reflink_volume "
        "with vid: %s and state: stopped (it commits it, as qubesd's stop would), or starting and stopping the VM; "
        "to throw that data away instead, remove %s" % (files.vid, files.dirty.name, files.vid, shell_path(path))))]


def stale_precache(facts: PoolFacts, files: VolumeFiles) -> list[Finding]:
    if files.precache is None or files.precache_state != STALE:
        return []
    way_out = "dom0.reflink.reflink_gc removes it"
    if files.clean is not None and files.dirty is None:
        way_out = ("dom0.reflink.reflink_volume with vid: %s replaces it with a fresh one (or dom0.reflink.reflink_gc "
                   "removes it)" % files.vid)
    return [Finding(STALE_PRECACHE, str(files.vid), relative(files, files.precache.name), INFO, (
        "precache %s of volume %s is stale (its mtime or size is not the clean image's): qubesd will not start the "
        "VM from it, and it holds on to data the clean image no longer has; the way out: %s"
        % (files.precache.name, files.vid, way_out)))]


def size_mismatch(facts: PoolFacts, files: VolumeFiles) -> list[Finding]:
    listed = facts.qubes.volume(files.vid) if facts.qubes is not None else None
    image = files.dirty or files.clean
    if listed is None or listed.size is None or image is None or image.size == listed.size:
        return []
    shrink = ", allow_shrink: true (the data past that size is lost)" if listed.size < image.size else ""
    return [Finding(SIZE_MISMATCH, str(files.vid), relative(files, image.name), INFO, (
        "image %s of volume %s is %d bytes, but qubes.xml (%s) records %d: qubesd takes the size from the image and "
        "records it at its next save of qubes.xml, and until then whatever reads qubes.xml (a backup, an older "
        "qubesd, this collection's checks) sees the old size; the way out: if the image's size is right, let qubesd "
        "record it (qvm-volume resize %s:%s %d); if the recorded size is right, run dom0.reflink.reflink_volume with "
        "vid: %s, size: %d%s"
        % (image.name, files.vid, image.size, facts.qubes.path if facts.qubes is not None else "", listed.size,
           listed.vm or "<vm>", listed.volume, image.size, files.vid, listed.size, shrink)))]

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cheap findings: what the names, sizes, inode flags and loop devices of a pool's files say.

They read nothing but what the scan already has (on btrfs, the directories'
No_COW flags, one ioctl per directory the scan opens anyway), qubes.xml and
/sys/block.  Each message names the way out.
"""

from __future__ import annotations

import os

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.finding import (
    DIRECT_IO_LOOP, INFO, NO_REFLINK, NOCOW, PENDING_COMMIT, SIZE_MISMATCH, STALE_PRECACHE, WARNING, Finding, PoolFacts,
    relative, shell_path)
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import STALE, VolumeFiles
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import QUBESD_OWNED_KINDS
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import DIRTY, loop_direct_io


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
    """The pool directory, its prefix directories and the VM directories of the covered volumes (btrfs).

    Images made in such a directory inherit the attribute.  The scan reads
    the directories' flags while it has them open; an image's own attribute
    is read with its extents (extent_findings): an open and an ioctl per
    image would cost reflink_info without space a third of its time.
    """
    return [_nocow_directory(name or None, os.path.join(facts.path, name) if name else facts.path)
            for name in sorted(facts.nocow_dirs)]


def _nocow_directory(name: str | None, path: str) -> Finding:
    what = "pool directory" if name is None else "directory"
    return Finding(NOCOW, None, name, WARNING, (
        "%s %s has btrfs's No_COW attribute (chattr +C): every file or directory made in it inherits it, and a "
        "reflink between a No_COW file and any other fails, so clones of such images silently become full copies "
        "(and btrfs keeps no checksums of their data); the way out is chattr -C %s, which new files then follow; "
        "images that already have the attribute keep it (reflink_info with space: true lists them)"
        % (what, path, shell_path(path))))


# -- loop devices ---------------------------------------------------------------------------------------------------

def direct_io_loops(facts: PoolFacts) -> list[Finding]:
    """Loop devices with direct I/O over images of the covered volumes (btrfs: qubes-issues #9488).

    Only the loop devices whose backing file lies in the pool are looked at
    (found by name, not by walking every image: a dom0 has a few dozen).
    """
    inside = facts.surroundings.pool_realpath.rstrip("/") + "/"
    backed = {path[len(inside):]: devices for path, devices in facts.surroundings.loops.items()
              if path.startswith(inside)}
    if not backed:
        return []
    by_vid = {str(files.vid): files for files in facts.volumes}
    found: list[Finding] = []
    for relative_path in sorted(backed):
        vm_dir, _sep, name = relative_path.rpartition("/")
        image = names.classify(name)
        files = by_vid.get("%s/%s" % (vm_dir, image.volume)) if image is not None else None
        if files is None:
            continue   # not an image of a covered volume
        for device in backed[relative_path]:
            if loop_direct_io(device):
                found.append(Finding(DIRECT_IO_LOOP, str(files.vid), relative_path, WARNING, (
                    "loop device %s reads and writes image %s of volume %s with direct I/O, on btrfs: a page "
                    "that changes while it is being written gets a checksum that does not match the data on "
                    "disk, and reads of it then fail with checksum errors (qubes-issues #9488); the way out is "
                    "losetup --direct-io=off %s now, and attaching the image without --direct-io (losetup's "
                    "default) from now on" % (device, relative_path, files.vid, device))))
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

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The findings that need the extent maps (reflink_info's space: true): sharing, fragments, stranded extents.

They read only the pool's :class:`SpaceMap` (made once for the space
figures): which files hold which bytes together, each file's extent count,
each volume's stranded bytes, the images with btrfs's No_COW attribute (read
with their extents, at no cost).
"""

from __future__ import annotations

import os

from ansible_collections.dom0.reflink.plugins.module_utils._inspect.finding import (
    FRAGMENTED, FRAGMENTED_EXTENTS, FRAGMENTED_PER_GIB, INFO, NOCOW, NOT_SHARED, STRANDED, STRANDED_SHARE, WARNING,
    Finding, PoolFacts, relative, shell_path)
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.space import SpaceMap
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FRESH, FileInfo, VolumeFiles

_GIB = 1024 ** 3


def extent_findings(facts: PoolFacts, space: SpaceMap) -> list[Finding]:
    """not_shared, fragmented and stranded for the volumes the report covers."""
    allocated = {entry.file: entry.allocated for volume in space.volumes.values() for entry in volume.files}
    found = nocow_images(facts, space)
    found.extend(not_shared(facts, space, allocated))
    for files in facts.volumes:
        found.extend(fragmented(facts, space, files, allocated))
        found.extend(stranded(facts, space, files))
    return found


def nocow_images(facts: PoolFacts, space: SpaceMap) -> list[Finding]:
    """Images of the covered volumes with btrfs's No_COW attribute."""
    flagged = set(space.nocow_files())
    if not flagged:
        return []
    found = []
    for files in facts.volumes:
        for info in files.all_with_pins():
            if relative(files, info.name) in flagged:
                found.append(_nocow_image(facts, files, info))
    return found


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


def not_shared(facts: PoolFacts, space: SpaceMap, allocated: dict[str, int]) -> list[Finding]:
    """A fresh precache holding bytes its clean image does not; a revision or pin sharing nothing with it."""
    if facts.reflink is not True:
        return []   # nothing can share: no_reflink says so once for the pool
    partners: dict[str, str] = {}
    owner: dict[str, tuple[VolumeFiles, str]] = {}
    for files in facts.volumes:
        if files.clean is None:
            continue
        clean = relative(files, files.clean.name)
        candidates = [(info, "revision") for _number, info in files.revisions]
        candidates += [(files.pins[name], "pin") for name in sorted(files.pins)]
        if files.precache is not None and files.precache_state == FRESH:
            candidates.append((files.precache, "precache"))
        for info, what in candidates:
            name = relative(files, info.name)
            partners[name] = clean
            owner[name] = (files, what)
    shared = space.shared_bytes(partners)
    found = []
    for name, (files, what) in owner.items():
        held = allocated.get(name, 0)
        if what == "precache" and held > shared[name]:
            found.append(_precache_not_shared(facts, files, held - shared[name]))
        elif what != "precache" and held and not shared[name]:
            found.append(_copy_not_shared(files, name, what, held))
    return found


def _precache_not_shared(facts: PoolFacts, files: VolumeFiles, unshared: int) -> Finding:
    precache = files.precache
    name = precache.name if precache is not None else files.vid.precache
    return Finding(NOT_SHARED, str(files.vid), relative(files, name), WARNING, (
        "precache %s of volume %s holds %d bytes that the clean image does not share: it is a copy, not a reflink "
        "of it, and costs that much space; the way out is to remove it (rm %s) and run dom0.reflink.reflink_volume "
        "with vid: %s, which makes a fresh precache as a reflink (or dom0.reflink.reflink_dedupe with vids: [%s], "
        "which shares what is the same)" % (name, files.vid, unshared, shell_path(facts.image_path(files, name)),
                                            files.vid, files.vid)))


def _copy_not_shared(files: VolumeFiles, name: str, what: str, held: int) -> Finding:
    drop = ("dom0.reflink.reflink_gc with revisions_to_keep removes old revisions" if what == "revision"
            else "dom0.reflink.reflink_pin with state: absent removes a pin")
    return Finding(NOT_SHARED, str(files.vid), name, INFO, (
        "%s %s of volume %s shares none of its %d bytes with the clean image: it is a full copy, or the volume's "
        "data was replaced whole since (an import); where it holds the same data as the clean image, "
        "dom0.reflink.reflink_dedupe with vids: [%s] shares it again and frees that space; if you do not need it, "
        "%s" % (what, name.rpartition("/")[2], files.vid, held, files.vid, drop)))


def fragmented(facts: PoolFacts, space: SpaceMap, files: VolumeFiles, allocated: dict[str, int]) -> list[Finding]:
    """The image the VM runs from (dirty, else clean) in at least 1,000 extents, more than 1,000 per GiB."""
    image = files.dirty or files.clean
    if image is None:
        return []
    name = relative(files, image.name)
    extents = space.extents_of(name)
    held = allocated.get(name, 0)
    if extents < FRAGMENTED_EXTENTS or extents * _GIB <= FRAGMENTED_PER_GIB * held:
        return []
    clean = facts.image_path(files, files.vid.clean)
    tool = ("btrfs filesystem defragment -t 128M %s" if facts.fstype == "btrfs" else "xfs_fsr %s") % shell_path(clean)
    when = "once its VM has stopped (the stop commits it as the clean image), " if image is files.dirty else ""
    return [Finding(FRAGMENTED, str(files.vid), name, INFO, (
        "image %s of volume %s is in %d extents (%d per GiB of its %d bytes of data): reading it takes many more "
        "seeks than it needs; the way out, %swhile the VM is stopped: %s, then remove its precache (rm %s) and run "
        "dom0.reflink.reflink_volume with vid: %s for a fresh one (the VM starts from the precache); the "
        "defragmented image shares nothing with its revisions any more, which costs up to its size until they go"
        % (image.name, files.vid, extents, extents * _GIB // max(held, 1), held, when, tool,
           shell_path(facts.image_path(files, files.vid.precache)), files.vid)))]


def stranded(facts: PoolFacts, space: SpaceMap, files: VolumeFiles) -> list[Finding]:
    """A volume whose stranded bytes (btrfs) exceed a quarter of its allocated bytes."""
    figures = space.volumes.get(str(files.vid))
    if figures is None or not figures.stranded or figures.stranded <= STRANDED_SHARE * figures.allocated:
        return []
    clean = shell_path(facts.image_path(files, files.vid.clean))
    copy = shell_path(facts.image_path(files, files.vid.clean) + ".copy")
    return [Finding(STRANDED, str(files.vid), None, INFO, (
        "volume %s keeps %d of its %d allocated bytes in btrfs extents that no file references any more: btrfs frees "
        "an extent only when its last reference goes, and the volume's images still reference parts of them (a VM "
        "that rewrote most of its image leaves that); the way out is dom0.reflink.reflink_dedupe with vids: [%s], "
        "which writes the parts still in use once more and frees the rest, keeping every image's data and mtime; or "
        "a full rewrite while the VM is stopped (it needs the image's size free for a moment): cp --reflink=never "
        "--preserve=timestamps %s %s && mv %s %s, then remove the precache (rm %s) and run "
        "dom0.reflink.reflink_volume with vid: %s for a fresh one; revisions and pins that still reference the old "
        "extents keep them until they go (dom0.reflink.reflink_gc)"
        % (files.vid, figures.stranded, figures.allocated, files.vid, clean, copy, copy, clean,
           shell_path(facts.image_path(files, files.vid.precache)), files.vid)))]

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One dedupe run over some volumes: find their images, form the sets of the scope, dedupe each set.

What the module flow adds around it (not here): the locks, the volume list
(``vids``, qubes.xml), the in-use reasons of the volumes (loop devices,
qubesd's running files), the result dict, and :func:`settings_for` with the
pool's file system type.  Opening the VM directories is the caller's too:
each :class:`VolumeDir` carries one, opened without following symlinks.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import PoolError
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.engine import (
    DedupeReport, DedupeSettings, dedupe_set, require_dedupe)
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.images import (
    Candidate, attach_extent_maps, close_images, held_open, open_images, volume_candidates)
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.inputs import Skipped

SCOPES = ("volume", "pool")


@dataclass(frozen=True)
class VolumeDir:
    """A volume to dedupe: its vid, its VM directory (an open descriptor, and its pool-relative path)."""

    vid: str
    dir_fd: int
    vm_dir: str
    volume: str


@dataclass
class DedupeOutcome:
    """The report of the run and the files left alone."""

    report: DedupeReport = field(default_factory=DedupeReport)
    skipped: list[Skipped] = field(default_factory=list)


def settings_for(fstype: str, fd: int) -> DedupeSettings:
    """Settings for the file system of ``fd`` (of type ``fstype``, as /proc/self/mountinfo names it)."""
    return DedupeSettings(block_size=os.fstatvfs(fd).f_bsize, whole_extents=fstype == "btrfs")


def _allow_open_files(count: int) -> None:
    """Raise the soft limit of open files to ``count`` if it is lower (scope pool holds every image open)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count:
        if hard != resource.RLIM_INFINITY and hard < count:
            raise PoolError("scope pool would hold %d images open, more than this process may (%d); "
                            "use scope volume" % (count, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


def dedupe_volumes(volumes: Sequence[VolumeDir], scope: str, settings: DedupeSettings, execute: bool,
                   in_use: Mapping[str, Mapping[str, str]] | None = None,
                   held_elsewhere: Mapping[str, Mapping[tuple[int, int], int]] | None = None) -> DedupeOutcome:
    """Dedupe the volumes' images (scope ``volume``: each volume alone; ``pool``: all together).

    ``in_use``: per vid, file names known to be in use and why (left alone).
    ``held_elsewhere``: per set (its vid for scope ``volume``, ``"pool"``),
    the bytes of each image (by identity) that files outside the set also
    hold: the engine keeps those images' copies first.
    Raises DedupeUnsupported before anything is read where the file system
    cannot share blocks (ext4), in check mode too.  Scope ``volume`` opens
    one volume's images at a time.
    """
    if scope not in SCOPES:
        raise ValueError("scope must be one of %s, not %r" % (", ".join(SCOPES), scope))
    outcome = DedupeOutcome()
    if not volumes:
        return outcome
    require_dedupe(volumes[0].dir_fd, volumes[0].vm_dir, settings.block_size)
    per_volume: list[list[Candidate]] = []
    for volume in volumes:
        candidates, skipped = volume_candidates(volume.dir_fd, volume.vm_dir, volume.vid, volume.volume,
                                                in_use=(in_use or {}).get(volume.vid))
        per_volume.append(candidates)
        outcome.skipped.extend(skipped)
        outcome.report.group(volume.vid)
    held = held_open([candidate for candidates in per_volume for candidate in candidates])
    sets = per_volume if scope == "volume" else [[candidate for candidates in per_volume for candidate in candidates]]
    if scope == "pool":
        _allow_open_files(len(sets[0]) + 64)
    for candidates in sets:
        key = candidates[0].vid if scope == "volume" and candidates else "pool"
        images, skipped = open_images(candidates, held, (held_elsewhere or {}).get(key))
        outcome.skipped.extend(skipped)
        try:
            outcome.report.merge(dedupe_set(attach_extent_maps(images), settings, execute))
        finally:
            close_images(images)
    return outcome

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which of a volume's files the dedupe may touch, opened so that nothing else can be.

A volume's clean image, revisions, pins and precache take part.  Left alone,
and listed with the reason: its dirty image (a running VM writes it, or a
commit is pending), an import's staging file, a revision with a junk number,
anything at an image's name that is not a regular file (a symlink, a device,
a FIFO: never opened, not even to look), a file another process holds open,
a file the caller knows to be in use (a loop device's backing file), and a
second name of a file already taken (a hard link).

Files are opened without following a symlink and without opening anything
but a regular file: first ``O_PATH | O_NOFOLLOW`` (which opens nothing), a
check that it is a regular file, then a read-only open of that very inode
through ``/proc/self/fd``.  Read-only is enough: root may dedupe into a
file opened for reading (measured on btrfs and XFS).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._fs.holders import describe_holders, open_holders
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.extent_maps import read_disk_extents, read_extent_map
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.inputs import (
    DedupeImage, MappedExtent, Skipped)

_O_PATH = getattr(os, "O_PATH", 0)
_O_NOATIME = getattr(os, "O_NOATIME", 0)
_ORDER = {names.CLEAN: 0, names.PRECACHE: 1, names.PIN: 2, names.REVISION: 3}


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


@dataclass(frozen=True)
class Candidate:
    """An image file found for a volume, not opened yet: a regular file when it was looked at."""

    vid: str
    dir_fd: int
    vm_dir: str
    name: str
    identity: tuple[int, int]

    @property
    def where(self) -> str:
        return "%s/%s" % (self.vm_dir, self.name)


def volume_candidates(dir_fd: int, vm_dir: str, vid: str, volume: str, entries: Iterable[str] | None = None,
                      in_use: Mapping[str, str] | None = None) -> tuple[list[Candidate], list[Skipped]]:
    """The image files of volume ``volume`` in the VM directory ``dir_fd`` (pool-relative ``vm_dir``) to dedupe.

    In the engine's tie-break order: clean, precache, pins, revisions newest
    first.  ``entries``: the directory's names if the caller listed it
    already; ``in_use``: file names the caller knows to be in use, with why.
    Only ``lstat`` here: nothing is opened.
    """
    wanted: list[tuple[int, int, str]] = []
    skipped: list[Skipped] = []
    for name in os.listdir(dir_fd) if entries is None else entries:
        image = names.classify(name)
        if image is None or image.volume != volume or image.tempfile:
            continue
        where = "%s/%s" % (vm_dir, name)
        if image.kind == names.DIRTY:
            skipped.append(Skipped(where, "the dirty image of a running VM (or of a commit pending): never touched"))
        elif image.kind == names.IMPORT:
            skipped.append(Skipped(where, "an import's staging file: left to the import"))
        elif image.junk_revision:
            skipped.append(Skipped(where, "a revision whose number is not an integer (reflink_gc can remove it)"))
        elif in_use and name in in_use:
            skipped.append(Skipped(where, in_use[name]))
        else:
            wanted.append((_ORDER[image.kind], -(image.revision or 0), name))
    found: list[Candidate] = []
    for _order, _newest, name in sorted(wanted):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue   # removed since the listing
        if stat.S_ISREG(st.st_mode):
            found.append(Candidate(vid, dir_fd, vm_dir, name, (st.st_dev, st.st_ino)))
        else:
            skipped.append(Skipped("%s/%s" % (vm_dir, name), "%s, never opened" % _kind(st.st_mode)))
    return found, skipped


def held_open(candidates: Sequence[Candidate]) -> dict[tuple[int, int], str]:
    """Why each candidate another process holds open is left alone; one walk of ``/proc/*/fd`` for all."""
    holders = open_holders([candidate.identity for candidate in candidates])
    return {identity: "held open by %s: not deduped" % describe_holders(found)
            for identity, found in holders.items()}


def _open_regular(dir_fd: int, name: str) -> tuple[int | None, os.stat_result | None, str]:
    """(fd, stat, "") for a regular file; (None, None, why not) otherwise.  Only a regular file is ever opened."""
    try:
        path_fd = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, None, "gone (removed while the dedupe ran)"
    try:
        st = os.fstat(path_fd)
        if not stat.S_ISREG(st.st_mode):
            return None, None, "%s, never opened" % _kind(st.st_mode)
        via = "/proc/self/fd/%d" % path_fd
        try:
            fd = os.open(via, os.O_RDONLY | os.O_CLOEXEC | _O_NOATIME)
        except PermissionError:   # O_NOATIME needs the file's owner (or CAP_FOWNER)
            fd = os.open(via, os.O_RDONLY | os.O_CLOEXEC)
        return fd, os.fstat(fd), ""
    finally:
        os.close(path_fd)


def open_images(candidates: Sequence[Candidate], held: Mapping[tuple[int, int], str],
                held_elsewhere: Mapping[tuple[int, int], int] | None = None) -> tuple[list[DedupeImage], list[Skipped]]:
    """Open the candidates read-only, leaving out files held open and second names (hard links) of one file.

    A name is opened without following a symlink, and only if it is (still)
    a regular file.  The images come without extent maps (see
    :func:`attach_extent_maps`); the caller closes them (:func:`close_images`).
    ``held_elsewhere``: per identity, the bytes that files outside the set
    also hold (inputs.DedupeImage).
    """
    images: list[DedupeImage] = []
    skipped: list[Skipped] = []
    seen: dict[tuple[int, int], str] = {}
    for candidate in candidates:
        if candidate.identity in held:
            skipped.append(Skipped(candidate.where, held[candidate.identity]))
            continue
        fd, st, why = _open_regular(candidate.dir_fd, candidate.name)
        if fd is None or st is None:
            skipped.append(Skipped(candidate.where, why))
            continue
        identity = (st.st_dev, st.st_ino)
        reason = held.get(identity)
        if reason is None and identity in seen:
            reason = "the same file as %s (a hard link): deduped once, under that name" % seen[identity]
        if reason is not None:
            skipped.append(Skipped(candidate.where, reason))
            os.close(fd)
            continue
        seen[identity] = candidate.where
        images.append(DedupeImage(candidate.where, candidate.vid, fd, candidate.dir_fd, st.st_size, identity,
                                  held_elsewhere=(held_elsewhere or {}).get(identity, 0)))
    return images, skipped


def attach_extent_maps(images: Sequence[DedupeImage],
                       read_map: Callable[[int], Sequence[MappedExtent]] = read_extent_map,
                       read_disk_extents: Callable[[int, int], Sequence[tuple[int, int]]] = read_disk_extents,
                       ) -> list[DedupeImage]:
    """The images with their extent maps (by default read through _inspect, see extent_maps.py)."""
    return [replace(image, extents=tuple(read_map(image.fd)),
                    disk_extents=tuple(read_disk_extents(image.fd, image.identity[1])))
            for image in images]


def close_images(images: Iterable[DedupeImage]) -> None:
    for image in images:
        try:
            os.close(image.fd)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise

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
from dataclasses import replace

from ansible_collections.dom0.reflink.plugins.module_utils import _names as names
from ansible_collections.dom0.reflink.plugins.module_utils._holders import describe_holders, open_holders
from ansible_collections.dom0.reflink.plugins.module_utils._plans.dedupe_fiemap_interim import (
    read_btrfs_disk_extents, read_extent_map)
from ansible_collections.dom0.reflink.plugins.module_utils._plans.dedupe_input import (
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


def _candidates(entries: Iterable[str], volume: str, vm_dir: str) -> tuple[list[str], list[Skipped]]:
    """The names to open, in the engine's tie-break order (clean, precache, pins, revisions newest first)."""
    wanted: list[tuple[int, int, str]] = []
    skipped: list[Skipped] = []
    for name in entries:
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
        else:
            wanted.append((_ORDER[image.kind], -(image.revision or 0), name))
    wanted.sort()
    return [name for _kind_order, _newest, name in wanted], skipped


def open_volume_images(dir_fd: int, vm_dir: str, vid: str, volume: str, entries: Iterable[str] | None = None,
                       in_use: Mapping[str, str] | None = None) -> tuple[list[DedupeImage], list[Skipped]]:
    """Open the images of volume ``volume`` (vid ``vid``) in the VM directory ``dir_fd`` (pool-relative ``vm_dir``).

    ``entries``: the directory's names if the caller listed it already;
    ``in_use``: file names the caller knows to be in use, with the reason.
    The images come without extent maps (see :func:`attach_extent_maps`).
    """
    listing = os.listdir(dir_fd) if entries is None else entries
    wanted, skipped = _candidates(listing, volume, vm_dir)
    images: list[DedupeImage] = []
    for name in wanted:
        where = "%s/%s" % (vm_dir, name)
        if in_use and name in in_use:
            skipped.append(Skipped(where, in_use[name]))
            continue
        fd, st, why = _open_regular(dir_fd, name)
        if fd is None or st is None:
            skipped.append(Skipped(where, why))
            continue
        images.append(DedupeImage(where, vid, fd, dir_fd, st.st_size, (st.st_dev, st.st_ino)))
    return images, skipped


def set_aside(images: Sequence[DedupeImage]) -> tuple[list[DedupeImage], list[Skipped]]:
    """Take out (and close) images that another process holds open, and second names of one file.

    One walk of ``/proc/*/fd`` for all of them: call it once per run.
    """
    holders = open_holders([image.identity for image in images])  # type: ignore[no-untyped-call]
    kept: list[DedupeImage] = []
    skipped: list[Skipped] = []
    seen: dict[tuple[int, int], str] = {}
    for image in images:
        found = holders.get(image.identity)
        if found:
            reason = "held open by %s: not deduped" % describe_holders(found)  # type: ignore[no-untyped-call]
        elif image.identity in seen:
            reason = "the same file as %s (a hard link): deduped once, under that name" % seen[image.identity]
        else:
            seen[image.identity] = image.name
            kept.append(image)
            continue
        skipped.append(Skipped(image.name, reason))
        os.close(image.fd)
    return kept, skipped


def attach_extent_maps(images: Sequence[DedupeImage],
                       read_map: Callable[[int], Sequence[MappedExtent]] = read_extent_map,
                       read_disk_extents: Callable[[int, int], Sequence[tuple[int, int]]] = read_btrfs_disk_extents,
                       ) -> list[DedupeImage]:
    """The images with their extent maps (by default the interim readers; the pool's inspection later)."""
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

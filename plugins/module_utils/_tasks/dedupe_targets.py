# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What reflink_dedupe works on: the volumes' directories, the files left alone, the files it measures.

From the pool scan (made under the locks), qubes.xml and the surroundings:

- the volumes handed to the engine, each with its VM directory opened
  without following a symlink (a VM directory that is a symlink is listed in
  ``skipped`` and never entered);
- the volumes qubesd owns (qubes.xml: ``snapshot`` and ``volatile``): an
  AppVM's root is made anew from its template at each start (while it runs,
  its ``root.img`` is a hard link to the template's clean image), a volatile
  volume is thrown away; every file of theirs is left alone and listed;
- the files in use: a loop device's backing file (the engine leaves a dirty
  image alone anyway: a running VM writes it);
- the files whose space is read before and after: first the *members*, each
  image the engine may change (clean, precache, pins, revisions), then the
  *witnesses*, every other image file of the pool (dirty images, imports,
  other volumes, ...): they tell who else holds a block (a running AppVM's
  dirty image holds its template's); each inode once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import UnsafePath
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.space import ImageFile
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo, VolumeFiles
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import (
    QUBESD_OWNED_KINDS, SNAPSHOT, QubesPool)
from ansible_collections.dom0.reflink.plugins.module_utils._state.scan import PoolScan
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.inputs import Skipped
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.run import VolumeDir

# The engine's order of a volume's images (images.volume_candidates): the first name of an inode is the one it uses.
_ORDER = {names.CLEAN: 0, names.PRECACHE: 1, names.PIN: 2, names.REVISION: 3}


@dataclass
class DedupeTargets:
    """The volumes to dedupe, what is left alone, and the files measured (see the module's docstring)."""

    volumes: list[VolumeDir] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    in_use: dict[str, dict[str, str]] = field(default_factory=dict)
    files: list[ImageFile] = field(default_factory=list)                # the members, then the witnesses
    members: int = 0
    index_of: dict[tuple[int, int], int] = field(default_factory=dict)   # (st_dev, st_ino) -> index in files
    without_images: list[str] = field(default_factory=list)          # vids with no image file at all
    dirs: list[Directory] = field(default_factory=list)                # the VM directories opened

    def close(self) -> None:
        for directory in self.dirs:
            directory.close()
        self.dirs.clear()


def selected_vids(scan: PoolScan) -> list[str]:
    """Every volume of the pool: those with image files, and those with only unsafe entries at image names."""
    found = set(scan.volumes)
    for path in scan.unsafe:
        prefix_vm, _sep, name = path.rpartition("/")
        image = names.classify(name)
        if image is not None and prefix_vm.count("/") == 1:
            found.add("%s/%s" % (prefix_vm, image.volume))
    return sorted(found)


def _qubesd_reason(qubes: QubesPool | None, vid: str) -> str | None:
    listed = qubes.volume(vid) if qubes is not None else None
    if listed is None or listed.kind not in QUBESD_OWNED_KINDS:
        return None
    if listed.kind == SNAPSHOT:
        origin = " from %s" % listed.source if listed.source else ""
        return ("a snapshot volume (qubes.xml): qubesd makes its files anew%s at each start; left alone" % origin)
    return "a volatile volume (qubes.xml): qubesd throws its files away at each start; left alone"


def _measured(files: VolumeFiles) -> list[FileInfo]:
    """The volume's images the engine may change, in its order."""
    found = [info for info in (files.clean, files.precache) if info is not None]
    found += [files.pins[name] for name in sorted(files.pins)]
    found += [info for _number, info in sorted(files.revisions, key=lambda item: -item[0])]
    return found


def find_targets(pool_dir: Directory, scan: PoolScan, vids: Sequence[str], qubes: QubesPool | None,
                 surroundings: Surroundings) -> DedupeTargets:
    """The targets of a run over ``vids`` (sorted vid strings) from the scan of the whole pool.

    Close them with :meth:`DedupeTargets.close`.
    """
    targets = DedupeTargets()
    prefixes: dict[str, Directory | None] = {}
    vm_dirs: dict[str, Directory | None] = {}
    try:
        for text in vids:
            vid = names.parse_vid(text)
            files = scan.volumes.get(text) or VolumeFiles(vid)
            reason = _qubesd_reason(qubes, text)
            if reason is not None:
                targets.skipped.extend(Skipped(vid.rel(info.name), reason) for info in files.all_with_pins())
                continue
            if vid.vm_dir not in vm_dirs:
                vm_dirs[vid.vm_dir] = _open_vm_dir(pool_dir, vid, prefixes, targets)
            vm_dir = vm_dirs[vid.vm_dir]
            if vm_dir is None:
                if not any(entry.file == vid.vm_dir for entry in targets.skipped):   # a symlink is listed there
                    targets.without_images.append(text)
                continue
            targets.volumes.append(VolumeDir(text, vm_dir.open_fd(), vid.vm_dir, vid.volume))
            in_use = {}
            for info in files.all_with_pins():
                for device in surroundings.loops_of(vid, info.name):
                    in_use[info.name] = "loop device %s is backed by it: in use, not deduped" % device
            if in_use:
                targets.in_use[text] = in_use
            if not files.all_with_pins():
                targets.without_images.append(text)
            for info in _measured(files):
                if info.name not in in_use:
                    _add_file(targets, files, info)
        targets.members = len(targets.files)
        for files in scan.sorted_volumes():
            for info in files.all_with_pins():
                _add_file(targets, files, info)
    except BaseException:
        targets.close()
        raise
    finally:
        for directory in prefixes.values():
            if directory is not None:
                directory.close()
    return targets


def _add_file(targets: DedupeTargets, files: VolumeFiles, info: FileInfo) -> None:
    """``info`` of ``files``' volume, unless its inode is listed already (a hard link)."""
    if (info.dev, info.ino) not in targets.index_of:
        targets.index_of[(info.dev, info.ino)] = len(targets.files)
        revision = any(info is other for _number, other in files.revisions)
        targets.files.append(ImageFile(files.vid.rel(info.name), str(files.vid), revision, info.ino))


def _open_vm_dir(pool_dir: Directory, vid: names.Vid, prefixes: dict[str, Directory | None],
                 targets: DedupeTargets) -> Directory | None:
    """The VM directory of ``vid``, never through a symlink (one is listed in ``skipped``); None if missing."""
    prefix, vm = vid.vm_dir.split("/")
    try:
        if prefix not in prefixes:
            prefixes[prefix] = pool_dir.open_dir(prefix)
        parent = prefixes[prefix]
        directory = parent.open_dir(vm) if parent is not None else None
    except UnsafePath as exc:
        targets.skipped.append(Skipped(vid.vm_dir, "%s: never entered" % exc))
        return None
    if directory is not None:
        targets.dirs.append(directory)
    return directory

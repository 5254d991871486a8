# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a pool holds, read with one directory walk: every volume's files, and what is unsafe or foreign."""

from __future__ import annotations

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument, PoolError, UnsafePath
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.file_flags import has_nocow
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo, VolumeFiles, scan_names


class PoolScan:
    """Everything under ``appvms/`` and ``vm-templates/``, read with one directory walk.

    ``volumes`` maps vid string -> VolumeFiles; ``vm_dirs`` maps ``prefix/vm``
    -> list of entry names (image or not); ``unsafe`` lists paths (relative to
    the pool) of image-like entries that are not regular files, and of VM
    "directories" that are symlinks or files.  ``complete``: whether it read
    the whole pool (False when it was limited to some volumes).
    """

    def __init__(self, read_flags: bool = False) -> None:
        self.volumes: dict[str, VolumeFiles] = {}
        self.vm_dirs: dict[str, list[str]] = {}
        self.unsafe: list[str] = []
        # With read_flags: the directories (relative to the pool, "" for the pool itself) with btrfs's No_COW
        # attribute, read while they are open anyway (one ioctl each).
        self.read_flags = read_flags
        self.nocow_dirs: set[str] = set()
        self.complete = True

    @classmethod
    def read(cls, pool_dir: Directory, only_vids: list[names.Vid] | None = None, read_flags: bool = False) -> PoolScan:
        scan = cls(read_flags)
        wanted_dirs = None
        if only_vids is not None:
            wanted_dirs = {vid.vm_dir for vid in only_vids}
            scan.complete = False
        scan.note_flags(pool_dir, "")
        for prefix in names.PREFIXES:
            prefix_dir = pool_dir.open_dir(prefix)
            if prefix_dir is None:
                continue
            with prefix_dir:
                scan.note_flags(prefix_dir, prefix)
                for vm in sorted(prefix_dir.names()):
                    rel_dir = "%s/%s" % (prefix, vm)
                    if wanted_dirs is not None and rel_dir not in wanted_dirs:
                        continue
                    scan.read_vm_dir(prefix_dir, prefix, vm)
        if only_vids is not None:
            wanted = {str(vid) for vid in only_vids}
            scan.volumes = {key: value for key, value in scan.volumes.items() if key in wanted}
            for vid in only_vids:
                scan.volumes.setdefault(str(vid), VolumeFiles(vid))
        return scan

    def read_vm_dir(self, prefix_dir: Directory, prefix: str, vm: str) -> None:
        rel_dir = "%s/%s" % (prefix, vm)
        try:
            vm_dir = prefix_dir.open_dir(vm)
        except UnsafePath:
            self.unsafe.append(rel_dir)
            return
        if vm_dir is None:
            return
        with vm_dir:
            self.note_flags(vm_dir, rel_dir)
            entries = vm_dir.names()
            self.vm_dirs[rel_dir] = entries
            infos, unsafe = scan_names(vm_dir, entries)
        self.unsafe.extend("%s/%s" % (rel_dir, name) for name in unsafe)
        by_volume: dict[str, list[FileInfo]] = {}
        for info in infos:
            image = names.classify(info.name)
            if image is not None:   # always: scan_names keeps image names only
                by_volume.setdefault(image.volume, []).append(info)
        for volume, volume_infos in by_volume.items():
            try:
                vid = names.parse_vid("%s/%s/%s" % (prefix, vm, volume))
            except InvalidArgument:
                # A name this collection would not create (e.g. a VM called '-x'): list it as unsafe.
                self.unsafe.extend("%s/%s" % (rel_dir, info.name) for info in volume_infos)
                continue
            self.volumes[str(vid)] = VolumeFiles.from_infos(vid, volume_infos)

    def note_flags(self, directory: Directory, relative: str) -> None:
        if self.read_flags and has_nocow(directory.open_fd()):
            self.nocow_dirs.add(relative)

    def limited_to(self, only_vids: list[names.Vid]) -> PoolScan:
        """The part of this scan that ``read`` with ``only_vids`` would have found (their VM directories only)."""
        wanted_dirs = {vid.vm_dir for vid in only_vids}
        part = PoolScan(self.read_flags)
        part.complete = False
        part.nocow_dirs = {name for name in self.nocow_dirs if name.count("/") < 1 or name in wanted_dirs}
        part.vm_dirs = {key: value for key, value in self.vm_dirs.items() if key in wanted_dirs}
        part.unsafe = [entry for entry in self.unsafe if "/".join(entry.split("/")[:2]) in wanted_dirs]
        part.volumes = {str(vid): self.volumes.get(str(vid)) or VolumeFiles(vid) for vid in only_vids}
        return part

    def sorted_volumes(self) -> list[VolumeFiles]:
        return [self.volumes[key] for key in sorted(self.volumes)]


def require_pool(pool_dir: Directory) -> None:
    """Refuse a directory that is not a pool, before any lock file is made in it."""
    if not any(pool_dir.has_subdir(prefix) for prefix in names.PREFIXES):
        raise PoolError("%s is not a pool: it has neither appvms/ nor vm-templates/; "
                        "set it up with dom0.reflink.reflink_pool" % pool_dir.path)

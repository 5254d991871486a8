# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plans of a pool as a whole: its setup (one level of directory and the prefix directories) and its removal."""

from __future__ import annotations

import os

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import PoolError
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Step
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory, remove_tree
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import METADATA_DIR
from ansible_collections.dom0.reflink.plugins.module_utils._state.scan import PoolScan


def refuse_symlinked_pool(path: str) -> None:
    """Refuse to remove a pool whose path is a symlink: its contents would go, then its rmdir would fail."""
    link = path.rstrip("/") or "/"
    if os.path.islink(link):
        raise PoolError("pool path %s is a symlink (to %s): nothing was removed; give the pool's real path %s "
                        "to remove the pool, then remove the symlink itself"
                        % (path, os.readlink(link), os.path.realpath(link)))


def open_pool_or_parent(path: str) -> tuple[Directory | None, bool]:
    """Open the pool, or (if it does not exist yet) check its parent; returns (Directory|None, exists)."""
    try:
        return Directory.open_pool(path), True
    except PoolError:
        if os.path.lexists(path):
            raise
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise PoolError("cannot create pool %s: its parent directory %s does not exist "
                        "(only the last level is created)" % (path, parent))
    return None, False


def image_files_in(scan: PoolScan) -> list[str]:
    """Relative paths of every image file found by ``scan``."""
    found: list[str] = []
    for volume in scan.sorted_volumes():
        found.extend(volume.vid.rel(info.name) for info in volume.all_with_pins())
    return found


def foreign_entries(pool_dir: Directory, scan: PoolScan) -> list[str]:
    """Entries that removing the pool would have to destroy although they are not ours."""
    foreign = []
    for name in pool_dir.names():
        if name not in names.PREFIXES and name != METADATA_DIR:
            foreign.append(name)
    for rel_dir, entries in scan.vm_dirs.items():
        foreign.extend("%s/%s" % (rel_dir, name) for name in entries if names.classify(name) is None)
    foreign.extend(scan.unsafe)
    return sorted(foreign)


def _mkdir_step(text: str, parent_path: str, name: str) -> Step:
    def make() -> None:
        with Directory.open_pool(parent_path) as parent:
            parent.mkdir(name, 0o755)
    return Step(text, make)


def plan_present(path: str, pool_dir: Directory | None) -> list[Step]:
    """Steps that create the pool directory (one level) and its two prefix directories."""
    steps = []
    if pool_dir is None:
        parent, name = os.path.split(os.path.abspath(path))
        steps.append(_mkdir_step("create pool directory %s" % path, parent, name))
    for prefix in names.PREFIXES:
        if pool_dir is None or not pool_dir.has_subdir(prefix):
            steps.append(_mkdir_step("create %s/" % os.path.join(path, prefix), path, prefix))
    return steps


def plan_absent(path: str, pool_dir: Directory) -> list[Step]:
    """Steps that remove a pool holding no image file and nothing foreign; refuses otherwise."""
    scan = PoolScan.read(pool_dir)
    images = image_files_in(scan)
    if images:
        shown = ", ".join(images[:5]) + (" and %d more" % (len(images) - 5) if len(images) > 5 else "")
        pins = ["%s/%s" % (volume.vid.vm_dir, volume.pins[name].name)
                for volume in scan.sorted_volumes() for name in sorted(volume.pins)]
        how = "dom0.reflink.reflink_volume state=absent"
        if pins:
            # state=absent keeps a volume's pins: without remove_pins the pool would still not be empty.
            how += (" with remove_pins: true, since %d of them are pins (%s), which state=absent keeps otherwise; "
                    "or remove the pins one by one with dom0.reflink.reflink_pin state=absent"
                    % (len(pins), ", ".join(pins[:5]) + (" and %d more" % (len(pins) - 5) if len(pins) > 5 else "")))
        raise PoolError("pool %s still holds %d image file(s): %s; remove the volumes first (%s)"
                        % (path, len(images), shown, how))
    foreign = foreign_entries(pool_dir, scan)
    if foreign:
        raise PoolError("pool %s holds files that are not part of a pool: %s; move them away first"
                        % (path, ", ".join(foreign[:10])))
    steps = []
    for rel_dir in sorted(scan.vm_dirs):
        prefix, vm = rel_dir.split("/")
        steps.append(_rmdir_step("remove empty VM directory %s" % os.path.join(path, rel_dir),
                                 os.path.join(path, prefix), vm))
    for prefix in names.PREFIXES:
        if pool_dir.has_subdir(prefix):
            steps.append(_rmdir_step("remove %s/" % os.path.join(path, prefix), path, prefix))
    if pool_dir.lstat(METADATA_DIR) is not None:
        def remove_metadata() -> None:
            with Directory.open_pool(path) as pool:
                remove_tree(pool, METADATA_DIR)
        steps.append(Step("remove %s/ (locks and journals)" % os.path.join(path, METADATA_DIR), remove_metadata))
    parent, name = os.path.split(os.path.abspath(path))
    steps.append(_rmdir_step("remove pool directory %s" % path, parent, name))
    return steps


def _rmdir_step(text: str, parent_path: str, name: str) -> Step:
    def remove() -> None:
        with Directory.open_pool(parent_path) as parent:
            parent.rmdir(name)
    return Step(text, remove)

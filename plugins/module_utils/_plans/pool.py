# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool as a whole: its filesystem, its setup and removal, and one-walk scans."""

from __future__ import annotations

import contextlib
import os

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._engine.file_actions import Step
from ansible_collections.dom0.reflink.plugins.module_utils._fs.clone import probe_reflink
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import (
    InvalidArgument,
    PoolError,
    ReflinkError,
    UnsafePath,
)
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory, remove_tree
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import METADATA_DIR, NO_SPACE_ERRNOS, pool_lock
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import missing_volumes, read_qubes_xml
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import execute, missing_pool_warning
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import (
    Surroundings,
    VolumeFiles,
    scan_names,
    volume_report,
)

_MOUNTINFO = "/proc/self/mountinfo"


def filesystem_type(path):
    """Type of the filesystem holding ``path`` (from the longest matching mount point)."""
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        with open(_MOUNTINFO, encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                left, _separator, right = line.partition(" - ")
                mount_point = left.split()[4].replace("\\040", " ")
                inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, fstype = mount_point, right.split()[0]
    except (OSError, IndexError):
        pass
    return fstype


def filesystem_report(path, reflink):
    """The ``pool`` dict: path, filesystem type, reflink support, size and usage in bytes."""
    st = os.statvfs(path)
    return {
        "path": path,
        "fstype": filesystem_type(path),
        "reflink": reflink,
        "size": st.f_blocks * st.f_frsize,
        "usage": (st.f_blocks - st.f_bfree) * st.f_frsize,
    }


class PoolScan:
    """Everything under ``appvms/`` and ``vm-templates/``, read with one directory walk.

    ``volumes`` maps vid string -> VolumeFiles; ``vm_dirs`` maps ``prefix/vm``
    -> list of entry names (image or not); ``unsafe`` lists paths (relative to
    the pool) of image-like entries that are not regular files, and of VM
    "directories" that are symlinks or files.
    """

    def __init__(self):
        self.volumes = {}
        self.vm_dirs = {}
        self.unsafe = []

    @classmethod
    def read(cls, pool_dir, only_vids=None):
        scan = cls()
        wanted_dirs = None
        if only_vids is not None:
            wanted_dirs = {vid.vm_dir for vid in only_vids}
        for prefix in names.PREFIXES:
            prefix_dir = pool_dir.open_dir(prefix)
            if prefix_dir is None:
                continue
            with prefix_dir:
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

    def read_vm_dir(self, prefix_dir, prefix, vm):
        rel_dir = "%s/%s" % (prefix, vm)
        try:
            vm_dir = prefix_dir.open_dir(vm)
        except UnsafePath:
            self.unsafe.append(rel_dir)
            return
        if vm_dir is None:
            return
        with vm_dir:
            entries = vm_dir.names()
            self.vm_dirs[rel_dir] = entries
            infos, unsafe = scan_names(vm_dir, entries)
        self.unsafe.extend("%s/%s" % (rel_dir, name) for name in unsafe)
        by_volume = {}
        for info in infos:
            image = names.classify(info.name)
            by_volume.setdefault(image.volume, []).append(info)
        for volume, volume_infos in by_volume.items():
            try:
                vid = names.parse_vid("%s/%s/%s" % (prefix, vm, volume))
            except InvalidArgument:
                # A name this collection would not create (e.g. a VM called '-x'): list it as unsafe.
                self.unsafe.extend("%s/%s" % (rel_dir, info.name) for info in volume_infos)
                continue
            self.volumes[str(vid)] = VolumeFiles.from_infos(vid, volume_infos)

    def sorted_volumes(self):
        return [self.volumes[key] for key in sorted(self.volumes)]


def require_pool(pool_dir):
    """Refuse a directory that is not a pool, before any lock file is made in it."""
    if not any(pool_dir.has_subdir(prefix) for prefix in names.PREFIXES):
        raise PoolError("%s is not a pool: it has neither appvms/ nor vm-templates/; "
                        "set it up with dom0.reflink.reflink_pool" % pool_dir.path)


def open_pool_or_parent(path):
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


def image_files_in(scan):
    """Relative paths of every image file found by ``scan``."""
    found = []
    for volume in scan.sorted_volumes():
        found.extend("%s/%s" % (volume.vid.vm_dir, info.name) for info in volume.all_with_pins())
    return found


def foreign_entries(pool_dir, scan):
    """Entries that removing the pool would have to destroy although they are not ours."""
    foreign = []
    for name in pool_dir.names():
        if name not in names.PREFIXES and name != METADATA_DIR:
            foreign.append(name)
    for rel_dir, entries in scan.vm_dirs.items():
        foreign.extend("%s/%s" % (rel_dir, name) for name in entries if names.classify(name) is None)
    foreign.extend(scan.unsafe)
    return sorted(foreign)


def _mkdir_step(text, parent_path, name):
    def make():
        with Directory.open_pool(parent_path) as parent:
            parent.mkdir(name, 0o755)
    return Step(text, make)


def plan_present(path, pool_dir):
    """Steps that create the pool directory (one level) and its two prefix directories."""
    steps = []
    if pool_dir is None:
        parent, name = os.path.split(os.path.abspath(path))
        steps.append(_mkdir_step("create pool directory %s" % path, parent, name))
    for prefix in names.PREFIXES:
        if pool_dir is None or not pool_dir.has_subdir(prefix):
            steps.append(_mkdir_step("create %s/" % os.path.join(path, prefix), path, prefix))
    return steps


def plan_absent(path, pool_dir):
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
        def remove_metadata():
            with Directory.open_pool(path) as pool:
                remove_tree(pool, METADATA_DIR)
        steps.append(Step("remove %s/ (locks and journals)" % os.path.join(path, METADATA_DIR), remove_metadata))
    parent, name = os.path.split(os.path.abspath(path))
    steps.append(_rmdir_step("remove pool directory %s" % path, parent, name))
    return steps


def _rmdir_step(text, parent_path, name):
    def remove():
        with Directory.open_pool(parent_path) as parent:
            parent.rmdir(name)
    return Step(text, remove)


def _layout(path):
    """What diff mode shows of a pool: whether it and its prefix directories exist."""
    return {
        "path": path,
        "exists": os.path.isdir(path),
        "directories": [prefix for prefix in names.PREFIXES if os.path.isdir(os.path.join(path, prefix))],
    }


def run_pool_task(params, check_mode, diff):
    """reflink_pool: plan, execute (or not, in check mode) and report."""
    path = params["path"]
    # Nothing here depends on qubes.xml, but a qubes_xml that names a missing or bad file fails alike everywhere.
    read_qubes_xml(params.get("qubes_xml"), path)
    if params["state"] == "absent":
        refuse_symlinked_pool(path)
    pool_dir, exists = open_pool_or_parent(path)
    before = _layout(path)
    warnings = []
    try:
        if params["state"] == "present":
            probe_at = pool_dir or Directory.open_pool(os.path.dirname(os.path.abspath(path)))
            try:
                reflink = _probe(probe_at, exists, warnings)
            finally:
                if probe_at is not pool_dir:
                    probe_at.close()
            if reflink is False and params["require_reflink"]:
                raise PoolError(
                    "the filesystem of %s (%s) does not support reflinks, so every clone would be a full "
                    "copy; use btrfs or XFS (reflink=1), or set require_reflink: false"
                    % (path, filesystem_type(path if exists else os.path.dirname(os.path.abspath(path)))))
            with _pool_lock_if(pool_dir, params, check_mode):
                steps = plan_present(path, pool_dir)
                done = [step.text for step in steps] if check_mode else execute(steps, None)
        else:
            reflink = None
            steps = []
            if exists:
                with _pool_lock_if(pool_dir, params, check_mode, create=False):
                    steps = plan_absent(path, pool_dir)
                    done = [step.text for step in steps] if check_mode else execute(steps, None)
            else:
                done = []
    finally:
        if pool_dir is not None:
            pool_dir.close()
    report_at = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    report = filesystem_report(report_at, reflink)
    report["path"] = path
    result = {"changed": bool(steps), "actions": done, "pool": report}
    if warnings:
        result["warnings"] = warnings
    if diff:
        after = _layout(path)
        if check_mode:
            after = {"path": path, "exists": params["state"] == "present",
                     "directories": list(names.PREFIXES) if params["state"] == "present" else []}
        result["diff"] = {"before": before, "after": after}
    return result


def refuse_symlinked_pool(path: str) -> None:
    """Refuse to remove a pool whose path is a symlink: its contents would go, then its rmdir would fail."""
    link = path.rstrip("/") or "/"
    if os.path.islink(link):
        raise PoolError("pool path %s is a symlink (to %s): nothing was removed; give the pool's real path %s "
                        "to remove the pool, then remove the symlink itself"
                        % (path, os.readlink(link), os.path.realpath(link)))


def _probe(directory: Directory, exists: bool, warnings: list[str]) -> bool | None:
    """The reflink probe; on an existing pool whose file system is full, None (unknown) and a warning."""
    try:
        return probe_reflink(directory)
    except (OSError, ReflinkError) as exc:
        code = getattr(exc, "errno", None)
        if code not in NO_SPACE_ERRNOS:
            raise
        if not exists:
            raise PoolError("cannot set up a pool: the reflink probe could not write its small test file in %s "
                            "(%s): the file system is full; free some space first"
                            % (directory.path, os.strerror(code))) from None
    warnings.append("the file system of %s is full, so the reflink probe could not write its small test file: "
                    "pool.reflink is null (unknown); reflink_gc and state=absent of volumes and pins work on a "
                    "full pool and free space" % directory.path)
    return None


def _pool_lock_if(pool_dir, params, check_mode, create=True):
    """The exclusive pool lock, when the pool exists (a pool being created has no other user)."""
    if pool_dir is None:
        return contextlib.nullcontext()
    return pool_lock(pool_dir, exclusive=True, timeout=params["lock_timeout"],
                     purpose="reflink_pool state=%s" % params["state"], create=create and not check_mode)


def artifacts_of(files):
    """Leftovers of a volume that gc would look at, by name."""
    return {
        "tempfiles": sorted(info.name for info in files.tempfiles),
        "import_image": files.import_.name if files.import_ else None,
        "junk_revisions": sorted(info.name for info in files.junk_revisions),
        "stale_precache": files.precache.name if files.precache_state == "stale" else None,
    }


def run_info_task(params, check_mode=False):
    """reflink_info: report the pool and its volumes; never changes anything."""
    path = params["pool"]
    only = None
    if params.get("vids") is not None:   # an empty list reports no volume, never every volume
        only = [names.parse_vid(vid) for vid in params["vids"]]
    qubes = read_qubes_xml(params.get("qubes_xml"), path)
    wanted = None if only is None else {str(vid) for vid in only}
    if check_mode and not os.path.lexists(path):
        # An empty pool, as an earlier reflink_pool task of a check-mode run would leave it; the
        # filesystem is the one it would be made on.
        report_at = os.path.dirname(os.path.abspath(path))
        while not os.path.isdir(report_at):
            report_at = os.path.dirname(report_at)
        pool = filesystem_report(report_at, None)
        pool.update(path=path, unsafe_entries=[])
        return dict(_info_result(pool, [], qubes, {}, wanted), warnings=[missing_pool_warning(path)])
    with Directory.open_pool(path) as pool_dir:
        require_pool(pool_dir)
        try:
            reflink = probe_reflink(pool_dir)
        except (OSError, ReflinkError):
            reflink = None  # a read-only or full filesystem cannot be probed; the report still stands
        with pool_lock(pool_dir, exclusive=False, timeout=params["lock_timeout"],
                       purpose="reflink_info", create=False):
            scan = PoolScan.read(pool_dir, only)
    surroundings = Surroundings.read(path, qubes.name if qubes is not None else None)
    volumes = []
    for files in scan.sorted_volumes():
        report = volume_report(path, files, surroundings)
        report["artifacts"] = artifacts_of(files)
        listed = qubes.volume(files.vid) if qubes is not None else None
        report["qubes"] = listed.as_dict() if listed is not None else None
        volumes.append(report)
    pool = filesystem_report(path, reflink)
    pool["unsafe_entries"] = sorted(scan.unsafe)
    return _info_result(pool, volumes, qubes, scan.volumes, wanted)


def _info_result(pool, volumes, qubes, found, wanted):
    """reflink_info's result; ``found`` maps vid strings to the VolumeFiles the scan saw."""
    return {
        "changed": False,
        "pool": pool,
        "volumes": volumes,
        "qubes_pool": None if qubes is None else {
            "name": qubes.name, "revisions_to_keep": qubes.revisions_to_keep, "qubes_xml": qubes.path},
        "missing": missing_volumes(qubes, found, wanted),
    }

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool as a whole: its setup and removal (and, for now, the tasks of reflink_pool and reflink_info)."""

from __future__ import annotations

import contextlib
import os

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import PoolError, ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Step
from ansible_collections.dom0.reflink.plugins.module_utils._engine.executor import execute
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory, remove_tree
from ansible_collections.dom0.reflink.plugins.module_utils._fs.filesystem import filesystem_report, filesystem_type, probe_reflink
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import METADATA_DIR, pool_lock
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import missing_volumes, read_qubes_xml
from ansible_collections.dom0.reflink.plugins.module_utils._state.report import volume_report
from ansible_collections.dom0.reflink.plugins.module_utils._state.scan import PoolScan, require_pool
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import missing_pool_warning


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
        raise PoolError("pool %s still holds %d image file(s): %s; remove the volumes first "
                        "(dom0.reflink.reflink_volume state=absent)" % (path, len(images), shown))
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
    pool_dir, exists = open_pool_or_parent(path)
    before = _layout(path)
    try:
        if params["state"] == "present":
            probe_at = pool_dir or Directory.open_pool(os.path.dirname(os.path.abspath(path)))
            try:
                reflink = probe_reflink(probe_at)
            finally:
                if probe_at is not pool_dir:
                    probe_at.close()
            if not reflink and params["require_reflink"]:
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
    if diff:
        after = _layout(path)
        if check_mode:
            after = {"path": path, "exists": params["state"] == "present",
                     "directories": list(names.PREFIXES) if params["state"] == "present" else []}
        result["diff"] = {"before": before, "after": after}
    return result


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
    if params.get("vids"):
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

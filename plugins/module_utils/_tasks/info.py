# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The task of reflink_info: report the pool and its volumes; it never changes anything."""

from __future__ import annotations

import os

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.filesystem import filesystem_report, probe_reflink
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import pool_lock
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import QubesPool
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import missing_volumes, read_qubes_xml
from ansible_collections.dom0.reflink.plugins.module_utils._state.report import volume_report
from ansible_collections.dom0.reflink.plugins.module_utils._state.scan import PoolScan, require_pool
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import Params, Result, missing_pool_warning


def artifacts_of(files: VolumeFiles) -> dict[str, object]:
    """Leftovers of a volume that gc would look at, by name."""
    return {
        "tempfiles": sorted(info.name for info in files.tempfiles),
        "import_image": files.import_.name if files.import_ else None,
        "junk_revisions": sorted(info.name for info in files.junk_revisions),
        "stale_precache": files.precache.name if files.precache is not None and files.precache_state == "stale" else None,
    }


def run_info_task(params: Params, check_mode: bool = False) -> Result:
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


def _info_result(pool: dict[str, object], volumes: list[dict[str, object]], qubes: QubesPool | None,
                 found: dict[str, VolumeFiles], wanted: set[str] | None) -> Result:
    """reflink_info's result; ``found`` maps vid strings to the VolumeFiles the scan saw."""
    return {
        "changed": False,
        "pool": pool,
        "volumes": volumes,
        "qubes_pool": None if qubes is None else {
            "name": qubes.name, "revisions_to_keep": qubes.revisions_to_keep, "qubes_xml": qubes.path},
        "missing": missing_volumes(qubes, found, wanted),
    }

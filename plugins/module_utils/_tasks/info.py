# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The task of reflink_info: report the pool and its volumes; it never changes anything."""

from __future__ import annotations

import os

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import ReflinkError
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.filesystem import filesystem_report, filesystem_type
from ansible_collections.dom0.reflink.plugins.module_utils._fs.filesystem import probe_reflink
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import pool_lock
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.finding import PoolFacts
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.findings import pool_findings
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.pool_space import PoolSpaceReport, empty_pool_space
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
    space = bool(params.get("space"))
    if_removed = params.get("if_removed")
    read_maps = space or bool(if_removed)
    if check_mode and not os.path.lexists(path):
        # An empty pool, as an earlier reflink_pool task of a check-mode run would leave it; the
        # filesystem is the one it would be made on.
        report_at = os.path.dirname(os.path.abspath(path))
        while not os.path.isdir(report_at):
            report_at = os.path.dirname(report_at)
        pool = filesystem_report(report_at, None)
        pool.update(path=path, unsafe_entries=[])
        result = _info_result(pool, [], qubes, {}, wanted)
        if space:
            pool["space"] = empty_pool_space(report_at)
        if if_removed is not None:
            result["if_removed"] = {"bytes": 0, "files": []}
        return dict(result, findings=[], warnings=[missing_pool_warning(path)])
    warnings: list[str] = []
    with Directory.open_pool(path) as pool_dir:
        require_pool(pool_dir)
        try:
            reflink = probe_reflink(pool_dir)
        except (OSError, ReflinkError):
            reflink = None  # a read-only or full filesystem cannot be probed; the report still stands
        with pool_lock(pool_dir, exclusive=False, timeout=params["lock_timeout"],
                       purpose="reflink_info", create=False):
            # The space map needs every image of the pool, whatever part of it is reported.
            # On btrfs the scan notes the directories' No_COW flags while it has them open (the nocow finding).
            scan = PoolScan.read(pool_dir, None if read_maps else only, read_flags=filesystem_type(path) == "btrfs")
            maps = PoolSpaceReport.read(pool_dir, scan) if read_maps else None
        if only is not None and read_maps:
            scan = scan.limited_to(only)
        surroundings = Surroundings.read(path, qubes.name if qubes is not None else None)
        volumes = _volume_reports(path, scan, surroundings, qubes, maps if space else None)
        pool = filesystem_report(path, reflink)
        pool["unsafe_entries"] = sorted(scan.unsafe)
        facts = PoolFacts(pool_dir, path, str(pool["fstype"]), reflink, scan.sorted_volumes(), surroundings, qubes,
                          scan.nocow_dirs)
        findings = pool_findings(facts, maps.space if space and maps is not None else None)
        result = _info_result(pool, volumes, qubes, scan.volumes, wanted)
        if maps is not None:
            if space:
                pool["space"] = maps.pool(pool_dir)
            warnings.extend(maps.warnings(str(pool["fstype"])))
        if if_removed is not None:
            result["if_removed"] = maps.if_removed(if_removed) if maps is not None else {"bytes": 0, "files": []}
    result["findings"] = [finding.as_dict() for finding in findings]
    if warnings:
        result["warnings"] = warnings
    return result


def _volume_reports(path: str, scan: PoolScan, surroundings: Surroundings, qubes: QubesPool | None,
                    maps: PoolSpaceReport | None) -> list[dict[str, object]]:
    """The volume dicts, sorted by vid; with ``maps``, each with its ``space``."""
    volumes = []
    for files in scan.sorted_volumes():
        report = volume_report(path, files, surroundings)
        report["artifacts"] = artifacts_of(files)
        listed = qubes.volume(files.vid) if qubes is not None else None
        report["qubes"] = listed.as_dict() if listed is not None else None
        if maps is not None:
            report["space"] = maps.volume(str(files.vid))
        volumes.append(report)
    return volumes


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

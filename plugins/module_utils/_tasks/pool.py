# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The task of reflink_pool: set up or remove a pool, and report its filesystem."""

from __future__ import annotations

import contextlib
import os

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import CloneError, PoolError
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.filesystem import filesystem_report, filesystem_type, probe_reflink
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import NO_SPACE_ERRNOS, pool_lock
from ansible_collections.dom0.reflink.plugins.module_utils._plans.pool import open_pool_or_parent, plan_absent, plan_present, refuse_symlinked_pool
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import read_qubes_xml
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import Params, Result, run_or_report


def _layout(path: str) -> dict[str, object]:
    """What diff mode shows of a pool: whether it and its prefix directories exist."""
    return {
        "path": path,
        "exists": os.path.isdir(path),
        "directories": [prefix for prefix in names.PREFIXES if os.path.isdir(os.path.join(path, prefix))],
    }


def run_pool_task(params: Params, check_mode: bool, diff: bool) -> Result:
    """reflink_pool: plan, execute (or not, in check mode) and report."""
    path = params["path"]
    # Nothing here depends on qubes.xml, but a qubes_xml that names a missing or bad file fails alike everywhere.
    read_qubes_xml(params.get("qubes_xml"), path)
    if params["state"] == "absent":
        refuse_symlinked_pool(path)
    pool_dir, exists = open_pool_or_parent(path)
    before = _layout(path)
    warnings: list[str] = []
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
                done = run_or_report(steps, None, check_mode)
        else:
            reflink = None
            steps = []
            if exists and pool_dir is not None:
                with _pool_lock_if(pool_dir, params, check_mode, create=False):
                    steps = plan_absent(path, pool_dir)
                    done = run_or_report(steps, None, check_mode)
            else:
                done = []
    finally:
        if pool_dir is not None:
            pool_dir.close()
    report_at = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    report = filesystem_report(report_at, reflink)
    report["path"] = path
    result: Result = {"changed": bool(steps), "actions": done, "pool": report}
    if warnings:
        result["warnings"] = warnings
    if diff:
        after = _layout(path)
        if check_mode:
            after = {"path": path, "exists": params["state"] == "present",
                     "directories": list(names.PREFIXES) if params["state"] == "present" else []}
        result["diff"] = {"before": before, "after": after}
    return result


def _probe(directory: Directory, exists: bool, warnings: list[str]) -> bool | None:
    """The reflink probe; on an existing pool whose file system is full, None (unknown) and a warning."""
    try:
        return probe_reflink(directory)
    except (OSError, CloneError) as exc:
        if exc.errno not in NO_SPACE_ERRNOS:
            raise
        if not exists:
            raise PoolError("cannot set up a pool: the reflink probe could not write its small test file in %s "
                            "(%s): the file system is full; free some space first"
                            % (directory.path, os.strerror(exc.errno))) from None
    warnings.append("the file system of %s is full, so the reflink probe could not write its small test file: "
                    "pool.reflink is null (unknown); reflink_gc and state=absent of volumes and pins work on a "
                    "full pool and free space" % directory.path)
    return None


def _pool_lock_if(pool_dir: Directory | None, params: Params, check_mode: bool,
                  create: bool = True) -> contextlib.AbstractContextManager[None]:
    """The exclusive pool lock, when the pool exists (a pool being created has no other user)."""
    if pool_dir is None:
        return contextlib.nullcontext()
    return pool_lock(pool_dir, exclusive=True, timeout=params["lock_timeout"],
                     purpose="reflink_pool state=%s" % params["state"], create=create and not check_mode,
                     record=not check_mode)

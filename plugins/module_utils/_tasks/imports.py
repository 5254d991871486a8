# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The task of reflink_import: open and lock the source, then plan (see _plans/imports.py) and run like every volume task."""

from __future__ import annotations

import contextlib
import os

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import parse_vid
from ansible_collections.dom0.reflink.plugins.module_utils._base.units import parse_volume_size
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import volume_lock
from ansible_collections.dom0.reflink.plugins.module_utils._plans.checksum import parse_checksum
from ansible_collections.dom0.reflink.plugins.module_utils._plans.imports import plan_import
from ansible_collections.dom0.reflink.plugins.module_utils._plans.journal import read_journal
from ansible_collections.dom0.reflink.plugins.module_utils._plans.sources import open_source_path, open_source_volume
from ansible_collections.dom0.reflink.plugins.module_utils._plans.staging import ImportOptions
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import Actions, PlanContext, VolumePlanner
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import check_revisions_to_keep
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import Params, Result
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.single_volume import run_single_volume_task


def run_import_task(params: Params, check_mode: bool, diff: bool) -> Result:
    """reflink_import: open and lock the source, then plan and run like every volume task."""
    size = None if params["size"] is None else parse_volume_size(params["size"])
    checksum = parse_checksum(params["checksum"])
    given_keep = check_revisions_to_keep(params["revisions_to_keep"], optional=True)
    vid = parse_vid(params["vid"])
    if params["state"] != "present" and (params["src"] or params["src_vid"]):
        raise InvalidArgument("src and src_vid go with state=present; with state=%s another program "
                              "writes the data" % params["state"])
    with contextlib.ExitStack() as stack:
        source = None
        if params["src"]:
            source = open_source_path(params["src"])
            stack.callback(source.close)
        elif params["src_vid"]:
            src_vid = parse_vid(params["src_vid"])
            src_pool = params["src_pool"] or params["pool"]
            if src_vid == vid and os.path.realpath(src_pool) == os.path.realpath(params["pool"]):
                raise InvalidArgument("src_vid %s is the volume being imported into" % src_vid)
            src_pool_dir = stack.enter_context(Directory.open_pool(src_pool))
            if not src_pool_dir.has_subdir(src_vid.prefix):
                raise InvalidArgument("src_pool %s is not a pool: it has no %s/ directory" % (src_pool, src_vid.prefix))
            stack.enter_context(volume_lock(src_pool_dir, src_vid, timeout=params["lock_timeout"],
                                            purpose="reflink_import reading %s" % src_vid,
                                            create=not check_mode, exclusive=False))
            source = open_source_volume(src_pool, src_vid)
            stack.callback(source.close)

        def plan(planner: VolumePlanner, context: PlanContext) -> Actions:
            workspace = context.workspace
            options = ImportOptions(state=params["state"], size=size, checksum=checksum, force=params["force"],
                                    revisions_to_keep=planner.revisions_to_keep(given_keep), fallback=params["fallback"])
            return plan_import(planner, workspace, options, source, read_journal(workspace.pool_dir, vid),
                               context.warnings, check_mode)

        def import_image(after: VolumeFiles) -> dict[str, object]:
            present = after.import_ is not None
            return {"import_image": os.path.join(params["pool"], vid.vm_dir, vid.import_) if present else None}

        return run_single_volume_task(params, check_mode, diff, "reflink_import state=%s %s" % (params["state"], vid),
                                      plan, extra=import_image,
                                      changes=None if params["state"] == "abort" else "import into")

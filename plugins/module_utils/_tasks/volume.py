# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The task of reflink_volume: one volume (vid), or many in one task (volumes, see volume_batch.py)."""

from __future__ import annotations

import functools

from ansible_collections.dom0.reflink.plugins.module_utils._base.names import parse_vid
from ansible_collections.dom0.reflink.plugins.module_utils._base.units import parse_volume_size
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import (
    VolumeRequest,
    check_revisions_to_keep,
    plan_request,
    unused_size_warning,
)
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import Params, Result
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.single_volume import run_single_volume_task


def volume_request(params: Params) -> VolumeRequest:
    """The request of a single-volume task (options already checked by the module)."""
    size = None if params["size"] is None else parse_volume_size(params["size"])
    return VolumeRequest(
        vid=parse_vid(params["vid"]),
        state=params["state"],
        size=size,
        allow_shrink=params["allow_shrink"],
        revisions_to_keep=check_revisions_to_keep(params["revisions_to_keep"], optional=True),
        remove_pins=params["remove_pins"],
        warning=unused_size_warning(params["state"], size),
    )


def run_volume_task(params: Params, check_mode: bool, diff: bool) -> Result:
    """reflink_volume: one volume (vid), or many (volumes, see run_volume_batch)."""
    if params["volumes"] is not None:
        # Imported here: a task on one volume does not compile the batch's code (its payload carries it all the same).
        # pylint: disable-next=import-outside-toplevel
        from ansible_collections.dom0.reflink.plugins.module_utils._tasks.volume_batch import run_volume_batch  # noqa: PLC0415
        return run_volume_batch(params, check_mode, diff)
    request = volume_request(params)
    return run_single_volume_task(params, check_mode, diff, "reflink_volume state=%s %s" % (request.state, params["vid"]),
                                  functools.partial(plan_request, request),
                                  extra=request.kept_pins, changes=request.changes)

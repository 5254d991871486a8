# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``volume`` dict every module returns about a volume."""

from __future__ import annotations

import os

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings


def volume_report(pool_path: str, files: VolumeFiles, surroundings: Surroundings) -> dict[str, object]:
    """The ``volume`` dict every module returns."""
    running = surroundings.running_reasons(files)
    reasons = surroundings.in_use_reasons(files, running)
    return {
        "vid": str(files.vid),
        "image": os.path.join(pool_path, files.vid.vm_dir, files.vid.clean),
        "size": files.size,
        "usage": files.usage,
        "revisions": [
            {"id": number, "timestamp": names.timestamp_of(info.name)}
            for number, info in files.revisions
        ],
        "state": surroundings.state(files, running),
        "in_use": bool(reasons),
        "in_use_reasons": reasons,
        "precache": files.precache_state,
        "pins": files.pin_report(),
    }

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The findings of reflink_info: the cheap ones always, those of the extent maps when they were read.

Sorted by vid (the pool's own first), file and kind, so that two runs on the
same pool give the same list.
"""

from __future__ import annotations

from ansible_collections.dom0.reflink.plugins.module_utils._inspect.extent_findings import extent_findings
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.file_findings import file_findings
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.finding import Finding, PoolFacts
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.space import SpaceMap


def pool_findings(facts: PoolFacts, space: SpaceMap | None = None) -> list[Finding]:
    """What is wrong with the pool and the volumes ``facts`` covers; ``space``: the extent maps, if read."""
    found = file_findings(facts)
    if space is not None:
        found.extend(extent_findings(facts, space))
    return sorted(found, key=Finding.sort_key)

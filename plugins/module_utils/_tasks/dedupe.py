# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The task of reflink_dedupe: under the locks, measure, dedupe (or plan it, in check mode), measure again.

1. the volumes: ``vids``, or every volume of the pool (one scan before the
   locks, to know which to lock; the scan that counts is made under them);
2. the locks: the pool lock shared and each volume's lock, in vid order, as
   every task takes them, so that two dedupes, a dedupe and an import into
   one of its volumes, or a dedupe and a gc (the pool lock exclusive) wait
   for each other;
3. the space of the images the engine may change (``_inspect/space.py``,
   with where each unit lies), the engine (``_dedupe/run.py``), the space
   again (check mode: predicted from the engine's model), and the
   difference: ``reclaimed_bytes`` (``_dedupe/accounting.py``).

A file system that cannot share blocks (ext4): the task fails where
``vids`` named volumes, and where it did not (a nightly run over the whole
pool), it changes nothing and warns.
"""

from __future__ import annotations

import os
from typing import Any

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument
from ansible_collections.dom0.reflink.plugins.module_utils._base.units import format_size
from ansible_collections.dom0.reflink.plugins.module_utils._fs.dedupe_range import DedupeUnsupported
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.filesystem import filesystem_type
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import volume_locks
from ansible_collections.dom0.reflink.plugins.module_utils._inspect.space import SpaceMap
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import read_qubes_xml
from ansible_collections.dom0.reflink.plugins.module_utils._state.scan import PoolScan, require_pool
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.accounting import (
    SpaceChange, held_elsewhere, measure_change, predict_after, volume_figures)
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.engine import DedupeReport, require_dedupe
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.run import SCOPES, DedupeOutcome, dedupe_volumes, settings_for
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.dedupe_targets import DedupeTargets, find_targets, selected_vids
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import Params, Result, missing_pool_warning

PURPOSE = "reflink_dedupe"
_REFUSED_SHOWN = 10


def _parse(params: Params) -> tuple[list[str] | None, str]:
    if params["scope"] not in SCOPES:
        raise InvalidArgument("scope must be one of %s, not %r" % (", ".join(SCOPES), params["scope"]))
    if params["lock_timeout"] < 0:
        raise InvalidArgument("lock_timeout must be a number of seconds (0 or more), not %r" % params["lock_timeout"])
    if params.get("vids") is None:
        return None, params["scope"]
    return sorted({str(names.parse_vid(vid)) for vid in params["vids"]}), params["scope"]


def run_dedupe_task(params: Params, check_mode: bool, diff: bool) -> Result:
    """reflink_dedupe: see the module's docstring."""
    vids, scope = _parse(params)
    path = params["pool"]
    qubes = read_qubes_xml(params.get("qubes_xml"), path)
    if check_mode and not os.path.lexists(path):
        return dict(_result(DedupeOutcome(), SpaceChange(), [], diff), warnings=[missing_pool_warning(path)])
    with Directory.open_pool(path) as pool_dir:
        require_pool(pool_dir)
        if vids == []:
            return _result(DedupeOutcome(), SpaceChange(), [], diff)
        try:
            require_dedupe(pool_dir.open_fd(), path)
        except DedupeUnsupported as exc:
            if vids is not None:
                raise
            return dict(_result(DedupeOutcome(), SpaceChange(), [], diff), warnings=[str(exc)])
        wanted = vids if vids is not None else selected_vids(PoolScan.read(pool_dir))
        with volume_locks(pool_dir, [names.parse_vid(vid) for vid in wanted], timeout=params["lock_timeout"],
                          purpose=PURPOSE, create=not check_mode, record=not check_mode):
            scan = PoolScan.read(pool_dir)
            surroundings = Surroundings.read(path, qubes.name if qubes is not None else None)
            targets = find_targets(pool_dir, scan, wanted, qubes, surroundings)
            try:
                outcome, before, after = _dedupe(pool_dir, targets, scope, check_mode)
            finally:
                targets.close()
    change = measure_change(before, after, targets.members,
                            {vid: figures.rewritten_bytes for vid, figures in outcome.report.groups.items()})
    result = _result(outcome, change, wanted, diff, targets, before, after)
    warnings = ["%s has no image in the pool: nothing to dedupe" % vid for vid in targets.without_images
                if vids is not None]
    refused = outcome.report.refused
    warnings += ["the kernel refused a dedupe, nothing was changed by it (the data changed meanwhile?): %s" % text
                 for text in refused[:_REFUSED_SHOWN]]
    if len(refused) > _REFUSED_SHOWN:
        warnings.append("%d more dedupes were refused" % (len(refused) - _REFUSED_SHOWN))
    return dict(result, warnings=warnings) if warnings else result


def _dedupe(pool_dir: Directory, targets: DedupeTargets, scope: str, check_mode: bool
            ) -> tuple[DedupeOutcome, SpaceMap, SpaceMap]:
    """The space before, the engine's run (or plan), the space after (read again, or predicted)."""
    before = SpaceMap.read(pool_dir, targets.files, units=True)
    if not targets.volumes:
        return DedupeOutcome(), before, before
    first = targets.volumes[0]
    settings = settings_for(filesystem_type(os.path.join(pool_dir.path, first.vm_dir)), first.dir_fd)
    set_of = [entry.volume if scope == "volume" else "pool" for entry in targets.files[:targets.members]]
    by_index = {index: identity for identity, index in targets.index_of.items()}
    elsewhere: dict[str, dict[tuple[int, int], int]] = {}
    for index, amount in held_elsewhere(before, set_of).items():
        elsewhere.setdefault(set_of[index], {})[by_index[index]] = amount
    outcome = dedupe_volumes(targets.volumes, scope, settings, not check_mode, targets.in_use, elsewhere)
    if not check_mode:
        return outcome, before, SpaceMap.read(pool_dir, targets.files, units=True)
    after_maps = {targets.index_of[identity]: ranges for identity, ranges in outcome.report.after_maps.items()
                  if identity in targets.index_of}
    return outcome, before, predict_after(before, after_maps)


def _actions(report: DedupeReport) -> list[str]:
    """Each image changed, in plain words."""
    actions = ["%s: %s (%d bytes) now share the blocks of %s" % (destination, format_size(amount), amount, source)
               for (destination, source), amount in sorted(report.shared_with.items())]
    actions += ["%s: %s (%d bytes) moved into new extents, so that the partly used extents it kept are freed"
                % (name, format_size(amount), amount) for name, amount in sorted(report.rewritten_files.items())]
    return actions


def _result(outcome: DedupeOutcome, change: SpaceChange, vids: list[str], diff: bool,
            targets: DedupeTargets | None = None, before: SpaceMap | None = None,
            after: SpaceMap | None = None) -> Result:
    report = outcome.report
    volumes = []
    for vid in vids:
        figures = report.groups.get(vid)
        volumes.append({"vid": vid, "deduped_bytes": figures.deduped_bytes if figures else 0,
                        "reclaimed_bytes": change.per_volume.get(vid, 0),
                        "rewritten_bytes": figures.rewritten_bytes if figures else 0})
    skipped = [entry.as_dict() for entry in (targets.skipped if targets else [])]
    skipped += [entry.as_dict() for entry in outcome.skipped]
    result: dict[str, Any] = {
        "changed": report.changed,
        "actions": _actions(report),
        "deduped_bytes": report.deduped_bytes,
        "reclaimed_bytes": change.reclaimed,
        "rewritten_bytes": report.rewritten_bytes,
        "bytes_read": report.bytes_read,
        "volumes": volumes,
        "skipped": sorted(skipped, key=lambda entry: entry["file"]),
    }
    if diff:
        result["diff"] = {"before": volume_figures(before, vids) if before else {},
                          "after": volume_figures(after, vids) if after else {}}
    return result

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan of reflink_import: the one-shot import, or one of the two phases.

Data is always staged in ``<volume>-import.img`` (never attached by qubesd)
and committed like a VM's stop commits its dirty image.  A two-phase import
(begin, another program writes, commit or abort) is recorded in a journal
(``journal.py``); staging is in ``staging.py``, the two-phase plans in ``two_phase.py``,
checksums in ``checksum.py``, the sources of the data in ``sources.py``.
"""

from __future__ import annotations

import errno
import functools

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import CloneError, InvalidArgument
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs.clone import COPY, NO_REFLINK_WAY_OUT, require_room_for_copy
from ansible_collections.dom0.reflink.plugins.module_utils._fs.copy_cause import predict_copy
from ansible_collections.dom0.reflink.plugins.module_utils._fs.filesystem import clone_probe, shares_blocks
from ansible_collections.dom0.reflink.plugins.module_utils._plans.checksum import (
    VerifyChecksum,
    verify_clean_checksum,
)
from ansible_collections.dom0.reflink.plugins.module_utils._plans.journal import JournalRecord
from ansible_collections.dom0.reflink.plugins.module_utils._plans.sources import Source
from ansible_collections.dom0.reflink.plugins.module_utils._plans.sources import unchanged
from ansible_collections.dom0.reflink.plugins.module_utils._plans.staging import (
    ImportOptions,
    Stage,
    new_volume_actions,
    one_shot_journal_actions,
)
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import Actions, VolumePlanner
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles


def _own_image(files: VolumeFiles, source: Source) -> str | None:
    for info in (files.clean, files.dirty):
        if info is not None and source.identity == (info.dev, info.ino):
            return info.name
    return None


def foresee_clone(workspace: Workspace, source: Source, stage: Stage) -> None:
    """What the plan can tell of the staging's clone from ``source``, before any change (in check mode too).

    With fallback: never (``stage.allow_copy`` false), one probe (clone_probe: a
    clone into an unnamed file of the pool) tells whether a reflink is possible;
    where it is not, the import is refused.  With fallback: errno, a copy that is
    known without trying a clone (predict_copy: a source on another file system,
    a pool whose file system cannot share blocks, a No_COW attribute on one side
    only) is held against the free space and refused if its data cannot fit
    (NoRoomForCopy); ``stage.copy_cause`` then says why (check mode's warning of
    an unexpected copy; the real run's comes from the clone itself).  What was
    found is kept in ``stage.foreseen``, so check mode's prediction of how the
    clone goes does not probe the same thing again.
    """
    directory = workspace.vm_dir or workspace.prefix_dir
    if directory is None or directory.fd is None:
        return   # a pool that does not exist yet (check mode): nothing to tell
    if not stage.allow_copy:
        how, code = clone_probe(directory, source.fd)
        stage.foreseen = (how, code)
        if how == COPY:
            raise CloneError("cannot reflink %s into the pool (%s: another file system, or one that cannot share "
                             "blocks) and copying is not allowed (fallback: never); nothing was changed; %s"
                             % (source.description, errno.errorcode.get(code or 0, code), NO_REFLINK_WAY_OUT), code)
        return
    vid = workspace.vid
    destination = directory.join(vid.import_ if workspace.vm_dir is not None else "%s/%s" % (vid.vm, vid.import_))
    cause = predict_copy(source.fd, directory.fd, functools.partial(shares_blocks, directory), source.description,
                         destination)
    if cause is None:
        return   # a reflink, or only the clone can tell (check mode's prediction probes it)
    require_room_for_copy(source.fd, directory.fd, min(source.size, stage.size), cause,
                          (source.description, destination), planning=True)
    stage.copy_cause = cause
    stage.foreseen = (COPY, cause.errno)


def plan_import(planner: VolumePlanner, workspace: Workspace, options: ImportOptions, source: Source | None,
                journal: JournalRecord | None, warnings: list[str] | None = None, check_mode: bool = False) -> Actions:
    """Plan the task of reflink_import; ``options`` (ImportOptions) holds the parsed module options.

    ``warnings`` collects what the user should know although the task succeeds.
    """
    state = options.state
    files = planner.files
    vid = planner.vid
    rel = planner.rel
    size = options.size
    keep = options.revisions_to_keep
    if state != "present":
        # Imported here: a one-shot import does not compile the two-phase plans (its payload carries them).
        # pylint: disable-next=import-outside-toplevel
        from ansible_collections.dom0.reflink.plugins.module_utils._plans.two_phase import plan_two_phase  # noqa: PLC0415
        return plan_two_phase(planner, workspace, options, journal, [] if warnings is None else warnings,
                              check_mode)
    # One shot.
    stale_journal = one_shot_journal_actions(planner, workspace, journal)
    if size is not None:
        result_size = size
    elif source is not None:
        result_size = source.size
    else:
        raise InvalidArgument("give src or src_vid (the data to import), or size alone to import an empty image")
    own = _own_image(files, source) if source is not None else None
    if source is not None and own is not None:
        raise InvalidArgument("the source %s is the volume's own image %s" % (source.description, own))
    if source is not None and source.size == 0:
        # As size: 0 is: a truncated download or an empty device would replace the volume by nothing.
        raise InvalidArgument("the source %s is empty (0 bytes): a volume of zero bytes cannot hold anything, so "
                              "it is not imported; nothing was changed (to clear the volume, give size alone, "
                              "without src or src_vid)" % source.description)
    planner.refuse_if_in_use("import into")
    planner.check_size(result_size)
    if not options.force and unchanged(workspace.vm_dir, files, source, result_size):
        if options.checksum:
            verify_clean_checksum(workspace.vm(), vid, options.checksum)
        return planner.finish_precache(keep) + stale_journal
    planner.refuse_if_import_held("import into")
    stage = Stage(rel, vid.import_, source, result_size, options.fallback != "never")
    if source is not None:
        foresee_clone(workspace, source, stage)
    actions: Actions = []
    if not files.exists:
        actions.extend(new_volume_actions(planner, workspace))
    actions.append(stage)
    if options.checksum:
        actions.append(VerifyChecksum(rel, vid.import_, options.checksum))
    actions.extend(planner.commit(vid.import_, options.revisions_to_keep,
                                  files=None if files.exists else VolumeFiles(vid)))
    return actions + stale_journal

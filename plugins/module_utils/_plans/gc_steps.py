# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The steps of a gc run: its removals, its reading of the journals, and their execution.

``_gc.py`` plans (what goes, and why); this file holds what a plan is made of
and how one volume's part of it is executed and reported.
"""

from __future__ import annotations

import errno
import re

from ansible_collections.dom0.reflink.plugins.module_utils._engine import file_actions as act
from ansible_collections.dom0.reflink.plugins.module_utils._plans.journal import JOURNALS_DIR, journal_name, journals_dir, load_record
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import PlanFailed, PlanWithdrawn, execute


class Removal(act.Remove):
    """A gc removal: the Remove action plus what the report says about it."""

    def __init__(self, vid, info, reason, exclusive):
        super().__init__(lambda name: "%s/%s" % (vid.vm_dir, name), info.name, reason)
        self.identity = (info.dev, info.ino)   # to match against the files processes hold open
        self.entry = {
            "file": "%s/%s" % (vid.vm_dir, info.name),
            "reason": reason,
            "bytes": info.usage,
        }
        if exclusive is not None:
            self.entry["exclusive_bytes"] = exclusive
        self.replaced = False

    def run(self, workspace):
        # Remove the file the scan saw, not whatever has its name now (qubesd may have begun a new
        # import of the volume since, and that file may be held open by its writer).
        st = workspace.vm_dir.lstat(self.name)
        if st is not None and (st.st_dev, st.st_ino) != self.identity:
            self.replaced = True
            return
        super().run(workspace)

    @property
    def done(self):
        if self.replaced:
            return "left %s alone: it was replaced by another file since gc read the pool" % self.entry["file"]
        return self.text


_JOURNAL_TEMPFILE_RE = re.compile(r".+\.json~[a-z0-9_]{8}\Z")


def read_journals(pool_dir, only_vids=None):
    """The journals of ``.reflink/imports/``: ({name: (record or None if unreadable, mtime)}, {tempfile: mtime}).

    ``only_vids``: only the journals of these volumes (found by name: an unreadable journal of
    another volume is not this run's to remove).
    """
    found = {}
    tempfiles = {}
    wanted = None if only_vids is None else {journal_name(vid) for vid in only_vids}
    with journals_dir(pool_dir) as journals:
        if journals is None:
            return found, tempfiles
        for name in journals.names():
            if wanted is not None and name.partition("~")[0] not in wanted:
                continue
            st = journals.lstat(name)
            if st is not None and _JOURNAL_TEMPFILE_RE.match(name):
                tempfiles[name] = st.st_mtime  # a journal write killed between its link and rename
            if st is None or not name.endswith(".json"):
                continue
            try:
                record = load_record(journals, name)
            except (OSError, ValueError):
                record = None
            found[name] = (record, st.st_mtime)
    return found, tempfiles


def remove_vm_dir_step(pool_dir, prefix, vm):
    def remove():
        prefix_dir = pool_dir.open_dir(prefix)   # never through a symlink planted since the scan
        if prefix_dir is None:
            return
        with prefix_dir:
            try:
                prefix_dir.rmdir(vm)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):  # something appeared: keep it
                    raise
    return act.Step("remove empty VM directory %s/%s" % (prefix, vm), remove)


def remove_journal_step(pool_dir, name, reason):
    def remove():
        with journals_dir(pool_dir) as journals:
            if journals is not None:
                journals.unlink(name, missing_ok=True)
    return act.Step("remove journal .reflink/%s/%s (%s)" % (JOURNALS_DIR, name, reason), remove)


def execute_reporting(volume_actions, workspace, removed, actions, skipped, guard):
    """Execute one volume's actions, adding what was done to ``actions`` and ``removed``.

    A volume whose VM qubesd started meanwhile is left as it is now and reported in ``skipped``.
    """
    try:
        done = execute(volume_actions, workspace, guard=guard)
    except PlanWithdrawn as exc:
        actions.extend(exc.done)
        removed.extend(_entries(volume_actions[:len(exc.done)]))
        skipped.append({"vid": str(workspace.vid), "reason": "became in use while gc ran: %s"
                        % "; ".join(exc.reasons)})
        return
    except PlanFailed as exc:
        actions.extend(exc.done)
        removed.extend(_entries(volume_actions[:len(exc.done)]))
        raise PlanFailed(str(exc), actions) from None
    actions.extend(done)
    removed.extend(_entries(volume_actions))


def _entries(volume_actions):
    """The report entries of the removals among ``volume_actions`` that did remove their file."""
    return [action.entry for action in volume_actions if isinstance(action, Removal) and not action.replaced]

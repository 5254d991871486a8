# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which processes hold given files open: one walk of ``/proc/*/fd``.

reflink_gc must not remove a file that a process is still writing (qubesd's
Import writer keeps the import image open while a slow restore streams in;
unlinked, the data would go into a file nobody can commit).  Names are not
enough (a file may have been renamed since it was opened, and a link target
read from ``/proc`` is only text), so the open files are matched by device and
inode: ``os.stat`` on ``/proc/<pid>/fd/<n>`` reaches the open file itself.
"""

from __future__ import annotations

import os

PROC = "/proc"


def _command(proc, pid):
    try:
        with open(os.path.join(proc, pid, "comm"), encoding="utf-8", errors="replace") as handle:
            return handle.read().rstrip("\n")
    except OSError:
        return "?"   # it exited meanwhile


def open_holders(identities, proc=PROC):
    """``{(st_dev, st_ino): [(pid, command), ...]}`` for those of ``identities`` some process holds open.

    This process itself is left out.  Processes that exit during the walk, and
    fd directories we may not read, are passed over: what cannot be seen cannot
    be held against a removal, and as root every process can be seen.
    """
    wanted = set(identities)
    found = {}
    if not wanted:
        return found
    own = str(os.getpid())
    try:
        pids = [entry for entry in os.listdir(proc) if entry.isdigit() and entry != own]
    except OSError:
        return found
    for pid in pids:
        fd_dir = os.path.join(proc, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:   # exited, or not ours to look into
            continue
        held = set()
        for fd in fds:
            try:
                st = os.stat(os.path.join(fd_dir, fd))
            except OSError:   # closed meanwhile, or the process exited
                continue
            key = (st.st_dev, st.st_ino)
            if key in wanted:
                held.add(key)
        if held:
            command = _command(proc, pid)
            for key in held:
                found.setdefault(key, []).append((int(pid), command))
    for holders in found.values():
        holders.sort()
    return found


def describe_holders(holders):
    """``pid 123 (qubesd), pid 456 (dd)``."""
    return ", ".join("pid %d (%s)" % (pid, command) for pid, command in holders)


def set_aside_held_files(per_volume):
    """Take out of ``per_volume`` ({key: (vid, actions)}) the removals of files some process holds open.

    A removal is an action with an ``identity`` (st_dev, st_ino) and an ``entry``
    (its report); a volume left with no action is dropped.  Returns the
    reports of the removals taken out, for ``skipped_files``.
    """
    identities = [action.identity for _vid, actions in per_volume.values() for action in actions
                  if getattr(action, "identity", None) is not None]
    holders = open_holders(identities)
    skipped = []
    if not holders:
        return skipped
    for key in list(per_volume):
        vid, actions = per_volume[key]
        kept = []
        for action in actions:
            found = holders.get(getattr(action, "identity", None))
            if found is None:
                kept.append(action)
                continue
            skipped.append({
                "file": action.entry["file"],
                "reason": "held open by %s; not removed (it would have been: %s)"
                          % (describe_holders(found), action.entry["reason"]),
                "holders": [{"pid": pid, "command": command} for pid, command in found],
            })
        if kept:
            per_volume[key] = (vid, kept)
        else:
            del per_volume[key]
    return skipped

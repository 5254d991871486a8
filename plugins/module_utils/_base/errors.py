# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors raised by the core.

Every error carries a message meant for the person who runs the playbook: what
is wrong and, where there is one, what to do about it.  The module glue turns
any of them into ``fail_json(msg=...)``.
"""

from __future__ import annotations

from errno import ENOSPC


class ReflinkError(Exception):
    """Base class of every error the core raises on purpose; ``way_out``, where set, is what to do next."""

    way_out: str | None = None


class InvalidArgument(ReflinkError):
    """A value given by the user (vid, size, revision, duration) is malformed."""


class UnsafePath(ReflinkError):
    """Something in the pool is not what the layout allows (a symlink, a non-directory)."""


class PoolError(ReflinkError):
    """The pool or one of its prefix directories is missing or unusable."""


class VolumeInUse(ReflinkError):
    """The operation would touch a volume that a VM (or qubesd) is using."""


class VolumeBecameInUse(VolumeInUse):
    """The volume became in use while a plan ran (see _engine/inuse_guard.py): the plan is withdrawn."""

    def __init__(self, vid: object, reasons: list[str]) -> None:
        super().__init__("volume %s became in use while this task ran (%s): its VM was started, most likely by "
                         "qubesd" % (vid, "; ".join(reasons)))
        self.vid = vid
        self.reasons = reasons


class PlanFailed(ReflinkError):
    """An action of a plan failed; ``done`` lists the actions that completed before it.

    ``result``: more keys for the task's failure result (a batch's ``volumes``: what the items before it did).
    """

    def __init__(self, message: str, done: list[str], changed: bool | None = None) -> None:
        super().__init__(message)
        self.done = done
        self.changed = bool(done) if changed is None else changed
        self.result: dict[str, object] = {}


class PlanWithdrawn(PlanFailed):
    """The volume became in use while the plan ran (see _engine/executor.py); what it had done is taken back where it should be."""

    def __init__(self, message: str, done: list[str], changed: bool, reasons: list[str]) -> None:
        super().__init__(message, done, changed)
        self.reasons = reasons


class VolumeStateError(ReflinkError):
    """The volume is not in a state that allows the operation."""


class ChecksumMismatch(ReflinkError):
    """Data to import does not have the digest the user gave; ``way_out`` says what to do next."""

    def __init__(self, message: str, way_out: str) -> None:
        super().__init__(message)
        self.way_out = way_out


class LockTimeout(ReflinkError):
    """A pool or volume lock was not obtained within the timeout."""


class NoSpaceForLock(ReflinkError):
    """A lock file (or its directory) that does not exist yet cannot be made: the file system is full."""


class CloneError(ReflinkError):
    """Cloning or copying an image failed with an error that must not be masked; ``way_out`` as for ChecksumMismatch."""

    def __init__(self, message: str, errno: int | None = None, way_out: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.way_out = way_out


class NoRoomForCopy(CloneError):
    """A copy (no reflink possible) would not fit in the free space: refused before writing anything.

    ``needed``: the bytes of data the copy writes; ``free``: what the file system has free.
    """

    def __init__(self, message: str, needed: int, free: int, way_out: str | None) -> None:
        super().__init__(message, ENOSPC, way_out)
        self.needed = needed
        self.free = free

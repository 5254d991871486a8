# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``checksum`` of reflink_import: parsing it, and checking data against it.

A digest is always of the image at the size it will be committed with (holes
and the zeros of a growth read as zeros), so that a two-phase commit can check
the data before it resizes anything.
"""

from __future__ import annotations

import hashlib
import os
import re

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import (
    ChecksumMismatch,
    InvalidArgument,
    ReflinkError,
)
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Vid
from ansible_collections.dom0.reflink.plugins.module_utils._engine.action import Action, Rel
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs import clone
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory

_CHECKSUM_RE = re.compile(r"sha256:([0-9a-fA-F]{64})\Z")
_HASH_CHUNK = 4 * 1024 * 1024


def parse_checksum(value: object) -> str | None:
    """The lower-case hex digest of ``sha256:<hex>``, or None for no checksum."""
    if value is None:
        return None
    match = _CHECKSUM_RE.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise InvalidArgument("checksum must be 'sha256:' followed by 64 hex digits (got %r)" % (value,))
    return match.group(1).lower()


def sha256_of(fd: int, size: int | None = None) -> str:
    """SHA-256 of the file as it would be truncated or extended to ``size`` (default: its size).

    Holes, and what an extension would add, are hashed as zeros without being read.
    """
    digest = hashlib.sha256()
    file_size = clone.file_size(fd)
    size = file_size if size is None else size
    data_end = min(file_size, size)
    zeros = bytes(_HASH_CHUNK)
    position = 0
    for start, end in list(clone.data_segments(fd, data_end)) + [(size, size)]:
        while position < start:  # a hole
            step = min(_HASH_CHUNK, start - position)
            digest.update(zeros[:step])
            position += step
        while position < end:
            chunk = os.pread(fd, min(_HASH_CHUNK, end - position), position)
            if not chunk:
                raise ReflinkError("the file shrank while its checksum was computed")
            digest.update(chunk)
            position += len(chunk)
    return digest.hexdigest()


def verify_clean_checksum(vm_dir: Directory, vid: Vid, expected: str) -> None:
    """For an import that changes nothing: the data is the clean image's, so check that."""
    fd = vm_dir.open_file(vid.clean, os.O_RDONLY)
    try:
        actual = sha256_of(fd)
    finally:
        os.close(fd)
    if actual != expected:
        # Raised while planning, outside execute(): the way out goes into the message itself.
        way_out = "check the source and the checksum, then run the task again"
        raise ChecksumMismatch(
            "checksum mismatch: expected sha256:%s, but the data to import (the same as the current clean "
            "image, so nothing was staged) has sha256:%s; the volume is unchanged; %s"
            % (expected, actual, way_out), way_out)


class VerifyChecksum(Action[Workspace]):
    """Compare an import image (as it will be at ``size``) with the expected SHA-256; fail on a mismatch.

    ``staged_by_task``: the image is this task's own staging (one shot), useless
    once it is known to be wrong, so it is removed (the executor undoes its Stage).
    A two-phase import's image holds another program's work: it stays, and so does
    the journal.
    """

    long = True
    changes_disk = False

    def __init__(self, rel: Rel, name: str, expected: str, size: int | None = None, staged_by_task: bool = True) -> None:
        self.rel = rel
        self.name = name
        self.expected = expected
        self.size = size
        self.staged_by_task = staged_by_task
        self.text = "verify that %s has sha256 %s" % (rel(name), expected)
        if size is not None:
            self.text += " at %d bytes" % size

    def run(self, workspace: Workspace) -> None:
        fd = workspace.vm().open_file(self.name, os.O_RDONLY)
        try:
            actual = sha256_of(fd, self.size)
        finally:
            os.close(fd)
        if actual == self.expected:
            return
        found = "checksum mismatch: expected sha256:%s, found sha256:%s" % (self.expected, actual)
        if self.staged_by_task:
            # The staged image goes with the undoing of its Stage (the failed task then changed nothing).
            raise ChecksumMismatch(
                "%s in the staged data; the volume is unchanged" % found,
                "check the source and the checksum, then run the task again")
        at_size = "" if self.size is None else " (read as %d bytes, the size to commit)" % self.size
        raise ChecksumMismatch(
            "%s in the import image %s%s; nothing was changed: the import image, the volume and the "
            "journal of the begun import are as they were" % (found, self.rel(self.name), at_size),
            "fix the data (or the checksum) and run state=commit again, or discard the import with "
            "state=abort")

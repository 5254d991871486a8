# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The write log of the recording disk (recording_disk.py): its records, and reading them back.

One record per event, in the order the disk served them:

    header  struct "<cQQ": kind, offset, length
    kind W  a write of ``length`` bytes at ``offset``; the bytes follow the header
    kind Z  a range that reads as zeros from now on (discard, write-zeroes)
    kind F  a flush: every event before it is on stable storage
"""

from __future__ import annotations

import dataclasses
import os
import struct

HEADER = struct.Struct("<cQQ")
WRITE, ZERO, FLUSH = b"W", b"Z", b"F"


@dataclasses.dataclass(frozen=True)
class Event:
    """One record of the log: a write (with its data), a zeroed range, or a flush."""

    kind: bytes
    offset: int = 0
    length: int = 0
    data: bytes = b""

    def apply(self, fd):
        """Do this write (or zeroing) on the image open as ``fd``; a flush changes nothing."""
        if self.kind == WRITE:
            os.pwrite(fd, self.data, self.offset)
        elif self.kind == ZERO:
            os.pwrite(fd, bytes(self.length), self.offset)


def read_log(path):
    """The events of the log file ``path`` in order; a record cut short at the end is left out."""
    events = []
    with open(path, "rb") as handle:
        blob = handle.read()
    position = 0
    while position + HEADER.size <= len(blob):
        kind, offset, length = HEADER.unpack_from(blob, position)
        position += HEADER.size
        if kind == WRITE:
            if position + length > len(blob):
                break
            events.append(Event(kind, offset, length, blob[position:position + length]))
            position += length
        else:
            events.append(Event(kind, offset, length))
    return events

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Extended attributes of image files: where the revert and commit marks are kept (see _engine/markers.py).

A filesystem without xattrs (or without user xattrs) is no error here: a read
finds nothing and a write says it could not, and the caller decides.
"""

from __future__ import annotations

import errno
import os

from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory


def read_xattr(directory: Directory, name: str, key: str) -> bytes | None:
    """The bytes of extended attribute ``key`` of ``directory/name``; None when it has none (or no xattrs here)."""
    fd = directory.open_file(name, os.O_RDONLY)
    try:
        return os.getxattr(fd, key)
    except OSError:
        return None
    finally:
        os.close(fd)


def set_xattr(fd: int, key: str, value: bytes) -> bool:
    """Set extended attribute ``key`` of the open file ``fd`` to ``value`` (bytes); False without xattrs here."""
    try:
        os.setxattr(fd, key, value)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        return False
    return True

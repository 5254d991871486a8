# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a volume plan runs: the pool, the volume's prefix directory and its VM directory."""

from __future__ import annotations

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import PoolError
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Vid
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory, PoolDirectory


class Workspace:
    """Where a volume plan runs: the pool, the prefix directory and the VM directory."""

    def __init__(self, pool_dir: PoolDirectory, vid: Vid, prefix_dir: Directory | None = None) -> None:
        """``prefix_dir``: the open prefix directory, lent by the caller (a batch shares one), or None."""
        self.pool_dir = pool_dir
        self.vid = vid
        self.owns_prefix_dir = prefix_dir is None
        self.prefix_dir: Directory | None = pool_dir.open_dir(vid.prefix) if prefix_dir is None else prefix_dir
        if self.prefix_dir is None and pool_dir.exists:   # an AbsentDirectory is planned as an empty pool
            raise PoolError("%s has no %s/ directory: it is not a set-up pool; "
                            "create it with dom0.reflink.reflink_pool" % (pool_dir.path, vid.prefix))
        self.vm_dir: Directory | None = None

    def open_vm_dir(self) -> Workspace:
        """Open the VM directory (if it exists) afresh; done under the volume lock."""
        self.close_vm_dir()
        self.vm_dir = self.prefix_dir.open_dir(self.vid.vm) if self.prefix_dir is not None else None
        return self

    def close_vm_dir(self) -> None:
        if self.vm_dir is not None:
            self.vm_dir.close()
            self.vm_dir = None

    def vm(self) -> Directory:
        """The open VM directory, for a step that needs it (the steps before it made or found it)."""
        if self.vm_dir is None:
            raise PoolError("VM directory %s of the pool %s is not there" % (self.vid.vm_dir, self.pool_dir.path))
        return self.vm_dir

    def _prefix(self) -> Directory:
        if self.prefix_dir is None:
            raise PoolError("%s has no %s/ directory" % (self.pool_dir.path, self.vid.prefix))
        return self.prefix_dir

    def ensure_vm_dir(self) -> None:
        if self.vm_dir is None:
            self.vm_dir = self._prefix().open_dir(self.vid.vm, create=True)

    def remove_vm_dir_if_empty(self) -> None:
        self.close_vm_dir()
        self._prefix().rmdir_if_empty(self.vid.vm)

    def close(self) -> None:
        self.close_vm_dir()
        if self.prefix_dir is not None and self.owns_prefix_dir:
            self.prefix_dir.close()
        self.prefix_dir = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

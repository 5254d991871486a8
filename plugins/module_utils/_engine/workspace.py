# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a volume plan runs: the pool, the volume's prefix directory and its VM directory."""

from __future__ import annotations

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import PoolError


class Workspace:
    """Where a volume plan runs: the pool, the prefix directory and the VM directory."""

    def __init__(self, pool_dir, vid, prefix_dir=None):
        """``prefix_dir``: the open prefix directory, lent by the caller (a batch shares one), or None."""
        self.pool_dir = pool_dir
        self.vid = vid
        self.owns_prefix_dir = prefix_dir is None
        self.prefix_dir = pool_dir.open_dir(vid.prefix) if prefix_dir is None else prefix_dir
        if self.prefix_dir is None and pool_dir.exists:   # an AbsentDirectory is planned as an empty pool
            raise PoolError("%s has no %s/ directory: it is not a set-up pool; "
                            "create it with dom0.reflink.reflink_pool" % (pool_dir.path, vid.prefix))
        self.vm_dir = None

    def open_vm_dir(self):
        """Open the VM directory (if it exists) afresh; done under the volume lock."""
        self.close_vm_dir()
        self.vm_dir = self.prefix_dir.open_dir(self.vid.vm) if self.prefix_dir is not None else None
        return self

    def close_vm_dir(self):
        if self.vm_dir is not None:
            self.vm_dir.close()
            self.vm_dir = None

    def ensure_vm_dir(self):
        if self.vm_dir is None:
            self.vm_dir = self.prefix_dir.open_dir(self.vid.vm, create=True)

    def remove_vm_dir_if_empty(self):
        self.close_vm_dir()
        self.prefix_dir.rmdir_if_empty(self.vid.vm)

    def close(self):
        self.close_vm_dir()
        if self.prefix_dir is not None and self.owns_prefix_dir:
            self.prefix_dir.close()
        self.prefix_dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

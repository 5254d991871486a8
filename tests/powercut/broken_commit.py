# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A deliberately broken module run: every rename of the core without the directory fsync after it.

``python broken_commit.py MODULE ARGS_JSON`` runs the collection's module MODULE
(e.g. reflink_volume) with its arguments file as ``python -m`` would, except that
``Directory.rename`` of plugins/module_utils/_fs/directory.py leaves out the fsync of the
directory.  The file's own data is still fsynced before the rename, so a process
kill cannot tell the difference; a power cut right after the module returns can
lose the rename.  test_powercut.py uses it to show that the harness finds that.
"""

from __future__ import annotations

import os
import runpy
import sys

from ansible_collections.dom0.reflink.plugins.module_utils._fs import directory as _fsops


def rename_without_directory_fsync(self, src, dst, sync=True):
    """The rename, not followed by the fsync of the directory whatever ``sync`` says."""
    del sync
    os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)


def main(argv):
    module, args_path = argv[1:3]
    _fsops.Directory.rename = rename_without_directory_fsync
    sys.argv = [module, args_path]
    runpy.run_module("ansible_collections.dom0.reflink.plugins.modules." + module, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv)

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Options shared by every module that works on one volume.
    DOCUMENTATION = r"""
options:
  pool:
    description:
      - The pool directory, for example V(/var/lib/qubes) for Qubes OS' default C(file-reflink) pool.
      - It must already be set up (see M(dom0.reflink.reflink_pool)); the volume modules never create a pool.
      - In check mode a pool directory that does not exist yet is planned as an empty pool, with a warning,
        so that a C(--check) run of a play whose M(dom0.reflink.reflink_pool) task would create the pool
        reports what the volume tasks would do. A real run fails on a missing pool.
      - Symlinks in this path are followed; nothing below it is ever reached through a symlink.
    type: path
    required: true
  vid:
    description:
      - The volume id, V(appvms/<vm>/<volume>) or V(vm-templates/<vm>/<volume>), for example V(appvms/work/private).
      - VM and volume names are single path components of letters, digits, V(_), V(.), V(+) and V(-),
        not starting with V(.) or V(-). A volume name must not contain V(.img) nor end in V(-dirty),
        V(-precache) or V(-import).
    type: str
    required: true
  lock_timeout:
    description:
      - Seconds to wait for the pool and volume locks held by another task, then fail naming the holder.
        A whole number, 0 or more (V(0) does not wait).
    type: int
    default: 60
notes:
  - Qubes OS' qubesd works on the same files; it does not know this collection's locks, so the modules
    refuse to change a volume that is in use (a dirty image, a loop device backed by one of its images,
    or qubesd's running-state file).
  - Every file the modules create has mode V(0600); every change is fsynced before the module returns.
  - Where a clone cannot be a reflink (the source on another file system, a file system without reflinks,
    a btrfs No_COW attribute on one side only), the data is copied sparsely. Each copy is checked against
    the file system's free space first (what statvfs gives an unprivileged writer) and refused before a
    byte is written when its data does not fit, naming both figures and the way out. A copy where a reflink
    was expected (the file system shares blocks and both files are on it) adds a warning naming the likely
    cause (a No_COW attribute, and which file or directory has it, with the way out).
  - Removals work on a full file system (btrfs included). The record of who holds a lock is written only when
    it fits, and a volume whose lock file cannot be made for lack of space is worked on under the pool lock
    held exclusively. A step that needs new space and finds none says which step it is.
"""

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Attributes of the modules that change a pool.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
    description:
      - Check mode computes the same plan and returns the same keys as a real run, and changes nothing.
      - Each clone in RV(actions) ends as in the real run ("(reflink)", or "(sparse copy ...)" where no reflink is
        possible), from a probe of the pool's file system (and, for an import, of the source) in unnamed files
        that leave nothing behind.
      - What the real run must refuse and the plan can tell is refused in check mode too.
  diff_mode:
    support: full
    description: Returns the volume's files (name, size, allocated bytes) and revision ids before and after.
  platform:
    support: full
    platforms: posix
    description: Linux only (FICLONE, loop devices). Reflinks need btrfs or XFS; elsewhere a sparse copy is made.
"""

    # Attributes of the read-only modules.
    INFO_MODULE = r"""
attributes:
  check_mode:
    support: full
    description: The module never changes anything, in check mode or not.
  diff_mode:
    support: none
    description: Nothing changes, so there is no difference to show.
  platform:
    support: full
    platforms: posix
    description: Linux only.
"""

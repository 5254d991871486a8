# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One finding of reflink_info: something wrong with a pool (or worth knowing), and the way out.

Severities: ``warning`` for what is wrong whatever the pool is used for (a
setting that turns every clone into a copy, a loop device that corrupts
btrfs checksums, uncommitted data); ``info`` for what normal use leaves
behind and costs space or speed (a fragmented image, stranded extents, a
revision of data that was replaced whole).  A pool made and used only by
this collection and qubesd has no warnings.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Collection, Sequence

from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles
from ansible_collections.dom0.reflink.plugins.module_utils._state.qubes_xml import QubesPool
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings

WARNING = "warning"
INFO = "info"

# The kinds, each with its severity (not_shared: warning for a precache, info for a revision or a pin) and
# whether it needs the extent maps (reflink_info's space: true).
NOCOW = "nocow"
NOT_SHARED = "not_shared"
DIRECT_IO_LOOP = "direct_io_loop"
SIZE_MISMATCH = "size_mismatch"
STALE_PRECACHE = "stale_precache"
PENDING_COMMIT = "pending_commit"
FRAGMENTED = "fragmented"
STRANDED = "stranded"
NO_REFLINK = "no_reflink"

EXTENT_KINDS = (NOT_SHARED, FRAGMENTED, STRANDED)

# An image is fragmented with at least this many extents, and more than this many per GiB of its data.
FRAGMENTED_EXTENTS = 1000
FRAGMENTED_PER_GIB = 1000
# A volume's stranded bytes are worth a finding above this share of its allocated bytes.
STRANDED_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class Finding:
    """``vid`` None: the pool as a whole; ``file`` None: no one file (a volume, the pool directory)."""

    kind: str
    vid: str | None
    file: str | None
    severity: str
    msg: str

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def sort_key(self) -> tuple[str, str, str]:
        return (self.vid or "", self.file or "", self.kind)


@dataclasses.dataclass
class PoolFacts:
    """What the checks look at: the open pool, its filesystem, the volumes reported, what surrounds them."""

    pool_dir: Directory
    path: str                         # the pool as given
    fstype: str
    reflink: bool | None              # the reflink probe's answer; None: it could not be probed
    volumes: Sequence[VolumeFiles]    # the volumes the report covers (all, or those of vids)
    surroundings: Surroundings
    qubes: QubesPool | None
    nocow_dirs: Collection[str] = ()   # directories with No_COW, relative to the pool ("" for the pool itself)

    def image_path(self, files: VolumeFiles, name: str) -> str:
        """The absolute path of the volume's file ``name`` (as a command in a message needs it)."""
        return os.path.join(self.path, files.vid.vm_dir, name)


def relative(files: VolumeFiles, name: str) -> str:
    """The pool-relative name of the volume's file ``name``."""
    return "%s/%s" % (files.vid.vm_dir, name)


def shell_path(path: str) -> str:
    """A path as a shell command in a message would need it (revision names hold ':' and '@')."""
    return shlex.quote(path)

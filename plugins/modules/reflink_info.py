#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: reflink_info
short_description: Report a reflink pool and its volumes
version_added: 0.1.0
description:
  - Reads a C(file-reflink) pool with one directory walk and reports its filesystem and every
    volume found under V(appvms/) and V(vm-templates/) (or only O(vids)), with size, usage, revisions,
    state, whether it is in use and why, the state of its precache, and leftovers that
    M(dom0.reflink.reflink_gc) would look at.
  - With qubes.xml (see O(qubes_xml)) it also says which VM each volume belongs to, and lists in RV(missing)
    the volumes qubes.xml lists that have no image, whose VMs cannot start (what a half-failed
    C(qvm-remove) or a partly restored backup leaves).
  - Copes with every state qubesd can leave behind (running volumes, a dirty image of a halted VM,
    leftovers of snapshot and volatile volumes, revision files with a non-numeric id).
  - In check mode, a pool that does not exist yet is reported as the empty pool an earlier
    M(dom0.reflink.reflink_pool) task would make (no volumes; the filesystem of its parent directory;
    RV(pool.reflink) null), with a warning. Outside check mode a missing pool is an error.
  - With O(space=true) it reads every image's extent map and says what each volume and file costs and what
    removing it would free (RV(volumes[].space), RV(pool.space)); O(if_removed) answers the same for any set of
    volumes and files. Every figure is the change of the filesystem's free space that removing that set makes
    (within 1 MiB + 1 %), on btrfs (whole extents, read from btrfs's own records, which needs root) and on XFS (blocks,
    FIEMAP). Metadata (inodes, extent items, checksums, small files stored inline) is not counted. On XFS a
    block that two pool images and a file outside the pool share counts as freed when those two go, which
    overstates (FIEMAP cannot tell; a filesystem made with C(mkfs.xfs -m rmapbt=1) could). On ext4 nothing is
    shared, and a file's exclusive bytes are its allocated bytes.
  - RV(findings) lists what is wrong with the pool, or worth knowing, each with the way out. Kinds, severity and
    way out, one by one below.
  - V(nocow) (warning) - a VM directory, a prefix directory or the pool directory (always), or an image (with
    O(space), read with its extents) has btrfs's No_COW attribute (C(chattr +C)); files made in such a directory
    inherit it, and reflinks to and from such files fail, so every clone silently becomes a full copy. Way out -
    C(chattr -C) on the directory; an image keeps the attribute while it holds data, so copy it into a new file
    and rename that over it (the message gives the commands), or, for a precache, remove it and run
    M(dom0.reflink.reflink_volume).
  - V(not_shared) (with O(space); warning for a precache, info for a revision or pin) - a precache that holds
    bytes its clean image does not share (a copy, not a reflink); a revision or pin that shares none of its bytes
    with the clean image (a full copy, or the data was replaced whole since, as an import does). Way out - remove
    the precache and run M(dom0.reflink.reflink_volume) for a fresh one; M(dom0.reflink.reflink_dedupe) shares
    what is the same again; M(dom0.reflink.reflink_gc) or M(dom0.reflink.reflink_pin) remove what is not needed.
  - V(direct_io_loop) (warning) - a loop device with direct I/O on over a pool image on btrfs; data changed
    while in flight gets checksums that do not match, and reads fail (Qubes issue 9488). Way out -
    C(losetup --direct-io=off /dev/loopN), and attach images without C(--direct-io).
  - V(size_mismatch) (info) - the image's size differs from the C(size) qubes.xml records for the volume
    (qubesd takes the size from the image and records it at its next save). Way out - C(qvm-volume resize) to
    the image's size records it; M(dom0.reflink.reflink_volume) with the recorded O(dom0.reflink.reflink_volume#module:size)
    gives the image that size.
  - V(stale_precache) (info) - a precache whose mtime or size is not the clean image's. Way out -
    M(dom0.reflink.reflink_volume) makes a fresh one, M(dom0.reflink.reflink_gc) removes it.
  - V(pending_commit) (warning) - a dirty image of a volume that is not running (a crash stopped its VM before
    the commit), so its data is not committed. Way out - M(dom0.reflink.reflink_volume) with C(state=stopped) commits it.
    Not reported for snapshot and volatile volumes of qubes.xml, whose dirty images qubesd discards.
  - V(fragmented) (with O(space); info) - the image a VM runs from (dirty, else clean) in at least 1,000 extents
    and more than 1,000 per GiB of its data. Way out - C(btrfs filesystem defragment) or C(xfs_fsr) while the VM
    is stopped, then a fresh precache (remove it, run M(dom0.reflink.reflink_volume)).
  - V(stranded) (with O(space); info) - a volume whose stranded bytes (RV(volumes[].space.stranded)) exceed a
    quarter of its allocated bytes. Way out - M(dom0.reflink.reflink_dedupe), or a full rewrite of the image
    (the message gives the commands).
  - V(no_reflink) (warning) - the pool's filesystem cannot share blocks, so every clone is a full copy. Way out -
    move the pool to btrfs or to XFS made with C(reflink=1).
  - Warnings are what is wrong whatever the pool is used for; infos are what normal use leaves behind and costs
    space or speed. A pool made and used only by this collection and qubesd has no warnings. The checks that
    need extent maps run only with O(space=true); the others read what the scan has read already, qubes.xml,
    C(/sys/block), and on btrfs the No_COW flag of each VM directory (see docs/performance.md for their cost).
extends_documentation_fragment:
  - dom0.reflink.attributes.info_module
  - dom0.reflink.qubes_xml
options:
  pool:
    description: The pool directory.
    type: path
    required: true
  vids:
    description:
      - Report only these volume ids (V(appvms/<vm>/<volume>) or V(vm-templates/<vm>/<volume>)).
        A listed volume that does not exist is reported with RV(volumes[].state=absent).
        An empty list reports no volume, never every volume.
    type: list
    elements: str
  lock_timeout:
    description: Seconds to wait while a pool-wide task (such as gc) holds the pool lock (0 or more).
    type: int
    default: 60
  space:
    description:
      - Read every image file's extent map (btrfs's extent items as root, FIEMAP elsewhere) and report
        RV(volumes[].space) and RV(pool.space), and the findings that need the maps (V(not_shared),
        V(fragmented), V(stranded), and V(nocow) of images).
      - The whole pool is read, also with O(vids) - a block that an image of another volume holds too is
        kept, not freed. Costs about what C(btrfs filesystem du -s) over the pool costs (see docs/performance.md).
    type: bool
    default: false
    version_added: 0.2.0
  if_removed:
    description:
      - Volume ids and image files (relative to the pool, such as V(appvms/work/private.img.2@2026-01-02T03:04:05Z))
        whose removal, as one set, RV(if_removed) then reports; a vid means every file of the volume, pins
        included.
      - Works without O(space) (the extent maps are read for it). An empty list reports 0 bytes and reads nothing.
        A name that is neither a volume nor an image file of the pool fails the task, naming it. Not limited by
        O(vids).
    type: list
    elements: str
    version_added: 0.2.0
seealso:
  - module: dom0.reflink.reflink_volume
  - module: dom0.reflink.reflink_gc
author:
  - dom0.reflink developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Report every volume of the pool
  dom0.reflink.reflink_info:
    pool: /var/lib/qubes
  register: pool_info

- name: Show the volumes that hold leftovers
  ansible.builtin.debug:
    msg: "{{ pool_info.volumes | selectattr('artifacts.tempfiles') | map(attribute='vid') }}"

- name: In dom0, list the VMs whose volume images are gone
  dom0.reflink.reflink_info:
    pool: /var/lib/qubes
  register: pool_info

- name: Show them
  ansible.builtin.debug:
    msg: "{{ pool_info.missing | map(attribute='vm') | unique }}"

- name: Report two volumes only
  dom0.reflink.reflink_info:
    pool: /var/lib/qubes
    vids:
      - appvms/work/private
      - vm-templates/debian-12/root

- name: Where did my space go? Every volume's cost, and what removing the old template would free
  dom0.reflink.reflink_info:
    pool: /var/lib/qubes
    space: true
    if_removed:
      - vm-templates/fedora-41/root
      - vm-templates/fedora-41/private
  register: pool_space

- name: Show the five volumes whose removal would free the most
  ansible.builtin.debug:
    msg: "{{ (pool_space.volumes | sort(attribute='space.exclusive', reverse=true))[:5]
             | map(attribute='vid') }}"

- name: Show what is wrong with the pool, and the way out
  ansible.builtin.debug:
    msg: "{{ pool_space.findings | selectattr('severity', 'equalto', 'warning') | map(attribute='msg') }}"
"""

RETURN = r"""
pool:
  description: The pool's filesystem.
  returned: always
  type: dict
  contains:
    path:
      description: The pool directory as given.
      type: str
    fstype:
      description: Filesystem type.
      type: str
      sample: btrfs
    reflink:
      description:
        - Whether the reflink probe (two unnamed files) succeeded; null when the filesystem could not be
          probed (read-only or full).
      type: bool
    size:
      description: Size of the filesystem in bytes.
      type: int
    usage:
      description: Bytes in use on the filesystem.
      type: int
    unsafe_entries:
      description:
        - Paths (relative to the pool) of image-like names that are not regular files, or VM
          directories that are symlinks. The other modules refuse to touch them.
      type: list
      elements: str
    space:
      description: The pool's images together, and its filesystem.
      returned: when O(space=true)
      type: dict
      version_added: 0.2.0
      contains:
        referenced:
          description:
            - Every image file's own allocated bytes, summed (what C(du) says; on btrfs whole extents are
              counted, so it can exceed C(du)).
          type: int
        allocated:
          description: Disk bytes the pool's images occupy together, each block once.
          type: int
        saved:
          description: RV(pool.space.referenced) minus RV(pool.space.allocated), what sharing saves.
          type: int
        stranded:
          description:
            - btrfs only (0 elsewhere) - bytes of extents that the images keep allocated although no image
              references them any more.
          type: int
        fs_size:
          description: The filesystem's size in bytes (statvfs).
          type: int
        fs_free:
          description: Bytes free for an unprivileged writer (statvfs's available blocks).
          type: int
volumes:
  description: The volumes, sorted by vid.
  returned: always
  type: list
  elements: dict
  contains:
    vid:
      description: The volume id.
      type: str
    image:
      description: Path of the clean image.
      type: str
    size:
      description: Size in bytes (dirty image, else clean image; 0 when there is neither).
      type: int
    usage:
      description: Allocated bytes of that image.
      type: int
    revisions:
      description: Revisions (V(id), V(timestamp)), oldest first.
      type: list
      elements: dict
    state:
      description: V(absent), V(stopped), V(running) or V(dirty) (halted, commit pending).
      type: str
    in_use:
      description: Whether the volume is in use.
      type: bool
    in_use_reasons:
      description: Why, in plain words.
      type: list
      elements: str
    precache:
      description: V(fresh), V(stale) or V(missing).
      type: str
    pins:
      description:
        - The volume's pins (see M(dom0.reflink.reflink_pin)), sorted by name, each with V(name), V(size)
          and V(timestamp) (the time of the pinned data, UTC). A volume that has only pins is listed too,
          with state V(absent).
      type: list
      elements: dict
      version_added: 0.2.0
    artifacts:
      description: Leftovers seen.
      type: dict
      contains:
        tempfiles:
          description: Names of tempfiles of the volume.
          type: list
          elements: str
        import_image:
          description: Name of an import image, if any.
          type: str
        junk_revisions:
          description: Revision files whose id is not a positive integer (V(0), V(-1), V(x)); they are no revision.
          type: list
          elements: str
        stale_precache:
          description: Name of the precache when it is stale.
          type: str
    qubes:
      description: What qubes.xml says of the volume; null when it does not list the vid (or was not read).
      type: dict
      contains:
        vm:
          description: The VM's name.
          type: str
          sample: work
        volume:
          description: The volume's name in the VM.
          type: str
          sample: private
        kind:
          description:
            - V(origin) (keeps its data while the VM is stopped), V(snapshot) (a copy of its source made at
              each start, such as an AppVM's V(root)), V(volatile) (empty at each start), or
              V(origin_snapshot).
          type: str
          sample: origin
        revisions_to_keep:
          description: The volume's own value, else the pool's, else 1.
          type: int
          sample: 1
    space:
      description:
        - What the volume's files cost, and what removing them would free (bytes); every image file of the
          volume counts, pins, tempfiles and leftovers included.
      returned: when O(space=true)
      type: dict
      version_added: 0.2.0
      contains:
        allocated:
          description: Disk bytes the volume's files occupy together, each block once (on btrfs whole extents,
            stranded bytes included).
          type: int
        exclusive:
          description: What removing every file of the volume (pins included) would free.
          type: int
        revisions_exclusive:
          description: What removing all its revisions would free (M(dom0.reflink.reflink_gc) with
            C(revisions_to_keep=0)).
          type: int
        stranded:
          description:
            - btrfs only (0 elsewhere) - bytes of extents that the volume's files keep allocated although no
              file references them any more (btrfs frees an extent only whole).
          type: int
        files:
          description: One entry per image file, in the order of the volume's files.
          type: list
          elements: dict
          contains:
            file:
              description: The file, relative to the pool.
              type: str
              sample: appvms/work/private.img
            allocated:
              description: Its disk bytes (on btrfs whole extents).
              type: int
            exclusive:
              description: What removing that file alone would free.
              type: int
qubes_pool:
  description: The pool as qubes.xml names it; null when qubes.xml was not read or lists no pool at this path.
  returned: always
  type: dict
  contains:
    name:
      description: The pool's Qubes name.
      type: str
      sample: varlibqubes
    revisions_to_keep:
      description: The pool's C(revisions_to_keep).
      type: int
    qubes_xml:
      description: The file read.
      type: str
      sample: /var/lib/qubes/qubes.xml
missing:
  description:
    - Volumes that qubes.xml lists for this pool as keeping their data (origin volumes) with neither a clean
      nor a dirty image; their VMs cannot start. Empty without qubes.xml. With O(vids), only among those.
  returned: always
  type: list
  elements: dict
  contains:
    vid:
      description: The volume id.
      type: str
    vm:
      description: The VM's name.
      type: str
    volume:
      description: The volume's name in the VM.
      type: str
if_removed:
  description: What removing the set O(if_removed) names would free, as one set.
  returned: when O(if_removed) is given
  type: dict
  version_added: 0.2.0
  contains:
    bytes:
      description: The bytes the filesystem would get back.
      type: int
    files:
      description: The files of the set (relative to the pool), sorted as the volumes' files.
      type: list
      elements: str
findings:
  description:
    - What is wrong with the pool or the volumes reported, or worth knowing, with the way out (see the
      description for each kind); sorted by vid (the pool's own first), file and kind. The kinds that need the
      extent maps appear only with O(space=true).
  returned: always
  type: list
  elements: dict
  version_added: 0.2.0
  contains:
    kind:
      description: V(nocow), V(not_shared), V(direct_io_loop), V(size_mismatch), V(stale_precache),
        V(pending_commit), V(fragmented), V(stranded) or V(no_reflink).
      type: str
      sample: pending_commit
    vid:
      description: The volume; null for the pool as a whole (its filesystem, the pool or a prefix directory).
      type: str
    file:
      description: The file or directory, relative to the pool; null for a whole volume or the pool directory.
      type: str
    severity:
      description: V(warning) or V(info).
      type: str
    msg:
      description: What was found and the way out (the module and options to run, or the command).
      type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dom0.reflink.plugins.module_utils._tasks.arguments import POOL_TASK, ArgumentSpec
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.info import run_info_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import main_wrapper


def main() -> None:
    module = POOL_TASK.merge(ArgumentSpec({
        "vids": {"type": "list", "elements": "str"},
        "space": {"type": "bool", "default": False},
        "if_removed": {"type": "list", "elements": "str"},
    })).create_module(AnsibleModule)
    main_wrapper(module, lambda: run_info_task(module.params, module.check_mode))


if __name__ == "__main__":
    main()

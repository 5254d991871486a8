#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: reflink_gc
short_description: Reclaim what crashes and old revisions leave behind in a reflink pool
version_added: 0.1.0
description:
  - Reads the whole pool with one directory walk, under the exclusive pool lock, and removes, each
    reported with its reason and the bytes it frees (see RV(removed)),
  - stale tempfiles (V(<image>~XXXXXXXX)) older than O(min_age);
  - import images older than O(min_age) that no begun two-phase import claims, and those whose import
    was begun longer ago than O(import_max_age);
  - revisions beyond the volume's entry in O(revisions_to_keep_per_volume), or else O(revisions_to_keep),
    oldest first (with neither, the volume's own C(revisions_to_keep) from qubes.xml; with none of these,
    none), and revision files whose id is not a positive integer (V(0), V(-1), V(x); qubesd cannot
    use them);
  - stale precache images (mtime or size differs from the clean image);
  - empty VM directories, and journals of imports whose image is gone.
  - "It never removes: a dirty image (uncommitted data of a VM that is running or halted without a
    commit; listed in RV(pending_commit)), anything of a volume that is in use or whose lock another
    task holds (listed in RV(skipped_volumes)), a file that matches no image name of a volume (qubesd keeps
    C(firewall.xml) and others in VM directories), or anything outside V(appvms/) and
    V(vm-templates/) other than its own stale journals."
  - Volumes not listed in O(keep_vids) (or, without it, not in qubes.xml) are reported in RV(orphans), and
    removed only with O(remove_orphans=true) and only once all their files are older than O(min_age)
    (qubesd makes a new VM's images before it saves qubes.xml).
  - Pins are never removed; those of a volume without clean or dirty image are listed in RV(orphaned_pins),
    and a VM directory that holds pins is not empty.
  - A file that some process holds open (qubesd's Import writer keeps the import image open while a
    slow restore streams in) is never removed. One walk of C(/proc/*/fd) per run finds them by
    device and inode, and they are listed in RV(skipped_files) with the holders' pids and commands.
  - It works on a full file system, when it is needed most (nothing a removal does needs new space).
  - qubesd does not take the collection's locks. Before each removal gc checks again that the volume
    has not become in use since the pool was read (a dirty image, a loop device on one of its images,
    qubesd's running-state file); a volume whose VM started meanwhile keeps the rest of its files and
    is listed in RV(skipped_volumes).
extends_documentation_fragment:
  - dom0.reflink.attributes
  - dom0.reflink.qubes_xml
options:
  pool:
    description: The pool directory.
    type: path
    required: true
  vids:
    description:
      - Only look at these volumes (their VM directories, and their import journals).
      - An empty list selects no volume, never every volume (an empty template variable must not widen the task).
    type: list
    elements: str
  keep_vids:
    description:
      - The volumes that should exist. Volumes found and not listed are reported as orphans.
      - Without it, when qubes.xml lists the pool (see O(qubes_xml)), the origin volumes qubes.xml lists are the
        ones that should exist; files of any other vid are orphans, and so are the files of a snapshot or
        volatile volume (an AppVM's V(root), any V(volatile)) without a dirty image, which a crash left
        (qubesd removes them when the VM stops). While its dirty image exists such a volume is in use and
        nothing of it is touched.
    type: list
    elements: str
  remove_orphans:
    description:
      - Remove every file of the orphans (requires O(keep_vids), or a qubes.xml that lists the pool).
        Orphans in use are skipped.
      - An empty O(keep_vids) with O(remove_orphans=true) is refused, since it would remove every volume of the
        pool (almost always an empty template variable).
    type: bool
    default: false
  min_age:
    description:
      - Tempfiles and unclaimed import images younger than this are kept (a task may be writing them).
        Seconds, or a number with V(s), V(m), V(h) or V(d), for example V(30m).
    type: raw
    default: 1h
  import_max_age:
    description:
      - A begun two-phase import keeps its image until its journal is this old; then both are removed.
    type: raw
    default: 1d
  revisions_to_keep:
    description:
      - Revisions to keep per volume, for volumes without an entry in O(revisions_to_keep_per_volume);
        V(0) and V(-1) keep none.
      - There is no default. Without it (and without an entry in O(revisions_to_keep_per_volume)), each
        volume keeps what its own C(revisions_to_keep) in qubes.xml says (see O(qubes_xml)); a volume with no
        value from anywhere has no revision pruned, so a volume set to keep five with
        C(qvm-volume config <vm>:<volume> revisions_to_keep 5) keeps its five.
    type: int
  revisions_to_keep_per_volume:
    description: The number of revisions to keep, by vid; it wins over O(revisions_to_keep).
    type: dict
    default: {}
  rebuild_precache:
    description:
      - Also make a missing (or stale) precache for stopped volumes.
      - A stale precache that a process holds open is neither removed nor rebuilt (a rebuild renames the new one
        over it); RV(skipped_files) lists it.
    type: bool
    default: false
  lock_timeout:
    description: Seconds to wait for the exclusive pool lock, then fail naming the holder (0 or more; V(0) does not wait).
    type: int
    default: 60
attributes:
  check_mode:
    description:
      - Check mode lists exactly what a real run would remove, with the same keys and byte counts, and the same
        RV(reclaimed_bytes).
      - On a pool that does not exist yet it plans against an empty pool (nothing to remove), with a
        warning; a real run fails.
  diff_mode:
    support: none
    description: The report in RV(removed) says what changed.
notes:
  - RV(reclaimed_bytes) is what the run frees, computed for the removed files as one set from the extent
    maps of every image file of the pool (read once, before the first removal, and only when there is
    something to remove). Data that several removed files share counts once, and data that a file gc keeps
    (the clean image, a precache, a pin, another volume's image, even with O(vids)) or a file outside the
    pool also holds does not count, since removing the set does not free it. On btrfs it counts whole
    extents, as btrfs frees an extent only when no file references any part of it; on XFS, blocks. Check mode
    reports the same figure, and a run that removes fewer files than planned (a volume that became in use,
    a file replaced meanwhile) reports the figure of the files it did remove.
  - It equals the file system's own change of free space (statvfs after a sync) within 1 MiB + 1 %. Metadata
    (inodes, extent items, checksums) is not counted. On XFS a block held by two removed files and by a file
    outside the pool cannot be told from one held by the two alone (FIEMAP does not say who shares a block),
    so it counts as freed. A new precache (O(rebuild_precache)) is not subtracted; on a file system without
    reflinks it is a full copy.
seealso:
  - module: dom0.reflink.reflink_info
  - module: dom0.reflink.reflink_volume
author:
  - dom0.reflink developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Nightly clean-up of the Qubes pool (each volume keeps the revisions its qubes.xml entry says)
  dom0.reflink.reflink_gc:
    pool: /var/lib/qubes

- name: See what would go, without removing anything
  dom0.reflink.reflink_gc:
    pool: /var/lib/qubes
    min_age: 30m
  check_mode: true
  register: gc_plan

- name: Keep three revisions of templates' root volumes, one of every other volume, and rebuild missing precaches
  dom0.reflink.reflink_gc:
    pool: /var/lib/qubes
    revisions_to_keep: 1
    revisions_to_keep_per_volume:
      vm-templates/debian-12/root: 3
      vm-templates/fedora-41/root: 3
    rebuild_precache: true

- name: Nightly gc in dom0 (cron or a systemd timer), all it needs to know read from qubes.xml
  dom0.reflink.reflink_gc:
    pool: /var/lib/qubes
    # no keep_vids: the volumes qubes.xml lists are the known ones, each pruned to its own
    # revisions_to_keep; orphans are reported (add remove_orphans: true once the report looks right)
  register: nightly_gc

- name: Remove volumes that no longer belong to any VM
  dom0.reflink.reflink_gc:
    pool: /var/lib/vm-pool
    keep_vids: "{{ vm_volumes }}"
    remove_orphans: true
"""

RETURN = r"""
actions:
  description: Each step done (planned, in check mode), in plain words.
  returned: always
  type: list
  elements: str
removed:
  description: The files removed (to be removed, in check mode).
  returned: always
  type: list
  elements: dict
  contains:
    file:
      description: Path relative to the pool.
      type: str
      sample: appvms/work/private.img~k2j4h5g6
    reason:
      description: Why it was removed.
      type: str
      sample: stale tempfile, older than min_age
    bytes:
      description: Allocated bytes of the file (what C(du) counts for it, whether or not it shares them).
      type: int
    exclusive_bytes:
      description:
        - What removing this file alone frees (bytes no other file holds; on btrfs whole extents). Not
          returned for a file that was gone or replaced when the pool's extent maps were read.
        - Before 0.2.0 it counted the bytes FIEMAP did not flag as shared, file by file.
      type: int
reclaimed_bytes:
  description:
    - What the run freed (in check mode, would free), computed for the files in RV(removed) as one set; see
      the notes. Not the sum of RV(removed[].exclusive_bytes), which counts each file alone.
    - Before 0.2.0 it was the sum of RV(removed[].bytes), which overstates what reflinked files free.
  returned: always
  type: int
reclaimed_exclusive_bytes:
  description:
    - Deprecated, to be removed in 1.0.0; read RV(reclaimed_bytes). Since 0.2.0 it has the same value.
    - Before 0.2.0 it was the sum of RV(removed[].exclusive_bytes), the better estimate of what a run frees
      then; playbooks that read it keep working and get the exact figure.
  returned: always
  type: int
orphans:
  description:
    - Volumes found but not in O(keep_vids), or, without O(keep_vids), not known to qubes.xml (empty when
      neither says which volumes should exist).
  returned: always
  type: list
  elements: dict
  contains:
    vid:
      description: The volume id.
      type: str
    size:
      description: Size of the volume in bytes.
      type: int
    usage:
      description: Allocated bytes of all its files.
      type: int
    reason:
      description: Why it counts as an orphan.
      type: str
      sample: not listed in qubes.xml for pool varlibqubes
    kept:
      description: With O(remove_orphans=true), why this orphan was not removed (a file younger than O(min_age)).
      type: str
      returned: when an orphan was kept
orphaned_pins:
  description:
    - Pins (see M(dom0.reflink.reflink_pin)) of volumes that have neither a clean nor a dirty image, for
      instance left by qubesd's removal of the VM or by M(dom0.reflink.reflink_volume)
      O(dom0.reflink.reflink_volume#module:state=absent). gc never removes a pin; remove it with
      M(dom0.reflink.reflink_pin) O(dom0.reflink.reflink_pin#module:state=absent), or revert the volume to it
      with M(dom0.reflink.reflink_revert).
  returned: always
  type: list
  elements: dict
  version_added: 0.2.0
  contains:
    vid:
      description: The volume id.
      type: str
      sample: appvms/old/private
    name:
      description: The pin's name.
      type: str
      sample: before-upgrade
    file:
      description: Path relative to the pool.
      type: str
      sample: appvms/old/private.img.pin-before-upgrade
    size:
      description: Size in bytes.
      type: int
pending_commit:
  description: Dirty images (uncommitted data), which gc never removes.
  returned: always
  type: list
  elements: dict
skipped_volumes:
  description:
    - Volumes left alone, with the reason (in use, lock held, or became in use while gc ran; then
      the removals done before are in RV(removed) and the others were not done). (Not called
      C(skipped), which Ansible would read as "the task was skipped".)
  returned: always
  type: list
  elements: dict
  contains:
    vid:
      description: The volume id.
      type: str
    reason:
      description: Why it was left alone.
      type: str
      sample: "became in use while gc ran: the dirty image private-dirty.img appeared"
skipped_files:
  description:
    - Files gc would have removed but did not, because a process holds them open (in check mode
      too). The next run removes them once they are closed, if the reason still holds.
  returned: always
  type: list
  elements: dict
  contains:
    file:
      description: Path relative to the pool.
      type: str
      sample: appvms/work/private-import.img
    reason:
      description: Who holds it, and why it would have been removed.
      type: str
      sample: "held open by pid 4242 (qubesd); not removed (it would have been: import image that no
        begun import claims)"
    holders:
      description: The processes that hold it open.
      type: list
      elements: dict
      contains:
        pid:
          description: Process id.
          type: int
        command:
          description: The process's command name (C(/proc/<pid>/comm)).
          type: str
          sample: qubesd
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dom0.reflink.plugins.module_utils._tasks.arguments import POOL_TASK, ArgumentSpec
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.gc import run_gc_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import main_wrapper


def main() -> None:
    module = POOL_TASK.merge(ArgumentSpec({
        "vids": {"type": "list", "elements": "str"},
        "keep_vids": {"type": "list", "elements": "str"},
        "remove_orphans": {"type": "bool", "default": False},
        "min_age": {"type": "raw", "default": "1h"},
        "import_max_age": {"type": "raw", "default": "1d"},
        "revisions_to_keep": {"type": "int"},
        "revisions_to_keep_per_volume": {"type": "dict", "default": {}},
        "rebuild_precache": {"type": "bool", "default": False},
    })).create_module(AnsibleModule)
    main_wrapper(module, lambda: run_gc_task(module.params, module.check_mode))


if __name__ == "__main__":
    main()

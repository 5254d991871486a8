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
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dom0.reflink.plugins.module_utils._tasks.arguments import POOL_TASK, ArgumentSpec
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.info import run_info_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import main_wrapper


def main() -> None:
    module = POOL_TASK.merge(ArgumentSpec({
        "vids": {"type": "list", "elements": "str"},
    })).create_module(AnsibleModule)
    main_wrapper(module, lambda: run_info_task(module.params, module.check_mode))


if __name__ == "__main__":
    main()

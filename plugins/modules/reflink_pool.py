#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: reflink_pool
short_description: Set up, check or remove a reflink pool directory
version_added: 0.1.0
description:
  - Creates a pool directory laid out as Qubes OS' C(file-reflink) driver expects (the directory
    and its V(appvms/) and V(vm-templates/) subdirectories) and reports its filesystem.
  - With O(require_reflink=true) it refuses a filesystem on which reflinks do not work (such as
    ext4). The probe runs before anything is created, so a refused pool leaves nothing behind.
  - Removes a pool that holds no image file.
extends_documentation_fragment:
  - dom0.reflink.attributes
  - dom0.reflink.qubes_xml
options:
  path:
    description:
      - The pool directory. Only its last level is created; its parent must exist.
      - Symlinks in this path are followed (qubesd does the same); nothing below it may be a symlink.
      - The alias O(pool) lets one C(module_defaults) entry for the group C(dom0.reflink.all) set the
        pool of every module of the collection.
    type: path
    required: true
    aliases: [pool]
  state:
    description:
      - V(present) creates what is missing; V(absent) removes the pool, its empty VM directories and
        the collection's own V(.reflink/) metadata. V(absent) fails, changing nothing, if any image
        file (pins included) or any file that is not part of a pool is left in it, or if O(path) is a symlink
        (give the pool's real path).
    type: str
    choices: [present, absent]
    default: present
  require_reflink:
    description:
      - Refuse (with O(state=present)) a filesystem where a reflink probe fails. Without reflinks every
        clone becomes a full (sparse) copy, which costs time and space.
    type: bool
    default: true
  lock_timeout:
    description: Seconds to wait for the pool lock held by other tasks, then fail naming the holder (0 or more).
    type: int
    default: 60
attributes:
  diff_mode:
    description: Returns the pool's directories before and after.
seealso:
  - module: dom0.reflink.reflink_volume
  - module: dom0.reflink.reflink_info
author:
  - dom0.reflink developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Set up a pool on a btrfs filesystem
  dom0.reflink.reflink_pool:
    path: /var/lib/vm-pool

- name: Accept a filesystem without reflinks (every clone becomes a sparse copy)
  dom0.reflink.reflink_pool:
    path: /srv/ext4-pool
    require_reflink: false

- name: Check Qubes OS' default pool without changing it
  dom0.reflink.reflink_pool:
    path: /var/lib/qubes
  check_mode: true
  register: qubes_pool

- name: Remove an empty pool
  dom0.reflink.reflink_pool:
    path: /var/lib/vm-pool
    state: absent
"""

RETURN = r"""
actions:
  description: Each step done (planned, in check mode), in plain words.
  returned: always
  type: list
  elements: str
  sample: ["create pool directory /var/lib/vm-pool", "create /var/lib/vm-pool/appvms/"]
pool:
  description: The pool's filesystem (for O(state=absent), the filesystem it was on).
  returned: always
  type: dict
  contains:
    path:
      description: The pool directory as given.
      type: str
      sample: /var/lib/vm-pool
    fstype:
      description: Filesystem type, from the mount table.
      type: str
      sample: btrfs
    reflink:
      description:
        - Whether the reflink probe succeeded; null when it was not run (O(state=absent)), or when an existing
          pool's file system is full, so that the probe's small test file did not fit (a warning says so).
      type: bool
      sample: true
    size:
      description: Size of the filesystem in bytes.
      type: int
      sample: 268435456000
    usage:
      description: Bytes in use on the filesystem.
      type: int
      sample: 53687091200
diff:
  description: With C(--diff), the pool's directories before and after.
  returned: when diff mode is on
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dom0.reflink.plugins.module_utils._tasks.arguments import LOCK_TIMEOUT, QUBES_XML, ArgumentSpec
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.pool import run_pool_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import main_wrapper


def main() -> None:
    module = ArgumentSpec({
        "path": {"type": "path", "required": True, "aliases": ["pool"]},
        "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        "require_reflink": {"type": "bool", "default": True},
    }).merge(LOCK_TIMEOUT).merge(QUBES_XML).create_module(AnsibleModule)
    main_wrapper(module, lambda: run_pool_task(module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()

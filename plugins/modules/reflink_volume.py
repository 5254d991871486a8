#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: reflink_volume
short_description: Create, resize, commit or remove a volume image in a reflink pool
version_added: 0.1.0
description:
  - Manages an origin volume (one that keeps its data while the VM is stopped, such as a VM's
    V(private) volume or a template's V(root)) in a C(file-reflink) pool, with exactly the files
    Qubes OS' qubesd uses, so that both can work on the same pool; or, with O(volumes), many of
    them in one task.
  - The module reads the volume's files, plans the file operations that bring it to the wanted
    state, and runs them; RV(actions) lists each of them in plain words.
  - Every step is atomic and durable (new files are written unnamed or under a tempfile, fsynced,
    and renamed into place; directories are fsynced). A run that is interrupted leaves a state
    that the next run of the same task completes.
extends_documentation_fragment:
  - dom0.reflink.volume
  - dom0.reflink.qubes_xml
  - dom0.reflink.attributes
options:
  vid:
    required: false
  volumes:
    description:
      - Many volumes in one task, instead of O(vid) (exactly one of the two is required). One module run
        costs about 0.3 s, while checking a volume that needs nothing takes a millisecond, so a whole
        pool is best reconciled with one such task rather than a loop.
      - Each item has a O(volumes[].vid) and any of O(volumes[].state), O(volumes[].size),
        O(volumes[].allow_shrink) and O(volumes[].revisions_to_keep). A key that is omitted or set to
        V(null) takes the task's own value (O(state), O(size), ...). O(remove_pins) is the task's.
      - Every item is planned before anything changes, each against what the items before it leave
        (a VM directory one of them creates, say). A refusal of any item (a bad vid, a shrink not
        allowed, a volume in use, a size too large, a vid given twice, an unknown key) fails the task
        naming the item, and nothing changes.
      - The items are then executed in the order given. An error while executing (a full disk, a VM
        started meanwhile) stops the task there; RV(volumes) and RV(actions) report what the items
        before it did, and a rerun of the task finishes the job.
      - The pool lock is taken once, then the volume locks in vid order, so two such tasks that share
        volumes wait for each other and never deadlock. O(lock_timeout) is for all locks together.
      - V([]) changes nothing.
    type: list
    elements: dict
    version_added: 0.2.0
    suboptions:
      vid:
        description: The volume id, as O(vid).
        type: str
        required: true
      state:
        description: As O(state); default the task's O(state).
        type: str
        choices: [present, absent, stopped]
      size:
        description: As O(size); default the task's O(size).
        type: raw
      allow_shrink:
        description: As O(allow_shrink); default the task's O(allow_shrink).
        type: bool
      revisions_to_keep:
        description: As O(revisions_to_keep); default the task's O(revisions_to_keep).
        type: int
  state:
    description:
      - V(present) creates the volume if it does not exist (a sparse image of O(size) and its
        precache), after removing every leftover file of an earlier volume with the same O(vid)
        (its pins excepted).
        On an existing volume a different O(size) resizes it, and a missing or stale precache
        is made anew.
      - V(absent) removes every file of the volume, then its VM directory if that is left empty.
        Refused while the volume is in use, or while a process holds its import image open (qubesd's
        Import writer). The volume's pins (see M(dom0.reflink.reflink_pin)) and
        so its VM directory stay unless O(remove_pins=true); RV(kept_pins) lists them.
      - V(stopped) commits a pending dirty image as qubesd does when a VM stops (the old clean
        image becomes a revision, old revisions beyond O(revisions_to_keep) are removed, the
        dirty image becomes the clean image, a new precache is made). Use it to repair a volume
        whose VM halted without qubesd committing it. Refused while the VM runs.
    type: str
    choices: [present, absent, stopped]
    default: present
  size:
    description:
      - Size of the volume, required to create it. Bytes as an integer, or a number with a
        binary unit (V(K), V(M), V(G), V(T) or V(KiB), V(MiB), V(GiB), V(TiB), any case),
        for example V(20G), V(512MiB), V(1.5G) (rounded down to a whole byte).
      - On an existing volume, a larger size grows it. A stopped volume gets a new image (a
        reflink of the old one, extended), so a backup reading the old image is not disturbed.
        A running volume (dirty image present) is extended in place and every loop device
        backed by it is told its new size.
      - A smaller size is refused unless O(allow_shrink=true).
      - With O(state=stopped) or O(state=absent) a size is not used, and the task warns about it. In
        O(volumes), only an item's own size is warned about, not the task's (a default for the other items).
    type: raw
  remove_pins:
    description:
      - With O(state=absent), remove the volume's pins too. Without it they stay, and a volume
        created later with the same O(vid) can be reverted to them.
    type: bool
    default: false
    version_added: 0.2.0
  allow_shrink:
    description:
      - Allow O(size) to be smaller than the volume. Data beyond the new end is lost, so
        shrink the filesystem inside the image first. A running volume is never shrunk.
    type: bool
    default: false
  revisions_to_keep:
    description:
      - How many old images to keep as revisions when a commit replaces the clean image
        (O(state=stopped)). V(0) keeps none. V(-1) means snapshots are disabled for the
        volume, so no revision and no precache are kept, and older revisions are removed.
      - Default is the volume's own value from qubes.xml (see O(qubes_xml)), else V(1), as qubesd's
        own commit does. The same value decides whether a new or resized volume gets a precache.
    type: int
seealso:
  - module: dom0.reflink.reflink_pool
  - module: dom0.reflink.reflink_import
  - module: dom0.reflink.reflink_info
author:
  - dom0.reflink developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Create a 2 GiB private volume for the VM work
  dom0.reflink.reflink_volume:
    pool: /var/lib/qubes
    vid: appvms/work/private
    size: 2G

- name: Grow it to 20 GiB (in place if the VM is running)
  dom0.reflink.reflink_volume:
    pool: /var/lib/qubes
    vid: appvms/work/private
    size: 20GiB

- name: Shrink it, after the filesystem inside has been shrunk
  dom0.reflink.reflink_volume:
    pool: /var/lib/qubes
    vid: appvms/work/private
    size: 10G
    allow_shrink: true

- name: Commit the dirty image a crashed VM left, keeping three revisions
  dom0.reflink.reflink_volume:
    pool: /var/lib/qubes
    vid: vm-templates/debian-12/root
    state: stopped
    revisions_to_keep: 3

- name: Remove a volume and every revision of it
  dom0.reflink.reflink_volume:
    pool: /var/lib/qubes
    vid: appvms/old/private
    state: absent

- name: Reconcile many volumes in one task (planned first; a bad item changes nothing)
  dom0.reflink.reflink_volume:
    pool: /var/lib/qubes
    size: 2G
    volumes:
      - vid: appvms/work/private
        size: 20G
      - vid: appvms/mail/private
      - vid: appvms/old/private
        state: absent
  register: reconciled

- name: Show what each volume went through
  ansible.builtin.debug:
    msg: "{{ reconciled.volumes | items2dict(key_name='vid', value_name='actions') }}"
"""

RETURN = r"""
actions:
  description:
    - Each file operation done (planned, in check mode), in order, in plain words.
    - With O(volumes), those of all items, in the order they ran.
  returned: always
  type: list
  elements: str
  sample:
    - "create VM directory appvms/work"
    - "create sparse image appvms/work/private.img of 2147483648 bytes"
    - "refresh precache: appvms/work/private-precache.img from appvms/work/private.img (reflink)"
volumes:
  description:
    - With O(volumes), one dict per item in the order given, each the same dict as RV(volume)
      plus the keys below. When the task fails while executing, the items done before the failing one.
  returned: when O(volumes) is given
  type: list
  elements: dict
  version_added: 0.2.0
  contains:
    changed:
      description: Whether this item changed (would change, in check mode) anything.
      type: bool
      sample: true
    actions:
      description: The file operations of this item, as RV(actions).
      type: list
      elements: str
    kept_pins:
      description: For an item with state V(absent), as RV(kept_pins).
      type: list
      elements: str
volume:
  description: The volume after the task (as it would be, in check mode).
  returned: when O(vid) is given
  type: dict
  contains:
    vid:
      description: The volume id.
      type: str
      sample: appvms/work/private
    image:
      description: Path of the clean image.
      type: str
      sample: /var/lib/qubes/appvms/work/private.img
    size:
      description: Size in bytes, from the dirty image if there is one, else from the clean image; 0 when absent.
      type: int
      sample: 2147483648
    usage:
      description: Bytes allocated on disk for that image (extents shared with revisions are counted in full).
      type: int
      sample: 1048576
    revisions:
      description: Revisions, oldest first.
      type: list
      elements: dict
      contains:
        id:
          description: Revision number.
          type: int
        timestamp:
          description: Modification time (UTC) of the clean image that became this revision.
          type: str
          sample: "2026-11-26T03:40:59Z"
    state:
      description:
        - V(absent), V(stopped), V(running) (a loop device or qubesd's running-state file says so),
          or V(dirty) (halted with a commit pending).
      type: str
      sample: stopped
    in_use:
      description: Whether the volume is in use (see RV(volume.in_use_reasons)).
      type: bool
      sample: false
    in_use_reasons:
      description: Why the volume is in use, in plain words.
      type: list
      elements: str
      sample: []
    precache:
      description: V(fresh), V(stale) or V(missing).
      type: str
      sample: fresh
    pins:
      description: The volume's pins (see M(dom0.reflink.reflink_pin)), sorted by name.
      type: list
      elements: dict
      version_added: 0.2.0
      contains:
        name:
          description: The pin's name.
          type: str
          sample: before-upgrade
        size:
          description: Size of the pinned image in bytes.
          type: int
          sample: 2147483648
        timestamp:
          description: The time of the pinned data (UTC), the pin file's modification time.
          type: str
          sample: "2026-11-26T03:40:59Z"
kept_pins:
  description:
    - With O(state=absent), the names of the pins that stayed (all of them without O(remove_pins)).
  returned: when O(state=absent)
  type: list
  elements: str
  sample: [before-upgrade]
  version_added: 0.2.0
diff:
  description:
    - With C(--diff), the volume's files and revision ids before and after.
    - With O(volumes), C(before) and C(after) map each item's vid to the same.
  returned: when diff mode is on
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dom0.reflink.plugins.module_utils._tasks.arguments import VOLUME_TASK, ArgumentSpec
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import main_wrapper
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.volume import run_volume_task


def main() -> None:
    module = VOLUME_TASK.merge(ArgumentSpec({
        "vid": {"type": "str"},
        # Items are checked by run_volume_task, not by Ansible's suboptions (see _tasks/volume.py).
        "volumes": {"type": "list", "elements": "dict"},
        "state": {"type": "str", "default": "present", "choices": ["present", "absent", "stopped"]},
        "size": {"type": "raw"},
        "allow_shrink": {"type": "bool", "default": False},
        "remove_pins": {"type": "bool", "default": False},
        "revisions_to_keep": {"type": "int"},
    }, mutually_exclusive=[("vid", "volumes")], required_one_of=[("vid", "volumes")])).create_module(AnsibleModule)
    main_wrapper(module, lambda: run_volume_task(module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: reflink_pin
short_description: Keep a named copy of a volume's image that no commit or pruning removes
version_added: 0.2.0
description:
  - A pin is a named copy of one image of a volume (its clean image or one of its revisions),
    kept in the file C(<vid>.img.pin-<name>) next to the volume's images. Commits and qubesd's
    pruning of revisions, reverts, M(dom0.reflink.reflink_gc) and re-creating the volume leave it
    alone; only this module with O(state=absent), or M(dom0.reflink.reflink_volume) with
    O(dom0.reflink.reflink_volume#module:remove_pins=true), removes it.
  - A pin is a new file (a reflink, or a sparse copy where the filesystem cannot reflink), written
    under a tempfile, flushed and renamed into place. Its modification time is the time of the
    pinned data (the clean image's modification time, or the time in the revision's name).
  - Running the task again with the same content reports no change. A pin of that name with
    other content is refused unless O(force=true).
  - A running volume can be pinned, since qubesd never writes its clean image or revisions while it runs.
  - In check mode, the pin of a volume that does not exist yet (an earlier task of the same play creates it)
    is planned with a warning; a real run refuses a volume without such an image.
  - M(dom0.reflink.reflink_revert) with O(dom0.reflink.reflink_revert#module:pin) makes a pin's
    content the volume's clean image again.
extends_documentation_fragment:
  - dom0.reflink.volume
  - dom0.reflink.qubes_xml
  - dom0.reflink.attributes
options:
  name:
    description:
      - The pin's name, 1 to 40 characters of V(a-z), V(0-9), V(_) and V(-), starting with a letter
        or digit. Anything else fails the task before anything changes.
    type: str
    required: true
  revision:
    description:
      - What to pin. V(clean), the committed image; V(latest), the newest revision; or a revision
        id (an integer, as M(dom0.reflink.reflink_info) lists them).
      - Refused when the volume has no such image (a running volume with C(revisions_to_keep=-1)
        has no clean image).
    type: raw
    default: clean
  state:
    description:
      - V(present) makes the pin (or leaves it when it already holds that content).
      - V(absent) removes the pin; nothing else of the volume is touched.
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - Replace a pin of this name that holds other content, atomically (the old pin stays until
        the new one is complete). Without it, such a pin is refused.
    type: bool
    default: false
seealso:
  - module: dom0.reflink.reflink_revert
  - module: dom0.reflink.reflink_info
author:
  - dom0.reflink developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Pin the work qube's private volume before trying something risky
  dom0.reflink.reflink_pin:
    pool: /var/lib/qubes
    vid: appvms/work/private
    name: before-upgrade

- name: Pin the image the last commit replaced (the newest revision)
  dom0.reflink.reflink_pin:
    pool: /var/lib/qubes
    vid: vm-templates/debian-12/root
    name: last-good
    revision: latest

- name: Move a pin to the current image
  dom0.reflink.reflink_pin:
    pool: /var/lib/qubes
    vid: appvms/work/private
    name: known-good
    force: true

- name: Remove the pin once it is no longer needed
  dom0.reflink.reflink_pin:
    pool: /var/lib/qubes
    vid: appvms/work/private
    name: before-upgrade
    state: absent
"""

RETURN = r"""
actions:
  description: Each file operation done (planned, in check mode), in order, in plain words.
  returned: always
  type: list
  elements: str
  sample:
    - "pin before-upgrade (clean): appvms/work/private.img.pin-before-upgrade from appvms/work/private.img (reflink)"
pin:
  description: The pin after the task; null after O(state=absent).
  returned: always
  type: dict
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
    source:
      description: What was pinned, V(clean) or V(revision <id>).
      type: str
      sample: clean
volume:
  description:
    - The volume after the task, with the keys described in M(dom0.reflink.reflink_volume); its
      C(pins) lists every pin of the volume.
  returned: always
  type: dict
diff:
  description:
    - With C(--diff), the volume's files (pins included) and revision ids before and after.
    - A replacement with O(force=true) also shows the pin, under C(pin), before and after.
  returned: when diff mode is on
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dom0.reflink.plugins.module_utils._tasks.arguments import VOLUME_TASK, ArgumentSpec
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.pin import run_pin_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import main_wrapper


def main() -> None:
    module = VOLUME_TASK.merge(ArgumentSpec({
        "name": {"type": "str", "required": True},
        "revision": {"type": "raw", "default": "clean"},
        "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        "force": {"type": "bool", "default": False},
    })).create_module(AnsibleModule)
    main_wrapper(module, lambda: run_pin_task(module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()

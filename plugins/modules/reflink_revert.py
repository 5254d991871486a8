#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: reflink_revert
short_description: Revert a volume to one of its revisions or pins
version_added: 0.1.0
description:
  - Makes an older image of a volume (a revision, kept by commits) its clean image again, as
    qubesd's revert does. The current clean image first becomes a new revision, so nothing is
    lost; revisions are not pruned.
  - The reverted-to revision disappears as a revision (it has become the clean image). The module
    records the revert on the clean image (an extended attribute, which any later commit drops
    with the old inode), so running the same task again reports no change. This holds for
    O(revision=latest) too; to go further back, name a revision id.
  - With O(pin), the content of a pin (see M(dom0.reflink.reflink_pin)) becomes the clean image, as a
    new image cloned from the pin (or copied where the filesystem cannot reflink) and renamed over
    the clean image. The current clean image first becomes a revision, as in every revert, and the pin
    stays. Running the same task again reports no change.
extends_documentation_fragment:
  - dom0.reflink.volume
  - dom0.reflink.qubes_xml
  - dom0.reflink.attributes
options:
  revision:
    description:
      - The revision id (an integer, as M(dom0.reflink.reflink_info) lists them) or V(latest) for the newest revision.
      - Without it and without O(pin), V(latest).
      - Mutually exclusive with O(pin).
    type: raw
  pin:
    description:
      - The name of a pin of the volume whose content becomes the clean image.
      - Mutually exclusive with O(revision).
    type: str
    version_added: 0.2.0
  discard_dirty:
    description:
      - A halted volume with a dirty image holds uncommitted data and is refused. With V(true) the
        dirty image is removed first (reported as an action) and the revert goes ahead.
      - A running volume is always refused.
    type: bool
    default: false
seealso:
  - module: dom0.reflink.reflink_volume
  - module: dom0.reflink.reflink_info
author:
  - dom0.reflink developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Undo the last change of a template's root volume
  dom0.reflink.reflink_revert:
    pool: /var/lib/qubes
    vid: vm-templates/debian-12/root

- name: Find the revisions of a volume
  dom0.reflink.reflink_info:
    pool: /var/lib/qubes
    vids: [appvms/work/private]
  register: work_info

- name: Revert to the oldest one, dropping what a crashed VM left uncommitted
  dom0.reflink.reflink_revert:
    pool: /var/lib/qubes
    vid: appvms/work/private
    revision: "{{ work_info.volumes[0].revisions[0].id }}"
    discard_dirty: true

- name: Back to the state pinned before an experiment (the pin stays)
  dom0.reflink.reflink_revert:
    pool: /var/lib/qubes
    vid: appvms/work/private
    pin: before-upgrade
"""

RETURN = r"""
actions:
  description: Each file operation done (planned, in check mode), in order, in plain words.
  returned: always
  type: list
  elements: str
  sample:
    - "keep the current image as a revision: appvms/work/private.img.4@2026-11-26T03:40:59Z from appvms/work/private.img (reflink)"
    - "remove appvms/work/private-precache.img (the precache is about to go stale)"
    - "mark appvms/work/private.img.3@2026-11-25T21:02:11Z as revision 3 restored"
    - "revert to revision 3: rename appvms/work/private.img.3@2026-11-25T21:02:11Z to appvms/work/private.img"
    - "refresh precache: appvms/work/private-precache.img from appvms/work/private.img (reflink)"
volume:
  description: The volume after the task, with the keys described in M(dom0.reflink.reflink_volume).
  returned: always
  type: dict
diff:
  description: With C(--diff), the volume's files and revision ids before and after.
  returned: when diff mode is on
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dom0.reflink.plugins.module_utils._engine.file_actions import read_revert_marker
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import parse_revision
from ansible_collections.dom0.reflink.plugins.module_utils._plans.pins import PinPlanner, check_pin_name
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import (
    main_wrapper,
    run_volume_task,
    volume_argument_spec,
)


def main():
    module = AnsibleModule(
        argument_spec=volume_argument_spec(
            revision={"type": "raw"},
            pin={"type": "str"},
            discard_dirty={"type": "bool", "default": False},
        ),
        mutually_exclusive=[("revision", "pin")],
        supports_check_mode=True,
    )
    params = module.params

    def work():
        pin = None if params["pin"] is None else check_pin_name(params["pin"])
        revision = parse_revision("latest" if params["revision"] is None else params["revision"])
        target = "pin %s" % pin if pin is not None else revision

        def plan(planner, context):
            workspace = context["workspace"]
            marker = None
            if planner.files.clean is not None:
                marker = read_revert_marker(workspace.vm_dir, planner.vid.clean)
            if pin is not None:
                return PinPlanner(planner).revert(pin, params["discard_dirty"], marker)
            return planner.revert(revision, params["discard_dirty"], marker)

        return run_volume_task(params, module.check_mode, module._diff,
                               "reflink_revert %s to %s" % (params["vid"], target), plan, changes="revert")

    main_wrapper(module, work)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: reflink_pin
short_description: Keep a named copy of a volume's image that no commit or pruning removes, or pins by the calendar
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
  - With O(schedule), the module keeps pins by the calendar instead, for one volume (O(vid)) or many
    (O(vids)); see O(schedule). qubesd prunes revisions by count at every VM stop, so a VM restarted a
    few times has lost every older revision; a nightly run of this (the role C(dom0.reflink.maintenance)
    does it) keeps so many hourly, daily, weekly, monthly and yearly states, as snapshot tools do.
extends_documentation_fragment:
  - dom0.reflink.volume
  - dom0.reflink.qubes_xml
  - dom0.reflink.attributes
options:
  vid:
    description:
      - The volume. Exactly one of O(vid) and O(vids) is required; O(vids) only with O(schedule).
    required: false
  vids:
    description:
      - With O(schedule), the volumes whose scheduled pins to keep, instead of O(vid). A vid given twice
        counts once; V([]) means no volume (nothing is done), never every volume.
      - Every volume is planned before any pin is made or removed; a refusal (a bad vid, a volume that
        does not exist, one that qubes.xml lists as a snapshot or volatile volume) fails the task naming
        the volume, and nothing changes. The volume locks are taken in vid order.
    type: list
    elements: str
  name:
    description:
      - The pin's name, 1 to 40 characters of V(a-z), V(0-9), V(_) and V(-), starting with a letter
        or digit. Anything else fails the task before anything changes.
      - Required, unless O(schedule) is given (then it must not be).
    type: str
  revision:
    description:
      - What to pin. V(clean), the committed image; V(latest), the newest revision; or a revision
        id (an integer, as M(dom0.reflink.reflink_info) lists them).
      - Refused when the volume has no such image (a running volume with C(revisions_to_keep=-1)
        has no clean image). Not with O(schedule).
    type: raw
    default: clean
  state:
    description:
      - V(present) makes the pin (or leaves it when it already holds that content).
      - V(absent) removes the pin; nothing else of the volume is touched. Not with O(schedule).
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - Replace a pin of this name that holds other content, atomically (the old pin stays until
        the new one is complete). Without it, such a pin is refused. Not with O(schedule).
    type: bool
    default: false
  schedule:
    description:
      - Keep pins by the calendar, how many of each class, for example seven daily, four weekly and six monthly
        pins (see the examples). The keys are V(hourly), V(daily), V(weekly), V(monthly) and V(yearly), each a non-negative integer;
        a missing key is 0. An unknown key, a bad value or an empty dict fails the task and changes
        nothing (an empty dict is most likely an empty variable; to remove every scheduled pin, give a
        class as 0).
      - The candidates of a volume are its clean image (at its modification time), its revisions (at the
        time in their names, the data's time) and its scheduled pins (at the time in their names). For each
        class, the periods that hold a candidate are taken newest first (UTC; hours, days from midnight,
        ISO weeks from Monday, months, years), and the newest candidate of each of the first N periods is
        selected. Each selected candidate is kept as a pin named C(auto-<YYYYMMDD>t<HHMMSS>) of its time
        (made as any pin, a new file whose modification time is the data's time), and a scheduled pin that no
        period selects any more is removed. One pin serves every class that selects it.
      - Once qubesd has pruned a revision, its scheduled pin still stands for that time, so the calendar
        reaches back further than the revisions do.
      - Only pins named exactly C(auto-<YYYYMMDD>t<HHMMSS>) (a real date and time) are scheduled pins.
        Pins of any other name (V(automatic), V(auto-before-upgrade), V(before-upgrade)) are never touched.
      - New pins are made before old ones are removed. A running volume is pinned as a stopped one. A
        volume with no clean image now (a VM with C(revisions_to_keep=-1) is running) has fewer candidates,
        so no pin is made of its current data, and the task warns; its revisions and pins are planned as
        usual. A volume that does not exist is refused (in check mode it is planned with nothing to do and a
        warning). Running the task again with nothing new changes nothing.
      - Not with O(name), O(revision), O(state) or O(force).
    type: dict
notes:
  - How O(schedule) differs from the snapshot tools it learnt from, so that no expectation carries over
    that does not hold. snapper's timeline and btrbk keep the first (oldest) snapshot of a period; this
    keeps the newest, so the current period's pin follows the latest data until the period is over.
    snapper and btrbk count in local time, and btrbk's weeks start on a day of its configuration; these
    periods are UTC with ISO weeks, the same pins whatever the host's time zone. btrbk and sanoid count
    periods back from now (sanoid also prunes by age); this counts the periods that hold a candidate, as
    snapper does, so a volume not used for a month keeps its last N days instead of losing them. sanoid
    takes a snapshot per class; here one pin serves every class that selects it. There is no minimum
    age (snapper's TIMELINE_MIN_AGE, btrbk's preserve_min).
  - A scheduled pin counts at the time in its name, not at its modification time. A copy or restore that
    resets modification times would otherwise make many pins look alike, and the schedule would remove
    them; such a pin is reported in a warning (its modification time differs from its name), and kept.
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

- name: Nightly, keep a week of days, a month of weeks and half a year of months of two volumes
  dom0.reflink.reflink_pin:
    pool: /var/lib/qubes
    vids:
      - appvms/work/private
      - vm-templates/debian-12/root
    schedule:
      daily: 7
      weekly: 4
      monthly: 6
  register: scheduled

- name: Show what the schedule made and removed
  ansible.builtin.debug:
    msg: "{{ scheduled.volumes | items2dict(key_name='vid', value_name='pinned') }}"
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
  returned: without O(schedule)
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
    - With O(schedule) (and O(vid)), the same dict as the one item of RV(volumes).
  returned: with O(vid)
  type: dict
volumes:
  description:
    - With O(schedule), one dict per volume in the order given (a vid given twice once), each the volume
      after the task, with the keys described in M(dom0.reflink.reflink_volume), and the keys below.
  returned: with O(schedule)
  type: list
  elements: dict
  contains:
    changed:
      description: Whether a pin of this volume was made or removed.
      type: bool
    actions:
      description: Each file operation done to this volume (planned, in check mode).
      type: list
      elements: str
    pinned:
      description: The scheduled pins made, newest first.
      type: list
      elements: str
      sample: [auto-20261126t034059]
    unpinned:
      description: The scheduled pins removed (no period selects them any more), by name.
      type: list
      elements: str
      sample: [auto-20261019t081502]
    kept:
      description: The scheduled pins that stay, by name.
      type: list
      elements: str
      sample: [auto-20261124t190312, auto-20261125t221045]
    periods:
      description: For each scheduled pin made or kept, the periods that select it.
      type: dict
      sample: {auto-20261126t034059: [daily 2026-11-26, weekly 2026-W48, monthly 2026-11]}
diff:
  description:
    - With C(--diff), the volume's files (pins included) and revision ids before and after.
    - With O(schedule), C(before) and C(after) map each vid to that.
    - A replacement with O(force=true) also shows the pin, under C(pin), before and after.
  returned: when diff mode is on
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dom0.reflink.plugins.module_utils._tasks.arguments import VOLUME_TASK, ArgumentSpec
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.pin import run_pin_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.pin_schedule import run_pin_schedule_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import main_wrapper


def main() -> None:
    module = VOLUME_TASK.merge(ArgumentSpec({
        "vid": {"type": "str"},
        "vids": {"type": "list", "elements": "str"},
        "name": {"type": "str"},
        "revision": {"type": "raw", "default": "clean"},
        "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        "force": {"type": "bool", "default": False},
        "schedule": {"type": "dict"},
    }, mutually_exclusive=[("vid", "vids"), ("schedule", "name"), ("schedule", "revision"), ("schedule", "state"),
                           ("schedule", "force")],
        required_one_of=[("vid", "vids"), ("name", "schedule")],
        required_by={"vids": "schedule"})).create_module(AnsibleModule)
    if module.params["schedule"] is not None:
        main_wrapper(module, lambda: run_pin_schedule_task(module.params, module.check_mode, module._diff))
    else:
        main_wrapper(module, lambda: run_pin_task(module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()

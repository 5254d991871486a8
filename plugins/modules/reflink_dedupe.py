#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: reflink_dedupe
short_description: Make identical data of a reflink pool's images share one copy again
version_added: 0.2.0
description:
  - A backup restore, a copy across file systems, a C(cp) fallback or a defragmentation leaves images that
    hold the same data without sharing it. This module finds identical blocks at the same offsets of a
    volume's images (clean image, revisions, pins, precache) and, with O(scope=pool), of images of different
    volumes (a template's root and the roots restored or copied from it), and makes them share one copy.
  - "Only with C(FIDEDUPERANGE): the kernel compares the bytes under its lock and remaps a range only if they
    are equal, so no image's content changes, nor its size, mode, inode, mtime or ctime (qubesd's precache
    stays fresh, revision timestamps hold), and holes stay holes."
  - Ranges that already share the same blocks are never read again (the extent maps say so), so a rerun reads
    little and changes nothing.
  - On btrfs an extent is freed only when nothing references any part of it. Where deduping leaves an extent
    of which only a small part is still referenced, that part is written once more into a new extent (through
    an unnamed scratch file, then C(FIDEDUPERANGE) again, so that content and mtime stay), and the old extent
    is freed. RV(rewritten_bytes) says how much was written; RV(reclaimed_bytes) is net of it.
  - "Left alone, and listed in RV(skipped) with the reason: a dirty image (a running VM writes it, or a commit
    is pending), an import's staging file, a revision whose number is not an integer, a file a loop device is
    backed by or another process holds open, a second name of a file (hard link), every file of a volume that
    qubes.xml lists as C(snapshot) or C(volatile) (qubesd makes or throws away those files at each start), and
    anything at an image's name that is not a regular file: a symlink, a FIFO or a device is never opened, and
    a VM directory that is a symlink is never entered."
  - It takes the pool lock shared and the lock of each volume, in vid order. Two dedupes, a dedupe and an
    import, volume change or pin of one of its volumes, and a dedupe and M(dom0.reflink.reflink_gc) (which
    takes the pool lock exclusive) wait for each other.
  - On a file system that cannot share blocks (ext4), nothing is changed. The task fails with a clear message
    when O(vids) names volumes, and when it does not (a nightly run over the whole pool) it succeeds with that
    message as a warning, reporting no change.
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
      - The volumes to dedupe (V(appvms/<vm>/<volume>) or V(vm-templates/<vm>/<volume>)).
      - Without it, every volume of the pool. An empty list selects no volume (nothing is done), never all.
    type: list
    elements: str
  scope:
    description:
      - V(volume) makes each volume's images share with each other only. V(pool) also lets images of different
        volumes (of O(vids)) share, block by block at the same offsets.
    type: str
    choices: [volume, pool]
    default: volume
  lock_timeout:
    description: Seconds to wait for the pool lock and the volume locks, then fail naming the holder.
    type: int
    default: 60
attributes:
  check_mode:
    description:
      - Check mode reads and compares the data as a real run does and returns the same RV(actions),
        RV(deduped_bytes) and RV(volumes); RV(reclaimed_bytes) is predicted from the extent maps before and the
        planned sharing (it equals the real run's within 1 MiB + 1 %). Nothing is changed.
  diff_mode:
    description:
      - Per volume, before and after, the disk bytes its images take together (C(allocated)) and the bytes that
        removing the whole volume would free (C(exclusive)), as M(dom0.reflink.reflink_info) with C(space) counts
        them over the images this module may change.
notes:
  - "RV(deduped_bytes) counts data that was stored in more than one copy and now shares one: the bytes of each
    copy made to share count once, however many images referenced that copy (an image and its precache, which
    already shared, are one copy). On XFS it is the space freed; on btrfs RV(reclaimed_bytes) also counts whole
    extents freed or kept."
  - "RV(reclaimed_bytes) is measured, not estimated: the space accounting of M(dom0.reflink.reflink_info)
    (btrfs's extent tree, every reference; FIEMAP elsewhere) is read over the images before and after, and the
    freed units are counted; it equals the change of the file system's free space within 1 MiB + 1 %, when
    nothing else writes to the pool meanwhile. Metadata is not counted. On XFS a block held by two images of the
    pool and by a file outside it counts as freed when both images stop using it (FIEMAP cannot tell; see
    M(dom0.reflink.reflink_info))."
  - The speed, the space freed against the ideal and against C(duperemove), and the cost of a rerun are measured
    in C(docs/performance.md) (benchmark case 8).
seealso:
  - module: dom0.reflink.reflink_info
  - module: dom0.reflink.reflink_gc
author:
  - dom0.reflink developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Give a restored pool its sharing back, each volume's images with each other
  dom0.reflink.reflink_dedupe:
    pool: /var/lib/qubes
  register: dedupe

- name: A template's root and the roots copied from it share again
  dom0.reflink.reflink_dedupe:
    pool: /var/lib/qubes
    vids:
      - vm-templates/debian-12/root
      - vm-templates/debian-12-work/root
      - vm-templates/debian-12-dev/root
    scope: pool

- name: What a dedupe of the whole pool would free, without changing anything
  dom0.reflink.reflink_dedupe:
    pool: /var/lib/qubes
    scope: pool
  check_mode: true
  register: dedupe_plan

- name: Show it
  ansible.builtin.debug:
    msg: "{{ dedupe_plan.reclaimed_bytes | human_readable }} would be freed"
"""

RETURN = r"""
actions:
  description: Each image that now shares data (would, in check mode) with the image it shares it with, in plain words.
  returned: always
  type: list
  elements: str
  sample: ["appvms/work/private.img.1@2026-01-02T03:04:05Z: 64 MiB (67108864 bytes) now share the blocks of
    appvms/work/private.img"]
deduped_bytes:
  description: Bytes of data copies that now share another copy's blocks and did not before (see the notes).
  returned: always
  type: int
reclaimed_bytes:
  description:
    - The space the file system got back (in check mode, would get back), measured over the images before and
      after (see the notes), net of RV(rewritten_bytes).
  returned: always
  type: int
rewritten_bytes:
  description: btrfs only (0 elsewhere) bytes written into new extents so that partly used extents are freed.
  returned: always
  type: int
bytes_read:
  description: Image data read to compare (and to rewrite); a rerun reads little.
  returned: always
  type: int
volumes:
  description: Per volume of O(vids) (or of the pool), sorted by vid.
  returned: always
  type: list
  elements: dict
  contains:
    vid:
      description: The volume id.
      type: str
    deduped_bytes:
      description: The volume's share of RV(deduped_bytes) (bytes of its images' copies that now share).
      type: int
    reclaimed_bytes:
      description:
        - The volume's share of RV(reclaimed_bytes) - the units freed that its images held (split evenly between
          volumes that held one together), less the new extents its images hold. The volumes' figures add up to
          RV(reclaimed_bytes).
      type: int
    rewritten_bytes:
      description: The volume's share of RV(rewritten_bytes).
      type: int
skipped:
  description: Each file left alone, with the reason (see the description), sorted by file.
  returned: always
  type: list
  elements: dict
  contains:
    file:
      description: Path relative to the pool.
      type: str
      sample: appvms/work/private-dirty.img
    reason:
      description: Why it was left alone.
      type: str
      sample: "the dirty image of a running VM (or of a commit pending): never touched"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dom0.reflink.plugins.module_utils._tasks.arguments import POOL_TASK, ArgumentSpec
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.dedupe import run_dedupe_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import main_wrapper


def main() -> None:
    module = POOL_TASK.merge(ArgumentSpec({
        "vids": {"type": "list", "elements": "str"},
        "scope": {"type": "str", "choices": ["volume", "pool"], "default": "volume"},
    })).create_module(AnsibleModule)
    main_wrapper(module, lambda: run_dedupe_task(module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()

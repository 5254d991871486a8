#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: reflink_import
short_description: Replace a volume's content by new data, staged and committed atomically
version_added: 0.1.0
description:
  - Writes the new data into the volume's import image (V(<volume>-import.img), which qubesd never
    attaches to a VM), then commits it the way qubesd commits a VM's changes when it stops. The
    current clean image becomes a revision, revisions beyond O(revisions_to_keep) are removed, the
    import image is renamed over the clean image, and a new precache is made. Until that rename
    the volume is untouched; after it, the new data is complete and on disk.
  - The data is cloned (FICLONE) when source and pool are on the same reflink filesystem, which
    takes milliseconds whatever the size; otherwise it is copied sparsely (holes and all-zero
    MiB chunks stay holes), unless O(fallback=never).
  - A copy must fit in the pool's free space. Where the plan can tell that a copy is needed (the source on
    another file system, a pool on a file system that cannot share blocks, a btrfs No_COW attribute on the
    source or the VM directory but not both), an import whose data (the source's data ranges, as
    SEEK_DATA/SEEK_HOLE report them, up to O(size)) is more than the free space fails before it changes
    anything, in check mode too, naming both numbers and the way out; the clone checks again before it copies.
    All-zero blocks of a source count unless they are holes (C(fallocate --dig-holes) makes them holes); a
    block device's data is not known without reading it, so it is not checked. On a file system without
    reflinks the commit's precache (and revision) are copies too, each checked before it is written.
  - A copy where a reflink was expected (source and pool on one file system that shares blocks) adds a
    warning naming the likely cause, usually btrfs's No_COW attribute (C(chattr +C)) on the source or on
    the VM directory, and the way out (C(chattr -C) on the directory and import again).
  - "One shot: O(src) or O(src_vid). Two phases: O(state=begin) creates an empty import image of
    O(size) and returns its path in RV(import_image) for another program to write, then
    O(state=commit) or O(state=abort) ends it, each as a separate task."
  - Importing into a volume that does not exist creates it (the import becomes its first clean
    image; leftovers of an earlier volume with the same O(vid) are removed first).
  - Refused while the volume is in use, and while a process holds its import image open (qubesd's Import
    writer keeps it open while data streams in). Every step that would replace or remove the import image
    then fails naming the process, and nothing changes.
extends_documentation_fragment:
  - dom0.reflink.volume
  - dom0.reflink.qubes_xml
  - dom0.reflink.attributes
options:
  state:
    description:
      - V(present) imports O(src) or O(src_vid) (or, with neither, an all-zero image of O(size)) in one task.
      - V(begin) creates the import image of O(size) and records the import in the pool's journal
        (V(.reflink/imports/)); V(commit) checks the journal and the image (it exists, its size is the
        one begun unless O(size) is given) and commits it; V(abort) removes the image and the journal (and
        the VM directory when V(begin) made it and nothing else is in it).
        Each of them run again changes nothing.
      - qubesd deletes an uncommitted import image when the VM starts, or when the volume is created or
        removed; a commit then fails and says so, and V(begin) run again starts afresh (it replaces the
        stale journal). Every refusal names the step that gets out of it (V(commit), V(abort) or V(begin)).
      - A commit run again changes nothing, however long afterwards, once the O(size) and O(checksum) it is
        given match the committed image (a mismatch fails, naming the committed size or digest); the commit is remembered in an
        extended attribute on the clean image it made (and in the journal's record until
        M(dom0.reflink.reflink_gc) removes that after its O(dom0.reflink.reflink_gc#module:import_max_age)).
        The next commit of the volume (a VM's stop, an import, a revert) ends that. A rerun of the whole
        flow (begin, write, commit) is a new import; a playbook that may run it again should guard it
        (for example, only while M(dom0.reflink.reflink_info) reports the volume absent).
      - In check mode V(begin) records nothing; a V(commit) or V(abort) that follows it in the same
        check-mode run reports what it would do after a real begin, with a warning.
    type: str
    choices: [present, begin, commit, abort]
    default: present
  src:
    description:
      - A regular file or a block device on the managed host holding a raw image. Directories, FIFOs,
        sockets and character devices are refused, and so is an empty source (0 bytes), like O(size=0).
    type: path
  src_vid:
    description:
      - Another volume to import from, read through its clean image (a consistent image even while its
        VM runs), under a shared lock of that volume.
    type: str
  src_pool:
    description: The pool of O(src_vid); defaults to O(pool).
    type: path
  size:
    description:
      - The size of the result, in bytes or with a unit as in M(dom0.reflink.reflink_volume); by
        default the size of the source. A larger size adds zeros at the end; a smaller one cuts the data off.
      - Required for O(state=begin), and for O(state=present) without a source (clearing the volume).
    type: raw
  checksum:
    description:
      - V(sha256:<hex>) of the data to commit (of the whole image at its final size, holes read as zeros).
        It is checked on the staged image before the commit (and before a resize by O(size)); on a
        mismatch the task fails with both digests and the volume keeps its content. A one-shot import
        removes its staged image then; a two-phase V(commit) leaves the import image and its journal as
        they were, so that the data can be fixed and committed again, or aborted.
      - Computing it reads all data of the image (holes are not read).
    type: str
  force:
    description:
      - Without it, an import whose result has the size and bytes of the current clean image changes
        nothing. The comparison is as cheap as it can be. Sizes come first, then the files' extent maps (a
        reflink that neither side has rewritten is equal without reading a byte), and only then a read of
        both files where either has data.
      - With V(true) the import is always committed (and makes a revision).
    type: bool
    default: false
  revisions_to_keep:
    description:
      - How many old images to keep as revisions when the import is committed. V(0) keeps none; V(-1)
        (snapshots disabled) keeps no revision and no precache and removes older revisions.
      - Default is the volume's own value from qubes.xml (see O(qubes_xml)), else V(1), as
        C(qvm-volume import) does.
    type: int
  fallback:
    description:
      - V(errno) copies the data sparsely when a reflink is impossible (different filesystems, a
        filesystem without reflinks, a btrfs No_COW attribute on one side only), and only then, when the data
        fits in the free space (a copy the plan can foresee is refused while planning, in check mode too);
        any other error of the clone is reported.
      - V(never) fails instead of copying. A source from which no reflink into the pool is possible (another
        file system, or a pool that cannot share blocks) is refused while planning, in check mode too.
    type: str
    choices: [errno, never]
    default: errno
notes:
  - On btrfs and XFS a reflinked import costs no space until either side is rewritten.
seealso:
  - module: dom0.reflink.reflink_volume
  - module: dom0.reflink.reflink_revert
author:
  - dom0.reflink developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Import a template's root image shipped as a raw file
  dom0.reflink.reflink_import:
    pool: /var/lib/qubes
    vid: vm-templates/debian-12/root
    src: /var/tmp/debian-12-root.img
    checksum: "sha256:{{ root_image_sha256 }}"
    revisions_to_keep: 2

- name: Give a new VM a copy of another VM's private volume, at 20 GiB
  dom0.reflink.reflink_import:
    pool: /var/lib/qubes
    vid: appvms/work2/private
    src_vid: appvms/work/private
    size: 20G

- name: Clear a volume (an all-zero sparse image of 2 GiB)
  dom0.reflink.reflink_import:
    pool: /var/lib/qubes
    vid: appvms/scratch/private
    size: 2G
    force: true

- name: Begin an import that another program writes
  dom0.reflink.reflink_import:
    pool: /var/lib/qubes
    vid: appvms/work/private
    state: begin
    size: 10G
  register: begun

- name: Write the data
  ansible.builtin.command: qemu-img convert -O raw /var/tmp/work.qcow2 {{ begun.import_image }}
  changed_when: true

- name: Commit it
  dom0.reflink.reflink_import:
    pool: /var/lib/qubes
    vid: appvms/work/private
    state: commit
"""

RETURN = r"""
actions:
  description: Each file operation done (planned, in check mode), in order, in plain words.
  returned: always
  type: list
  elements: str
  sample:
    - "stage /var/tmp/debian-12-root.img in vm-templates/debian-12/root-import.img, size 10737418240 bytes (reflink)"
    - "keep the old image as a revision: vm-templates/debian-12/root.img.5@2026-11-26T03:40:59Z from vm-templates/debian-12/root.img (reflink)"
    - "commit: rename vm-templates/debian-12/root-import.img to vm-templates/debian-12/root.img"
import_image:
  description: Path of the import image when one exists after the task (after O(state=begin)), else null.
  returned: always
  type: str
  sample: /var/lib/qubes/appvms/work/private-import.img
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

from ansible_collections.dom0.reflink.plugins.module_utils._tasks.arguments import VOLUME_TASK, ArgumentSpec
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.imports import run_import_task
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import main_wrapper


def main() -> None:
    module = VOLUME_TASK.merge(ArgumentSpec({
        "state": {"type": "str", "default": "present", "choices": ["present", "begin", "commit", "abort"]},
        "src": {"type": "path"},
        "src_vid": {"type": "str"},
        "src_pool": {"type": "path"},
        "size": {"type": "raw"},
        "checksum": {"type": "str"},
        "force": {"type": "bool", "default": False},
        "revisions_to_keep": {"type": "int"},
        "fallback": {"type": "str", "default": "errno", "choices": ["errno", "never"]},
    }, mutually_exclusive=[["src", "src_vid"]], required_by={"src_pool": "src_vid"})).create_module(AnsibleModule)
    main_wrapper(module, lambda: run_import_task(module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The option of every module that says where qubesd's record of the pool is.
    DOCUMENTATION = r"""
options:
  qubes_xml:
    description:
      - Where to learn what qubesd knows about the pool. V(auto) reads V(/var/lib/qubes/qubes.xml) when
        that file exists (in dom0) and nothing otherwise; a path reads that file, which must then exist;
        V(none) reads nothing.
      - The file is only read, never written. One with a DOCTYPE or an entity declaration (qubesd writes
        neither) is refused, and so is a file that is not well-formed XML (a truncated one); the task then
        fails and changes nothing.
      - The pool is the C(file-reflink) pool whose C(dir_path) is O(pool) (the same path, or the same real
        path). Its name makes the in-use check exact (only qubesd's running-state file of that pool counts),
        and its volumes say, per vid, the VM, the kind (V(origin), V(snapshot), V(volatile),
        V(origin_snapshot)) and C(revisions_to_keep). Volume modules refuse to change a V(snapshot) or
        V(volatile) volume, whose files qubesd throws away when the VM starts.
      - When the file lists no C(file-reflink) pool at this path, nothing is known from it, and a
        running-state file of any pool name counts as "in use".
    type: str
    default: auto
    version_added: 0.2.0
"""

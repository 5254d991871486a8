# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build qubes.xml files shaped as qubesd writes them, for the tests.

qubesd writes booleans as Python's str() ("True"/"False"), every domain
property as ``<property name=...>text</property>`` under ``<properties>``,
and each domain's volumes as ``<volume .../>`` under ``<volume-config>``.
The helpers below lay out a dom0 with the usual VM classes.
"""

from __future__ import annotations

import dataclasses
from xml.sax.saxutils import quoteattr, escape


@dataclasses.dataclass
class Volume:
    name: str
    pool: str
    vid: str
    snap_on_start: bool
    save_on_stop: bool
    size: int = 2 * 1024 ** 3
    revisions_to_keep: int | None = None
    source: str | None = None
    rw: bool = True

    def xml(self):
        attributes = {"name": self.name, "pool": self.pool, "vid": self.vid}
        if self.revisions_to_keep is not None:
            attributes["revisions_to_keep"] = str(self.revisions_to_keep)
        attributes.update({"rw": str(self.rw), "save_on_stop": str(self.save_on_stop), "size": str(self.size),
                           "snap_on_start": str(self.snap_on_start)})
        if self.source is not None:
            attributes["source"] = self.source
        return "<volume %s/>" % " ".join("%s=%s" % (key, quoteattr(value)) for key, value in attributes.items())


@dataclasses.dataclass
class Domain:
    cls: str
    name: str
    volumes: list
    number: int = 0
    template: str | None = None

    def xml(self):
        lines = ['    <domain class="%s" id="domain-%d">' % (self.cls, self.number), "      <features/>",
                 "      <devices class=\"pci\"/>", "      <properties>",
                 '        <property name="name">%s</property>' % escape(self.name),
                 '        <property name="label">red</property>']
        if self.template:
            lines.append('        <property name="template" ref="%s"/>' % escape(self.template))
        lines += ["      </properties>", "      <tags/>", "      <volume-config>"]
        lines += ["        " + volume.xml() for volume in self.volumes]
        lines += ["      </volume-config>", "    </domain>"]
        return "\n".join(lines)


def template_vm(name, pool, keep=None, number=1):
    return Domain("TemplateVM", name, [
        Volume("root", pool, "vm-templates/%s/root" % name, False, True, revisions_to_keep=keep),
        Volume("private", pool, "vm-templates/%s/private" % name, False, True),
        Volume("volatile", pool, "vm-templates/%s/volatile" % name, False, False),
        Volume("kernel", "linux-kernel", "6.6.48-1.fc37", False, False, rw=False),
    ], number)


def app_vm(name, pool, template, private_keep=None, number=2, private_pool=None):
    return Domain("AppVM", name, [
        Volume("root", pool, "appvms/%s/root" % name, True, False, source="vm-templates/%s/root" % template,
               rw=False),
        Volume("private", private_pool or pool, "appvms/%s/private" % name, False, True,
               revisions_to_keep=private_keep),
        Volume("volatile", pool, "appvms/%s/volatile" % name, False, False),
        Volume("kernel", "linux-kernel", "6.6.48-1.fc37", False, False, rw=False),
    ], number, template)


def disp_vm(name, pool, template, dvm_template, number=3):
    # A DispVM's root and private are snapshots (of the template's root, of its dvm template's private).
    return Domain("DispVM", name, [
        Volume("root", pool, "appvms/%s/root" % name, True, False, source="vm-templates/%s/root" % template),
        Volume("private", pool, "appvms/%s/private" % name, True, False,
               source="appvms/%s/private" % dvm_template),
        Volume("volatile", pool, "appvms/%s/volatile" % name, False, False),
    ], number, dvm_template)


def qubes_xml(pools, domains):
    """The text of a qubes.xml; ``pools`` is a list of dicts of <pool> attributes (name, driver, dir_path...)."""
    lines = ["<?xml version='1.0' encoding='UTF-8'?>", '<qubes version="3.0">', "  <labels>",
             '    <label color="0xcc0000" id="label-1">red</label>', "  </labels>", "  <pools>"]
    for pool in pools:
        attributes = " ".join("%s=%s" % (key, quoteattr(str(value))) for key, value in sorted(pool.items()))
        lines.append("    <pool %s/>" % attributes)
    lines += ["  </pools>", "  <properties>", '    <property name="default_pool">varlibqubes</property>',
              "  </properties>", "  <domains>"]
    lines += [domain.xml() for domain in domains]
    lines += ["  </domains>", "</qubes>", ""]
    return "\n".join(lines)


def reflink_pool(name, dir_path, keep=None):
    pool = {"driver": "file-reflink", "name": name, "dir_path": str(dir_path)}
    if keep is not None:
        pool["revisions_to_keep"] = keep
    return pool


def other_pools():
    """The pools of a dom0 that are not file-reflink: a thin LVM pool, the kernels, an old file pool."""
    return [
        {"driver": "lvm_thin", "name": "lvm", "volume_group": "qubes_dom0", "thin_pool": "vm-pool",
         "revisions_to_keep": 2},
        {"driver": "linux-kernel", "name": "linux-kernel", "dir_path": "/var/lib/qubes/vm-kernels"},
        {"driver": "file", "name": "oldfile", "dir_path": "/var/lib/qubes-old", "revisions_to_keep": 1},
    ]


def dom0_layout(pool_path, name="varlibqubes", pool_keep=None, template_keep=None, private_keep=None):
    """A qubes.xml of a small dom0 on ``pool_path``: fedora-42 (template), work (AppVM), disp12 (DispVM)
    and vault, an AppVM whose private volume is in the LVM pool."""
    pools = [reflink_pool(name, pool_path, pool_keep)] + other_pools()
    domains = [
        template_vm("fedora-42", name, keep=template_keep),
        app_vm("work", name, "fedora-42", private_keep=private_keep),
        disp_vm("disp12", name, "fedora-42", "work", number=4),
        app_vm("vault", name, "fedora-42", number=5, private_pool="lvm"),
    ]
    return qubes_xml(pools, domains)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE qubes [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<qubes><pools><pool driver="file-reflink" name="&lol9;" dir_path="/var/lib/qubes"/></pools></qubes>
"""

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What qubesd knows about a pool, read from its ``qubes.xml`` (never written).

qubesd records its pools, its domains and each domain's volumes in
``/var/lib/qubes/qubes.xml``.  This reader finds the ``file-reflink`` pool
whose ``dir_path`` is the pool being managed and lists that pool's volumes
with their kind and ``revisions_to_keep``.  The file is trusted no more than
any input: a DOCTYPE or an entity declaration is refused before the tree is
built, so an entity bomb costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Vid
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles

if TYPE_CHECKING:
    from xml.etree import ElementTree

DEFAULT_PATH = "/var/lib/qubes/qubes.xml"
AUTO = "auto"
NONE = "none"
DRIVER = "file-reflink"

# Volume kinds, from snap_on_start / save_on_stop.
ORIGIN = "origin"
SNAPSHOT = "snapshot"
VOLATILE = "volatile"
ORIGIN_SNAPSHOT = "origin_snapshot"

# Kinds whose files qubesd throws away when the VM starts or stops.
QUBESD_OWNED_KINDS = (SNAPSHOT, VOLATILE)

_QUBES_DEFAULT_REVISIONS = 1   # qubesd's default for a pool that names none


class QubesXmlError(InvalidArgument):
    """qubes.xml is missing (when named), unreadable, unsafe or malformed."""


@dataclass(frozen=True)
class QubesVolume:
    """One ``<volume>`` of a domain, in the managed pool."""

    vid: str
    vm: str | None          # None when its domain names no VM
    volume: str
    kind: str
    revisions_to_keep: int
    source: str | None
    size: int | None = None   # bytes, as qubesd last recorded them; None when absent or not a number

    def as_dict(self) -> dict[str, object]:
        return {"vm": self.vm, "volume": self.volume, "kind": self.kind,
                "revisions_to_keep": self.revisions_to_keep}

    @property
    def save_on_stop(self) -> bool:
        return self.kind in (ORIGIN, ORIGIN_SNAPSHOT)


@dataclass
class QubesPool:
    """The managed pool as qubes.xml describes it."""

    name: str
    revisions_to_keep: int
    path: str                                     # the qubes.xml it came from
    volumes: dict[str, QubesVolume] = field(default_factory=dict)   # vid string -> QubesVolume

    def volume(self, vid: Vid | str) -> QubesVolume | None:
        return self.volumes.get(str(vid))


def read_qubes_xml(setting: str | None, pool_path: str) -> QubesPool | None:
    """The QubesPool of ``pool_path`` per ``setting`` (``auto``, ``none`` or a path), or None.

    None means nothing is known: ``none``, ``auto`` without the default file,
    or a file that lists no ``file-reflink`` pool at this path.
    """
    setting = AUTO if setting is None else setting
    if setting == NONE:
        return None
    path = DEFAULT_PATH if setting == AUTO else setting
    if not path:
        raise QubesXmlError("qubes_xml must be 'auto', 'none' or the path of a qubes.xml file")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        if setting == AUTO:
            return None
        raise QubesXmlError("qubes_xml %s does not exist (use qubes_xml: none to read no qubes.xml)" % path) from None
    except OSError as exc:
        raise QubesXmlError("cannot read qubes_xml %s: %s" % (path, exc.strerror or exc)) from None
    root = parse_safely(data, path)
    return find_pool(root, pool_path, path)


def _refuse_declaration(*_args: object) -> NoReturn:
    raise _Declaration()


class _Declaration(Exception):
    pass


def parse_safely(data: bytes, path: str) -> ElementTree.Element:
    """The root element of the XML ``data``; refuses a DOCTYPE or entity declaration, and bad XML."""
    # Imported here, not at the top: a host without qubes.xml (any host but Qubes OS' dom0) never parses XML.
    import xml.parsers.expat  # noqa: PLC0415  pylint: disable=import-outside-toplevel
    from xml.etree import ElementTree  # noqa: PLC0415  pylint: disable=import-outside-toplevel

    # The byte search refuses the usual shapes at once; the expat pass catches what a byte search
    # cannot (another encoding), stopping at the declaration, before any entity is expanded.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise QubesXmlError("qubes_xml %s has a DOCTYPE or entity declaration, which qubesd never writes; "
                            "refusing to read it" % path)
    guard = xml.parsers.expat.ParserCreate()
    guard.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    guard.StartDoctypeDeclHandler = _refuse_declaration
    guard.EntityDeclHandler = _refuse_declaration
    try:
        guard.Parse(data, True)
    except _Declaration:
        raise QubesXmlError("qubes_xml %s has a DOCTYPE or entity declaration, which qubesd never writes; "
                            "refusing to read it" % path) from None
    except xml.parsers.expat.ExpatError as exc:
        raise QubesXmlError("qubes_xml %s is not well-formed XML (%s): truncated or damaged; nothing was changed"
                            % (path, exc)) from None
    try:
        # The guard pass above refused every DTD and entity declaration (what defusedxml refuses);
        # defusedxml is not in the standard library, which is all a managed host is sure to have.
        root = ElementTree.fromstring(data)  # noqa: S314
    except ElementTree.ParseError as exc:
        raise QubesXmlError("qubes_xml %s is not well-formed XML (%s)" % (path, exc)) from None
    if root.tag != "qubes":
        raise QubesXmlError("qubes_xml %s is not a qubes.xml: its root element is <%s>, not <qubes>" % (path, root.tag))
    return root


def _same_dir(dir_path: str, pool_path: str) -> bool:
    if os.path.abspath(dir_path) == os.path.abspath(pool_path):
        return True
    return os.path.realpath(dir_path) == os.path.realpath(pool_path)


def _int_attribute(element: ElementTree.Element, name: str, path: str, default: int) -> int:
    text = element.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < -1:
        raise QubesXmlError("qubes_xml %s: %s=%r of <%s %s> is not an integer >= -1"
                            % (path, name, text, element.tag, element.get("name") or element.get("vid") or ""))
    return value


def _size_attribute(element: ElementTree.Element) -> int | None:
    """The volume's ``size`` in bytes; None when it is missing or not a non-negative integer.

    Only reflink_info's size_mismatch finding reads it, so a strange value
    makes that check skip the volume rather than fail every module.
    """
    text = (element.get("size") or "").strip()
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def _flag(element: ElementTree.Element, name: str) -> bool:
    # qubesd writes Python's str() of a bool.
    return element.get(name, "False") == "True"


def volume_kind(element: ElementTree.Element) -> str:
    snap_on_start = _flag(element, "snap_on_start")
    save_on_stop = _flag(element, "save_on_stop")
    if snap_on_start and save_on_stop:
        return ORIGIN_SNAPSHOT
    if snap_on_start:
        return SNAPSHOT
    if save_on_stop:
        return ORIGIN
    return VOLATILE


def find_pool(root: ElementTree.Element, pool_path: str, path: str) -> QubesPool | None:
    """The QubesPool of ``pool_path`` in the parsed qubes.xml ``root``, or None if none matches."""
    pool_element = None
    for candidate in root.iterfind("pools/pool"):
        dir_path = candidate.get("dir_path")
        if candidate.get("driver") == DRIVER and dir_path and candidate.get("name") \
                and _same_dir(dir_path, pool_path):
            pool_element = candidate
            break
    if pool_element is None:
        return None
    name = pool_element.get("name") or ""   # never empty: checked above
    pool = QubesPool(name, _int_attribute(pool_element, "revisions_to_keep", path, _QUBES_DEFAULT_REVISIONS), path)
    for domain in root.iterfind("domains/domain"):
        vm = None
        for prop in domain.iterfind("properties/property"):
            if prop.get("name") == "name":
                vm = (prop.text or "").strip()
        for element in domain.iterfind("volume-config/volume"):
            vid = element.get("vid")
            if element.get("pool") != name or not vid:
                continue
            pool.volumes[vid] = QubesVolume(
                vid=vid,
                vm=vm,
                volume=element.get("name") or vid.rpartition("/")[2],
                kind=volume_kind(element),
                revisions_to_keep=_int_attribute(element, "revisions_to_keep", path, pool.revisions_to_keep),
                source=element.get("source"),
                size=_size_attribute(element),
            )
    return pool


def refuse_qubesd_volume(pool: QubesPool | None, vid: Vid, what: str) -> None:
    """Refuse to ``what`` a volume qubes.xml lists as a snapshot or volatile volume (qubesd discards their files)."""
    volume = pool.volume(vid) if pool is not None else None
    if pool is None or volume is None or volume.kind not in QUBESD_OWNED_KINDS:
        return
    if volume.kind == SNAPSHOT:
        origin = volume.source or "its template's volume"
        raise InvalidArgument(
            "cannot %s volume %s: qubes.xml (%s) lists it as a snapshot volume of VM %s, whose image qubesd "
            "replaces with a copy of %s at the VM's next start, so the change would vanish; work on the origin "
            "%s instead; nothing was changed" % (what, vid, pool.path, volume.vm, origin, origin))
    raise InvalidArgument(
        "cannot %s volume %s: qubes.xml (%s) lists it as a volatile volume of VM %s, whose image qubesd "
        "discards at every start and stop; nothing was changed" % (what, vid, pool.path, volume.vm))


def orphan_reason(pool: QubesPool | None, vid: Vid | str, keep_vids: Collection[str] | None) -> str | None:
    """Why gc counts the volume ``vid`` (not in use) as an orphan, or None when it is a known volume."""
    key = str(vid)
    if keep_vids is not None:
        return None if key in keep_vids else "not in keep_vids"
    if pool is None:
        return None
    volume = pool.volume(key)
    if volume is None:
        return "not listed in qubes.xml for pool %s" % pool.name
    if volume.kind in QUBESD_OWNED_KINDS:
        return ("left by a crash: a %s volume of VM %s without a dirty image (qubesd removes its files when "
                "the VM stops)" % (volume.kind, volume.vm))
    return None


def missing_volumes(pool: QubesPool | None, present: Mapping[str, VolumeFiles],
                    only: Collection[str] | None = None) -> list[dict[str, str | None]]:
    """The volumes qubes.xml lists with save_on_stop whose clean and dirty images are both gone.

    ``present`` maps vid string -> VolumeFiles; ``only`` limits to these vid strings.
    """
    if pool is None:
        return []
    missing = []
    for key in sorted(pool.volumes):
        volume = pool.volumes[key]
        if not volume.save_on_stop or (only is not None and key not in only):
            continue
        files = present.get(key)
        if files is None or (files.clean is None and files.dirty is None):
            missing.append({"vid": key, "vm": volume.vm, "volume": volume.volume})
    return missing

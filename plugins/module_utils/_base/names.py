# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Names in a file-reflink pool: volume ids, image file names, revisions, pins, tempfiles.

This is the one place that knows how Qubes' ``file-reflink`` driver names its
files (see docs/layout in the collection for the table).  Everything else asks
this module instead of building names itself.
"""

from __future__ import annotations

import datetime
import functools
import re
from dataclasses import dataclass
from typing import Literal, Union

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument

PREFIXES = ("appvms", "vm-templates")

# A VM or volume name is one plain path component.  Qubes' own VM names are
# stricter (a letter first, 31 characters at most); we accept what any other
# host may use, but nothing that could escape the directory or hide a file.
_COMPONENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")
_COMPONENT_MAX = 128

# A volume whose name ended like this would have a clean image that reads as
# another volume's dirty/precache/import image (``foo-dirty.img``), so the
# layout would stop being unambiguous.
_RESERVED_VOLUME_SUFFIXES = ("-dirty", "-precache", "-import")

TEMPFILE_SUFFIX_LEN = 8
TEMPFILE_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789_"

_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

# A pin's name (contract §7).  No '.', '@' or '~': a pin's file name can then never read as
# a revision or a tempfile, to us or to qubesd's globs.
PIN_NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,39}"
_PIN_NAME_RE = re.compile(PIN_NAME_PATTERN)

# One pass over a VM directory classifies every entry.  The volume part is the
# shortest prefix that leaves a known image suffix; the reserved suffixes above
# make that choice the only one possible for names this collection accepts.
_IMAGE_RE = re.compile(
    r"(?P<volume>[^/~]+?)"
    r"(?:(?P<clean>\.img)|(?P<dirty>-dirty\.img)|(?P<precache>-precache\.img)"
    r"|(?P<import>-import\.img)"
    r"|\.img\.(?P<rev_id>[^/]+?)@(?P<rev_ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"
    r"|\.img\.pin-(?P<pin>%s))"
    r"(?:~(?P<tmp>[a-z0-9_]{%d}))?\Z" % (PIN_NAME_PATTERN, TEMPFILE_SUFFIX_LEN)
)

# Kinds of image file, as ``classify`` reports them.
CLEAN = "clean"
DIRTY = "dirty"
PRECACHE = "precache"
IMPORT = "import"
REVISION = "revision"
PIN = "pin"

# A revision as users name it: its id, or "latest".  (Union, not |, in aliases evaluated at run time: ansible-test's
# pylint reads module_utils for Python versions without | between types.)
Revision = Union[int, Literal["latest"]]  # noqa: UP007


def _check_component(value: object, what: str) -> None:
    if not isinstance(value, str) or value == "":
        raise InvalidArgument("%s must be a non-empty name" % what)
    if "\0" in value:
        raise InvalidArgument("%s %r contains a NUL character" % (what, value))
    if "/" in value:
        raise InvalidArgument("%s %r must be a single path component (no '/')" % (what, value))
    if value in (".", "..") or value.startswith("."):
        raise InvalidArgument("%s %r must not start with '.'" % (what, value))
    if value.startswith("-"):
        raise InvalidArgument("%s %r must not start with '-'" % (what, value))
    if len(value) > _COMPONENT_MAX:
        raise InvalidArgument("%s %r is longer than %d characters" % (what, value, _COMPONENT_MAX))
    if not _COMPONENT_RE.match(value):
        raise InvalidArgument(
            "%s %r may only contain letters, digits and '_', '.', '+', '-'" % (what, value))


@dataclass(frozen=True)
class Vid:
    """A validated volume id ``<prefix>/<vm>/<volume>``."""

    prefix: str
    vm: str
    volume: str

    def __str__(self) -> str:
        return "%s/%s/%s" % (self.prefix, self.vm, self.volume)

    @property
    def vm_dir(self) -> str:
        """The VM directory, relative to the pool."""
        return "%s/%s" % (self.prefix, self.vm)

    def rel(self, name: str) -> str:
        """``name``, a file of this volume's VM directory, as a path relative to the pool (how messages name it)."""
        return "%s/%s" % (self.vm_dir, name)

    @property
    def clean(self) -> str:
        return self.volume + ".img"

    @property
    def dirty(self) -> str:
        return self.volume + "-dirty.img"

    @property
    def precache(self) -> str:
        return self.volume + "-precache.img"

    @property
    def import_(self) -> str:
        return self.volume + "-import.img"

    def revision(self, number: int, timestamp: str) -> str:
        """File name of revision ``number``; ``timestamp`` as made by format_timestamp."""
        return "%s.img.%d@%s" % (self.volume, number, timestamp)

    def pin(self, name: str) -> str:
        """File name of the pin ``name`` (a name checked by check_pin_name)."""
        return "%s.img.pin-%s" % (self.volume, name)

    @property
    def lock_name(self) -> str:
        """Name of this volume's lock file: Qubes' escaping, so it is readable and unique."""
        return escape_vid(str(self)) + ".lock"


def check_pin_name(value: object) -> str:
    """``value`` if it is a valid pin name; InvalidArgument (nothing done yet) otherwise."""
    # fullmatch, not match with '$': '$' would accept a name ending in a newline.
    if not isinstance(value, str) or _PIN_NAME_RE.fullmatch(value) is None:
        raise InvalidArgument(
            "pin name %r is not valid: use 1 to 40 characters of a-z, 0-9, '_' and '-', starting with a "
            "letter or digit (no '.', '/', '@', '~', capitals or spaces)" % (value,))
    return value


def parse_vid(value: object) -> Vid:
    """Validate ``value`` and return a :class:`Vid`; raise InvalidArgument otherwise."""
    if not isinstance(value, str) or value == "":
        raise InvalidArgument("vid must be a non-empty string like 'appvms/<vm>/<volume>'")
    if "\0" in value:
        raise InvalidArgument("vid %r contains a NUL character" % value)
    if value.startswith("/"):
        raise InvalidArgument("vid %r must be relative to the pool, not an absolute path" % value)
    parts = value.split("/")
    if len(parts) != 3:
        raise InvalidArgument(
            "vid %r must have exactly three parts: <prefix>/<vm>/<volume>, "
            "with prefix appvms or vm-templates" % value)
    prefix, vm, volume = parts
    if prefix not in PREFIXES:
        raise InvalidArgument(
            "vid %r: prefix must be one of %s; images anywhere else would be offered "
            "to other VMs by dom0's udev rules" % (value, ", ".join(PREFIXES)))
    try:
        _check_component(vm, "VM name")
        _check_component(volume, "volume name")
        if ".img" in volume:
            raise InvalidArgument("volume name %r must not contain '.img'" % volume)
        for suffix in _RESERVED_VOLUME_SUFFIXES:
            if volume.endswith(suffix):
                raise InvalidArgument(
                    "volume name %r must not end in %r: its image would read as another "
                    "volume's %s image" % (volume, suffix, suffix[1:]))
    except InvalidArgument as exc:
        raise InvalidArgument("vid %r: %s" % (value, exc)) from None
    return Vid(prefix, vm, volume)


def escape_vid(text: str) -> str:
    """Qubes' escaping of a path-like name into one component: '-' -> '--', '/' -> '-'."""
    return text.replace("-", "--").replace("/", "-")


def format_timestamp(mtime: float) -> str:
    """Revision timestamp of a clean image with mtime ``mtime`` (seconds since the epoch), UTC."""
    moment = datetime.datetime.fromtimestamp(int(mtime), tz=datetime.timezone.utc)
    return moment.strftime(_TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> int:
    """Seconds since the epoch of a revision timestamp string; InvalidArgument if malformed."""
    try:
        moment = datetime.datetime.strptime(text, _TIMESTAMP_FORMAT)
    except ValueError:
        raise InvalidArgument("%r is not a revision timestamp like 2026-11-26T03:40:59Z" % text) from None
    return int(moment.replace(tzinfo=datetime.timezone.utc).timestamp())


@dataclass(frozen=True)
class ImageName:
    """What a file name in a VM directory is, as far as the layout tells."""

    volume: str
    kind: str               # CLEAN, DIRTY, PRECACHE, IMPORT, REVISION or PIN
    revision: int | None    # the revision number, None if not a revision or not a positive integer
    revision_text: str | None  # the number as written (may be junk such as 'x')
    timestamp: str | None   # the revision timestamp as written, with its Z
    tempfile: bool          # a ``<final>~XXXXXXXX`` name
    pin: str | None = None  # the pin's name, for a PIN

    @property
    def final_name(self) -> str:
        """The name this file has (or will have once renamed, for a tempfile)."""
        if self.kind == CLEAN:
            return self.volume + ".img"
        if self.kind == REVISION:
            return "%s.img.%s@%s" % (self.volume, self.revision_text, self.timestamp)
        if self.kind == PIN:
            return "%s.img.pin-%s" % (self.volume, self.pin)
        return "%s-%s.img" % (self.volume, self.kind)

    @property
    def junk_revision(self) -> bool:
        """A revision file whose id is not a positive decimal integer (Qubes crashes on most of them)."""
        return self.kind == REVISION and self.revision is None


def revision_id_problem(text: str) -> str | None:
    """What is wrong with ``text`` as the id of a revision file's name; None for a valid id (1, 2, ...)."""
    if text.isascii() and text.isdigit():
        return None if int(text) >= 1 else "its id %s is not a revision id (ids start at 1)" % text
    if text.startswith("-") and text[1:].isascii() and text[1:].isdigit():
        return "its id %s is a negative number, not a revision id (ids start at 1)" % text
    return "its id %r is not a number" % text


@functools.lru_cache(maxsize=4096)
def classify(filename: str) -> ImageName | None:
    """Return the :class:`ImageName` of ``filename``, or None for a file that is no image."""
    match = _IMAGE_RE.match(filename)
    if match is None:
        return None
    groups = match.groupdict()
    revision = None
    revision_text = groups["rev_id"]
    if groups["clean"]:
        kind = CLEAN
    elif groups["dirty"]:
        kind = DIRTY
    elif groups["precache"]:
        kind = PRECACHE
    elif groups["import"]:
        kind = IMPORT
    elif groups["pin"]:
        kind = PIN
    else:
        kind = REVISION
        if revision_id_problem(revision_text) is None:
            revision = int(revision_text)
    return ImageName(
        volume=groups["volume"],
        kind=kind,
        revision=revision,
        revision_text=revision_text,
        timestamp=groups["rev_ts"],
        tempfile=groups["tmp"] is not None,
        pin=groups["pin"],
    )


def timestamp_of(filename: str) -> str | None:
    """The timestamp in a revision's file name (with its Z), None for a file that is no revision."""
    image = classify(filename)
    return image.timestamp if image is not None else None


def parse_revision(value: object) -> Revision:
    """A revision as users give it: "latest", or a positive integer (also as a string)."""
    if isinstance(value, str) and value.strip().lower() == "latest":
        return "latest"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise InvalidArgument("revision must be 'latest' or a revision id, a positive integer (got %r)" % (value,))

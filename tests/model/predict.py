# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What each volume operation should do to the model, as modules.md and the on-disk contract say.

Each function changes the model it is given (a copy) to what a successful
run leaves, or raises Refuse (the run must fail and change nothing) or Unsure
(the spec leaves the outcome open here: either is accepted, and the model is
read again from the disk).  ``known`` on a Refuse names the known defect
(known_defects.py) that makes today's code do otherwise.
"""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal, InvalidOperation

from disk import Content
from pool_model import Vol

MAX_SIZE = 2 ** 63 - 1
SURELY_FITS = 2 ** 40          # every test filesystem holds a sparse file this large
PIN_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
VID_RE = re.compile(r"(appvms|vm-templates)/[A-Za-z0-9_][A-Za-z0-9_.+-]*/[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*\Z")
_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024 ** 2, "mib": 1024 ** 2, "g": 1024 ** 3,
          "gib": 1024 ** 3, "t": 1024 ** 4, "tib": 1024 ** 4}


class Refuse(Exception):
    """The task must fail and change nothing."""

    def __init__(self, why: str, known: str | None = None, check_knows: bool = True) -> None:
        super().__init__(why)
        self.known = known
        self.check_knows = check_knows   # check mode can tell (False: only reading all the data can)


class RefuseOrWarn(Refuse):
    """The task must be refused, or succeed with a warning about what it ignores (then as if it were not given)."""


class Unsure(Exception):
    """The spec does not fix the outcome here (a size that may not fit, say)."""


@dataclasses.dataclass
class Ctx:
    """What a prediction needs to know besides the model."""

    reflink: bool                  # the pool's file system shares blocks
    held: set                      # (vid, kind) of files a child process holds open: kind import, leftover:<name>, ...
    full: bool = False             # the file system has no free space
    allocates: bool = False        # set by the prediction: the task needs new space
    ages: dict = dataclasses.field(default_factory=dict)   # (vid, name) -> age in seconds


# -- arguments -------------------------------------------------------------

def size_of(value, what="size"):
    """A volume size as modules.md defines it; Refuse for anything else (0 too)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise Refuse("%s is a boolean" % what)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise Refuse("%s %r is malformed" % (what, value))
        try:
            number = int(Decimal(match.group(1)) * _UNITS[match.group(2).lower()])
        except InvalidOperation:
            raise Refuse("%s %r is malformed" % (what, value)) from None
    else:
        raise Refuse("%s %r is not a size" % (what, value))
    if number <= 0 or number > MAX_SIZE:
        raise Refuse("%s %r is out of range" % (what, value))
    return number


def fits(size):
    if size is not None and size > SURELY_FITS:
        raise Unsure("size %d may or may not fit the file system" % size)


def keep_of(value, default=1):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise Refuse("revisions_to_keep %r" % (value,))
    return value


def lock_timeout_ok(value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Refuse("lock_timeout %r" % (value,), known="lock_timeout_negative")


def vid_ok(value):
    if not isinstance(value, str) or not VID_RE.fullmatch(value) or ".img" in value.rsplit("/", 1)[-1] \
            or value.endswith(("-dirty", "-precache", "-import")):
        raise Refuse("bad vid %r" % (value,))
    return value


def pin_name_ok(value):
    if not isinstance(value, str) or PIN_NAME_RE.fullmatch(value) is None:
        raise Refuse("bad pin name %r" % (value,))
    return value


def revision_of(value, allow_clean=False):
    if allow_clean and (value is None or (isinstance(value, str) and value.strip().lower() == "clean")):
        return "clean"
    if isinstance(value, str) and value.strip().lower() == "latest":
        return "latest"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise Refuse("bad revision %r" % (value,))


# -- building blocks -------------------------------------------------------

def newest_is_clean(vol: Vol) -> bool:
    if not vol.revisions or vol.clean is None:
        return False
    content, ts = vol.revisions[max(vol.revisions)]
    return ts == vol.clean_ts and content == vol.clean


def keep_clean_as_revision(vol: Vol) -> None:
    if vol.clean is not None and not newest_is_clean(vol):
        vol.revisions[vol.next_revision()] = (vol.clean, vol.clean_ts)


def commit(vol: Vol, new: Content, keep: int, ctx: Ctx) -> None:
    """A commit of ``new`` (qubesd's stop, an import): the old clean becomes a revision, then pruning."""
    ctx.allocates = True
    old = sorted(vol.revisions)
    added = 0
    if keep > 0 and vol.clean is not None and not newest_is_clean(vol):
        keep_clean_as_revision(vol)
        added = 1
    for number in old[:max(len(old) + added - max(keep, 0), 0)]:
        del vol.revisions[number]
    set_clean(vol, new, keep)


def set_clean(vol: Vol, new: Content, keep: int) -> None:
    vol.clean = new
    vol.clean_ts = None      # the new file's mtime: read back from the disk
    vol.marker = None
    vol.imported = False
    vol.precache = "missing" if keep == -1 else "fresh"


def finish_precache(vol: Vol, keep: int, ctx: Ctx) -> None:
    if vol.dirty is None and vol.clean is not None and keep != -1 and vol.precache != "fresh":
        ctx.allocates = True
        vol.precache = "fresh"


def clear_volume(vol: Vol, keep_import: bool = False) -> None:
    """Every file of the volume but its pins (and the import image, for a two-phase commit) goes."""
    vol.clean = vol.dirty = None
    vol.clean_ts = vol.marker = None
    vol.imported = False
    vol.revisions = {}
    vol.leftovers = frozenset()
    vol.precache = "missing"
    if not keep_import:
        vol.import_ = None
        vol.import_ino = vol.import_gen = None


def refuse_in_use(vol: Vol, what: str) -> None:
    if vol.dirty is not None:
        raise Refuse("cannot %s: a dirty image exists" % what)


def refuse_held_import(vid: str, vol: Vol, ctx: Ctx, what: str) -> None:
    if vol.import_ is not None and (vid, "import") in ctx.held:
        raise Refuse("%s would replace or remove %s-import.img, which a process holds open" % (what, vid),
                     known="held_import_replaced")


# -- reflink_volume --------------------------------------------------------

def volume_present(vid, vol: Vol, size, allow_shrink, keep, ctx: Ctx) -> None:
    if not vol.exists:
        if size is None:
            raise Refuse("volume %s does not exist: give size" % vid)
        fits(size)
        refuse_held_import(vid, vol, ctx, "creating the volume")
        ctx.allocates = True
        clear_volume(vol)
        set_clean(vol, Content.zeros(size), keep)
        return
    current = (vol.dirty or vol.clean).size
    if size is not None and size != current:
        fits(size)
        if size < current and not allow_shrink:
            raise Refuse("shrinking needs allow_shrink")
        ctx.allocates = True
        if vol.dirty is not None:
            vol.dirty = vol.dirty.resized(size)
            return
        vol.clean = vol.clean.resized(size)
        vol.clean_ts = vol.marker = None
        vol.imported = False
        vol.precache = "missing" if keep == -1 else "fresh"
        return
    if vol.dirty is None:
        finish_precache(vol, keep, ctx)


def volume_stopped(vol: Vol, keep, ctx: Ctx) -> None:
    if vol.dirty is None:
        finish_precache(vol, keep, ctx)
        return
    dirty = vol.dirty
    vol.dirty = None
    commit(vol, dirty, keep, ctx)


def volume_absent(vid, vol: Vol, remove_pins, ctx: Ctx) -> None:
    if not vol.has_files and not (remove_pins and vol.pins):
        return
    refuse_in_use(vol, "remove %s" % vid)
    refuse_held_import(vid, vol, ctx, "removing the volume")
    clear_volume(vol)
    if remove_pins:
        vol.pins = {}


def volume_task(model, item: dict, ctx: Ctx) -> None:
    """One volume (a task with vid, or one item of volumes) brought to its state."""
    vid = vid_ok(item["vid"])
    state = item.get("state") or "present"
    size = size_of(item.get("size"))
    keep = keep_of(item.get("revisions_to_keep"))
    vol = model.vol(vid)
    if state == "present":
        volume_present(vid, vol, size, item.get("allow_shrink") or False, keep, ctx)
    elif size is not None:
        raise RefuseOrWarn("size with state=%s" % state, known="size_ignored_stopped_absent")
    elif state == "stopped":
        volume_stopped(vol, keep, ctx)
    else:
        volume_absent(vid, vol, item.get("remove_pins") or False, ctx)


def batch(model, items: list, remove_pins: bool, ctx: Ctx) -> None:
    seen = set()
    for item in items:
        if set(item) - {"vid", "state", "size", "allow_shrink", "revisions_to_keep"}:
            raise Refuse("unknown key in an item")
        if item.get("vid") in seen:
            raise Refuse("vid given twice")
        seen.add(item.get("vid"))
        volume_task(model, dict(item, remove_pins=remove_pins), ctx)


# -- reflink_revert and reflink_pin ----------------------------------------

def _marker_matches(vol: Vol, revision) -> bool:
    if vol.marker is None or vol.clean is None:
        return False
    if revision == "latest":
        return vol.marker.isdigit() or vol.marker.startswith("pin-")
    return vol.marker.isdigit() and int(vol.marker) == revision


def _drop_dirty(vol: Vol, discard_dirty) -> bool:
    if vol.dirty is None:
        return False
    if not discard_dirty:
        raise Refuse("a dirty image exists and discard_dirty is false")
    vol.dirty = None
    return True


def revert(vol: Vol, revision, discard_dirty, ctx: Ctx) -> None:
    revision = revision_of("latest" if revision is None else revision)
    already = _marker_matches(vol, revision)
    if not already:
        number = max(vol.revisions) if revision == "latest" and vol.revisions else revision
        if number not in vol.revisions:
            raise Refuse("no revision %s" % number)
    dropped = _drop_dirty(vol, discard_dirty)
    if already:
        if not dropped:
            finish_precache(vol, 0, ctx)
        return
    ctx.allocates = True
    keep_clean_as_revision(vol)
    content, _ts = vol.revisions.pop(number)
    set_clean(vol, content, 0)
    vol.marker = str(number)


def revert_to_pin(vol: Vol, name, discard_dirty, ctx: Ctx) -> None:
    pin_name_ok(name)
    if name not in vol.pins:
        raise Refuse("no pin %s" % name)
    content, ts = vol.pins[name]
    dropped = _drop_dirty(vol, discard_dirty)
    if vol.marker == "pin-" + name and vol.clean == content:
        if not dropped:
            finish_precache(vol, 0, ctx)
        return
    ctx.allocates = True
    keep_clean_as_revision(vol)
    set_clean(vol, content, 0)
    vol.clean_ts = ts
    vol.marker = "pin-" + name


def pin(vol: Vol, name, revision, force, ctx: Ctx) -> None:
    pin_name_ok(name)
    source = revision_of(revision, allow_clean=True)
    if source == "clean":
        if vol.clean is None:
            raise Refuse("no clean image to pin")
        content, ts = vol.clean, vol.clean_ts
    else:
        number = max(vol.revisions) if source == "latest" and vol.revisions else source
        if number not in vol.revisions:
            raise Refuse("no revision %s to pin" % number)
        content, ts = vol.revisions[number]
    existing = vol.pins.get(name)
    if existing is not None and existing[0] == content:
        return
    if existing is not None and not force:
        raise Refuse("pin %s exists with other content" % name)
    ctx.allocates = True
    vol.pins[name] = (content, ts)


def unpin(vol: Vol, name) -> None:
    pin_name_ok(name)
    vol.pins.pop(name, None)

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What reflink_import should do to the model: one-shot imports and the two-phase flow (modules.md)."""

from __future__ import annotations

import dataclasses

from disk import Content
from predict import (
    Ctx,
    Refuse,
    Unsure,
    clear_volume,
    commit,
    finish_precache,
    fits,
    keep_of,
    refuse_held_import,
    refuse_in_use,
    size_of,
)


@dataclasses.dataclass
class Source:
    """Where a one-shot import reads from, as the machine set it up."""

    kind: str                      # file, empty, missing, dir, vid, none (size alone)
    content: Content | None = None
    cross_fs: bool = False         # on another file system than the pool
    vid: str | None = None


def digest(content: Content) -> str:
    """The image's SHA-256, where computing it is affordable (the core reads holes as zeros too)."""
    if content.size > 64 << 20:
        raise Unsure("a checksum of a %d-byte image is too costly to predict" % content.size)
    return content.sha256()


def checksum_ok(value):
    if value is None:
        return None
    text = value.strip() if isinstance(value, str) else ""
    if not text.startswith("sha256:") or len(text) != 71 or any(c not in "0123456789abcdefABCDEF" for c in text[7:]):
        raise Refuse("malformed checksum %r" % (value,))
    return text[7:].lower()


def one_shot(model, vid, options: dict, source: Source, ctx: Ctx) -> None:
    vol = model.vol(vid)
    size = size_of(options.get("size"))
    expected = checksum_ok(options.get("checksum"))
    keep = keep_of(options.get("revisions_to_keep"))
    if source.kind == "missing":
        raise Refuse("the source does not exist")
    if source.kind == "dir":
        raise Refuse("the source is a directory")
    if source.kind == "vid":
        if source.vid == vid:
            raise Refuse("src_vid is the volume itself")
        src = model.vols.get(source.vid)
        if src is None or src.clean is None:
            raise Refuse("the source volume has no clean image")
        content = src.clean
    else:
        content = source.content
    if vol.journal == "corrupt":
        raise Refuse("the journal cannot be read")
    if vol.journal == "begun" and vol.import_ is not None:
        raise Refuse("a two-phase import is begun")
    if source.kind == "none" and size is None:
        raise Refuse("neither a source nor a size")
    refuse_in_use(vol, "import")
    if source.kind == "empty":
        raise Refuse("the source is empty (0 bytes)", known="empty_source_import")
    result_size = size if size is not None else content.size
    fits(result_size)
    new = Content.zeros(result_size) if content is None else content.resized(result_size)
    if vol.journal == "begun":
        vol.journal = None            # the stale journal of an import whose image is gone
    if not options.get("force") and vol.clean is not None and vol.clean == new:
        if expected is not None and expected != digest(new):
            raise Refuse("checksum mismatch", check_knows=False)
        finish_precache(vol, keep, ctx)
        return
    refuse_held_import(vid, vol, ctx, "a one-shot import")
    if options.get("fallback") == "never" and content is not None and (source.cross_fs or not ctx.reflink):
        raise Refuse("fallback: never, and no reflink is possible", known="check_mode_fallback_never")
    if expected is not None and expected != digest(new):
        raise Refuse("checksum mismatch", check_knows=False)
    ctx.allocates = True
    if not vol.exists:
        clear_volume(vol)
        commit(vol, new, keep, ctx)
    else:
        vol.import_ = None
        commit(vol, new, keep, ctx)


def begin(model, vid, options: dict, ctx: Ctx) -> None:
    vol = model.vol(vid)
    size = size_of(options.get("size"))
    if size is None:
        raise Refuse("begin needs size")
    if vol.journal == "corrupt":
        raise Refuse("the journal cannot be read")
    if vol.journal == "begun" and vol.import_ is not None:
        if vol.journal_size == size:
            return
        raise Refuse("an import of another size is begun")
    refuse_in_use(vol, "begin an import")
    fits(size)
    refuse_held_import(vid, vol, ctx, "begin")
    ctx.allocates = True
    vol.import_ = Content.zeros(size)
    vol.import_ino = vol.begun_ino = vol.import_gen = vol.begun_gen = None
    vol.journal = "begun"
    vol.journal_size = size


def commit_two_phase(model, vid, options: dict, ctx: Ctx) -> None:
    vol = model.vol(vid)
    size = size_of(options.get("size"))
    expected = checksum_ok(options.get("checksum"))
    keep = keep_of(options.get("revisions_to_keep"))
    if vol.journal == "corrupt":
        raise Refuse("the journal cannot be read")
    if vol.journal != "begun":
        if vol.journal == "committed" or vol.imported:
            if size is not None or expected is not None:
                if not vol.imported or vol.clean is None:
                    raise Unsure("the committed image was replaced since")
                if (size is not None and size != vol.clean.size) or \
                        (expected is not None and expected != digest(vol.clean)):
                    raise Refuse("the committed image does not match size or checksum",
                                 known="commit_rerun_unchecked")
            finish_precache(vol, keep, ctx)
            return
        raise Refuse("no two-phase import is begun")
    if vol.import_ is None:
        # Also where clean got the import image's freed inode number (ext4 gives it to the next file made):
        # only the commit's own mark on clean says that the commit renamed it into place.
        raise Refuse("the begun import image is gone")
    # The begun file by inode number and generation: a new file may get a freed inode number.
    replaced = vol.import_ino != vol.begun_ino or (vol.begun_gen is not None and vol.import_gen != vol.begun_gen)
    if vol.begun_ino is not None and replaced:
        raise Refuse("the import image was replaced")
    if (vid, "import") in ctx.held:
        raise Unsure("the writer still holds the import image open")
    refuse_in_use(vol, "commit")
    if size is None and vol.import_.size != vol.journal_size:
        raise Refuse("the import image has another size than begun")
    target = vol.import_.size if size is None else size
    new = vol.import_.resized(target)
    if expected is not None and expected != digest(new):
        raise Refuse("checksum mismatch", check_knows=False)
    fits(target)
    ctx.allocates = True
    if not vol.exists:
        clear_volume(vol, keep_import=True)
    vol.import_ = None
    vol.import_ino = vol.import_gen = None
    commit(vol, new, keep, ctx)
    vol.imported = True
    vol.journal = "committed"
    vol.journal_size = None


def abort(model, vid, ctx: Ctx) -> None:
    vol = model.vol(vid)
    if vol.journal in ("begun", "corrupt"):
        refuse_held_import(vid, vol, ctx, "abort")
        vol.import_ = None
        vol.import_ino = vol.import_gen = None
        vol.journal = None
        vol.journal_size = None


def run_import(model, vid, options: dict, source: Source, ctx: Ctx) -> None:
    state = options.get("state") or "present"
    if state != "present" and source.kind != "none":
        raise Refuse("src goes with state=present")
    if state == "present":
        one_shot(model, vid, options, source, ctx)
    elif state == "begin":
        begin(model, vid, options, ctx)
    elif state == "commit":
        commit_two_phase(model, vid, options, ctx)
    elif state == "abort":
        abort(model, vid, ctx)
    else:
        raise Unsure(state)

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Imports: where the data comes from, the staging actions, and the import plans.

Data is always staged in ``<volume>-import.img`` (never attached by qubesd)
and committed like a VM's stop commits its dirty image.  A two-phase import
(begin, another program writes, commit or abort) is recorded in a journal
(``_journal.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat

from ansible_collections.dom0.reflink.plugins.module_utils import _clone as clone
from ansible_collections.dom0.reflink.plugins.module_utils import _compare as compare
from ansible_collections.dom0.reflink.plugins.module_utils._actions import (
    Action,
    Fsync,
    MakeVmDir,
    Remove,
    ResizeInPlace,
)
from ansible_collections.dom0.reflink.plugins.module_utils._errors import (
    InvalidArgument,
    ReflinkError,
    VolumeStateError,
)
from ansible_collections.dom0.reflink.plugins.module_utils._fsops import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._journal import (
    BEGUN,
    COMMITTED,
    RemoveJournal,
    WriteJournal,
    read_journal,
)
from ansible_collections.dom0.reflink.plugins.module_utils._locks import volume_lock
from ansible_collections.dom0.reflink.plugins.module_utils._names import parse_vid
from ansible_collections.dom0.reflink.plugins.module_utils._operations import check_revisions_to_keep
from ansible_collections.dom0.reflink.plugins.module_utils._task import run_volume_task
from ansible_collections.dom0.reflink.plugins.module_utils._units import parse_volume_size
from ansible_collections.dom0.reflink.plugins.module_utils._volume import FileInfo, VolumeFiles

_CHECKSUM_RE = re.compile(r"sha256:([0-9a-fA-F]{64})\Z")
_HASH_CHUNK = 4 * 1024 * 1024


def parse_checksum(value):
    """The lower-case hex digest of ``sha256:<hex>``, or None for no checksum."""
    if value is None:
        return None
    match = _CHECKSUM_RE.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise InvalidArgument("checksum must be 'sha256:' followed by 64 hex digits (got %r)" % (value,))
    return match.group(1).lower()


# -- sources ---------------------------------------------------------------

class Source:
    """Open data to import: a file or block device on the host, or a volume's clean image."""

    def __init__(self, fd, description):
        self.fd = fd
        self.description = description
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)
        self.size = clone.file_size(fd)
        self.usage = st.st_blocks * 512

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def open_source_path(path):
    """Open ``path`` for reading; only a regular file or a block device is accepted."""
    try:
        # O_NONBLOCK: a FIFO must be refused, not waited on.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InvalidArgument("source %s does not exist" % path) from None
    except PermissionError:
        raise InvalidArgument("source %s is not readable (permission denied)" % path) from None
    except OSError as exc:
        kind = ""
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                kind = " (it is a socket)"
        except OSError:
            pass
        raise InvalidArgument("cannot open source %s%s: %s" % (path, kind, exc.strerror)) from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a socket" if stat.S_ISSOCK(mode) else "a character device" if stat.S_ISCHR(mode) else "not a file"
        raise InvalidArgument("source %s is %s; give a regular file or a block device" % (path, kind))
    return Source(fd, path)


def open_source_volume(pool_path, vid):
    """Open the clean image of volume ``vid`` of the pool at ``pool_path``."""
    with Directory.open_pool(pool_path) as pool_dir:
        prefix = pool_dir.open_dir(vid.prefix)
        vm_dir = prefix.open_dir(vid.vm) if prefix is not None else None
        try:
            if vm_dir is None or vm_dir.lstat(vid.clean) is None:
                raise InvalidArgument("source volume %s of pool %s has no clean image" % (vid, pool_path))
            fd = vm_dir.open_file(vid.clean, os.O_RDONLY)
        finally:
            for directory in (vm_dir, prefix):
                if directory is not None:
                    directory.close()
    return Source(fd, "%s (volume %s)" % (os.path.join(pool_path, vid.vm_dir, vid.clean), vid))


# -- comparing with the current clean image -------------------------------

def unchanged(vm_dir, files, source, size):
    """Whether importing ``source`` (None: zeros) at ``size`` would give the current clean image."""
    if files.clean is None or files.dirty is not None or files.clean.size != size:
        return False
    clean_fd = vm_dir.open_file(files.vid.clean, os.O_RDONLY)
    try:
        if source is None:
            return compare.data_is_absent(clean_fd) or compare.all_zero(clean_fd, 0, size)
        if source.size == size:
            return compare.same_content(clean_fd, source.fd)
        common = min(size, source.size)
        return compare.prefix_matches(clean_fd, source.fd, common) and compare.all_zero(clean_fd, common, size)
    finally:
        os.close(clean_fd)


# -- actions ---------------------------------------------------------------

class Stage(Action):
    """Write the import image: the source's data at the wanted size, or an all-zero sparse image."""

    long = True

    def __init__(self, rel, name, source, size, allow_copy):
        self.name = name
        self.source = source
        self.size = size
        self.allow_copy = allow_copy
        self.how = None
        if source is None:
            self.text = "stage an empty (all-zero) sparse image %s of %d bytes" % (rel(name), size)
        else:
            self.text = "stage %s in %s, size %d bytes" % (source.description, rel(name), size)

    def run(self, workspace):
        destination = workspace.vm_dir.join(self.name)

        def fill(fd):
            if self.source is None:
                os.ftruncate(fd, self.size)
                return clone.EMPTY
            return clone.fill_from(fd, self.source.fd, dst_size=self.size, allow_copy=self.allow_copy,
                                   describe=(self.source.description, destination))

        self.how = workspace.vm_dir.write_new_file(self.name, fill)

    def undo(self, workspace):
        # Until the commit renames it, the staged image is of no use alone.
        if workspace.vm_dir is not None and workspace.vm_dir.unlink(self.name, missing_ok=True):
            return "removed the staged image %s" % self.name
        return None

    def simulate(self, files):
        usage = 0 if self.source is None else min(self.source.usage, self.size)
        files[self.name] = FileInfo(self.name, self.size, usage)

    @property
    def done(self):
        if self.how == clone.COPY:
            return self.text + " (sparse copy: reflink not possible here)"
        if self.how == clone.REFLINK:
            return self.text + " (reflink)"
        return self.text


def sha256_of(fd):
    """SHA-256 of the whole file; holes are hashed as zeros without being read."""
    digest = hashlib.sha256()
    size = clone.file_size(fd)
    zeros = bytes(_HASH_CHUNK)
    position = 0
    for start, end in list(clone.data_segments(fd, size)) + [(size, size)]:
        while position < start:  # a hole
            step = min(_HASH_CHUNK, start - position)
            digest.update(zeros[:step])
            position += step
        while position < end:
            chunk = os.pread(fd, min(_HASH_CHUNK, end - position), position)
            if not chunk:
                raise ReflinkError("the file shrank while its checksum was computed")
            digest.update(chunk)
            position += len(chunk)
    return digest.hexdigest()


def verify_clean_checksum(vm_dir, vid, expected):
    """For an import that changes nothing: the data is the clean image's, so check that."""
    fd = vm_dir.open_file(vid.clean, os.O_RDONLY)
    try:
        actual = sha256_of(fd)
    finally:
        os.close(fd)
    if actual != expected:
        raise ReflinkError(
            "checksum mismatch: expected sha256:%s, but the data to import (the same as the current clean "
            "image, so nothing was staged) has sha256:%s; the volume is unchanged" % (expected, actual))


class VerifyChecksum(Action):
    """Compare the staged image with the expected SHA-256; on mismatch remove it and fail."""

    long = True
    changes_disk = False

    def __init__(self, rel, name, expected):
        self.name = name
        self.expected = expected
        self.text = "verify that %s has sha256 %s" % (rel(name), expected)

    def run(self, workspace):
        fd = workspace.vm_dir.open_file(self.name, os.O_RDONLY)
        try:
            actual = sha256_of(fd)
        finally:
            os.close(fd)
        if actual != self.expected:
            workspace.vm_dir.unlink(self.name, missing_ok=True)
            raise ReflinkError(
                "checksum mismatch: expected sha256:%s, the staged data has sha256:%s; the staged image "
                "was removed and the volume is unchanged" % (self.expected, actual))


# -- plans -----------------------------------------------------------------

def _own_image(files, source):
    for info in (files.clean, files.dirty):
        if info is not None and source is not None and source.identity == (info.dev, info.ino):
            return info.name
    return None


def _new_volume_actions(planner, workspace, keep_import=False):
    """For a volume that does not exist yet: clear leftovers of an earlier one, make its VM directory."""
    actions = []
    for action in planner.remove_everything("leftover of an earlier volume with this vid"):
        if not (keep_import and action.name == planner.vid.import_):
            actions.append(action)
    if workspace.vm_dir is None:
        actions.append(MakeVmDir(planner.vid))
    return actions


def plan_import(planner, workspace, options, source, journal):
    """Plan the task of reflink_import; ``options`` holds the parsed module options."""
    state = options["state"]
    files = planner.files
    vid = planner.vid
    rel = planner.rel
    pool_dir = workspace.pool_dir
    size = options["size"]
    begun = journal is not None and journal.get("state") == BEGUN

    if state == "abort":
        # Only an import this collection began is aborted: an import image no journal claims may be
        # qubesd's own import in progress (reflink_gc removes a stale one).  A committed import's
        # record stays: it is what makes a rerun of commit a no-op.
        if not begun:
            return []
        actions = []
        if files.import_ is not None:
            actions.append(Remove(rel, vid.import_, "import aborted"))
        actions.append(RemoveJournal(pool_dir, vid))
        return actions

    keep = options["revisions_to_keep"]
    if state == "commit":
        if journal is not None and journal.get("state") == COMMITTED and not begun:
            return planner.finish_precache(keep)
        if not begun:
            raise VolumeStateError("no two-phase import of %s was begun: run state=begin first" % vid)
        if files.import_ is None and files.clean is not None and files.clean.ino == journal.get("import_ino"):
            # The commit's rename happened and the task died before it recorded it: finish.
            return planner.finish_precache(keep) + [
                WriteJournal(pool_dir, vid, {"vid": str(vid), "state": COMMITTED},
                             "record the import of %s as committed" % vid)]
        if files.import_ is None:
            raise VolumeStateError(
                "the import image %s begun at %s is gone (qubesd deletes an uncommitted import image when "
                "the VM starts or the volume is created or removed); abort and begin again"
                % (rel(vid.import_), journal.get("written", "?")))
        begun_ino = journal.get("import_ino")
        if begun_ino is not None and begun_ino != files.import_.ino:
            raise VolumeStateError(
                "the import image %s is not the file that state=begin created (it was replaced: inode %d, "
                "begun as inode %d), so it may be another program's import; write into the begun file in "
                "place instead of replacing it, or abort and begin again" % (rel(vid.import_), files.import_.ino, begun_ino))
        planner.refuse_if_in_use("commit an import into")
        actions = []
        if size is None and files.import_.size != journal.get("size"):
            raise VolumeStateError(
                "the import image %s is %d bytes, but the import was begun with %s bytes; give size "
                "at commit to accept the new size" % (rel(vid.import_), files.import_.size, journal.get("size")))
        if size is not None and size != files.import_.size:
            planner.check_size(size)
            actions.append(ResizeInPlace(rel, vid.import_, size))
        if options["checksum"]:
            actions.append(VerifyChecksum(rel, vid.import_, options["checksum"]))
        actions.append(Fsync(rel, vid.import_))
        if not files.exists:
            actions[:0] = _new_volume_actions(planner, workspace, keep_import=True)
            actions.extend(planner.commit(vid.import_, options["revisions_to_keep"], files=VolumeFiles(vid)))
        else:
            actions.extend(planner.commit(vid.import_, options["revisions_to_keep"]))
        actions.append(WriteJournal(pool_dir, vid, {"vid": str(vid), "state": COMMITTED},
                                    "record the import of %s as committed" % vid))
        return actions

    if state == "begin":
        if size is None:
            raise InvalidArgument("state=begin needs size: the size of the image the other program will write")
        if begun:
            if journal.get("size") == size and files.import_ is not None:
                return []
            raise VolumeStateError("an import of %s (%s bytes) was begun at %s; commit or abort it first"
                                   % (vid, journal.get("size"), journal.get("written", "?")))
        planner.refuse_if_in_use("import into")
        planner.check_size(size)
        actions = [] if workspace.vm_dir is not None else [MakeVmDir(vid)]
        actions.append(Stage(rel, vid.import_, None, size, allow_copy=True))
        actions.append(WriteJournal(pool_dir, vid, {"vid": str(vid), "state": BEGUN, "size": size},
                                    "record the begun import of %s in the pool's journal" % vid))
        return actions

    # One shot.
    if begun:
        raise VolumeStateError("a two-phase import of %s was begun at %s; commit or abort it first"
                               % (vid, journal.get("written", "?")))
    if source is None and size is None:
        raise InvalidArgument("give src or src_vid (the data to import), or size alone to import an empty image")
    own = _own_image(files, source)
    if own is not None:
        raise InvalidArgument("the source %s is the volume's own image %s" % (source.description, own))
    planner.refuse_if_in_use("import into")
    result_size = size if size is not None else source.size
    planner.check_size(result_size)
    if not options["force"] and unchanged(workspace.vm_dir, files, source, result_size):
        if options["checksum"]:
            verify_clean_checksum(workspace.vm_dir, vid, options["checksum"])
        return planner.finish_precache(keep)
    actions = []
    if not files.exists:
        actions.extend(_new_volume_actions(planner, workspace))
    actions.append(Stage(rel, vid.import_, source, result_size, options["fallback"] != "never"))
    if options["checksum"]:
        actions.append(VerifyChecksum(rel, vid.import_, options["checksum"]))
    actions.extend(planner.commit(vid.import_, options["revisions_to_keep"],
                                  files=None if files.exists else VolumeFiles(vid)))
    return actions


def run_import_task(params, check_mode, diff):
    """reflink_import: open and lock the source, then plan and run like every volume task."""
    options = dict(params)
    options["size"] = None if params["size"] is None else parse_volume_size(params["size"])
    options["checksum"] = parse_checksum(params["checksum"])
    given_keep = check_revisions_to_keep(params["revisions_to_keep"], optional=True)
    vid = parse_vid(params["vid"])
    if params["state"] != "present" and (params["src"] or params["src_vid"]):
        raise InvalidArgument("src and src_vid go with state=present; with state=%s another program "
                              "writes the data" % params["state"])
    with contextlib.ExitStack() as stack:
        source = None
        if params["src"]:
            source = open_source_path(params["src"])
            stack.callback(source.close)
        elif params["src_vid"]:
            src_vid = parse_vid(params["src_vid"])
            src_pool = params["src_pool"] or params["pool"]
            if src_vid == vid and os.path.realpath(src_pool) == os.path.realpath(params["pool"]):
                raise InvalidArgument("src_vid %s is the volume being imported into" % src_vid)
            src_pool_dir = stack.enter_context(Directory.open_pool(src_pool))
            if not src_pool_dir.has_subdir(src_vid.prefix):
                raise InvalidArgument("src_pool %s is not a pool: it has no %s/ directory" % (src_pool, src_vid.prefix))
            stack.enter_context(volume_lock(src_pool_dir, src_vid, timeout=params["lock_timeout"],
                                            purpose="reflink_import reading %s" % src_vid,
                                            create=not check_mode, exclusive=False))
            source = open_source_volume(src_pool, src_vid)
            stack.callback(source.close)

        def plan(planner, context):
            workspace = context["workspace"]
            options["revisions_to_keep"] = planner.revisions_to_keep(given_keep)
            return plan_import(planner, workspace, options, source, read_journal(workspace.pool_dir, vid))

        def import_image(after):
            present = after.import_ is not None
            return {"import_image": os.path.join(params["pool"], vid.vm_dir, vid.import_) if present else None}

        return run_volume_task(params, check_mode, diff, "reflink_import state=%s %s" % (params["state"], vid),
                               plan, extra=import_image, changes=None if params["state"] == "abort" else "import into")

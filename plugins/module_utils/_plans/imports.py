# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Imports: where the data comes from, the one-shot import plan, and the task of reflink_import.

Data is always staged in ``<volume>-import.img`` (never attached by qubesd)
and committed like a VM's stop commits its dirty image.  A two-phase import
(begin, another program writes, commit or abort) is recorded in a journal
(``_journal.py``); staging and the two-phase plans are in ``_staging.py``,
checksums in ``_checksum.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Any

from ansible_collections.dom0.reflink.plugins.module_utils._fs import clone
from ansible_collections.dom0.reflink.plugins.module_utils._fs import compare
from ansible_collections.dom0.reflink.plugins.module_utils._plans.checksum import (
    VerifyChecksum,
    parse_checksum,
    verify_clean_checksum,
)
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import CloneError, InvalidArgument
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._plans.journal import read_journal
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import volume_lock
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import parse_vid
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import check_revisions_to_keep
from ansible_collections.dom0.reflink.plugins.module_utils._plans.staging import (
    Stage,
    new_volume_actions,
    one_shot_journal_actions,
    plan_two_phase,
)
from ansible_collections.dom0.reflink.plugins.module_utils._tasks.runner import run_volume_task
from ansible_collections.dom0.reflink.plugins.module_utils._base.units import parse_volume_size
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles


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

# -- plans -----------------------------------------------------------------

def _own_image(files, source):
    for info in (files.clean, files.dirty):
        if info is not None and source is not None and source.identity == (info.dev, info.ino):
            return info.name
    return None


def _refuse_impossible_reflink(workspace: Any, source: Source) -> None:
    """fallback: never, and a reflink from ``source`` into the pool is not possible: refused before any change."""
    how, code = clone.clone_probe(workspace.vm_dir or workspace.prefix_dir, source.fd)
    if how == clone.COPY:
        raise CloneError("cannot reflink %s into the pool (%s: another file system, or one that cannot share "
                         "blocks) and copying is not allowed (fallback: never); nothing was changed; %s"
                         % (source.description, errno.errorcode.get(code or 0, code), clone.NO_REFLINK_WAY_OUT), code)


def plan_import(planner, workspace, options, source, journal, warnings=None, check_mode=False):
    """Plan the task of reflink_import; ``options`` holds the parsed module options.

    ``warnings`` collects what the user should know although the task succeeds.
    """
    state = options["state"]
    files = planner.files
    vid = planner.vid
    rel = planner.rel
    size = options["size"]
    keep = options["revisions_to_keep"]
    if state != "present":
        return plan_two_phase(planner, workspace, options, journal, [] if warnings is None else warnings,
                              check_mode)
    # One shot.
    stale_journal = one_shot_journal_actions(planner, workspace, journal)
    if source is None and size is None:
        raise InvalidArgument("give src or src_vid (the data to import), or size alone to import an empty image")
    own = _own_image(files, source)
    if own is not None:
        raise InvalidArgument("the source %s is the volume's own image %s" % (source.description, own))
    if source is not None and source.size == 0:
        # As size: 0 is: a truncated download or an empty device would replace the volume by nothing.
        raise InvalidArgument("the source %s is empty (0 bytes): a volume of zero bytes cannot hold anything, so "
                              "it is not imported; nothing was changed (to clear the volume, give size alone, "
                              "without src or src_vid)" % source.description)
    planner.refuse_if_in_use("import into")
    result_size = size if size is not None else source.size
    planner.check_size(result_size)
    if not options["force"] and unchanged(workspace.vm_dir, files, source, result_size):
        if options["checksum"]:
            verify_clean_checksum(workspace.vm_dir, vid, options["checksum"])
        return planner.finish_precache(keep) + stale_journal
    planner.refuse_if_import_held("import into")
    if source is not None and options["fallback"] == "never":
        _refuse_impossible_reflink(workspace, source)
    actions = []
    if not files.exists:
        actions.extend(new_volume_actions(planner, workspace))
    actions.append(Stage(rel, vid.import_, source, result_size, options["fallback"] != "never"))
    if options["checksum"]:
        actions.append(VerifyChecksum(rel, vid.import_, options["checksum"]))
    actions.extend(planner.commit(vid.import_, options["revisions_to_keep"],
                                  files=None if files.exists else VolumeFiles(vid)))
    return actions + stale_journal


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
            return plan_import(planner, workspace, options, source, read_journal(workspace.pool_dir, vid),
                               context["warnings"], check_mode)

        def import_image(after):
            present = after.import_ is not None
            return {"import_image": os.path.join(params["pool"], vid.vm_dir, vid.import_) if present else None}

        return run_volume_task(params, check_mode, diff, "reflink_import state=%s %s" % (params["state"], vid),
                               plan, extra=import_image, changes=None if params["state"] == "abort" else "import into")

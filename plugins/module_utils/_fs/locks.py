# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cross-process locks of a pool: ``flock`` on files under ``<pool>/.reflink/locks/``.

One lock per pool (shared for work on one volume, exclusive for pool-wide
work such as gc) and one per volume (exclusive).  The pool lock is always taken
first.  The kernel drops a flock when its holder dies, so there is no stale lock
to clean up; lock files themselves are kept, since removing a lock file while
another process waits on it would split the lock in two.

An exclusive holder writes who it is into its lock file, so that a process
that times out can name it (``/proc/locks`` tells which pid holds it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import LockTimeout, NoSpaceForLock
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import Vid
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory, PoolDirectory

METADATA_DIR = ".reflink"
LOCKS_DIR = "locks"
POOL_LOCK = "pool.lock"
_PROC_LOCKS = "/proc/locks"
_POLL_START = 0.01
_POLL_MAX = 0.25
# A full file system, or the user's quota: what a write that needs new space fails with.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def metadata_dir(pool_dir: PoolDirectory, create: bool) -> Directory | None:
    """``<pool>/.reflink`` as a Directory (mode 0700), or None if missing and not ``create``."""
    return pool_dir.open_dir(METADATA_DIR, create=create, mode=0o700)


@contextlib.contextmanager
def metadata_subdir(pool_dir: PoolDirectory, name: str, create: bool = False) -> Iterator[Directory | None]:
    """``<pool>/.reflink/<name>`` (mode 0700) for the ``with`` block; None if missing and not ``create``."""
    meta = metadata_dir(pool_dir, create)
    if meta is None:
        yield None
        return
    with meta:
        subdir = meta.open_dir(name, create=create, mode=0o700)
        if subdir is None:
            yield None
            return
        with subdir:
            yield subdir


def _holders(st: os.stat_result) -> list[int]:
    """Pids holding a flock on the file with stat ``st``, from /proc/locks.

    Matched by inode number: on btrfs, stat's st_dev is the subvolume's
    anonymous device, not the one /proc/locks prints.
    """
    inode = ":%d" % st.st_ino
    pids = []
    try:
        with open(_PROC_LOCKS, encoding="ascii", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                # "N: FLOCK ADVISORY WRITE pid maj:min:ino start end"; waiters have "->" after N:
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(inode):
                    pids.append(int(fields[4]))
    except (OSError, ValueError):
        pass
    return pids


def _describe_holders(fd: int, path: str) -> str:
    st = os.fstat(fd)
    pids = _holders(st)
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        record = {}
    parts = []
    for pid in pids:
        text = "pid %d" % pid
        if record.get("pid") == pid:
            text += " (%s, since %s)" % (record.get("purpose", "?"), record.get("since", "?"))
        else:
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as handle:
                    command = handle.read().replace(b"\0", b" ").strip().decode(errors="replace")
                if command:
                    text += " (%s)" % command[:120]
            except OSError:
                pass
        parts.append(text)
    if not parts:
        return "another process (it may just have released it)"
    return ", ".join(parts)


def _write_holder_record(fd: int, purpose: str) -> None:
    """Write who holds the lock into its file: best effort, since only a timed-out waiter reads it.

    On a full file system the record cannot be written (btrfs needs new space to rewrite even a few
    bytes), and a full pool is when gc and removals are needed most: the lock is held all the same.
    """
    record = json.dumps({
        "pid": os.getpid(),
        "purpose": purpose,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }).encode()
    try:
        # Overwritten in place, cut only when an older record was longer: a truncation is a metadata
        # write, and a batch writes one record per volume.
        os.pwrite(fd, record, 0)
        if os.fstat(fd).st_size > len(record):
            os.ftruncate(fd, len(record))
    except OSError as exc:
        if exc.errno not in NO_SPACE_ERRNOS:
            raise
        # An older holder's record would name the wrong process; cutting it frees space, needs none.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)


class Lock:
    """A held flock; release with :meth:`release` or by leaving the ``with`` block."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def acquire(directory: Directory, name: str, *, exclusive: bool, timeout: float, purpose: str, what: str,
            create: bool = True, deadline: float | None = None, record: bool = True) -> Lock | None:
    """Take the flock on ``directory/name`` within ``timeout`` seconds (or by ``deadline``, a monotonic time).

    Returns a :class:`Lock`, or None when ``create`` is false and the lock file
    does not exist (check mode: nothing can be holding it for our kind of work
    then, and we must not create it).  Raises LockTimeout naming the holder.
    ``record``: an exclusive holder writes who it is into the file; check mode
    holds the lock all the same, and writes nothing.
    """
    # A shared holder only reads (so reflink_info works on a read-only pool); an exclusive one
    # writes who it is into the file.
    record = record and exclusive
    flags = (os.O_RDWR if record else os.O_RDONLY) | (os.O_CREAT if create else 0)
    try:
        fd = directory.open_file(name, flags, 0o600)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in NO_SPACE_ERRNOS:
            raise
        raise NoSpaceForLock(_no_space_text(directory.join(name), "lock file", exc)) from None
    operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    if deadline is None:
        deadline = time.monotonic() + timeout
    delay = _POLL_START
    try:
        while True:
            try:
                fcntl.flock(fd, operation)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        "timed out after %s s waiting for the %s lock (%s): held by %s; "
                        "retry when it is done or raise lock_timeout"
                        % (timeout, what, directory.join(name), _describe_holders(fd, directory.join(name)))) from None
                time.sleep(delay)
                delay = min(delay * 2, _POLL_MAX)
        if record:
            _write_holder_record(fd, purpose)
    except BaseException:
        os.close(fd)
        raise
    return Lock(fd)


def _no_space_text(path: str, what: str, exc: OSError) -> str:
    return ("cannot create the %s %s: %s; the file system is full and this step needs a little new space: "
            "free some by hand (remove a file you do not need), then run the task again"
            % (what, path, exc.strerror))


@contextlib.contextmanager
def _locks_dir(pool_dir: PoolDirectory, create: bool) -> Iterator[Directory | None]:
    """``<pool>/.reflink/locks`` for the ``with`` block (see metadata_subdir); making it on a full file system fails clearly."""
    with contextlib.ExitStack() as stack:
        try:
            locks = stack.enter_context(metadata_subdir(pool_dir, LOCKS_DIR, create))
        except OSError as exc:
            if exc.errno not in NO_SPACE_ERRNOS:
                raise
            raise NoSpaceForLock(_no_space_text(os.path.join(pool_dir.path, METADATA_DIR), "lock directory", exc)) from None
        yield locks


@contextlib.contextmanager
def pool_lock(pool_dir: PoolDirectory, *, exclusive: bool, timeout: float, purpose: str,
              create: bool = True, record: bool = True) -> Iterator[None]:
    """Hold the pool lock (shared or exclusive) for the ``with`` block; ``record``: see :func:`acquire`."""
    with _locks_dir(pool_dir, create) as locks:
        lock = None
        if locks is not None:
            lock = acquire(locks, POOL_LOCK, exclusive=exclusive, timeout=timeout, purpose=purpose,
                           what="pool", create=create, record=record)
        try:
            yield
        finally:
            if lock is not None:
                lock.release()


def volume_lock(pool_dir: PoolDirectory, vid: Vid, *, timeout: float, purpose: str, create: bool = True,
                exclusive: bool = True, record: bool = True) -> contextlib.AbstractContextManager[None]:
    """Hold the pool lock shared and the volume lock of ``vid`` for the ``with`` block.

    ``exclusive=False`` takes the volume lock shared, for reading a source volume; ``record``: see :func:`acquire`.
    """
    return _holding(pool_dir, [(POOL_LOCK, False, "pool"), (vid.lock_name, exclusive, "volume %s" % vid)],
                    timeout=timeout, purpose=purpose, create=create, record=record)


def try_volume_lock(locks_dir: Directory, vid: Vid) -> Lock | None:
    """Take ``vid``'s lock exclusively without waiting; None if it is held or absent (for gc)."""
    try:
        fd = locks_dir.open_file(vid.lock_name, os.O_RDWR)
    except FileNotFoundError:
        return Lock(None)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return Lock(fd)


def volume_locks(pool_dir: PoolDirectory, vids: Iterable[Vid], *, timeout: float, purpose: str,
                 create: bool = True, record: bool = True) -> contextlib.AbstractContextManager[None]:
    """Hold the pool lock shared and the locks of all ``vids`` (exclusive) for the ``with`` block.

    The volume locks are taken in vid order, as every batch takes them, so two
    batches that share volumes wait for each other instead of deadlocking, and
    so does a task that holds one volume lock.  reflink_import from another
    volume (src_vid) holds the source's lock while it waits for its target's:
    against a batch holding the target and waiting for the source, one of the
    two times out (naming the holder) rather than both waiting forever.  One
    deadline of ``timeout`` seconds covers them all.  ``record``: see :func:`acquire`.
    """
    wanted = [(POOL_LOCK, False, "pool")]
    wanted.extend((vid.lock_name, True, "volume %s" % vid) for vid in sorted(vids, key=str))
    return _holding(pool_dir, wanted, timeout=timeout, purpose=purpose, create=create, record=record)


@contextlib.contextmanager
def _holding(pool_dir: PoolDirectory, wanted: list[tuple[str, bool, str]], *, timeout: float, purpose: str,
             create: bool, record: bool) -> Iterator[None]:
    """Take the locks ``wanted`` ((name, exclusive, what), in that order) and hold them for the ``with`` block.

    One deadline of ``timeout`` seconds covers them all; they are released in the reverse order.
    """
    deadline = time.monotonic() + timeout
    with _locks_dir(pool_dir, create) as locks:
        held: list[Lock] = []
        try:
            if locks is not None:
                for name, exclusive, what in wanted:
                    try:
                        lock = acquire(locks, name, exclusive=exclusive, timeout=timeout, purpose=purpose,
                                       what=what, create=create, deadline=deadline, record=record)
                    except NoSpaceForLock:
                        if name == POOL_LOCK:
                            raise
                        # A full file system has no room for a new volume lock file (a volume qubesd made):
                        # the pool lock held exclusively keeps every other task of the pool out instead
                        # (each holds it shared), so that a removal, which frees space, still runs.
                        for taken in reversed(held):
                            taken.release()
                        lock = acquire(locks, POOL_LOCK, exclusive=True, timeout=timeout, purpose=purpose,
                                       what="pool (held exclusively: no room for the lock file of %s)" % what,
                                       create=False, deadline=deadline, record=record)
                        held = [lock] if lock is not None else []
                        break
                    if lock is not None:
                        held.append(lock)
            yield
        finally:
            for lock in reversed(held):
                lock.release()

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests that change, or depend on, what the whole machine sees run alone.

Most tests touch only directories of their own on the loop filesystems of
their own pytest session and run beside the tests of other pytest-xdist
workers (``make pytest`` runs two) or of other sessions.  A few must not:

* a test that changes state another test's module run would see: qubesd's
  running-state files in /var/run/qubes (with no qubes.xml read, the in-use
  check takes ``volume-running-<any pool>:<vid>`` for the vid in any pool),
  /var/lib/qubes/qubes.xml (``qubes_xml: auto``), users, system services, a
  fixed path outside the test's own directories;
* a test that another test's machine-wide action would upset.

Such a test is marked ``@pytest.mark.serial``.  conftest's autouse fixture
then takes an exclusive flock of LOCK_PATH for it (setup, call and teardown
of its function fixtures); every other test holds a shared one.  So a marked
test starts only when no other test of any session on this machine that
loads tests/conftest.py runs, and no test starts until it has ended.  A
waiting exclusive taker goes first: the gate lock GATE_PATH, held while a
lock is being taken, keeps new shared takers out meanwhile.

Helpers that plant such state call ``require_serial()``: a test that uses
them without the mark fails, saying so.  flock locks go with the process: a
killed worker leaves no lock held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

LOCK_DIR = '/var/tmp/dom0-reflink-tests'   # conftest's TESTS_BASE_DIR; tools/loopfs.py never removes dot files
LOCK_PATH = os.path.join(LOCK_DIR, '.machine.lock')
GATE_PATH = os.path.join(LOCK_DIR, '.machine.gate')
MARKER = 'serial'
MARKER_HELP = ('serial: the test changes, or depends on, what the whole machine sees (/var/run/qubes, '
               '/var/lib/qubes, users, services); it runs while no other test runs (tests/machine_lock.py)')

_held_exclusive = False


def _open(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


@contextlib.contextmanager
def machine_lock(exclusive: bool) -> Iterator[None]:
    """Hold the machine's test lock, exclusive or shared, for the ``with`` block."""
    global _held_exclusive  # noqa: PLW0603 (one flag per process: the test this process runs)
    os.makedirs(LOCK_DIR, exist_ok=True)
    gate = _open(GATE_PATH)
    try:
        lock = _open(LOCK_PATH)
    except BaseException:
        os.close(gate)
        raise
    try:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        _held_exclusive = exclusive
        try:
            yield
        finally:
            _held_exclusive = False
            # LOCK_UN drops the lock of the open file itself, even if a child forked
            # during the test still has the descriptor.
            fcntl.flock(lock, fcntl.LOCK_UN)
    finally:
        os.close(lock)
        os.close(gate)


def require_serial(what: str) -> None:
    """Fail unless the running test holds the exclusive lock (is marked serial)."""
    if not _held_exclusive:
        raise AssertionError('%s is seen by every test on this machine: mark the test '
                             '@pytest.mark.serial (see tests/machine_lock.py)' % what)

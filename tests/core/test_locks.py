# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cross-process locks: a second process waits, times out naming the holder, and a dead holder frees."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import LockTimeout
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import pool_lock, volume_lock
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import parse_vid

VID = parse_vid("appvms/work/private")

HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
    from ansible_collections.dom0.reflink.plugins.module_utils._fs.locks import volume_lock
    from ansible_collections.dom0.reflink.plugins.module_utils._base.names import parse_vid
    with Directory.open_pool(sys.argv[1]) as pool:
        with volume_lock(pool, parse_vid("appvms/work/private"), timeout=5, purpose="test holder import"):
            print("held", flush=True)
            time.sleep(60)
""")


@pytest.fixture
def holder(btrfs_dir):
    collections = next(iter(path for path in sys.path if path.endswith("pytest-collections")), None)
    assert collections is not None
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(btrfs_dir), collections],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_second_process_times_out_naming_the_holder(btrfs_dir, holder):
    started = time.monotonic()
    with Directory.open_pool(str(btrfs_dir)) as pool:
        with pytest.raises(LockTimeout) as excinfo:
            with volume_lock(pool, VID, timeout=0.5, purpose="second"):
                pass
    waited = time.monotonic() - started
    message = str(excinfo.value)
    assert "pid %d" % holder.pid in message
    assert "test holder import" in message
    assert "volume appvms/work/private" in message
    assert waited >= 0.5


def test_lock_of_a_killed_holder_is_free_again(btrfs_dir, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with Directory.open_pool(str(btrfs_dir)) as pool:
        with volume_lock(pool, VID, timeout=1, purpose="after"):
            pass


def test_other_volume_is_not_blocked(btrfs_dir, holder):
    with Directory.open_pool(str(btrfs_dir)) as pool:
        with volume_lock(pool, parse_vid("appvms/work/root"), timeout=0.5, purpose="other"):
            pass


def test_exclusive_pool_lock_waits_for_volume_work(btrfs_dir, holder):
    with Directory.open_pool(str(btrfs_dir)) as pool:
        with pytest.raises(LockTimeout) as excinfo:
            with pool_lock(pool, exclusive=True, timeout=0.3, purpose="gc"):
                pass
    assert "pool lock" in str(excinfo.value)


def test_waiter_gets_the_lock_when_the_holder_finishes(btrfs_dir, holder):
    with Directory.open_pool(str(btrfs_dir)) as pool:
        def release_soon():
            time.sleep(0.3)
            holder.kill()
        threading.Thread(target=release_soon).start()
        with volume_lock(pool, VID, timeout=10, purpose="waiter"):
            pass


def test_check_mode_creates_no_lock_files(btrfs_dir):
    with Directory.open_pool(str(btrfs_dir)) as pool:
        with volume_lock(pool, VID, timeout=1, purpose="check", create=False):
            pass
    assert os.listdir(btrfs_dir) == []


def test_lock_files_are_private(btrfs_dir):
    with Directory.open_pool(str(btrfs_dir)) as pool:
        with volume_lock(pool, VID, timeout=1, purpose="modes"):
            pass
    locks = btrfs_dir / ".reflink" / "locks"
    assert stat.S_IMODE(os.stat(btrfs_dir / ".reflink").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(locks).st_mode) == 0o700
    assert sorted(os.listdir(locks)) == ["appvms-work-private.lock", "pool.lock"]
    for name in os.listdir(locks):
        assert stat.S_IMODE(os.stat(locks / name).st_mode) == 0o600

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection on a fleet: three hosts over SSH, an unprivileged login, sudo, forks 3.

Each test plays tests/fleet/fleet.yml (the role dom0.reflink.pool, an import, a
pin, gc and info) and checks what a fleet operator relies on: every host's
disk holds its own data, owned by root; the play reports what it did; a
second run changes nothing; one host that fails does not stop the others.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess

import disk_helpers
import pytest
from fleet_helpers import CLONE_SIZE, FLEET_USER, MIB, PRIVATE_SIZE, SRC_SIZE, STALE_TEMPFILE

VIDS = ('appvms/clone/private', 'appvms/work/private', 'vm-templates/base/root')


def _read(path):
    with open(path, 'rb') as handle:
        return handle.read()


def assert_disk(host, private_size=PRIVATE_SIZE):
    """The volumes of host's pool hold what fleet.yml put there, every file owned by root."""
    pool = host.pool
    src = _read(host.src)
    root = pool / 'vm-templates' / 'base' / 'root.img'
    assert _read(root) == src, '%s: the base image is not the host\'s source image' % host.name

    private = pool / 'appvms' / 'work' / 'private.img'
    assert private.stat().st_size == private_size, host.name
    assert _read(private).count(0) == private_size, '%s: a new volume must be all zeros' % host.name

    clone = pool / 'appvms' / 'clone' / 'private.img'
    data = _read(clone)
    assert len(data) == CLONE_SIZE, host.name
    assert data[:SRC_SIZE] == src and data[SRC_SIZE:].count(0) == CLONE_SIZE - SRC_SIZE, \
        '%s: the clone is not the source image padded with zeros' % host.name

    pin = clone.with_name('private.img.pin-fleet-baseline')
    assert disk_helpers.same_bytes(pin, clone), '%s: the pin does not hold the clone\'s image' % host.name

    assert not (pool / STALE_TEMPFILE).exists(), '%s: gc left the stale tempfile' % host.name
    assert not (pool / 'appvms' / 'old').exists(), '%s: gc left the empty VM directory' % host.name

    # The modules ran as root through sudo: nothing of the login user's is in the pool.
    not_root = sorted(rel for rel in disk_helpers.listing(pool) if os.lstat(pool / rel).st_uid != 0)
    assert not not_root, '%s: files not owned by root: %s' % (host.name, not_root)


def assert_ok(run, host_name, changed):
    """The play recap of host_name: no failure, reachable, and changed something or not."""
    stats = run.stats(host_name)
    assert stats['failures'] == 0 and stats['unreachable'] == 0, '%s: %r\n%s' % (host_name, stats, run.describe())
    assert (stats['changed'] > 0) == changed, '%s: changed=%d\n%s' % (host_name, stats['changed'], run.describe())


def assert_reports(run, host):
    """What the play's results say about host: who ran, which Python, what gc and info found."""
    login = run.result('Find out who logs in over SSH', host.name)
    assert login['stdout'] == FLEET_USER, login
    assert run.result('Find out who runs the modules', host.name)['stdout'] == 'root'
    assert 'Accepted publickey for %s' % FLEET_USER in run.sshd_logs[host.name], run.sshd_logs[host.name]

    # The first task of the run on a host reports the interpreter Ansible discovered there.
    python = login['ansible_facts']['discovered_interpreter_python']
    version = subprocess.run([python, '-c', 'import sys; print("%d.%d" % sys.version_info[:2])'],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert tuple(map(int, version.split('.'))) >= (3, 11), '%s is Python %s' % (python, version)
    assert '.venv' not in python, python

    gc = run.result('Clean up the pool', host.name)
    removed = [entry['file'] for entry in gc['removed']]
    assert STALE_TEMPFILE in removed, gc

    info = run.result('Report the pool', host.name)
    assert info['pool']['fstype'] == host.ssh.fs_kind and info['pool']['reflink'] is True, info['pool']
    volumes = {volume['vid']: volume for volume in info['volumes']}
    assert sorted(volumes) == sorted(VIDS), sorted(volumes)
    assert volumes['vm-templates/base/root']['size'] == SRC_SIZE
    assert volumes['appvms/work/private']['size'] == PRIVATE_SIZE
    assert volumes['appvms/clone/private']['size'] == CLONE_SIZE
    assert [pin['name'] for pin in volumes['appvms/clone/private']['pins']] == ['fleet-baseline']


def _sftp_requests(run, host):
    return len(re.findall(r"Starting session: subsystem 'sftp'", run.sshd_logs[host.name]))


@pytest.mark.parametrize('pipelining', [True, False], ids=['pipelining', 'no-pipelining'])
def test_fleet_converges_then_changes_nothing(fleet, pipelining):
    first = fleet.run(pipelining)
    assert first.returncode == 0, first.describe()
    # Interpreter discovery, become and the modules themselves raise no warning on a plain Debian host.
    assert '[WARNING]' not in first.stderr, first.stderr
    for host in fleet.hosts:
        assert_ok(first, host.name, changed=True)
        assert_reports(first, host)
        assert_disk(host)
        # Pipelining sends each module on the SSH session's stdin; without it, Ansible copies
        # it to a temporary directory of the login user (SFTP) for sudo to run from there.
        if pipelining:
            assert _sftp_requests(first, host) == 0, first.sshd_logs[host.name]
        else:
            assert _sftp_requests(first, host) > 0, first.sshd_logs[host.name]

    second = fleet.run(pipelining)
    assert second.returncode == 0, second.describe()
    for host in fleet.hosts:
        assert_ok(second, host.name, changed=False)
        assert second.result('Clean up the pool', host.name)['removed'] == []
        assert_disk(host)


def test_one_bad_host_fails_alone(fleet):
    first = fleet.run(pipelining=True)
    assert first.returncode == 0, first.describe()

    # fleet3's private volume would shrink from 64 to 32 MiB, without allow_shrink.
    bad = fleet.hosts[2]
    run = fleet.run(pipelining=True, host_vars={bad.name: {'fleet_private_size': '%dMiB' % (PRIVATE_SIZE // MIB // 2)}})
    assert run.returncode == 2, run.describe()
    stats = run.stats(bad.name)
    assert stats['failures'] == 1 and stats['changed'] == 0, stats
    failed = run.result('Create, grow or remove the volumes', bad.name)
    assert failed is not None, 'no result of the role\'s batch task on %s' % bad.name
    assert failed['failed'] and 'allow_shrink' in str(failed), failed
    assert run.result('Report the pool', bad.name) is None, 'the failed host went on'
    assert_disk(bad)  # unchanged: still 64 MiB, with everything else

    for host in fleet.hosts[:2]:
        assert_ok(run, host.name, changed=False)
        assert run.result('Report the pool', host.name) is not None
        assert_disk(host)


def test_held_pool_lock_times_out_on_its_host_only(fleet):
    # Another task on fleet2 (here: this test) holds its pool's lock exclusively, as gc
    # does; fleet2's tasks wait 2 s for it and fail, naming the lock; the others go on.
    locked = fleet.hosts[1]
    locks = locked.pool / '.reflink' / 'locks'
    locks.mkdir(mode=0o700, parents=True)
    os.chmod(locks.parent, 0o700)
    lock_path = locks / 'pool.lock'
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        run = fleet.run(pipelining=True, host_vars={locked.name: {'fleet_lock_timeout': 2}})
    finally:
        os.close(fd)
    assert run.returncode == 2, run.describe()
    stats = run.stats(locked.name)
    assert stats['failures'] == 1 and stats['changed'] == 0, stats
    failed = run.result('Set up the pool', locked.name)
    assert failed['failed'], failed
    assert 'timed out after 2 s' in failed['msg'] and str(lock_path) in failed['msg'], failed['msg']
    assert not (locked.pool / 'vm-templates').exists()

    for host in (fleet.hosts[0], fleet.hosts[2]):
        assert_ok(run, host.name, changed=True)
        assert_disk(host)

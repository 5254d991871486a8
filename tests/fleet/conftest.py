# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the fleet suite: three SSH "hosts" on this machine, managed as a user with sudo.

Everything a managed fleet has that the other suites do not (SSH, an
unprivileged login, become, forks, interpreter discovery, pipelining on and
off) is made here, for the session, and removed at its end whatever happens:

    fleet_user         the user reflink-fleet: key login, passwordless sudo (/etc/sudoers.d)
    fleet_sshd         one /usr/sbin/sshd -D per host, on 127.0.0.2-4, port of its own, own host key
    fleet_filesystems  a loop filesystem per host: btrfs, btrfs, XFS (reflink=1)
    fleet              per test: a fresh pool and source image per host, and fleet.run(...)

Every "host" is this machine, so each one has its own pool path (on its own
filesystem) and each sshd its own address; the inventory names them fleet1-3.
The user is the machine's: one fleet session runs at a time (see fleet_rundir).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

_HERE = pathlib.Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import disk_helpers  # noqa: E402
from fleet_helpers import (  # noqa: E402
    CLONE_SIZE, FLEET_USER, HOSTS, MIB, PRIVATE_SIZE, SRC_SIZE, STALE_TEMPFILE,
)

FLEET_BASE = pathlib.Path('/var/tmp/dom0-reflink-fleet')
SUDOERS_FILE = pathlib.Path('/etc/sudoers.d') / FLEET_USER
SSHD = '/usr/sbin/sshd'
SSHD_PRIVSEP_DIR = pathlib.Path('/run/sshd')
PLAYBOOK = _HERE / 'fleet.yml'
CALLBACK_DIR = _HERE / 'callback_plugins'
PLAY_TIMEOUT = 300
SESSION_LOCK_TIMEOUT = 900
TOOLS = ('ssh', 'ssh-keygen', SSHD, 'sudo', 'visudo', 'useradd', 'userdel')


def _run(cmd, **kwargs):
    """Run a command (stdin closed); fail the test with its output when it fails."""
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        command = ' '.join(map(str, cmd))
        pytest.fail('%s failed with status %d:\n%s%s' % (command, proc.returncode, proc.stdout, proc.stderr),
                    pytrace=False)
    return proc


def _processes_of(uid):
    """Pids of the processes running as uid."""
    pids = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                if os.stat('/proc/' + entry).st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _remove_user():
    """Remove the fleet user (home included) and its sudoers file; either may be missing."""
    SUDOERS_FILE.unlink(missing_ok=True)
    try:
        uid = pwd.getpwnam(FLEET_USER).pw_uid
    except KeyError:
        return
    # userdel refuses while a process of the user lives.  Those are the SSH sessions of
    # this suite (an sshd session outlives its listener): end them.
    deadline = time.monotonic() + 10
    while _processes_of(uid) and time.monotonic() < deadline:
        for pid in _processes_of(uid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(0.2)
    for pid in _processes_of(uid):   # what SIGTERM did not end in 10 s
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if _processes_of(uid):
        time.sleep(0.5)
    _run(['userdel', '--remove', FLEET_USER])


# -------------------------------------------------------------- session setup

@pytest.fixture(scope='session')
def fleet_rundir():
    """A directory of this session for keys, configs, logs and inventories (mode 0700).

    The user, its sudoers file and /var/tmp/dom0-reflink-fleet are the machine's, not
    the session's: one fleet session runs at a time (a second one waits for the
    flock on session.lock), and what the holder finds there was left by an aborted one.
    """
    if os.geteuid() != 0:
        pytest.skip('needs root: it makes a user, sudoers rules, loop filesystems and runs sshd')
    missing = [tool for tool in TOOLS if shutil.which(tool, path=os.environ.get('PATH', '') + ':/usr/sbin:/sbin') is None]
    if missing:
        pytest.fail('missing %s: run `make deps` (openssh-server, openssh-client, sudo)' % ', '.join(missing),
                    pytrace=False)
    FLEET_BASE.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock_fd = os.open(FLEET_BASE / 'session.lock', os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + SESSION_LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail('another fleet session has held %s for %d s'
                                % (FLEET_BASE / 'session.lock', SESSION_LOCK_TIMEOUT), pytrace=False)
                time.sleep(1)
        for stale in FLEET_BASE.glob('run-*'):
            shutil.rmtree(stale, ignore_errors=True)
        rundir = pathlib.Path(tempfile.mkdtemp(prefix='run-', dir=FLEET_BASE))
        try:
            yield rundir
        finally:
            shutil.rmtree(rundir, ignore_errors=True)
    finally:
        os.close(lock_fd)


@pytest.fixture(scope='session')
def fleet_user(fleet_rundir):
    """The unprivileged login of the fleet: key only, passwordless sudo; returns the private key's path."""
    _remove_user()  # left by an aborted session, if it is there
    key = fleet_rundir / 'client_key'
    _run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', FLEET_USER + '@fleet-tests', '-f', str(key)])
    try:
        # '*' is no password at all, but unlike useradd's default '!' not a locked account:
        # sshd (without PAM) refuses every login, keys too, of a locked one.
        _run(['useradd', '--create-home', '--shell', '/bin/sh', '--password', '*',
              '--comment', 'dom0.reflink fleet tests', FLEET_USER])
        user = pwd.getpwnam(FLEET_USER)
        ssh_dir = pathlib.Path(user.pw_dir) / '.ssh'
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        authorized = ssh_dir / 'authorized_keys'
        authorized.write_text(key.with_suffix('.pub').read_text())
        authorized.chmod(0o600)
        for path in (ssh_dir, authorized):
            os.chown(path, user.pw_uid, user.pw_gid)
        # Checked with visudo before it is installed: a broken file in /etc/sudoers.d breaks sudo for all.
        # The temporary name has a dot, which sudo's @includedir skips.
        rule = fleet_rundir / 'sudoers'
        rule.write_text('%s ALL=(ALL:ALL) NOPASSWD: ALL\n' % FLEET_USER)
        _run(['visudo', '-c', '-q', '-f', str(rule)])
        staged = SUDOERS_FILE.with_name('.%s.tmp' % FLEET_USER)
        shutil.copyfile(rule, staged)
        staged.chmod(0o440)
        os.replace(staged, SUDOERS_FILE)
        yield key
    finally:
        _remove_user()


@dataclasses.dataclass
class SshHost:
    """One host of the fleet: its sshd and where its log goes."""

    name: str
    address: str
    fs_kind: str
    port: int = 0
    log: pathlib.Path | None = None
    process: subprocess.Popen | None = None

    def log_text(self):
        return self.log.read_text(errors='replace')


def _free_port(address):
    """A TCP port nothing listens on at address (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def _die_with_parent():
    # sshd must not outlive a test session that is killed (SIGKILL skips the finalizers).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start_sshd(host, hostdir):
    key = hostdir / 'ssh_host_ed25519_key'
    _run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', host.name, '-f', str(key)])
    host.port = _free_port(host.address)
    config = hostdir / 'sshd_config'
    config.write_text('\n'.join([
        '# sshd of the fleet test host %s (tests/fleet/conftest.py)' % host.name,
        'ListenAddress %s:%d' % (host.address, host.port),
        'HostKey %s' % key,
        'PidFile %s' % (hostdir / 'sshd.pid'),
        'AllowUsers %s' % FLEET_USER,
        'PermitRootLogin no',
        'PubkeyAuthentication yes',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'StrictModes yes',
        # Without pipelining Ansible copies each module over SFTP; VERBOSE logs those requests.
        'Subsystem sftp internal-sftp',
        'LogLevel VERBOSE',
        '',
    ]))
    _run([SSHD, '-t', '-f', str(config)])
    host.log = hostdir / 'sshd.log'
    with open(host.log, 'wb') as log:
        host.process = subprocess.Popen([SSHD, '-D', '-e', '-f', str(config)], stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=log, preexec_fn=_die_with_parent)  # noqa: PLW1509 (no threads here)
    deadline = time.monotonic() + 10
    while True:
        if host.process.poll() is not None:
            pytest.fail('sshd of %s exited with status %d:\n%s' % (host.name, host.process.returncode, host.log_text()),
                        pytrace=False)
        try:
            with socket.create_connection((host.address, host.port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail('sshd of %s does not listen on %s:%d:\n%s'
                            % (host.name, host.address, host.port, host.log_text()), pytrace=False)
            time.sleep(0.05)
    return key.with_suffix('.pub').read_text().split()[:2]


def _stop_sshd(host):
    if host.process is None or host.process.poll() is not None:
        return
    host.process.terminate()
    try:
        host.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        host.process.kill()
        host.process.wait(timeout=10)


@pytest.fixture(scope='session')
def fleet_sshd(fleet_rundir, fleet_user):
    """Start one sshd per host; returns (hosts, known_hosts path).  Stopped at the end of the session."""
    made_privsep = not SSHD_PRIVSEP_DIR.exists()
    if made_privsep:
        SSHD_PRIVSEP_DIR.mkdir(mode=0o755)  # sshd refuses to start without it; systemd makes it otherwise
    hosts = [SshHost(name, address, kind) for name, address, kind in HOSTS]
    known_hosts = fleet_rundir / 'known_hosts'
    try:
        lines = []
        for host in hosts:
            hostdir = fleet_rundir / host.name
            hostdir.mkdir(mode=0o700)
            key_type, key_data = _start_sshd(host, hostdir)
            lines.append('[%s]:%d %s %s\n' % (host.address, host.port, key_type, key_data))
        known_hosts.write_text(''.join(lines))
        yield hosts, known_hosts
    finally:
        for host in hosts:
            _stop_sshd(host)
        if made_privsep:
            # Left when another sshd put something there meanwhile: it is theirs now.
            with contextlib.suppress(OSError):
                SSHD_PRIVSEP_DIR.rmdir()


@pytest.fixture(scope='session')
def fleet_filesystems(fleet_rundir):
    """{host name: LoopFs}: btrfs for fleet1 and fleet2, XFS (reflink=1) for fleet3."""
    loopfs = sys.modules['loopfs']  # loaded by tests/conftest.py
    base = str(FLEET_BASE / 'fs')
    loopfs.cleanup_stale(base)
    made = {}
    try:
        for name, _address, kind in HOSTS:
            made[name] = loopfs.create(kind, None, base)
        yield made
    finally:
        failures = []
        for fs in made.values():   # each one, even when an earlier one fails to go
            try:
                fs.destroy()
            except Exception as exc:  # pylint: disable=broad-exception-caught
                failures.append('%s: %s' % (fs, exc))
        if failures:
            raise RuntimeError('could not remove loop filesystems: %s' % '; '.join(failures))


# ------------------------------------------------------------------ the fleet

@dataclasses.dataclass
class FleetHost:
    """What one host of the fleet has for the current test."""

    name: str
    ssh: SshHost
    pool: pathlib.Path
    src: pathlib.Path
    src_sha256: str
    seed: int


class PlayRun:
    """One ansible-playbook run: exit status, the fleet_json document, stderr and what sshd logged meanwhile."""

    def __init__(self, proc, sshd_logs):
        self.returncode = proc.returncode
        self.stderr = proc.stderr
        self.stdout = proc.stdout
        self.sshd_logs = sshd_logs
        try:
            self.document = json.loads(proc.stdout)
        except ValueError:
            pytest.fail('the play printed no JSON (exit status %d)\n--- stdout\n%s\n--- stderr\n%s'
                        % (proc.returncode, proc.stdout, proc.stderr), pytrace=False)

    def stats(self, host):
        return self.document['stats'][host]

    def result(self, task_name, host):
        """The result of the task (by its name, or the end of it: a role's tasks are 'role : name') on host."""
        for task in self.document['tasks']:
            if (task['name'] == task_name or task['name'].endswith(' : ' + task_name)) and host in task['hosts']:
                return task['hosts'][host]
        return None

    def describe(self):
        return 'exit status %d\n--- stdout\n%s\n--- stderr\n%s' % (self.returncode, self.stdout, self.stderr)


class Fleet:
    """The three hosts with a pool each; run(pipelining, host_vars) plays fleet.yml on them."""

    def __init__(self, hosts, workdir, key, known_hosts, env):
        self.hosts = hosts
        self.workdir = workdir
        self.key = key
        self.known_hosts = known_hosts
        self.env = env
        self.runs = 0

    def inventory(self, host_vars):
        ssh_args = ' '.join([
            '-F /dev/null',  # nothing from root's or the system's ssh_config
            '-o UserKnownHostsFile=%s' % self.known_hosts,
            '-o StrictHostKeyChecking=yes',
            '-o IdentitiesOnly=yes',
            '-o BatchMode=yes',
        ])
        hosts = {}
        for host in self.hosts:
            hosts[host.name] = {
                'ansible_host': host.ssh.address,
                'ansible_port': host.ssh.port,
                'fleet_pool': str(host.pool),
                'fleet_src': str(host.src),
                'fleet_src_sha256': host.src_sha256,
                'fleet_private_size': '%dMiB' % (PRIVATE_SIZE // MIB),
                'fleet_clone_size': '%dMiB' % (CLONE_SIZE // MIB),
                'fleet_lock_timeout': 60,
            }
            hosts[host.name].update(host_vars.get(host.name, {}))
        return {'fleet': {
            'hosts': hosts,
            'vars': {
                'ansible_connection': 'ssh',
                'ansible_user': FLEET_USER,
                'ansible_ssh_private_key_file': str(self.key),
                'ansible_ssh_common_args': ssh_args,
                'ansible_become_method': 'sudo',
            },
        }}

    def run(self, pipelining, host_vars=None):
        """Play fleet.yml with forks 3; host_vars {host: {var: value}} override the inventory's."""
        self.runs += 1
        inventory = self.workdir / ('inventory-%d.json' % self.runs)  # the yaml inventory plugin reads JSON too
        inventory.write_text(json.dumps(self.inventory(host_vars or {}), indent=2))
        env = dict(self.env, ANSIBLE_PIPELINING=str(bool(pipelining)))
        offsets = {host.name: host.ssh.log.stat().st_size for host in self.hosts}
        proc = subprocess.run(['ansible-playbook', '-i', str(inventory), '--forks', '3', str(PLAYBOOK)],
                              cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=PLAY_TIMEOUT, check=False)
        self._close_masters()
        logs = {}
        for host in self.hosts:
            with open(host.ssh.log, 'rb') as log:
                log.seek(offsets[host.name])
                logs[host.name] = log.read().decode(errors='replace')
        return PlayRun(proc, logs)

    def _close_masters(self):
        # Ansible leaves its ssh ControlMasters running (ControlPersist=60s): each
        # run must start from a new connection, and the user must have no session
        # left when it is removed.
        control_dir = pathlib.Path(self.env['ANSIBLE_SSH_CONTROL_PATH_DIR'])
        if control_dir.is_dir():
            for socket_path in control_dir.iterdir():
                subprocess.run(['ssh', '-F', '/dev/null', '-o', 'ControlPath=%s' % socket_path, '-O', 'exit', 'fleet'],
                               stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=30)


@pytest.fixture
def fleet(fleet_sshd, fleet_user, fleet_filesystems, fleet_rundir, ansible_env, request):
    """A fresh pool directory and source image on each host's filesystem, removed after the test.

    Each pool starts as a directory holding only a stale tempfile of a VM that is
    gone (for gc); each source image has data of its own (seeded by the host).
    """
    ssh_hosts, known_hosts = fleet_sshd
    name = ''.join(c if c.isalnum() or c in '-_' else '_' for c in request.node.name)[:40]
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=name + '-', dir=fleet_rundir))
    hosts = []
    for seed, ssh_host in enumerate(ssh_hosts, start=1):
        top = pathlib.Path(tempfile.mkdtemp(prefix=name + '-', dir=fleet_filesystems[ssh_host.name].path))
        request.addfinalizer(lambda top=top: shutil.rmtree(top, ignore_errors=True))
        src = top / 'src' / 'base.img'
        src.parent.mkdir()
        disk_helpers.write_image(src, SRC_SIZE, [(0, MIB), (5 * MIB, 256 * 1024), (SRC_SIZE - MIB, MIB)], seed=seed)
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        pool = top / 'pool'
        stale = pool / STALE_TEMPFILE
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b'\0' * 4096)
        two_hours_ago = time.time() - 7200
        os.utime(stale, (two_hours_ago, two_hours_ago))
        hosts.append(FleetHost(ssh_host.name, ssh_host, pool, src, digest, seed))

    env = dict(ansible_env)
    # Interpreter discovery on the host, as on a real fleet (tests/conftest.py pins the venv's Python).
    env.pop('ANSIBLE_PYTHON_INTERPRETER', None)
    env.update({
        'ANSIBLE_STDOUT_CALLBACK': 'fleet_json',
        'ANSIBLE_CALLBACK_PLUGINS': str(CALLBACK_DIR),
        'ANSIBLE_HOST_KEY_CHECKING': 'True',
        # Own ssh ControlMaster sockets (a short path: a socket's is at most 107 bytes)
        # and local temp files, not root's ~/.ansible.
        'ANSIBLE_SSH_CONTROL_PATH_DIR': str(fleet_rundir / 'cp'),
        'ANSIBLE_LOCAL_TEMP': str(workdir / 'tmp'),
        'ANSIBLE_TIMEOUT': '30',
    })
    return Fleet(hosts, workdir, fleet_user, known_hosts, env)

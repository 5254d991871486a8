# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared pytest fixtures for tests/core and tests/modules.

Importing this file (pytest does it first) makes
``import ansible_collections.dom0.reflink.plugins.module_utils.X`` work: it
links ``build/pytest-collections/ansible_collections/dom0/reflink`` to the
repository root and puts ``build/pytest-collections`` first on sys.path.

Filesystem fixtures (root only; skipped otherwise).  One btrfs, one XFS
(reflink=1) and one ext4 filesystem are loop-mounted per session under
/var/tmp/dom0-reflink-tests/ (see tools/loopfs.py); each test gets a fresh
empty directory (a pathlib.Path) on them, removed after the test:

    btrfs_dir, xfs_dir, ext4_dir   one filesystem
    reflink_dir                    parametrized: btrfs, xfs
    any_fs_dir                     parametrized: btrfs, xfs, ext4
    cross_fs_pair                  (dir on btrfs, dir on xfs), for EXDEV
    filesystems                    {'btrfs': LoopFs, 'xfs': ..., 'ext4': ...}

Running the collection through Ansible:

    ansible_env                    environment for ansible/ansible-playbook
    run_module(name, check=False, diff=False, **args) -> result dict
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
PYTEST_COLLECTIONS = REPO_ROOT / 'build' / 'pytest-collections'
COLLECTION_LINK = PYTEST_COLLECTIONS / 'ansible_collections' / 'dom0' / 'reflink'
TESTS_BASE_DIR = '/var/tmp/dom0-reflink-tests'
FS_KINDS = ('btrfs', 'xfs', 'ext4')
REFLINK_KINDS = ('btrfs', 'xfs')
PLAYBOOK_TIMEOUT = 600


def _link_collection() -> None:
    """Point build/pytest-collections/ansible_collections/dom0/reflink at the repository.

    The link is replaced atomically, so that concurrent pytest runs and runs
    from another clone (whose build/ is its own) do not trip over each other.
    """
    COLLECTION_LINK.parent.mkdir(parents=True, exist_ok=True)
    if COLLECTION_LINK.is_symlink() and os.readlink(COLLECTION_LINK) == str(REPO_ROOT):
        return
    if COLLECTION_LINK.exists() and not COLLECTION_LINK.is_symlink():
        raise RuntimeError('%s exists and is not a symlink: remove it (make clean)' % COLLECTION_LINK)
    temp_link = COLLECTION_LINK.parent / ('.reflink.%d' % os.getpid())
    if temp_link.is_symlink():
        temp_link.unlink()
    temp_link.symlink_to(REPO_ROOT, target_is_directory=True)
    os.replace(temp_link, COLLECTION_LINK)


def _load_loopfs():
    """Import tools/loopfs.py as the module ``loopfs``."""
    if 'loopfs' in sys.modules:
        return sys.modules['loopfs']
    spec = importlib.util.spec_from_file_location('loopfs', REPO_ROOT / 'tools' / 'loopfs.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules['loopfs'] = module
    spec.loader.exec_module(module)
    return module


_link_collection()
if str(PYTEST_COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(PYTEST_COLLECTIONS))

loopfs = _load_loopfs()


# ---------------------------------------------------------------- filesystems

@pytest.fixture(scope='session')
def filesystems():
    """Mount one btrfs, one xfs and one ext4 loop filesystem for the whole session.

    Leftovers of an aborted earlier run under /var/tmp/dom0-reflink-tests are
    removed first; everything made here is removed at the end of the session.
    """
    if os.geteuid() != 0:
        pytest.skip('needs root: the test filesystems are loop devices made with losetup, mkfs and mount')
    loopfs.cleanup_stale(TESTS_BASE_DIR)
    made = {}
    try:
        for kind in FS_KINDS:
            made[kind] = loopfs.create(kind, None, TESTS_BASE_DIR)
    except loopfs.LoopFsError as exc:
        for fs in made.values():
            fs.destroy()
        pytest.fail('cannot make the %s test filesystem: %s' % (kind, exc), pytrace=False)
    try:
        yield made
    finally:
        errors = []
        for fs in made.values():
            try:
                fs.destroy()
            except loopfs.LoopFsError as exc:
                errors.append(str(exc))
        if errors:
            # A later session's cleanup_stale() removes what is left.
            print('\nconftest: could not remove every test filesystem: %s' % '; '.join(errors), file=sys.stderr)


def _fresh_dir(filesystems_, kind: str, request) -> pathlib.Path:
    """Make an empty directory on the given filesystem, removed when the test ends."""
    name = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in request.node.name)[:60]
    path = pathlib.Path(tempfile.mkdtemp(prefix=name + '-', dir=filesystems_[kind].path))
    request.addfinalizer(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


@pytest.fixture
def btrfs_dir(filesystems, request) -> pathlib.Path:
    """A fresh empty directory on the session's btrfs filesystem."""
    return _fresh_dir(filesystems, 'btrfs', request)


@pytest.fixture
def xfs_dir(filesystems, request) -> pathlib.Path:
    """A fresh empty directory on the session's XFS (reflink=1) filesystem."""
    return _fresh_dir(filesystems, 'xfs', request)


@pytest.fixture
def ext4_dir(filesystems, request) -> pathlib.Path:
    """A fresh empty directory on the session's ext4 filesystem (no reflink)."""
    return _fresh_dir(filesystems, 'ext4', request)


@pytest.fixture(params=REFLINK_KINDS, ids=REFLINK_KINDS)
def reflink_dir(filesystems, request) -> pathlib.Path:
    """A fresh empty directory on each filesystem that can reflink (btrfs, xfs)."""
    return _fresh_dir(filesystems, request.param, request)


@pytest.fixture(params=FS_KINDS, ids=FS_KINDS)
def any_fs_dir(filesystems, request) -> pathlib.Path:
    """A fresh empty directory on each test filesystem (btrfs, xfs, ext4)."""
    return _fresh_dir(filesystems, request.param, request)


@pytest.fixture
def cross_fs_pair(filesystems, request) -> tuple[pathlib.Path, pathlib.Path]:
    """(directory on btrfs, directory on xfs): a rename or clone across them fails with EXDEV."""
    return _fresh_dir(filesystems, 'btrfs', request), _fresh_dir(filesystems, 'xfs', request)


# ------------------------------------------------------------------- ansible

@pytest.fixture(scope='session')
def ansible_env() -> dict[str, str]:
    """Environment for ansible / ansible-playbook subprocesses using the working tree's collection."""
    env = dict(os.environ)
    venv_bin = os.path.dirname(sys.executable)
    env['PATH'] = os.pathsep.join([venv_bin, env.get('PATH', os.defpath)])
    env.update({
        'ANSIBLE_COLLECTIONS_PATH': str(PYTEST_COLLECTIONS),
        'ANSIBLE_LOCALHOST_WARNING': 'False',
        'ANSIBLE_INVENTORY_UNPARSED_WARNING': 'False',
        'ANSIBLE_RETRY_FILES_ENABLED': 'False',
        'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_FORCE_COLOR': '0',
        # Modules run with the interpreter of the tests, found without discovery.
        'ANSIBLE_PYTHON_INTERPRETER': sys.executable,
        'PYTHONDONTWRITEBYTECODE': '1',
    })
    for name in ('ANSIBLE_CONFIG', 'ANSIBLE_STDOUT_CALLBACK', 'ANSIBLE_CALLBACKS_ENABLED'):
        env.pop(name, None)
    return env


def _yaml_value(value) -> str:
    """Render a value as flow-style YAML; strings are tagged !unsafe so that Ansible never templates them."""
    if isinstance(value, dict):
        return '{%s}' % ', '.join('%s: %s' % (json.dumps(str(k)), _yaml_value(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return '[%s]' % ', '.join(_yaml_value(v) for v in value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return '!unsafe %s' % json.dumps(value)
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    raise TypeError('cannot pass %r to a module' % (value,))


@pytest.fixture
def run_module(ansible_env):
    """Run one module through ansible-playbook on localhost and return its result dict.

    ``run_module('reflink_pool', path=..., state='present')`` runs
    dom0.reflink.reflink_pool (a name with a dot is used as given, e.g.
    'ansible.builtin.stat'); check=True and diff=True add --check / --diff.
    Pass options named check or diff as module_args={...}.

    The result is the task's registered value: changed, failed, msg, diff,
    invocation and the module's return values; a failed module gives
    failed=True and does not raise.  A run that yields no result (unknown
    module, bad playbook) raises AssertionError with Ansible's output.
    """
    def run(module_name: str, check: bool = False, diff: bool = False, module_args: dict | None = None, **args):
        fqcn = module_name if '.' in module_name else 'dom0.reflink.' + module_name
        all_args = dict(module_args or {})
        all_args.update(args)
        with tempfile.TemporaryDirectory(prefix='dom0-reflink-run-module-') as work:
            result_path = os.path.join(work, 'result.json')
            playbook_path = os.path.join(work, 'playbook.yml')
            playbook = '\n'.join([
                '- hosts: localhost',
                '  gather_facts: false',
                '  tasks:',
                '    - name: run the module',
                '      %s: %s' % (fqcn, _yaml_value(all_args)),
                '      register: module_result',
                '      ignore_errors: true',
                '    - name: save its result',
                '      ansible.builtin.copy:',
                '        content: "{{ module_result | to_json }}"',
                '        dest: %s' % json.dumps(result_path),
                '        mode: "0600"',
                '      check_mode: false',
                '      diff: false',
                '',
            ])
            with open(playbook_path, 'w', encoding='utf-8') as playbook_file:
                playbook_file.write(playbook)
            cmd = ['ansible-playbook', '-i', 'localhost,', '-c', 'local', playbook_path]
            if check:
                cmd.append('--check')
            if diff:
                cmd.append('--diff')
            proc = subprocess.run(cmd, cwd=work, env=ansible_env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=PLAYBOOK_TIMEOUT, check=False)
            if not os.path.exists(result_path):
                raise AssertionError('ansible-playbook gave no result for %s (exit status %d)\n'
                                     '--- playbook\n%s--- stdout\n%s\n--- stderr\n%s'
                                     % (fqcn, proc.returncode, playbook, proc.stdout, proc.stderr))
            with open(result_path, encoding='utf-8') as result_file:
                result = json.load(result_file)
        if not isinstance(result, dict):
            raise AssertionError('unexpected result for %s: %r' % (fqcn, result))
        return result

    return run


@pytest.fixture
def run_modules(ansible_env):
    """Run several modules, one after the other, in one ansible-playbook; their results, in order.

    ``run_modules([('reflink_pin', {...}), ('reflink_info', {...})])``: as many run_module calls,
    each task with ignore_errors, but one start of ansible-playbook for them all (a start costs
    more than a module run), for tests that try many inputs on the same pool.
    """
    def run(calls, check: bool = False):
        tasks = []
        for number, (module_name, args) in enumerate(calls):
            fqcn = module_name if '.' in module_name else 'dom0.reflink.' + module_name
            tasks += ['    - name: run module %d' % number,
                      '      %s: %s' % (fqcn, _yaml_value(args)),
                      '      register: result_%d' % number,
                      '      ignore_errors: true']
        with tempfile.TemporaryDirectory(prefix='dom0-reflink-run-modules-') as work:
            result_path = os.path.join(work, 'results.json')
            playbook_path = os.path.join(work, 'playbook.yml')
            results = ', '.join('result_%d' % number for number in range(len(calls)))
            playbook = '\n'.join(['- hosts: localhost', '  gather_facts: false', '  tasks:'] + tasks + [
                '    - name: save the results',
                '      ansible.builtin.copy:',
                '        content: "{{ [%s] | to_json }}"' % results,
                '        dest: %s' % json.dumps(result_path),
                '        mode: "0600"',
                '      check_mode: false',
                '',
            ])
            with open(playbook_path, 'w', encoding='utf-8') as playbook_file:
                playbook_file.write(playbook)
            cmd = ['ansible-playbook', '-i', 'localhost,', '-c', 'local', playbook_path] + (['--check'] if check else [])
            proc = subprocess.run(cmd, cwd=work, env=ansible_env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=PLAYBOOK_TIMEOUT, check=False)
            if not os.path.exists(result_path):
                raise AssertionError('ansible-playbook gave no results (exit status %d)\n--- playbook\n%s--- stdout\n%s\n'
                                     '--- stderr\n%s' % (proc.returncode, playbook, proc.stdout, proc.stderr))
            with open(result_path, encoding='utf-8') as result_file:
                return json.load(result_file)

    return run

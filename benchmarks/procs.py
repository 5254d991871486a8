# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Child processes: modules run directly (child.py), optionally under strace; ansible ad-hoc and playbook runs."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import subprocess
import time

import benchlib as bl

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, 'child.py')
MARKER = '/nonexistent/dom0-reflink-bench-marker-'

# System calls that change what is on disk, or flush it (and ioctl, for FICLONE).
DISK_SYSCALLS = ('fsync,fdatasync,sync_file_range,syncfs,rename,renameat,renameat2,unlink,unlinkat,link,linkat,'
                 'ioctl,mkdir,mkdirat,rmdir,ftruncate,fallocate,fsetxattr,setxattr,copy_file_range')
# Families reported as one count.
FAMILY = {'renameat': 'rename', 'renameat2': 'rename', 'unlinkat': 'unlink', 'link': 'linkat',
          'mkdirat': 'mkdir', 'setxattr': 'fsetxattr', 'newfstatat': 'stat', 'statx': 'stat', 'lstat': 'stat',
          'open': 'openat'}

_LINE = re.compile(r'^(?:\d+\s+)?(?:<\.\.\. (?P<resumed>\w+) resumed>|(?P<name>\w+)\()(?P<rest>.*)$')


@dataclasses.dataclass
class ChildResult:
    wall: float
    seconds: float
    stdout: str
    counts: dict | None = None


def module_args_file(ctx, name: str, args: dict) -> str:
    path = os.path.join(ctx.scratch, '%s-%d.json' % (name, time.monotonic_ns()))
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump({'ANSIBLE_MODULE_ARGS': args}, handle)
    return path


def run_child(ctx, argv: list[str], trace: str | None = None) -> ChildResult:
    """Run child.py with ``argv``; with ``trace`` (a strace -e trace= list) count the calls inside the timed part."""
    timing = os.path.join(ctx.scratch, 'timing-%d.json' % time.monotonic_ns())
    command = [ctx.python, CHILD] + argv + [timing]
    trace_file = None
    if trace:
        trace_file = timing + '.strace'
        command = ['strace', '-f', '-qq', '-o', trace_file, '-e', 'trace=' + trace, '-e', 'signal=none'] + command
    env = bl.tool_env({'PYTHONPATH': ctx.collections, 'PYTHONDONTWRITEBYTECODE': '1'})
    start = time.perf_counter()
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError('child %s failed (%d): %s %s' % (' '.join(argv), result.returncode,
                                                            result.stdout[-2000:], result.stderr[-2000:]))
    with open(timing, encoding='utf-8') as handle:
        seconds = json.load(handle)['seconds']
    os.unlink(timing)
    counts = None
    if trace_file:
        counts = count_calls(trace_file)
        os.unlink(trace_file)
    return ChildResult(wall, seconds, result.stdout, counts)


def run_module(ctx, name: str, args: dict, trace: str | None = None) -> ChildResult:
    path = module_args_file(ctx, name, args)
    try:
        out = run_child(ctx, ['module', name, path], trace)
    finally:
        os.unlink(path)
    reply = json.loads(out.stdout[out.stdout.index('{'):])
    if reply.get('failed'):
        raise RuntimeError('module %s failed: %s' % (name, reply.get('msg')))
    out.stdout = reply
    return out


def count_calls(path: str) -> dict:
    """{call family: count} of a strace -f output, between the start and end markers.

    ioctl is split by request (FICLONE, FS_IOC_FIEMAP, other); calls that
    failed are counted under "<name> failed".
    """
    counts = collections.Counter()
    inside = False
    with open(path, encoding='utf-8', errors='replace') as handle:
        for line in handle:
            if MARKER + 'start' in line:
                inside = True
                continue
            if MARKER + 'end' in line:
                break
            if not inside or '<unfinished ...>' in line:
                continue
            found = _LINE.match(line.strip())
            if not found:
                continue
            name = found.group('resumed') or found.group('name')
            name = FAMILY.get(name, name)
            if name == 'unlink' and 'AT_REMOVEDIR' in found.group('rest'):
                name = 'rmdir'
            if name == 'ioctl':
                rest = found.group('rest')
                name = 'FICLONE' if 'FICLONE' in rest else 'FIEMAP' if 'FIEMAP' in rest else 'ioctl other'
            if re.search(r'= -1 E', line):
                name += ' failed'
            counts[name] += 1
    return dict(counts)


def ansible_env(ctx, extra: dict | None = None) -> dict:
    """The environment of an ansible run: the collection, this venv's Python, a private ANSIBLE_HOME, no colours."""
    env = bl.tool_env({
        'LC_ALL': 'C.UTF-8',
        'PATH': ctx.venv_bin + ':' + os.environ.get('PATH', '/usr/bin:/bin') + ':' + bl.SBIN_PATH,
        'ANSIBLE_COLLECTIONS_PATH': ctx.collections,
        'ANSIBLE_PYTHON_INTERPRETER': ctx.python,
        'ANSIBLE_HOME': ctx.ansible_home,
        'ANSIBLE_LOCALHOST_WARNING': 'False',
        'ANSIBLE_INVENTORY_UNPARSED_WARNING': 'False',
        'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_FORCE_COLOR': '0',
    })
    if extra:
        env.update(extra)
    return env


def ansible(ctx, module: str, args: dict, check: bool = False) -> tuple[float, str]:
    """Run ``ansible localhost -c local -m MODULE -a ARGS``; (wall seconds, output)."""
    command = [os.path.join(ctx.venv_bin, 'ansible'), 'localhost', '-c', 'local', '-m', module,
               '-a', json.dumps(args)]
    if check:
        command.append('--check')
    start = time.perf_counter()
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=ansible_env(ctx),
                            check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError('ansible -m %s failed (%d): %s %s'
                           % (module, result.returncode, result.stdout[-3000:], result.stderr[-2000:]))
    return wall, result.stdout


def playbook(ctx, path: str, extra_env: dict | None = None) -> tuple[float, str]:
    """Run ``ansible-playbook -i localhost, PATH``; (wall seconds, output)."""
    # An inline inventory of localhost only: no inventory file to parse, no implicit-localhost warning.
    command = [os.path.join(ctx.venv_bin, 'ansible-playbook'), '-i', 'localhost,', path]
    start = time.perf_counter()
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            env=ansible_env(ctx, extra_env), check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError('ansible-playbook %s failed (%d): %s %s'
                           % (path, result.returncode, result.stdout[-3000:], result.stderr[-2000:]))
    return wall, result.stdout

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmarks of dom0.reflink against what a user would otherwise run (root only).

    .venv/bin/python benchmarks/run.py [--quick] [--cases 1,2,3,4,5,6,7,8] [--json PATH] [--markdown PATH]
    make bench            (full run, about 15-20 minutes; case 6 alone about 5)
    make bench-quick      (every case, tiny sizes, 1-2 rounds: checks that it all runs)

Builds its own loop-mounted btrfs, XFS and ext4 filesystems (sparse image
files under --base-dir, removed at the end, also on error or SIGTERM), runs
the cases (see benchmarks/case_*.py and docs/performance.md), prints one table
per case and the list of goals met or missed, and writes the same as JSON
(default build/bench/results.json, or results-quick.json with --quick) and
as Markdown next to it.  Standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import benchlib as bl  # noqa: E402  pylint: disable=wrong-import-position
import case_ansible  # noqa: E402  pylint: disable=wrong-import-position
import case_clone  # noqa: E402  pylint: disable=wrong-import-position
import case_copy  # noqa: E402  pylint: disable=wrong-import-position
import case_dedupe  # noqa: E402  pylint: disable=wrong-import-position
import case_ops  # noqa: E402  pylint: disable=wrong-import-position
import case_pool  # noqa: E402  pylint: disable=wrong-import-position
import case_role  # noqa: E402  pylint: disable=wrong-import-position
import case_space  # noqa: E402  pylint: disable=wrong-import-position

DEFAULT_BASE_DIR = '/var/tmp/dom0-reflink-bench'
CASES = ('1', '2', '3', '4', '5', '6', '7', '8')
# Filesystems each case needs, and their sizes (sparse image files: only what is written takes space).
NEEDS = {'1': ('btrfs', 'xfs'), '2': ('ext4', 'btrfs', 'xfs'), '3': ('btrfs',), '4': ('btrfs',), '5': ('btrfs',),
         '6': ('btrfs',), '7': ('btrfs', 'xfs'), '8': ('btrfs', 'xfs')}
SIZES = {'btrfs': (1 * bl.GiB, 12 * bl.GiB), 'xfs': (512 * bl.MiB, 6 * bl.GiB), 'ext4': (512 * bl.MiB, 6 * bl.GiB)}
TOOLS = ('strace', 'filefrag', 'cp', 'cmp', 'mkfs.btrfs', 'mkfs.xfs', 'mkfs.ext4', 'losetup', 'compsize')


class Context:
    """What the cases get: the mounted filesystems, the core, paths, and the run's settings."""

    def __init__(self, args, fs, core, collections):
        self.quick = args.quick
        self.fs = fs
        self.core = core
        self.collections = collections
        self.python = os.path.abspath(sys.executable) if not args.python else args.python
        self.venv_bin = os.path.dirname(self.python)
        # Private to this run: another run (or `make clean`) must not remove it under us.
        self.scratch = tempfile.mkdtemp(prefix='dom0-reflink-bench-')
        self.ansible_home = os.path.join(self.scratch, 'ansible-home')
        self.started = time.perf_counter()
        os.makedirs(self.ansible_home)

    def reps(self, quick, full):
        return quick if self.quick else full

    def log(self, message):
        print('[%6.1f s] %s' % (time.perf_counter() - self.started, message), file=sys.stderr, flush=True)


def _load_loopfs():
    spec = importlib.util.spec_from_file_location('loopfs', os.path.join(REPO, 'tools', 'loopfs.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules['loopfs'] = module
    spec.loader.exec_module(module)
    return module


def _collections_dir(collection_root):
    """build/bench-collections/ansible_collections/dom0/reflink -> the collection (the repository root)."""
    name = 'bench-collections' if collection_root == REPO else 'bench-collections-alt'
    base = os.path.join(REPO, 'build', name)
    namespace = os.path.join(base, 'ansible_collections', 'dom0')
    os.makedirs(namespace, exist_ok=True)
    link = os.path.join(namespace, 'reflink')
    if os.path.islink(link) and os.readlink(link) == collection_root:
        return base
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(collection_root, link)
    return base


def _load_core(collections):
    sys.path.insert(0, collections)
    prefix = 'ansible_collections.dom0.reflink.plugins.module_utils.'
    clone = importlib.import_module(prefix + '_fs.clone')
    fsops = importlib.import_module(prefix + '_fs.directory')
    info = importlib.import_module(prefix + '_tasks.info')
    scan = importlib.import_module(prefix + '_state.scan')
    gc = importlib.import_module(prefix + '_tasks.gc')
    try:
        dedupe = importlib.import_module(prefix + '_dedupe.run')
    except ImportError:   # a collection from before the dedupe engine (--collection)
        dedupe = None
    try:
        dedupe_task = importlib.import_module(prefix + '_tasks.dedupe')
    except ImportError:   # a collection from before the module reflink_dedupe (--collection)
        dedupe_task = None
    return types.SimpleNamespace(
        Directory=fsops.Directory, clone_file=clone.clone_file, fill_from=clone.fill_from,
        sparse_copy=clone.sparse_copy, REFLINK=clone.REFLINK, COPY=clone.COPY, module_file=clone.__file__,
        PoolScan=scan.PoolScan, run_info_task=info.run_info_task, run_gc_task=gc.run_gc_task,
        dedupe_volumes=getattr(dedupe, 'dedupe_volumes', None), VolumeDir=getattr(dedupe, 'VolumeDir', None),
        dedupe_settings_for=getattr(dedupe, 'settings_for', None),
        run_dedupe_task=getattr(dedupe_task, 'run_dedupe_task', None))


def _first_line(command, env=None):
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=bl.tool_env(env), check=False)
    except OSError:
        return None
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else None


def machine_info(base_dir):
    cpu = None
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as handle:
            for line in handle:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        with open('/proc/meminfo', encoding='utf-8') as handle:
            memory = int(handle.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    disk = _first_line(['findmnt', '-n', '-o', 'SOURCE,FSTYPE,OPTIONS', '-T', base_dir])
    source = disk.split()[0] if disk else ''
    model = _first_line(['lsblk', '-n', '-d', '-o', 'NAME,SIZE,ROTA,MODEL', source]) if source.startswith('/dev/') else None
    return {
        'kernel': platform.release(), 'machine': platform.machine(), 'cpus': os.cpu_count(), 'cpu': cpu,
        'memory_bytes': memory, 'base_dir': base_dir, 'base_dir_filesystem': disk, 'disk': model,
        'python': platform.python_version(), 'cp': _first_line(['cp', '--version']),
        'btrfs-progs': _first_line(['mkfs.btrfs', '--version']), 'xfsprogs': _first_line(['mkfs.xfs', '-V']),
        'e2fsprogs': _first_line(['mkfs.ext4', '-V']),
        'ansible-core': _first_line([os.path.join(os.path.dirname(sys.executable), 'ansible'), '--version'],
                                    {'LC_ALL': 'C.UTF-8'}),
    }


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def run_case(key, ctx):
    """The sections of case ``key``."""
    if key == '2':
        return case_copy.run(ctx)
    if key == '6':
        return case_role.run(ctx)
    module = {'1': case_clone, '3': case_ansible, '4': case_pool, '5': case_ops, '7': case_space, '8': case_dedupe}[key]
    return [module.run(ctx)]


def render_text(sections, goals):
    out = []
    for section in sections:
        out.append('== %s. %s' % (section.key, section.title))
        out.append(bl.table(section.headers, section.rows, section.aligns))
        for note in section.notes:
            out.append('   ' + note)
        out.append('')
    out.append('== Goals')
    out.append(bl.table(['case', 'goal', 'measured', 'met'],
                        [[g['case'], g['goal'], g['measured'], 'yes' if g['met'] else 'NO'] for g in goals], 'lllr'))
    return '\n'.join(out)


def render_markdown(sections, goals, info):
    out = ['Machine: %s, %s CPUs (%s), %.0f GiB RAM, kernel %s; loop images on %s (%s). '
           'Load average (1 min) at the start %.1f, at the end %.1f.'
           % (info['machine'], info['cpus'], info['cpu'], (info['memory_bytes'] or 0) / bl.GiB, info['kernel'],
              info['base_dir_filesystem'], info['disk'], info['loadavg_start'][0], info['loadavg_end'][0]), '']
    for section in sections:
        out.append('### %s. %s' % (section.key, section.title))
        out.append('')
        out.append(bl.markdown_table(section.headers, section.rows, section.aligns))
        out.append('')
        for note in section.notes:
            out.append('_%s_' % note)
            out.append('')
    out.append('### Goals')
    out.append('')
    out.append(bl.markdown_table(['case', 'goal', 'measured', 'met'],
                                 [[g['case'], g['goal'], g['measured'], 'yes' if g['met'] else '**no**']
                                  for g in goals], 'lllr'))
    return '\n'.join(out) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
    parser.add_argument('--quick', action='store_true', help='tiny sizes, 1-2 rounds: checks that every case runs')
    parser.add_argument('--cases', default=','.join(CASES), help='comma-separated subset of %s' % ','.join(CASES))
    parser.add_argument('--json', help='where to write the results (default build/bench/results[-quick].json)')
    parser.add_argument('--markdown', help='where to write the tables as Markdown (default: next to the JSON)')
    parser.add_argument('--base-dir', default=DEFAULT_BASE_DIR, help='where the loop images go')
    parser.add_argument('--collection', default=REPO,
                        help='collection root to benchmark (default: this repository; a patched copy to compare)')
    parser.add_argument('--python', help='interpreter for modules and ansible (default: this one)')
    args = parser.parse_args(argv)
    cases = [key.strip() for key in args.cases.split(',') if key.strip()]
    unknown = [key for key in cases if key not in CASES]
    if unknown:
        parser.error('unknown case(s): %s' % ', '.join(unknown))
    if os.geteuid() != 0:
        parser.error('the benchmarks mount loop filesystems: run them as root')
    missing = [tool for tool in TOOLS if not shutil.which(tool, path=bl.tool_env()['PATH'])]
    if missing:
        parser.error('missing tools: %s (run `make deps`; filefrag is in e2fsprogs)' % ', '.join(missing))
    json_path = args.json or os.path.join(REPO, 'build', 'bench', 'results-quick.json' if args.quick else 'results.json')
    md_path = args.markdown or os.path.splitext(json_path)[0] + '.md'

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    collections = _collections_dir(os.path.abspath(args.collection))
    core = _load_core(collections)
    loopfs = _load_loopfs()
    started = time.perf_counter()
    when = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
    info = machine_info(args.base_dir)
    info['loadavg_start'] = os.getloadavg()
    if info['loadavg_start'][0] > (os.cpu_count() or 1) * 0.75:
        print('bench: WARNING: the load average is %.1f on %d CPUs: other work will disturb the figures'
              % (info['loadavg_start'][0], os.cpu_count() or 1), file=sys.stderr)
    sections, errors, made = [], [], {}
    ctx = None
    try:
        for leftover in loopfs.cleanup_stale(args.base_dir):
            print('bench: removed a leftover of an earlier run: %s' % leftover, file=sys.stderr)
        kinds = sorted({kind for key in cases for kind in NEEDS[key]})
        for kind in kinds:
            size = SIZES[kind][0 if args.quick else 1]
            made[kind] = loopfs.create(kind, size, args.base_dir)
            if kind == 'ext4':
                # No background zeroing of inode tables (ext4lazyinit) while we measure.
                bl.run_quiet(['mount', '-o', 'remount,noinit_itable', made[kind].path])
        ctx = Context(args, {kind: fs.path for kind, fs in made.items()}, core, collections)
        sizes = ', '.join('%s %s' % (kind, bl.fmt_size(SIZES[kind][0 if args.quick else 1])) for kind in kinds)
        ctx.log('filesystems: %s; core from %s' % (sizes, os.path.dirname(core.module_file)))
        for key in cases:
            case_start = time.perf_counter()
            try:
                sections.extend(run_case(key, ctx))
            except Exception as exc:  # pylint: disable=broad-except
                traceback.print_exc()
                errors.append({'case': key, 'error': '%s: %s' % (type(exc).__name__, exc)})
            ctx.log('case %s done in %s' % (key, bl.fmt_time(time.perf_counter() - case_start)))
    finally:
        for fs in made.values():
            try:
                fs.destroy()
            except Exception as exc:  # pylint: disable=broad-except
                print('bench: could not remove %s: %s' % (fs.workdir, exc), file=sys.stderr)
        if ctx is not None:
            shutil.rmtree(ctx.scratch, ignore_errors=True)
    duration = time.perf_counter() - started
    info['loadavg_end'] = os.getloadavg()
    goals = [goal for section in sections for goal in section.goals]
    print(render_text(sections, goals))
    for error in errors:
        print('ERROR in case %s: %s' % (error['case'], error['error']))
    met = sum(1 for goal in goals if goal['met'])
    print('\n%d of %d goals met; %s, %s run in %s' % (met, len(goals), 'quick' if args.quick else 'full',
                                                      ','.join(cases), bl.fmt_time(duration)))
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, 'w', encoding='utf-8') as handle:
        json.dump({'started': when, 'duration_s': duration, 'quick': args.quick, 'cases': cases,
                   'collection': os.path.abspath(args.collection), 'machine': info,
                   'sections': [section.as_dict() for section in sections], 'goals': goals, 'errors': errors},
                  handle, indent=1)
    with open(md_path, 'w', encoding='utf-8') as handle:
        handle.write(render_markdown(sections, goals, info))
    print('results: %s and %s' % (json_path, md_path))
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())

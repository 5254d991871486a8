# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Case 4: pool-wide work on a large pool, on btrfs.

The pool has N volumes (``private`` and ``root`` of N/2 VMs, a fifth of them
templates), each with 5 empty sparse files: clean, a fresh precache (clean's
mtime and size), 2 revisions and a tempfile two days old.  gc in check mode
therefore plans 2 removals per volume (the tempfile and the revision beyond
revisions_to_keep=1).

Timed in this process (the directory entries and inodes are cached: one
untimed run first): ``PoolScan.read``, ``run_info_task`` and ``run_gc_task``
in check mode.  Each is also run once in a child under strace to count the
calls that read the pool, and once through Ansible.
"""

from __future__ import annotations

import os
import statistics
import time

import benchlib as bl
import procs
from benchlib import GiB

READ_CALLS = 'openat,open,getdents64,newfstatat,statx,lstat,ioctl,unlink'


def build_pool(pool: str, volumes: int) -> int:
    """Create the pool's files; returns how many."""
    for prefix in ('appvms', 'vm-templates'):
        os.makedirs(os.path.join(pool, prefix), exist_ok=True)
    now = time.time_ns()
    old = now - 2 * 86400 * 10 ** 9
    made = 0
    for index in range(volumes // 2):
        prefix = 'vm-templates' if index % 5 == 0 else 'appvms'
        vm_dir = os.path.join(pool, prefix, 'vm%05d' % index)
        os.mkdir(vm_dir)
        for volume in ('private', 'root'):
            base = os.path.join(vm_dir, volume)
            files = ((base + '.img', now), (base + '-precache.img', now),
                     (base + '.img.1@2024-01-01T00:00:00Z', old), (base + '.img.2@2024-01-02T00:00:00Z', old),
                     (base + '.img~tmp%05d' % index, old))
            for path, mtime in files:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.ftruncate(fd, 2 * GiB)
                    os.utime(fd, ns=(mtime, mtime))
                finally:
                    os.close(fd)
                made += 1
    return made


def run(ctx) -> bl.Section:
    section = bl.Section('4', 'Pool-wide scans on a pool of many volumes (btrfs): medians',
                         ['work', 'fresh process', 'in process', 'openat', 'getdents64', 'stat', 'FIEMAP',
                          'through ansible', 'result'], aligns='lrrrrrrrl')
    core = ctx.core
    volumes = ctx.reps(200, 10000)
    pool = os.path.join(ctx.fs['btrfs'], 'pool4')
    ctx.log('case 4: building a pool of %d volumes' % volumes)
    build_start = time.perf_counter()
    files = build_pool(pool, volumes)
    bl.syncfs(pool)
    build_s = time.perf_counter() - build_start
    ctx.log('case 4: %d files in %s' % (files, bl.fmt_time(build_s)))

    gc_params = {'pool': pool, 'vids': None, 'keep_vids': None, 'remove_orphans': False, 'min_age': '1h',
                 'import_max_age': '1d', 'revisions_to_keep': 1, 'revisions_to_keep_per_volume': {},
                 'rebuild_precache': False, 'lock_timeout': 60}
    results = {}

    def scan():
        with core.Directory.open_pool(pool) as pool_dir:
            results['scan'] = core.PoolScan.read(pool_dir)

    def info():
        results['info'] = core.run_info_task({'pool': pool, 'vids': None, 'lock_timeout': 60})

    def gc():
        results['gc'] = core.run_gc_task(dict(gc_params), True)

    reps = ctx.reps(1, 5)
    rows = []
    for name, work, module, args, check in (
            ('PoolScan.read', scan, None, None, False),
            ('reflink_info (run_info_task)', info, 'dom0.reflink.reflink_info', {'pool': pool}, False),
            ('reflink_gc check mode (run_gc_task)', gc, 'dom0.reflink.reflink_gc', {'pool': pool}, True)):
        ctx.log('case 4: %s, %d runs' % (name, reps))
        series = bl.alternate([bl.Variant(name, work)], reps, warmup=True)[name]
        kind = {'PoolScan.read': 'scan', 'reflink_info (run_info_task)': 'info'}.get(name, 'gc')
        child = procs.run_child(ctx, [kind, pool], trace=READ_CALLS)
        fresh = [procs.run_child(ctx, [kind, pool]).seconds for _index in range(reps)]
        ansible_s = None
        if module:
            ctx.log('case 4: %s through ansible' % module)
            ansible_s, _out = procs.ansible(ctx, module, args, check=check)
        if kind == 'scan':
            found = len(results['scan'].volumes)
            outcome = '%d volumes' % found
            ok = found == volumes
        elif kind == 'info':
            found = len(results['info']['volumes'])
            outcome = '%d volumes' % found
            ok = found == volumes
        else:
            found = len(results['gc']['removed'])
            outcome = '%d removals planned' % found
            ok = found == 2 * volumes
        if not ok:
            raise RuntimeError('case 4: %s found %s, expected %d volumes' % (name, outcome, volumes))
        counts = child.counts
        row = [name, bl.fmt_time(statistics.median(fresh)), bl.fmt_time(series.median), counts.get('openat', 0),
               counts.get('getdents64', 0), counts.get('stat', 0), counts.get('FIEMAP', 0),
               bl.fmt_time(ansible_s), outcome]
        rows.append(row)
        section.data.append({'work': name, 'median_s': series.median, 'samples_s': series.times,
                             'fresh_process_median_s': statistics.median(fresh), 'fresh_process_samples_s': fresh,
                             'calls': counts, 'ansible_s': ansible_s, 'outcome': outcome})
        results.clear()
    section.rows = rows
    scan_s = section.data[0]['fresh_process_median_s']
    section.goal('scan of %d volumes (%d files) well under a second (PoolScan.read, fresh process)' % (volumes, files),
                 bl.fmt_time(scan_s), scan_s < 0.5)
    for entry in section.data[1:]:
        section.goal('%s on %d volumes under a second (fresh process)' % (entry['work'], volumes),
                     bl.fmt_time(entry['fresh_process_median_s']), entry['fresh_process_median_s'] < 1.0)
    section.goal('one directory walk: getdents64 calls of the scan vs directories in the pool',
                 '%d calls for %d directories' % (section.data[0]['calls'].get('getdents64', 0), volumes // 2 + 3),
                 section.data[0]['calls'].get('getdents64', 0) <= 2 * (volumes // 2 + 3) + 4)
    section.notes.append('%d volumes, %d files, built in %s. "fresh process": median of %d runs, each in a new '
                         'process as a module runs (child.py; the time of the work only, the pool\'s inodes cached); '
                         '"in process": median of %d runs in this process after one untimed run. Call counts: one '
                         'fresh run under strace, only the timed part. "through ansible": one ad-hoc run, '
                         'wall time.' % (volumes, files, bl.fmt_time(build_s), reps, reps))
    return section

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Case 7: the space accounting of a pool (allocated, exclusive, if_removed), against btrfs filesystem du.

The pool (docs/performance.md, shared/spec/space-notes.md): N volumes
(``private`` and ``root`` of N/2 VMs), each with a clean image of 32 extents
of 64 KiB (written with O_DIRECT, one extent per write), a precache, and three
revisions made as qubesd's stop makes them; each session rewrote the first
16 KiB, so the revisions share all but one small extent: 5 files, 35 extents
and 164 extent references per volume.

Timed in this process, warm cache, in alternation: the accounting
(``SpaceMap.read`` over every file of the pool and its figures: volumes, pool,
one if_removed), ``btrfs filesystem du -s`` over the same VM directories
(one process, the directories as arguments) and ``compsize -b`` over them.
Also stated: the same accounting on XFS (FIEMAP), and the peak of Python's
own memory during one accounting (tracemalloc, a run of its own: tracing
slows it down).  Checked against the tools: the pool's allocated bytes equal
compsize's disk usage, the pool's referenced bytes du's total.
"""

from __future__ import annotations

import fcntl
import functools
import importlib
import mmap
import os
import re
import shutil
import subprocess
import time
import tracemalloc

import benchlib as bl
import space_info
from benchlib import KiB

EXTENTS = 32
EXTENT = 64 * KiB
REWRITE = 16 * KiB
SESSIONS = 3
_FICLONE = getattr(fcntl, 'FICLONE', 0x40049409)   # _IOW(0x94, 9, int) on x86_64 and arm64 before Python 3.12


def _write_direct(fd: int, buffer: mmap.mmap, offset: int, length: int) -> None:
    written = os.pwrite(fd, memoryview(buffer)[:length], offset)
    if written != length:
        raise RuntimeError('short direct write: %d of %d bytes' % (written, length))


def _clone(src: str, dst: str) -> None:
    with open(src, 'rb') as source, open(dst, 'wb') as target:
        fcntl.ioctl(target.fileno(), _FICLONE, source.fileno())


def build_pool(pool: str, volumes: int) -> list[str]:
    """Make the pool; returns the VM directories."""
    buffer = mmap.mmap(-1, EXTENT)
    buffer.write(os.urandom(EXTENT))
    vm_dirs = []
    for index in range(volumes // 2):
        vm_dir = os.path.join(pool, 'appvms', 'vm%05d' % index)
        os.makedirs(vm_dir)
        vm_dirs.append(vm_dir)
        for volume in ('private', 'root'):
            base = os.path.join(vm_dir, volume)
            clean = base + '.img'
            fd = os.open(clean, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
            try:
                for piece in range(EXTENTS):
                    buffer[:8] = (index * 2 + piece).to_bytes(8, 'little')   # no two extents alike
                    _write_direct(fd, buffer, piece * EXTENT, EXTENT)
            finally:
                os.close(fd)
            for session in range(1, SESSIONS + 1):
                dirty = base + '-dirty.img'
                _clone(clean, dirty)          # the precache, renamed at the start
                fd = os.open(dirty, os.O_WRONLY | os.O_DIRECT)
                try:
                    buffer[:8] = (session << 40 | index).to_bytes(8, 'little')
                    _write_direct(fd, buffer, 0, REWRITE)
                finally:
                    os.close(fd)
                _clone(clean, '%s.img.%d@2024-01-%02dT00:00:00Z' % (base, session, session))
                os.rename(dirty, clean)
            _clone(clean, base + '-precache.img')
            clean_st = os.stat(clean)   # qubesd's precache has clean's mtime (else it is stale, and a finding)
            os.utime(base + '-precache.img', ns=(clean_st.st_atime_ns, clean_st.st_mtime_ns))
    buffer.close()
    return vm_dirs


def load_space(collections: str):
    """The accounting's classes from the collection being measured (None when it has none)."""
    prefix = 'ansible_collections.dom0.reflink.plugins.module_utils.'
    for name in ('_inspect.space',):
        try:
            return importlib.import_module(prefix + name)
        except ImportError:
            continue
    return None


def pool_images(space, pool: str) -> list:
    """Every image of the pool as the accounting takes it from reflink_info's scan (names, lstat's inode numbers)."""
    images = []
    appvms = os.path.join(pool, 'appvms')
    for vm in sorted(os.listdir(appvms)):
        for name in sorted(os.listdir(os.path.join(appvms, vm))):
            volume = name.split('.img')[0].split('-precache')[0]
            inode = os.lstat(os.path.join(appvms, vm, name)).st_ino
            images.append(space.ImageFile('appvms/%s/%s' % (vm, name), 'appvms/%s/%s' % (vm, volume), '@' in name,
                                          inode))
    return images


def account(core, space, pool: str, images: list) -> dict:
    """The accounting as reflink_info does it: read, every volume's and the pool's figures, one if_removed."""
    with core.Directory.open_pool(pool) as pool_dir:
        found = space.SpaceMap.read(pool_dir, images)
    revisions = [image.file for image in images if image.revision]
    return {'volumes': len(found.volumes), 'pool': found.pool.as_dict(),
            'revisions_free': found.if_removed(revisions).bytes,
            'exclusive': sum(volume.exclusive for volume in found.volumes.values()),
            'methods': sorted(found.sharing.methods)}


def _account_into(results: dict, core, space, pool: str, images: list) -> None:
    results['ours'] = account(core, space, pool, images)


def _tool(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, env=bl.tool_env(), check=True).stdout


_COMPSIZE_TOTAL = re.compile(r'^TOTAL\s+\S+\s+(\d+)\s+(\d+)\s+(\d+)', re.M)
_COMPSIZE_COUNT = re.compile(r'Processed (\d+) files?, (\d+) regular extents \((\d+) refs\)')


def compsize(paths: list[str]) -> dict:
    out = _tool(['compsize', '-b'] + paths)
    total = _COMPSIZE_TOTAL.search(out)
    count = _COMPSIZE_COUNT.search(out)
    return {'disk': int(total.group(1)), 'uncompressed': int(total.group(2)), 'referenced': int(total.group(3)),
            'files': int(count.group(1)), 'extents': int(count.group(2)), 'refs': int(count.group(3))}


def du_total(paths: list[str]) -> int:
    """Sum of the Total column of ``btrfs filesystem du -s --raw``."""
    lines = _tool(['btrfs', 'filesystem', 'du', '-s', '--raw'] + paths).splitlines()[1:]
    return sum(int(line.split()[0]) for line in lines if line.strip())


def peak_memory(work) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run(ctx) -> bl.Section:
    section = bl.Section('7', 'Space accounting of a pool (allocated, exclusive, if_removed) and reflink_info space: true '
                         'vs btrfs filesystem du: medians', ['filesystem', 'work', 'median', 'vs du -s', 'peak memory', 'result'],
                         aligns='llrrrl')
    space = load_space(ctx.collections)
    if space is None:
        section.notes.append('the collection measured has no space accounting (_inspect/space.py): nothing to do')
        return section
    info_parts = space_info.load(ctx.collections)
    volumes = ctx.reps(20, 1000)
    reps = ctx.reps(2, 7)
    for kind in ('btrfs', 'xfs'):
        pool = os.path.join(ctx.fs[kind], 'pool7')
        ctx.log('case 7: building a pool of %d volumes on %s' % (volumes, kind))
        build_start = time.perf_counter()
        vm_dirs = build_pool(pool, volumes)
        bl.syncfs(pool)
        build_s = time.perf_counter() - build_start
        images = pool_images(space, pool)
        results = {}
        accounting = functools.partial(_account_into, results, ctx.core, space, pool, images)
        variants = [bl.Variant('accounting', accounting)]
        info_results: dict = {}
        if info_parts is not None:
            variants.extend(space_info.variants(info_parts, pool, info_results))
        if kind == 'btrfs':
            variants.append(bl.Variant('btrfs filesystem du -s', lambda vm_dirs=vm_dirs: du_total(vm_dirs)))
            variants.append(bl.Variant('compsize -b', lambda vm_dirs=vm_dirs: compsize(vm_dirs)))
        ctx.log('case 7: %s, %d rounds' % (kind, reps))
        series = bl.alternate(variants, reps, warmup=True)
        peak = peak_memory(accounting)
        ours = results['ours']
        # Only revisions hold the first two rewrites, and on XFS also the first 16 KiB as first written (btrfs
        # keeps that extent whole: clean still references the rest of it).
        expected_free = volumes * (SESSIONS - 1 if kind == 'btrfs' else SESSIONS) * REWRITE
        if ours['volumes'] != volumes or ours['revisions_free'] != expected_free:
            raise RuntimeError('case 7: %s: %d volumes, revisions would free %d bytes; expected %d and %d'
                               % (kind, ours['volumes'], ours['revisions_free'], volumes, expected_free))
        data = {'filesystem': kind, 'volumes': volumes, 'files': len(images), 'build_s': build_s,
                'accounting': ours, 'accounting_s': series['accounting'].times, 'peak_memory_bytes': peak}
        ratio = None
        tool_rows = []
        if kind == 'btrfs':
            ratio = bl.paired_ratio(series, 'accounting', 'btrfs filesystem du -s')
            tools = compsize(vm_dirs)
            du_bytes = du_total(vm_dirs)
            data.update({'du_s': series['btrfs filesystem du -s'].times, 'compsize_s': series['compsize -b'].times,
                         'compsize': tools, 'du_total': du_bytes, 'ratio_to_du': ratio})
            tool_rows = [
                [kind, 'btrfs filesystem du -s', bl.fmt_time(series['btrfs filesystem du -s'].median), '1.00x', '-',
                 'total %s' % bl.fmt_bytes(du_bytes)],
                [kind, 'compsize -b', bl.fmt_time(series['compsize -b'].median),
                 bl.fmt_ratio(bl.paired_ratio(series, 'compsize -b', 'btrfs filesystem du -s')), '-',
                 'disk usage %s, %d extents, %d refs' % (bl.fmt_bytes(tools['disk']), tools['extents'], tools['refs'])]]
            section.goal('space accounting of %d volumes (%d files) within 1.5x of btrfs filesystem du -s'
                         % (volumes, len(images)), bl.fmt_ratio(ratio), ratio <= 1.5)
            section.goal('the pool\'s allocated bytes = compsize\'s disk usage',
                         '%d / %d' % (ours['pool']['allocated'], tools['disk']), ours['pool']['allocated'] == tools['disk'])
        section.rows.append([kind, 'accounting (read + figures + one if_removed)',
                             bl.fmt_time(series['accounting'].median), bl.fmt_ratio(ratio), bl.fmt_bytes(peak),
                             '%d volumes, allocated %s, the revisions would free %s' % (
                                 ours['volumes'], bl.fmt_bytes(ours['pool']['allocated']),
                                 bl.fmt_bytes(ours['revisions_free']))])
        section.rows.extend(tool_rows)
        if info_parts is not None:
            data['reflink_info'] = space_info.report(ctx, section, info_parts, kind, pool, series, info_results, reps,
                                                     ours['pool']['allocated'])
        section.data.append(data)
        section.notes.append('%s: %d volumes, %d files, built in %s; medians of %d rounds after one untimed run.'
                             % (kind, volumes, len(images), bl.fmt_time(build_s), reps))
        shutil.rmtree(pool)
        bl.syncfs(ctx.fs[kind])
    if info_parts is None:
        section.notes.append('the collection measured has no findings: reflink_info\'s space and findings not measured')
    else:
        section.notes.append(space_info.NOTE)
    section.notes.append('"vs du -s": the median of the per-round ratios to btrfs filesystem du -s over the same VM '
                         'directories. Peak memory: tracemalloc\'s peak during one accounting (a run of its own). '
                         'The accounting is given the inode numbers of the listing (reflink_info\'s scan has them); '
                         'without, it stats every file again (about 5 % more on btrfs).')
    return section

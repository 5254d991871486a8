# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Case 8: sharing identical data again (reflink_dedupe) against duperemove, on btrfs and XFS.

The spec's "restored pool": a template root (96 MiB) and three full copies of
it with 4 MiB changed in each, every image with a reflinked precache; a
private volume (64 MiB) whose three revisions are full copies of its clean
(which has its precache).  Each file is written in 1 MiB pieces and fsynced,
as a restore writes it.  Quick: 12 MiB roots (1 MiB changed), 8 MiB private.

Per file system, page-cache state and round, two identical copies of the
pool (same bytes, written the same way): ``duperemove -dr
--dedupe-options=partial,same`` on one, reflink_dedupe (scope ``pool``, its
task in this process: the locks, the space accounting read before and
after, the engine) on the other; the order alternates from round to round.
Before the real run, the same task in check mode (its prediction, then the
page cache dropped again for "cold").  A collection without the module
(``--collection``) runs the engine alone (``dedupe_volumes``).  Page cache "cold": that
pool's images are dropped from it first (POSIX_FADV_DONTNEED on each, then
syncfs), so that the data comes from the loop device as a restored pool's
would from disk (the loop device's backing file may still be in the host's
page cache); "warm": every image is read once first.  Measured:

- time (wall clock of the run);
- freed: statvfs used space before minus after (syncfs, and on btrfs
  ``btrfs filesystem sync``), and the module's figure (``reclaimed_bytes``)
  and check mode's next to it;
- % of the ideal: per offset, distinct physical blocks minus distinct
  contents over all images, from FIEMAP and the data, before either run;
- every image's sha256, size, mode, inode, mtime and SEEK_HOLE map, before
  and after (they must not change);
- the engine's rerun (cold only; page cache dropped again): time, bytes read (the
  engine's count, and this process's rchar from /proc/self/io), changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import shutil
import statistics
import struct
import subprocess
import time

import benchlib as bl
from benchlib import MiB

FICLONE = getattr(fcntl, 'FICLONE', 0x40049409)
DUPEREMOVE = ['duperemove', '-dr', '--dedupe-options=partial,same']
ROOT_VMS = ('tpl', 'tpl-r1', 'tpl-r2', 'tpl-r3')
T0 = 1_700_000_000 * 10 ** 9
_FIEMAP = 0xC020660B
_FIEMAP_HEADER = struct.Struct('=QQIIII')
_FIEMAP_EXTENT = struct.Struct('=QQQQQIIII')
_NOT_DATA = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800   # unknown, delalloc, encoded, ..., unwritten


def sizes(quick: bool) -> tuple[int, int, int]:
    """(root size, bytes changed in each copy, private size)."""
    return (12 * MiB, MiB, 8 * MiB) if quick else (96 * MiB, 4 * MiB, 64 * MiB)


def _write(path: str, chunks: list[bytes], mtime_ns: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        offset = 0
        for chunk in chunks:
            os.pwrite(fd, chunk, offset)
            offset += len(chunk)
        os.fsync(fd)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


def _precache(path: str, precache: str) -> None:
    src = os.open(path, os.O_RDONLY)
    dst = os.open(precache, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.ioctl(dst, FICLONE, src)
        os.fsync(dst)
        st = os.fstat(src)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(src)
        os.close(dst)


def build_pool(pool: str, quick: bool, seed: int) -> list[str]:
    """The restored pool; returns its vids."""
    root_size, changed, private_size = sizes(quick)
    rng = random.Random(seed)
    root = [rng.randbytes(MiB) for _index in range(root_size // MiB)]
    private = [rng.randbytes(MiB) for _index in range(private_size // MiB)]
    vids = []
    for number, vm in enumerate(ROOT_VMS):
        vm_dir = os.path.join(pool, 'vm-templates', vm)
        os.makedirs(vm_dir)
        data = list(root)
        if number:
            first = (number * root_size // 4 - changed) // MiB   # a different place in each copy
            for index in range(first, first + changed // MiB):
                data[index] = rng.randbytes(MiB)
        _write(os.path.join(vm_dir, 'root.img'), data, T0 + number * 10 ** 9)
        _precache(os.path.join(vm_dir, 'root.img'), os.path.join(vm_dir, 'root-precache.img'))
        vids.append('vm-templates/%s/root' % vm)
    vm_dir = os.path.join(pool, 'appvms', 'work')
    os.makedirs(vm_dir)
    for number in (1, 2, 3):
        name = 'private.img.%d@2023-11-1%dT00:00:00Z' % (number, number)
        _write(os.path.join(vm_dir, name), private, T0 - (4 - number) * 86400 * 10 ** 9)
    _write(os.path.join(vm_dir, 'private.img'), private, T0)
    _precache(os.path.join(vm_dir, 'private.img'), os.path.join(vm_dir, 'private-precache.img'))
    vids.append('appvms/work/private')
    return vids


def image_paths(pool: str) -> list[str]:
    found = []
    for prefix in ('appvms', 'vm-templates'):
        for root, _dirs, files in os.walk(os.path.join(pool, prefix)):
            found.extend(os.path.join(root, name) for name in files if '.img' in name)
    return sorted(found)


def _extents(fd: int) -> list[tuple[int, int, int]]:
    """(logical, physical, length) of the data extents of ``fd``, by FIEMAP."""
    found = []
    start = 0
    while True:
        request = bytearray(_FIEMAP_HEADER.size + 256 * _FIEMAP_EXTENT.size)
        _FIEMAP_HEADER.pack_into(request, 0, start, 0xFFFFFFFFFFFFFFFF - start, 1, 0, 256, 0)
        fcntl.ioctl(fd, _FIEMAP, request)
        mapped = _FIEMAP_HEADER.unpack_from(request, 0)[3]
        if not mapped:
            return found
        for index in range(mapped):
            fields = _FIEMAP_EXTENT.unpack_from(request, _FIEMAP_HEADER.size + index * _FIEMAP_EXTENT.size)
            if not fields[5] & _NOT_DATA:
                found.append((fields[0], fields[1], fields[2]))
            start = fields[0] + fields[2]
            if fields[5] & 0x1:
                return found


def ideal_bytes(pool: str, block: int = 4096) -> int:
    """Per offset, distinct physical blocks minus distinct contents, over every image of the pool."""
    fds = [os.open(path, os.O_RDONLY) for path in image_paths(pool)]
    try:
        maps = [_extents(fd) for fd in fds]
        cursor = [0] * len(fds)
        size = max(os.fstat(fd).st_size for fd in fds)
        total = 0
        for chunk in range(0, size, MiB):
            datas = [os.pread(fd, MiB, chunk) for fd in fds]
            for offset in range(chunk, min(chunk + MiB, size), block):
                physical, contents = set(), set()
                for index, extents in enumerate(maps):
                    while cursor[index] < len(extents) and extents[cursor[index]][0] + extents[cursor[index]][2] <= offset:
                        cursor[index] += 1
                    if cursor[index] < len(extents) and extents[cursor[index]][0] <= offset:
                        logical, start, _length = extents[cursor[index]]
                        physical.add(start + offset - logical)
                        contents.add(datas[index][offset - chunk:offset - chunk + block])
                total += (len(physical) - len(contents)) * block
        return total
    finally:
        for fd in fds:
            os.close(fd)


def snapshot(pool: str) -> dict:
    """Per image: sha256, size, mode, inode, mtime and data segments."""
    found = {}
    for path in image_paths(pool):
        fd = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            digest = hashlib.sha256()
            while True:
                data = os.read(fd, 8 * MiB)
                if not data:
                    break
                digest.update(data)
            found[os.path.relpath(path, pool)] = (digest.hexdigest(), st.st_size, st.st_mode, st.st_ino,
                                                  st.st_mtime_ns, tuple(bl.data_ranges(fd, st.st_size)))
        finally:
            os.close(fd)
    return found


def drop_cache(pool: str) -> None:
    for path in image_paths(pool):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    bl.syncfs(pool)


def used(path: str, kind: str) -> int:
    bl.syncfs(path)
    if kind == 'btrfs':
        bl.run_quiet(['btrfs', 'filesystem', 'sync', path])
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def rchar() -> int:
    with open('/proc/self/io', encoding='ascii') as handle:
        for line in handle:
            if line.startswith('rchar:'):
                return int(line.split()[1])
    return 0


def run_engine(core, pool: str, vids: list[str], kind: str, check: bool = False):
    """reflink_dedupe's task over every volume, scope pool (the engine alone for a collection without it).

    Returns (changed, deduped, reclaimed, rewritten, bytes read).
    """
    if core.run_dedupe_task is not None:
        result = core.run_dedupe_task({'pool': pool, 'vids': None, 'scope': 'pool', 'lock_timeout': 60,
                                       'qubes_xml': 'none'}, check, False)
        return (result['changed'], result['deduped_bytes'], result['reclaimed_bytes'], result['rewritten_bytes'],
                result['bytes_read'])
    opened = {}
    volumes = []
    try:
        for vid in vids:
            prefix, vm, volume = vid.split('/')
            vm_dir = '%s/%s' % (prefix, vm)
            if vm_dir not in opened:
                opened[vm_dir] = os.open(os.path.join(pool, vm_dir), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            volumes.append(core.VolumeDir(vid, opened[vm_dir], vm_dir, volume))
        settings = core.dedupe_settings_for(kind, opened[vm_dir])
        report = core.dedupe_volumes(volumes, 'pool', settings, not check).report
        return report.changed, report.deduped_bytes, report.reclaimed_bytes, report.rewritten_bytes, report.bytes_read
    finally:
        for fd in opened.values():
            os.close(fd)


def warm_cache(pool: str) -> None:
    for path in image_paths(pool):
        bl.warm(path)


def _round(ctx, kind: str, base: str, seed: int, order: list[str], cache: str) -> dict:
    """One round in one page-cache state ('cold': dropped, 'warm': every image read once); the rerun if cold."""
    pools = {'duperemove': os.path.join(base, 'pool-duperemove'), 'engine': os.path.join(base, 'pool-engine')}
    for pool in pools.values():
        shutil.rmtree(pool, ignore_errors=True)
    vids = build_pool(pools['duperemove'], ctx.quick, seed)
    build_pool(pools['engine'], ctx.quick, seed)
    images_bytes = sum(os.stat(path).st_size for path in image_paths(pools['engine']))
    result = {'ideal': ideal_bytes(pools['engine']), 'images_bytes': images_bytes}
    before = snapshot(pools['engine'])
    for who in order:
        pool = pools[who]
        if who == 'engine':
            (drop_cache if cache == 'cold' else warm_cache)(pool)
            start = time.perf_counter()
            predicted = run_engine(ctx.core, pool, vids, kind, check=True)
            check_seconds = time.perf_counter() - start
        (drop_cache if cache == 'cold' else warm_cache)(pool)
        start_used = used(base, kind)
        start = time.perf_counter()
        if who == 'duperemove':
            bl.run_quiet(DUPEREMOVE + [pool])
        else:
            done = run_engine(ctx.core, pool, vids, kind)
        elapsed = time.perf_counter() - start
        result[who] = {'seconds': elapsed, 'freed': start_used - used(base, kind)}
    result['engine'].update(claimed=done[2], deduped=done[1], rewritten=done[3], predicted=predicted[2],
                            check_seconds=check_seconds)
    if cache == 'cold':
        drop_cache(pools['engine'])
        start_used, start_read, start = used(base, kind), rchar(), time.perf_counter()
        again = run_engine(ctx.core, pools['engine'], vids, kind)
        result['rerun'] = {'seconds': time.perf_counter() - start, 'rchar': rchar() - start_read,
                           'bytes_read': again[4], 'changed': again[0], 'freed': start_used - used(base, kind)}
    result['unchanged'] = snapshot(pools['engine']) == before
    for pool in pools.values():
        shutil.rmtree(pool, ignore_errors=True)
    return result


def run(ctx) -> bl.Section:
    section = bl.Section('8', 'Sharing identical data again: reflink_dedupe against duperemove (restored pool)',
                         ['file system', 'page cache', 'run', 'time', 'freed (statvfs)', '% of ideal', 'module says',
                          'check mode says', 'read', 'note'], aligns='lllrrrrrrl')
    if ctx.core.dedupe_volumes is None:
        raise RuntimeError('case 8: the collection under test has no dedupe engine')
    if not shutil.which('duperemove', path=bl.tool_env()['PATH']):
        raise RuntimeError('case 8 needs duperemove (apt-get install duperemove; make deps installs it)')
    version = subprocess.run(['duperemove', '--version'], capture_output=True, text=True, check=False)
    rounds = ctx.reps(1, 3)
    for kind in ('btrfs', 'xfs'):
        for cache in ('cold', 'warm'):
            results = []
            for index in range(rounds):
                order = ['duperemove', 'engine'] if index % 2 == 0 else ['engine', 'duperemove']
                ctx.log('case 8: %s, page cache %s, round %d of %d (%s first)'
                        % (kind, cache, index + 1, rounds, order[0]))
                results.append(_round(ctx, kind, ctx.fs[kind], 100 + index, order, cache))
            section.data.append({'filesystem': kind, 'page_cache': cache, 'rounds': results})
            _report(section, kind, cache, results)
    root_size, changed, private_size = sizes(ctx.quick)
    section.notes.append(
        'Restored pool: roots of %s (%s changed in each of three copies), private of %s with three full-copy '
        'revisions; precaches reflinked. %d round(s) per file system and page-cache state, medians; each run on '
        'its own identical copy of the pool. Page cache "cold": dropped for the pool\'s images before the run '
        '(the loop device\'s backing file may still be cached by the host); "warm": every image read once before. '
        'duperemove: %s, `%s`. reflink_dedupe: scope pool, its task in this process (no Ansible), check mode '
        'first (not in the time; its page cache dropped again for "cold"). "read" of the rerun (cold): this '
        'process\'s rchar (/proc/self/io), which counts every read the task made.'
        % (bl.fmt_size(root_size), bl.fmt_size(changed), bl.fmt_size(private_size), rounds,
           (version.stdout or version.stderr).strip(), ' '.join(DUPEREMOVE)))
    return section


def _report(section: bl.Section, kind: str, cache: str, results: list[dict]) -> None:
    def median(who, key):
        return statistics.median(result[who][key] for result in results)

    ideal = statistics.median(result['ideal'] for result in results)
    dupe_s, engine_s = median('duperemove', 'seconds'), median('engine', 'seconds')
    dupe_freed, engine_freed = median('duperemove', 'freed'), median('engine', 'freed')
    claimed = median('engine', 'claimed')

    def share(value):
        return '%.1f %%' % (100.0 * value / ideal) if ideal else '-'

    predicted = median('engine', 'predicted')
    section.rows.append([kind, cache, 'duperemove', bl.fmt_time(dupe_s), bl.fmt_bytes(dupe_freed), share(dupe_freed),
                         '-', '-', '-', 'ideal %s' % bl.fmt_bytes(ideal)])
    section.rows.append([kind, cache, 'reflink_dedupe', bl.fmt_time(engine_s), bl.fmt_bytes(engine_freed),
                         share(engine_freed), bl.fmt_bytes(claimed), bl.fmt_bytes(predicted), '-',
                         'rewrote %s; check mode took %s' % (bl.fmt_bytes(median('engine', 'rewritten')),
                                                             bl.fmt_time(median('engine', 'check_seconds')))])
    ratio = statistics.median(result['engine']['seconds'] / result['duperemove']['seconds'] for result in results)
    section.goal('%s, %s: in no more time than duperemove' % (kind, cache),
                 '%s vs %s (median ratio %.2f)' % (bl.fmt_time(engine_s), bl.fmt_time(dupe_s), ratio), ratio <= 1.0)
    section.goal('%s, %s: reflink_dedupe frees at least 95 %% of the ideal' % (kind, cache),
                 '%s of %s (%s)' % (bl.fmt_bytes(engine_freed), bl.fmt_bytes(ideal), share(engine_freed)),
                 engine_freed >= 0.95 * ideal)
    section.goal('%s, %s: reclaimed_bytes is the file system\'s figure (1 MiB + 1 %%)' % (kind, cache),
                 'says %s, statvfs %s' % (bl.fmt_bytes(claimed), bl.fmt_bytes(engine_freed)),
                 all(abs(result['engine']['claimed'] - result['engine']['freed'])
                     <= MiB + result['engine']['claimed'] // 100 for result in results))
    section.goal('%s, %s: check mode predicts reclaimed_bytes (1 MiB + 1 %%)' % (kind, cache),
                 'predicted %s, real %s' % (bl.fmt_bytes(predicted), bl.fmt_bytes(claimed)),
                 all(abs(result['engine']['claimed'] - result['engine']['predicted'])
                     <= MiB + result['engine']['claimed'] // 100 for result in results))
    section.goal('%s, %s: no image changed (sha256, size, mode, inode, mtime, holes)' % (kind, cache),
                 'unchanged' if all(result['unchanged'] for result in results) else 'CHANGED',
                 all(result['unchanged'] for result in results))
    if cache != 'cold':
        return
    images_bytes = results[0]['images_bytes']
    rerun_s, rerun_read = median('rerun', 'seconds'), median('rerun', 'rchar')
    changed = any(result['rerun']['changed'] for result in results)
    section.rows.append([kind, cache, 'reflink_dedupe, rerun', bl.fmt_time(rerun_s),
                         bl.fmt_bytes(median('rerun', 'freed')), '-', '-', '-', bl.fmt_bytes(rerun_read),
                         'changed' if changed else 'nothing changed'])
    section.goal('%s: the rerun changes nothing and reads under 5 %% of the images\' bytes' % kind,
                 '%s of %s read' % (bl.fmt_bytes(rerun_read), bl.fmt_bytes(images_bytes)),
                 rerun_read < 0.05 * images_bytes and not changed)
    section.goal('%s: the rerun takes a small part of the first run\'s time (under 10 %%)' % kind,
                 '%s vs %s' % (bl.fmt_time(rerun_s), bl.fmt_time(engine_s)), rerun_s < 0.1 * engine_s)

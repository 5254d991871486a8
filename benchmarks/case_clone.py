# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Case 1: cloning (FICLONE) on btrfs and XFS.

Variants, each making a new file with the source's content in the same directory:

- ``ioctl``: the bare ``ioctl(dst, FICLONE, src)`` into an already open, empty
  file (no tempfile, no fsync): the floor;
- ``fill``: the core's ``fill_from(dst_fd, src_fd)`` into the same kind of
  open file: the core's clone, like with like against ``ioctl``;
- ``bare durable``: the durable sequence written by hand (open the source,
  O_TMPFILE, FICLONE, fchmod, fsync, linkat, rename, fsync of the directory);
- ``ours``: the core's ``clone_file`` through a ``Directory`` (the same
  durable sequence, as every module runs it);
- ``cp``: ``cp --reflink=always SRC DST`` (a process; no fsync);
- ``cp durable``: what a careful script runs: ``cp --reflink=always`` into a
  tempfile, fsync it, rename it over the final name, fsync the directory
  (the same durability as ``ours``).

After every run the result is removed and the filesystem synced (untimed).
"""

from __future__ import annotations

import fcntl
import os
import subprocess

import benchlib as bl
from benchlib import GiB, KiB, MiB

FICLONE = getattr(fcntl, 'FICLONE', 0x40049409)  # x86_64 and the other asm-generic architectures


def images(quick: bool) -> list[tuple[str, int, list, int]]:
    """(name, nominal size, pieces, fsync batch) of the source images."""
    dense = 32 * MiB if quick else GiB
    frag_count = 512 if quick else 16384
    return [
        ('1 MiB dense', MiB, bl.dense_pieces(MiB), 0),
        ('%s dense' % bl.fmt_size(dense), dense, bl.dense_pieces(dense), 0),
        ('10 GiB sparse', 10 * GiB, [(0, MiB, 'data'), (10 * GiB - MiB, MiB, 'data')], 0),
        ('100 GiB sparse', 100 * GiB, [(0, MiB, 'data'), (100 * GiB - MiB, MiB, 'data')], 0),
        ('fragmented', frag_count * 64 * KiB, bl.fragmented_pieces(frag_count), 256),
    ]


def _variants(core, directory, src_name, dst_name):
    src_path = os.path.join(directory, src_name)
    dst_path = os.path.join(directory, dst_name)
    state = {}
    pool_dir = core.Directory.open_pool(directory)

    def open_dst():
        state['src'] = os.open(src_path, os.O_RDONLY)
        state['dst'] = os.open(dst_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    def close_and_clean():
        for key in ('src', 'dst'):
            if key in state:
                os.close(state.pop(key))
        bl.remove(dst_path)
        bl.syncfs(directory)

    def bare_ioctl():
        fcntl.ioctl(state['dst'], FICLONE, state['src'])

    def fill():
        core.fill_from(state['dst'], state['src'])

    def bare_durable():
        dir_fd = pool_dir.fd
        src = os.open(src_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            dst = os.open('.', os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                fcntl.ioctl(dst, FICLONE, src)
                os.fchmod(dst, 0o600)
                os.fsync(dst)
                tmp = dst_name + '~benchtmp'
                os.link('/proc/self/fd/%d' % dst, tmp, dst_dir_fd=dir_fd, follow_symlinks=True)
                os.rename(tmp, dst_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                os.fsync(dir_fd)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def ours():
        how = core.clone_file(pool_dir, src_name, pool_dir, dst_name)
        if how != core.REFLINK:
            raise RuntimeError('clone_file did not reflink (%s)' % how)

    def cp():
        subprocess.run(['cp', '--reflink=always', src_path, dst_path], check=True)

    def cp_durable():
        bl.durable_cp(['--reflink=always'], src_path, dst_path + '~cptmp', dst_path, pool_dir.fd)

    variants = [
        bl.Variant('ioctl', bare_ioctl, open_dst, close_and_clean),
        bl.Variant('fill', fill, open_dst, close_and_clean),
        bl.Variant('bare durable', bare_durable, None, close_and_clean),
        bl.Variant('ours', ours, None, close_and_clean),
        bl.Variant('cp', cp, None, close_and_clean),
        bl.Variant('cp durable', cp_durable, None, close_and_clean),
    ]
    return variants, pool_dir


def run(ctx) -> bl.Section:
    section = bl.Section(
        '1', 'Clone (FICLONE) on btrfs and XFS: medians; ratios are medians of paired runs',
        ['fs', 'image', 'extents (FIEMAP)', 'ioctl', 'fill', 'fill/ioctl', 'bare durable', 'ours', 'ours/bare durable',
         'cp --reflink', 'ours/cp', 'cp durable', 'ours/cp durable'],
        aligns='llrrrrrrrrrrr')
    by_fs = {}
    for kind in ('btrfs', 'xfs'):
        directory = os.path.join(ctx.fs[kind], 'clone')
        os.makedirs(directory, exist_ok=True)
        for name, size, pieces, batch in images(ctx.quick):
            src_name = name.replace(' ', '-') + '.img'
            src_path = os.path.join(directory, src_name)
            ctx.log('case 1: %s: writing %s' % (kind, name))
            bl.write_image(src_path, size, pieces, sync_every=batch)
            bl.syncfs(directory)
            extents = bl.fiemap_count(src_path)
            reps = ctx.reps(2, 5 if name == 'fragmented' else 41)
            variants, pool_dir = _variants(ctx.core, directory, src_name, 'clone-result.img')
            try:
                ctx.log('case 1: %s: %s, %d extents, %d rounds' % (kind, name, extents, reps))
                series = bl.alternate(variants, reps, warmup=not ctx.quick)
            finally:
                pool_dir.close()
            med = {key: value.median for key, value in series.items()}
            ratios = {
                'fill/ioctl': bl.paired_ratio(series, 'fill', 'ioctl'),
                'ours/bare durable': bl.paired_ratio(series, 'ours', 'bare durable'),
                'ours/cp': bl.paired_ratio(series, 'ours', 'cp'),
                'fill/cp': bl.paired_ratio(series, 'fill', 'cp'),
                'ours/cp durable': bl.paired_ratio(series, 'ours', 'cp durable'),
            }
            by_fs.setdefault(kind, {})[name] = med
            section.rows.append([kind, name, extents, bl.fmt_time(med['ioctl']), bl.fmt_time(med['fill']),
                                 bl.fmt_ratio(ratios['fill/ioctl']), bl.fmt_time(med['bare durable']),
                                 bl.fmt_time(med['ours']), bl.fmt_ratio(ratios['ours/bare durable']),
                                 bl.fmt_time(med['cp']), bl.fmt_ratio(ratios['ours/cp']),
                                 bl.fmt_time(med['cp durable']), bl.fmt_ratio(ratios['ours/cp durable'])])
            section.data.append({'fs': kind, 'image': name, 'nominal_size': size, 'extents': extents,
                                 'rounds': reps, 'median_s': med, 'ratios': ratios,
                                 'samples_s': {key: value.times for key, value in series.items()}})
            tag = '%s %s' % (kind, name)
            section.goal('clone within 1.05x of the bare ioctl (fill/ioctl), %s' % tag,
                         bl.fmt_ratio(ratios['fill/ioctl']), ratios['fill/ioctl'] <= 1.05)
            section.goal('durable clone within 1.05x of the same sequence by hand (ours/bare durable), %s' % tag,
                         bl.fmt_ratio(ratios['ours/bare durable']), ratios['ours/bare durable'] <= 1.05)
            section.goal('durable clone faster than cp --reflink=always (not synced) (ours/cp), %s' % tag,
                         bl.fmt_ratio(ratios['ours/cp']), ratios['ours/cp'] < 1.0)
            section.goal('durable clone faster than cp --reflink=always + fsync + rename (ours/cp durable), %s' % tag,
                         bl.fmt_ratio(ratios['ours/cp durable']), ratios['ours/cp durable'] < 1.0)
            bl.remove(src_path)
    for kind, medians in by_fs.items():
        small, large = medians['10 GiB sparse'], medians['100 GiB sparse']
        flat = large['fill'] / small['fill']
        section.goal('flat in nominal size: core clone (fill) of 100 GiB vs 10 GiB sparse (same extents), %s' % kind,
                     '%s, %+.0f µs (bare ioctl: %s; durable ours: %s)'
                     % (bl.fmt_ratio(flat), (large['fill'] - small['fill']) * 1e6,
                        bl.fmt_ratio(large['ioctl'] / small['ioctl']), bl.fmt_ratio(large['ours'] / small['ours'])),
                     flat <= 1.25 or large['fill'] - small['fill'] < 50e-6)
    section.notes.append('ioctl and fill: time of the call into an open empty file. bare durable and ours: '
                         'open source, O_TMPFILE, FICLONE, fchmod, fsync, linkat, rename, fsync(dir). '
                         'cp: process start + open + FICLONE, no fsync; cp durable: the same into a tempfile, '
                         'then fsync, rename, fsync(dir). fill/cp (neither synced): see the JSON.')
    return section

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Case 2: the fallback copy where no reflink is possible (ext4, and btrfs -> XFS).

Variants, each making ``result.img`` in the destination directory:

- ``ours``: the core's ``clone_file`` through ``Directory`` objects: FICLONE
  fails inside the errno gate, ``sparse_copy`` runs; durable (O_TMPFILE,
  fsync, linkat, rename, fsync of the directory);
- ``ours nosync``: the core's ``fill_from`` into an open new file, no fsync;
- ``cp sparse``: ``cp --sparse=always SRC DST`` (no fsync);
- ``qubes cp``: what Qubes' reflink driver runs: ``cp --sparse=always`` into a
  tempfile, fsync it, rename it over the final name, fsync the directory;
- ``cp auto``: ``cp --reflink=auto SRC DST`` (no fsync).

Like with like: ``ours`` against ``qubes cp`` (both durable) and ``ours
nosync`` against ``cp sparse`` (neither is).  The source is read once before
the rounds (page cache warm, caches never dropped); after each run the
filesystem is synced untimed, then the result is measured (allocated bytes,
filefrag's extent count) and deleted, timed (unlink + syncfs).
"""

from __future__ import annotations

import os
import subprocess

import benchlib as bl
from benchlib import GiB, KiB, MiB

RESULT = 'result.img'


def images(quick: bool) -> list[tuple[str, int, list, bool]]:
    """(name, nominal size, pieces, trade_off) of the source images."""
    if quick:
        dense, large, small = 32 * MiB, 320 * MiB, 16 * MiB
        big_piece, zero_data, zero_zeros = 8 * MiB, 2 * MiB, 6 * MiB
    else:
        dense, large, small = GiB, 10 * GiB, GiB
        big_piece, zero_data, zero_zeros = 256 * MiB, 64 * MiB, 192 * MiB
    four = [(index * (large // 4), big_piece, 'data') for index in range(3)] + [(large - big_piece, big_piece, 'data')]
    return [
        ('%s dense' % bl.fmt_size(dense), dense, bl.dense_pieces(dense), False),
        ('%s sparse, 5%% data in 256 KiB pieces' % bl.fmt_size(large), large,
         bl.spread_pieces(large, large // (5 * MiB), 256 * KiB), False),
        ('%s sparse, 4 extents of %s' % (bl.fmt_size(large), bl.fmt_size(big_piece)), large, four, False),
        ('%s, 75%% written zeros in %s runs' % (bl.fmt_size(dense), bl.fmt_size(zero_zeros)), dense,
         bl.zero_region_pieces(dense, zero_data, zero_zeros), False),
        ('%s, 256 KiB zero run in every MiB (trade-off)' % bl.fmt_size(small), small,
         bl.small_zero_run_pieces(small), True),
        ('%s, 4 KiB zero block in every 64 KiB (trade-off)' % bl.fmt_size(small), small,
         bl.small_zero_run_pieces(small, 60 * KiB, 64 * KiB), True),
    ]


def _variants(ctx, src_dir, dst_dir, src_name, checks):
    core = ctx.core
    src_path = os.path.join(src_dir, src_name)
    dst_path = os.path.join(dst_dir, RESULT)
    tmp_path = os.path.join(dst_dir, RESULT + '~qubestmp')
    state = {}
    src_d = core.Directory.open_pool(src_dir)
    dst_d = core.Directory.open_pool(dst_dir)

    def open_files():
        state['src'] = os.open(src_path, os.O_RDONLY)
        state['dst'] = os.open(dst_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    def finisher(name):
        def finish():
            for key in ('src', 'dst'):
                if key in state:
                    os.close(state.pop(key))
            bl.syncfs(dst_dir)
            metrics = {'allocated': bl.allocated(dst_path), 'extents': bl.extent_count(dst_path),
                       'fiemap': bl.fiemap_count(dst_path)}
            if name not in checks:
                checks[name] = bl.identical(src_path, dst_path)
            metrics['delete_s'] = bl.timed(lambda: (os.unlink(dst_path), bl.syncfs(dst_dir)))
            # Untimed: whatever the host still has to write back (the loop images, their
            # discards) is done before the next variant runs, not during it.
            os.sync()
            return metrics
        return finish

    def ours():
        how = core.clone_file(src_d, src_name, dst_d, RESULT)
        if how != core.COPY:
            raise RuntimeError('expected a copy, clone_file says %s' % how)

    def ours_nosync():
        how = core.fill_from(state['dst'], state['src'])
        if how != core.COPY:
            raise RuntimeError('expected a copy, fill_from says %s' % how)

    def cp_sparse():
        subprocess.run(['cp', '--sparse=always', src_path, dst_path], check=True)

    def qubes_cp():
        bl.durable_cp(['--sparse=always'], src_path, tmp_path, dst_path, dst_d.fd)

    def cp_auto():
        subprocess.run(['cp', '--reflink=auto', src_path, dst_path], check=True)

    variants = [
        bl.Variant('ours', ours, None, finisher('ours')),
        bl.Variant('qubes cp', qubes_cp, None, finisher('qubes cp')),
        bl.Variant('ours nosync', ours_nosync, open_files, finisher('ours nosync')),
        bl.Variant('cp sparse', cp_sparse, None, finisher('cp sparse')),
        bl.Variant('cp auto', cp_auto, None, finisher('cp auto')),
    ]
    return variants, (src_d, dst_d)


TARGETS = (('ext4', 'ext4', 'ext4'), ('btrfs->xfs', 'btrfs', 'xfs'))


def run(ctx) -> list[bl.Section]:
    timing = bl.Section(
        '2', 'Fallback copy, wall time: medians; ratios are medians of paired runs',
        ['target', 'image', 'source data', 'ours', 'qubes cp', 'ours/qubes cp', 'ours nosync', 'cp sparse',
         'nosync/cp sparse', 'cp auto', 'ours/cp auto'],
        aligns='llrrrrrrrrr')
    layout = bl.Section(
        '2b', 'Fallback copy, the result: allocated bytes, extents (filefrag), delete time (unlink + syncfs)',
        ['target', 'image', 'alloc ours', 'alloc cp sparse', 'alloc cp auto', 'extents ours',
         'extents cp sparse', 'extents cp auto', 'delete ours', 'delete cp sparse', 'delete cp auto', 'identical'],
        aligns='llrrrrrrrrrl')
    layout.notes.append('extents: filefrag\'s count (physically contiguous extents are one), then FIEMAP\'s '
                        '(each logical extent) after the slash.')
    for target, src_kind, dst_kind in TARGETS:
        src_dir = os.path.join(ctx.fs[src_kind], 'copy-src')
        dst_dir = os.path.join(ctx.fs[dst_kind], 'copy-dst')
        os.makedirs(src_dir, exist_ok=True)
        os.makedirs(dst_dir, exist_ok=True)
        for name, size, pieces, trade_off in images(ctx.quick):
            src_name = 'source.img'
            src_path = os.path.join(src_dir, src_name)
            ctx.log('case 2: %s: writing %s' % (target, name))
            bl.write_image(src_path, size, pieces)
            bl.syncfs(src_dir)
            bl.warm(src_path)
            source_data = bl.allocated(src_path)
            reps = ctx.reps(1, 7)
            checks = {}
            variants, dirs = _variants(ctx, src_dir, dst_dir, src_name, checks)
            ctx.log('case 2: %s: %s, %d rounds' % (target, name, reps))
            try:
                series = bl.alternate(variants, reps, warmup=not ctx.quick)
            finally:
                for directory in dirs:
                    directory.close()
                bl.remove(src_path)
            med = {key: value.median for key, value in series.items()}
            ratios = {
                'ours/qubes cp': bl.paired_ratio(series, 'ours', 'qubes cp'),
                'ours nosync/cp sparse': bl.paired_ratio(series, 'ours nosync', 'cp sparse'),
                'ours/cp auto': bl.paired_ratio(series, 'ours', 'cp auto'),
            }
            metric = {key: {m: value.metric(m) for m in ('allocated', 'extents', 'fiemap', 'delete_s')}
                      for key, value in series.items()}
            timing.rows.append([target, name, bl.fmt_bytes(source_data), bl.fmt_time(med['ours']),
                                bl.fmt_time(med['qubes cp']), bl.fmt_ratio(ratios['ours/qubes cp']),
                                bl.fmt_time(med['ours nosync']), bl.fmt_time(med['cp sparse']),
                                bl.fmt_ratio(ratios['ours nosync/cp sparse']), bl.fmt_time(med['cp auto']),
                                bl.fmt_ratio(ratios['ours/cp auto'])])
            layout.rows.append([target, name] +
                               [bl.fmt_bytes(metric[v]['allocated']) for v in ('ours', 'cp sparse', 'cp auto')] +
                               ['%d / %d' % (metric[v]['extents'], metric[v]['fiemap']) for v in ('ours', 'cp sparse', 'cp auto')] +
                               [bl.fmt_time(metric[v]['delete_s']) for v in ('ours', 'cp sparse', 'cp auto')] +
                               ['yes' if all(checks.values()) else 'NO: ' + ', '.join(k for k, v in checks.items() if not v)])
            timing.data.append({'target': target, 'image': name, 'nominal_size': size, 'source_allocated': source_data,
                                'rounds': reps, 'median_s': med, 'ratios': ratios, 'result': metric,
                                'identical': checks, 'trade_off_case': trade_off,
                                'samples_s': {key: value.times for key, value in series.items()}})
            tag = '%s, %s' % (target, name)
            timing.goal('durable copy at most 1.0x Qubes\' cp --sparse=always + fsync (ours/qubes cp), %s' % tag,
                        bl.fmt_ratio(ratios['ours/qubes cp']), ratios['ours/qubes cp'] <= 1.0)
            timing.goal('copy at most 1.0x cp --sparse=always, neither synced (ours nosync/cp sparse), %s' % tag,
                        bl.fmt_ratio(ratios['ours nosync/cp sparse']), ratios['ours nosync/cp sparse'] <= 1.0)
            alloc_ours, alloc_cp = metric['ours']['allocated'], metric['cp sparse']['allocated']
            layout.goal('allocated bytes at most cp --sparse=always\'s%s, %s'
                        % (' (trade-off case: zero runs < 1 MiB are kept on purpose)' if trade_off else '', tag),
                        '%s vs %s' % (bl.fmt_bytes(alloc_ours), bl.fmt_bytes(alloc_cp)), alloc_ours <= alloc_cp)
            layout.goal('bytes identical (cmp, every variant once), %s' % tag,
                        'yes' if all(checks.values()) else 'no', all(checks.values()))
    timing.notes.append('ours and qubes cp are durable (fsync of the file, rename, fsync of the directory); '
                        'ours nosync, cp sparse and cp auto are not. Sources are read once before the rounds; '
                        'caches are not dropped.')
    return [timing, layout]

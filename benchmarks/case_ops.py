# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Case 5: whole operations of the core on btrfs, as the modules run them.

Each operation is a module run in a child process (child.py: the module's
main() after Python's start and the imports, timed from the inside).  One
volume goes through the whole life cycle; the cycle is repeated on fresh
volumes, the first time under ``strace -f`` to count the calls that touch the
disk, then untimed-by-strace for the times:

create -> no-op -> resize (grow, stopped) -> one-shot import (src, reflink)
-> two-phase import begin -> (1 MiB written into the import image) -> commit
-> revert to the latest revision -> qubesd-like start (precache renamed to
dirty, 1 MiB written) and stop commit (state=stopped) -> remove.

"contract" is the count the on-disk contract asks for in that state (each
new file: fsync of the file, linkat (O_TMPFILE), rename, fsync of the
directory; each remove, rename, mkdir, rmdir: an fsync of the directory).
"""

from __future__ import annotations

import os
import statistics

import benchlib as bl
import procs
from benchlib import GiB, MiB

COLUMNS = ('fsync', 'rename', 'linkat', 'unlink', 'FICLONE', 'mkdir', 'rmdir', 'ftruncate', 'fsetxattr', 'FIEMAP')

# What the contract asks for, per operation, in the states the cycle goes through.
# new file = fsync(file) + linkat + rename + fsync(dir); remove/rename/mkdir/rmdir = the call + fsync(dir).
CONTRACT = {
    'create': {'fsync': 5, 'rename': 2, 'linkat': 2, 'FICLONE': 1, 'mkdir': 1},
    'no-op': {},
    'resize (grow)': {'fsync': 4, 'rename': 2, 'linkat': 2, 'FICLONE': 2},
    'import (src)': {'fsync': 8, 'rename': 4, 'linkat': 3, 'unlink': 1, 'FICLONE': 3},
    'import begin': {'fsync': 4, 'rename': 2, 'linkat': 2},
    'import commit': {'fsync': 10, 'rename': 4, 'linkat': 3, 'unlink': 2, 'FICLONE': 2},
    'revert': {'fsync': 6, 'rename': 3, 'linkat': 2, 'unlink': 1, 'FICLONE': 2},
    'stop commit': {'fsync': 7, 'rename': 3, 'linkat': 2, 'unlink': 1, 'FICLONE': 2},
    'remove': {'fsync': 4, 'unlink': 3, 'rmdir': 1},
}
# Calls beyond the contract that the collection makes on purpose ("+N" in the table).
OURS_EXTRA = {'revert': {'fsync': 1}}
OURS_EXTRA_WHY = {'revert': 'fsync of the revert marker, an xattr that lets a rerun recognise the revert'}
CONTRACT_NOTES = {
    'resize (grow)': 'new clean (clone, then truncate), new precache renamed over the stale one; qubesd removes '
                     'the old precache first (one unlink and one fsync more)',
    'import (src)': 'stage (new file), revision (new file), precache removed, import renamed over clean, precache',
    'import begin': 'empty staged image (new file), journal (new file)',
    'import commit': 'fsync of the staged image, revision, revision 1 pruned, precache removed, rename, precache, '
                     'journal',
    'revert': 'revision of the current clean, precache removed, rename, precache; our revert marker '
              '(fsetxattr + fsync) comes on top',
    'stop commit': 'revision, revision pruned, fsync of dirty, rename, precache',
    'remove': 'clean, precache, 1 revision; VM directory',
}


def _write_mib(path: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bl.pattern().data(0, MiB), 0)
    finally:
        os.close(fd)


def _cycle(ctx, pool: str, index: int, src: str, trace: str | None) -> dict:
    """One life cycle of a volume; {operation: ChildResult}."""
    vid = 'appvms/op%02d/private' % index
    vm_dir = os.path.join(pool, 'appvms', 'op%02d' % index)
    base = {'pool': pool, 'vid': vid}
    out = {}

    def step(name, module, **args):
        out[name] = procs.run_module(ctx, module, dict(base, **args), trace)
        return out[name].stdout

    step('create', 'reflink_volume', size='10G')
    if step('no-op', 'reflink_volume', size='10G')['changed']:
        raise RuntimeError('case 5: the no-op changed something')
    step('resize (grow)', 'reflink_volume', size='12G')
    step('import (src)', 'reflink_import', src=src)
    step('import begin', 'reflink_import', state='begin', size='10G')
    _write_mib(os.path.join(vm_dir, 'private-import.img'))
    step('import commit', 'reflink_import', state='commit')
    step('revert', 'reflink_revert', revision='latest')
    os.rename(os.path.join(vm_dir, 'private-precache.img'), os.path.join(vm_dir, 'private-dirty.img'))
    _write_mib(os.path.join(vm_dir, 'private-dirty.img'))
    step('stop commit', 'reflink_volume', state='stopped')
    step('remove', 'reflink_volume', state='absent')
    if os.path.exists(vm_dir):
        raise RuntimeError('case 5: %s is still there after the remove' % vm_dir)
    return out


def run(ctx) -> bl.Section:
    section = bl.Section('5', 'Whole operations on btrfs: module main() time (median) and disk calls (strace, '
                              'one run): measured / contract',
                         ['operation', 'inside', 'process'] + list(COLUMNS) + ['other ioctl'],
                         aligns='l' + 'r' * (len(COLUMNS) + 3))
    root = ctx.fs['btrfs']
    pool = os.path.join(root, 'pool5')
    src_dir = os.path.join(root, 'ops-src')
    os.makedirs(src_dir, exist_ok=True)
    src = os.path.join(src_dir, 'dense.img')
    size = 32 * MiB if ctx.quick else GiB
    ctx.log('case 5: writing a %s dense import source' % bl.fmt_size(size))
    bl.write_image(src, size, bl.dense_pieces(size))
    bl.syncfs(root)
    # The pool's lock directory and the journal directory exist before the measured cycles.
    procs.run_module(ctx, 'reflink_pool', {'path': pool})
    procs.run_module(ctx, 'reflink_import', {'pool': pool, 'vid': 'appvms/setup/private', 'state': 'begin',
                                             'size': '1G'})
    procs.run_module(ctx, 'reflink_import', {'pool': pool, 'vid': 'appvms/setup/private', 'state': 'abort'})

    reps = ctx.reps(0, 5)
    ctx.log('case 5: one cycle under strace, %d timed cycles' % reps)
    traced = _cycle(ctx, pool, 1, src, procs.DISK_SYSCALLS)
    timed = [_cycle(ctx, pool, 2 + index, src, None) for index in range(reps)] or [traced]
    for name, expected in CONTRACT.items():
        counts = traced[name].counts
        inside = statistics.median(run[name].seconds for run in timed)
        process = statistics.median(run[name].wall for run in timed)
        cells = []
        for column in COLUMNS:
            got = counts.get(column, 0)
            want = expected.get(column, 0)
            plus = OURS_EXTRA.get(name, {}).get(column)
            if column in ('ftruncate', 'fsetxattr', 'FIEMAP') and not want:
                cells.append('%d' % got)
            else:
                cells.append('%d / %d%s' % (got, want, '+%d' % plus if plus else ''))
        other = counts.get('ioctl other', 0)
        section.rows.append([name, bl.fmt_time(inside), bl.fmt_time(process)] + cells + [other])
        section.data.append({'operation': name, 'inside_median_s': inside, 'process_median_s': process,
                             'inside_samples_s': [run[name].seconds for run in timed],
                             'calls': counts, 'contract': expected, 'contract_note': CONTRACT_NOTES.get(name, '')})
        allowed = dict(expected)
        for column, count in OURS_EXTRA.get(name, {}).items():
            allowed[column] = allowed.get(column, 0) + count
        extra = {column: counts.get(column, 0) - allowed.get(column, 0)
                 for column in ('fsync', 'rename', 'linkat', 'unlink', 'FICLONE', 'mkdir', 'rmdir')
                 if counts.get(column, 0) != allowed.get(column, 0)}
        measured = 'as required' if not extra else ', '.join('%s %+d' % item for item in extra.items())
        if OURS_EXTRA.get(name) and not extra:
            measured += ' (+ %s)' % OURS_EXTRA_WHY[name]
        section.goal('%s: fsync/rename/linkat/unlink/FICLONE/mkdir/rmdir as the contract requires' % name,
                     measured, not extra)
    if not reps:
        section.notes.append('quick run: the times are those of the cycle run under strace.')
    section.notes.append('inside: median over %d cycles of main() to exit_json, in a fresh process; process: the '
                         'same runs from fork to exit (Python start and the imports included). Counts are "measured '
                         '/ contract"; failed calls (e.g. unlink of a missing file) are not in them. Import source: '
                         '%s dense on the same btrfs (reflinked).' % (len(timed), bl.fmt_size(size)))
    bl.remove(src)
    return section

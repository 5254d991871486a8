# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Case 3: end to end through Ansible (``ansible localhost -c local -m ...``), on btrfs.

- a no-op ``reflink_volume`` (volume present, right size) against
  ``ansible.builtin.stat`` of its image.  stat runs with get_checksum,
  get_mime and get_attributes off: with its defaults it reads the whole
  image to hash it (seconds for a large image), which would flatter us;
- a one-shot ``reflink_import`` (``src``, ``force: true`` so that every run
  imports and commits) of a sparse image against the same no-op.

The same import is also run once directly (child.py) to get the module's own
time without Ansible's start-up around it.
"""

from __future__ import annotations

import os

import benchlib as bl
import procs
from benchlib import GiB, KiB, MiB


def run(ctx) -> bl.Section:
    section = bl.Section('3', 'End to end through Ansible (ansible localhost -c local -m ...): medians',
                         ['comparison', 'ours', 'theirs', 'ours/theirs', 'module alone', 'rounds'],
                         aligns='lrrrrr')
    root = ctx.fs['btrfs']
    pool = os.path.join(root, 'pool3')
    src_dir = os.path.join(root, 'import-src')
    os.makedirs(src_dir, exist_ok=True)
    size = 320 * MiB if ctx.quick else 10 * GiB
    src = os.path.join(src_dir, 'source.img')
    ctx.log('case 3: writing the %s import source' % bl.fmt_size(size))
    bl.write_image(src, size, bl.spread_pieces(size, size // (5 * MiB), 256 * KiB))
    bl.syncfs(root)

    vid, import_vid = 'appvms/bench/private', 'appvms/bench/root'
    volume_args = {'pool': pool, 'vid': vid, 'size': '10G'}
    import_args = {'pool': pool, 'vid': import_vid, 'src': src, 'force': True}
    image = os.path.join(pool, 'appvms', 'bench', 'private.img')
    procs.run_module(ctx, 'reflink_pool', {'path': pool})
    procs.run_module(ctx, 'reflink_volume', volume_args)

    def noop():
        _wall, out = procs.ansible(ctx, 'dom0.reflink.reflink_volume', volume_args)
        if '"changed": false' not in out:
            raise RuntimeError('the no-op reflink_volume run changed something: %s' % out[-2000:])

    def stat():
        procs.ansible(ctx, 'ansible.builtin.stat', {'path': image, 'get_checksum': False, 'get_mime': False,
                                                    'get_attributes': False})

    def do_import():
        procs.ansible(ctx, 'dom0.reflink.reflink_import', import_args)

    reps = ctx.reps(1, 7)
    ctx.log('case 3: no-op reflink_volume vs stat, %d rounds' % reps)
    first = bl.alternate([bl.Variant('noop', noop), bl.Variant('stat', stat)], reps, warmup=not ctx.quick)
    noop_alone = procs.run_module(ctx, 'reflink_volume', volume_args).seconds
    reps = ctx.reps(1, 5)
    ctx.log('case 3: reflink_import of a %s sparse image vs no-op, %d rounds' % (bl.fmt_size(size), reps))
    second = bl.alternate([bl.Variant('import', do_import), bl.Variant('noop', noop)], reps, warmup=not ctx.quick)
    import_alone = procs.run_module(ctx, 'reflink_import', import_args).seconds

    ratio_stat = bl.paired_ratio(first, 'noop', 'stat')
    ratio_import = bl.paired_ratio(second, 'import', 'noop')
    section.rows.append(['no-op reflink_volume / stat', bl.fmt_time(first['noop'].median),
                         bl.fmt_time(first['stat'].median), bl.fmt_ratio(ratio_stat), bl.fmt_time(noop_alone),
                         len(first['noop'].times)])
    section.rows.append(['reflink_import %s sparse / no-op' % bl.fmt_size(size), bl.fmt_time(second['import'].median),
                         bl.fmt_time(second['noop'].median), bl.fmt_ratio(ratio_import), bl.fmt_time(import_alone),
                         len(second['import'].times)])
    section.data.append({'comparison': 'noop_vs_stat', 'median_s': {k: v.median for k, v in first.items()},
                         'ratio': ratio_stat, 'module_alone_s': noop_alone,
                         'samples_s': {k: v.times for k, v in first.items()}})
    section.data.append({'comparison': 'import_vs_noop', 'source_nominal_size': size,
                         'median_s': {k: v.median for k, v in second.items()}, 'ratio': ratio_import,
                         'module_alone_s': import_alone, 'samples_s': {k: v.times for k, v in second.items()}})
    section.goal('no-op reflink_volume within 1.1x of ansible.builtin.stat', bl.fmt_ratio(ratio_stat), ratio_stat <= 1.1)
    share = import_alone / second['import'].median
    section.goal('import of a %s sparse image dominated by Ansible\'s start-up (module alone / whole task)'
                 % bl.fmt_size(size), '%s of %s (%.0f%%)' % (bl.fmt_time(import_alone),
                                                             bl.fmt_time(second['import'].median), share * 100),
                 share < 0.5)
    section.notes.append('module alone: the module\'s main() run directly (child.py), after Python\'s start and '
                         'the imports: argument checks, the work, the JSON result.')
    bl.remove(src)
    return section

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Case 7, reflink_info's part: what ``space: true`` and the findings cost a reflink_info run.

Run in the same alternation as case 7's accounting and ``btrfs filesystem du
-s`` (so the rounds pair up): ``run_info_task`` without ``space`` (the cheap
findings included), with ``space: true``, and without ``space`` with the
findings (and the scan's reading of directory flags) left out.  The cost of ``space`` is the per-round difference of the
first two, set against ``du -s`` of the same round; the cost of the cheap
findings is the per-round difference of the first and the third, and, timed
alone, the cheap checks' function over the whole pool (``file_findings``,
its inputs read once before).  Then each of the three in a fresh process
(child.py, as a module runs), and the peak of Python's memory during one
run with and without ``space`` (tracemalloc).
"""

from __future__ import annotations

import importlib
import statistics
import tracemalloc
import types

import benchlib as bl
import procs

PREFIX = 'ansible_collections.dom0.reflink.plugins.module_utils.'
PLAIN = 'reflink_info'
SPACE = 'reflink_info space: true'
BARE = 'reflink_info without the findings'


def load(collections: str):
    """reflink_info's task and the cheap findings from the collection measured (None when it has no findings)."""
    del collections   # on sys.path already (run.py)
    try:
        return types.SimpleNamespace(info=importlib.import_module(PREFIX + '_tasks.info'),
                                     file_findings=importlib.import_module(PREFIX + '_inspect.file_findings'),
                                     finding=importlib.import_module(PREFIX + '_inspect.finding'),
                                     scan=importlib.import_module(PREFIX + '_state.scan'),
                                     surroundings=importlib.import_module(PREFIX + '_state.surroundings'),
                                     directory=importlib.import_module(PREFIX + '_fs.directory'))
    except ImportError:
        return None


def params(pool: str, space: bool) -> dict:
    return {'pool': pool, 'vids': None, 'lock_timeout': 60, 'qubes_xml': 'none', 'space': space, 'if_removed': None}


def _no_findings(facts, space=None):
    del facts, space
    return []


def _no_flags(scan, directory, relative):
    del scan, directory, relative


def variants(parts, pool: str, results: dict) -> list:
    """The three reflink_info variants of the alternation; their last results go to ``results``."""
    info = parts.info

    def plain():
        results['plain'] = info.run_info_task(params(pool, False))

    def space():
        results['space'] = info.run_info_task(params(pool, True))

    def bare():
        saved = info.pool_findings, parts.scan.PoolScan.note_flags
        info.pool_findings, parts.scan.PoolScan.note_flags = _no_findings, _no_flags
        try:
            info.run_info_task(params(pool, False))
        finally:
            info.pool_findings, parts.scan.PoolScan.note_flags = saved

    return [bl.Variant(PLAIN, plain), bl.Variant(SPACE, space), bl.Variant(BARE, bare)]


def _differences(series: dict, more: str, less: str) -> list:
    return [a - b for a, b in zip(series[more].times, series[less].times, strict=True)]


def cheap_findings_alone(parts, pool: str, fstype: str, reps: int) -> bl.Series:
    """The cheap checks over the whole pool, their inputs (scan, loop devices) read once before."""
    with parts.directory.Directory.open_pool(pool) as pool_dir:
        scan = parts.scan.PoolScan.read(pool_dir, read_flags=fstype == 'btrfs')
        facts = parts.finding.PoolFacts(pool_dir, pool, fstype, True, scan.sorted_volumes(),
                                        parts.surroundings.Surroundings.read(pool), None, scan.nocow_dirs)
        return bl.alternate([bl.Variant('cheap', lambda: parts.file_findings.file_findings(facts))], reps,
                            warmup=True)['cheap']


def _spread(times: list) -> float:
    """The interquartile range of ``times`` (their whole range with fewer than four)."""
    if len(times) < 4:
        return max(times) - min(times)
    quartiles = statistics.quantiles(times, n=4)
    return quartiles[2] - quartiles[0]


def peak(work) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def report(ctx, section: bl.Section, parts, kind: str, pool: str, series: dict, results: dict, reps: int,
           expected_allocated: int) -> dict:
    """Rows, goals and data of reflink_info's part for one filesystem; checks the run's results."""
    plain, space = results['plain'], results['space']
    if space['pool']['space']['allocated'] != expected_allocated or space['findings'] or plain['findings']:
        raise RuntimeError('case 7: %s: reflink_info space: allocated %d (the accounting: %d), findings %s'
                           % (kind, space['pool']['space']['allocated'], expected_allocated,
                              sorted({finding['kind'] for finding in space['findings'] + plain['findings']})))
    space_cost = _differences(series, SPACE, PLAIN)
    findings_cost = _differences(series, PLAIN, BARE)
    cheap = cheap_findings_alone(parts, pool, plain['pool']['fstype'], reps)
    ctx.log('case 7: %s, reflink_info in fresh processes' % kind)
    fresh: dict[str, list] = {'info': [], 'info-nofindings': [], 'info-space': []}
    for round_index in range(reps):
        order = list(fresh)
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            fresh[name].append(procs.run_child(ctx, [name, pool]).seconds)
    fresh_medians = {name: statistics.median(times) for name, times in fresh.items()}
    peaks = {'plain': peak(lambda: parts.info.run_info_task(params(pool, False))),
             'space': peak(lambda: parts.info.run_info_task(params(pool, True)))}
    plain_s = series[PLAIN].median
    data = {'info_s': series[PLAIN].times, 'info_space_s': series[SPACE].times, 'info_bare_s': series[BARE].times,
            'space_cost_s': space_cost, 'findings_cost_s': findings_cost, 'cheap_findings_s': cheap.times,
            'fresh_process_s': fresh, 'peak_memory_bytes': peaks}
    ratio = None
    if kind == 'btrfs':
        ratio = statistics.median(cost / du for cost, du in zip(space_cost, series['btrfs filesystem du -s'].times,
                                                                strict=True))
        data['space_cost_ratio_to_du'] = ratio
        section.goal('reflink_info: space: true minus without, within 1.5x of btrfs filesystem du -s (%s)' % kind,
                     bl.fmt_ratio(ratio), ratio <= 1.5)
    share = statistics.median(findings_cost) / plain_s
    fresh_share = (fresh_medians['info'] - fresh_medians['info-nofindings']) / fresh_medians['info']
    noise = _spread(series[PLAIN].times) / plain_s
    data.update(findings_share=share, fresh_findings_share=fresh_share, info_spread=noise)
    section.goal('reflink_info without space: the cheap checks\' own time under 2 %% of it (%s)' % kind,
                 '%.2f %% (%s of %s)' % (100 * cheap.median / plain_s, bl.fmt_time(cheap.median), bl.fmt_time(plain_s)),
                 cheap.median < 0.02 * plain_s)
    files = sum(len(volume['space']['files']) for volume in space['volumes'])
    section.rows.extend([
        [kind, 'reflink_info (in process)', bl.fmt_time(plain_s), '-', bl.fmt_bytes(peaks['plain']),
         '%d volumes, %d findings' % (len(plain['volumes']), len(plain['findings']))],
        [kind, 'reflink_info space: true (in process)', bl.fmt_time(series[SPACE].median), '-',
         bl.fmt_bytes(peaks['space']), 'pool allocated %s, referenced %s' % (
             bl.fmt_bytes(space['pool']['space']['allocated']), bl.fmt_bytes(space['pool']['space']['referenced']))],
        [kind, 'space: true minus without (per round)', bl.fmt_time(statistics.median(space_cost)),
         bl.fmt_ratio(ratio), bl.fmt_bytes(peaks['space'] - peaks['plain']), '%d files mapped' % files],
        [kind, 'reflink_info without the findings (in process)', bl.fmt_time(series[BARE].median), '-', '-',
         'the findings: %s per run (%+.1f %%; the rounds of reflink_info spread by %.1f %%)'
         % (bl.fmt_time(statistics.median(findings_cost)), 100 * share, 100 * noise)],
        [kind, 'cheap findings alone (file_findings)', bl.fmt_time(cheap.median), '-', '-',
         '%.1f %% of reflink_info' % (100 * cheap.median / plain_s)],
        [kind, 'fresh process: info / without findings / space: true', '%s / %s / %s' % tuple(
            bl.fmt_time(fresh_medians[name]) for name in ('info', 'info-nofindings', 'info-space')), '-', '-',
         'the findings: %+.1f %%' % (100 * fresh_share)],
    ])
    return data


NOTE = ('reflink_info rows: run_info_task in this process, in the same alternation as the accounting and du -s '
        '(rounds pair up); "space: true minus without": the median of the per-round differences, "vs du -s" that '
        'difference over the same round\'s du -s, peak memory the difference of the two runs\' tracemalloc peaks; '
        '"without the findings": the same run with the findings function replaced by one that returns nothing '
        'and the scan reading no directory flags, so the difference is what the cheap findings cost; "cheap '
        'findings alone": file_findings over every volume, the scan (with the flags) and loop devices read once '
        'before; "fresh process": child.py, the task\'s own time in a '
        'new process as a module runs it (median of the rounds, alternating).')

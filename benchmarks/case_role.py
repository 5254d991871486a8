# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Case 6: the role ``dom0.reflink.pool`` with many volumes, through ``ansible-playbook``, on btrfs (issue 12).

A play (``hosts: localhost``, ``connection: local``, ``gather_facts: false``)
runs the role with ``pool_path`` and ``pool_volumes``: 1, 100 and 1,000 small
sparse volumes (``private`` and ``root`` of 50 VMs for 100 volumes, as a dom0
with 50 qubes has 100 origin volumes).  Only the role is run, so the case
measures whatever the role does (one task per volume, or one batch task).

Next to it, the same volumes set up the old way: a play whose
``reflink_volume`` task loops over them (``loop:``, one module run per
volume), after a ``reflink_pool`` task as the role has.  Only for 1 and 100
volumes: at 1,000 it takes minutes, so its row is predicted, linear from 1
and 100.  The role is not run either where that prediction passes
RUN_LIMIT_S (a role of one task per volume would take a quarter of an hour
at 1,000 volumes): its row and goal then give the prediction.

Timed: the wall time of the whole ``ansible-playbook`` run, start-up
included, as a user waits for it.  ``creation`` runs on a fresh pool every
round (the role creates the pool directory too); ``rerun`` runs the same
play again on the pool of the last creation, and must report changed=0.  Each
creation is checked: every volume's image is there.  Role and loop alternate
within a round; a round is not started when it would take the measurement
past its time budget (so that a slow variant gets fewer rounds, not a run of
half an hour).  The largest rerun that takes under BREAKDOWN_LIMIT_S is then
run once more with the junit callback (the only ansible.builtin callback
that times each task) to show where its time goes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import xml.etree.ElementTree as ET

import benchlib as bl
import procs
from benchlib import MiB

# The PLAY RECAP line of the default callback.
_RECAP = re.compile(r'^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)', re.MULTILINE)
# A measurement (one count, creation or rerun, every variant) starts no round that would take it past this.
BUDGET_S = 120.0
# The breakdown repeats a rerun once: only one that takes less than this.
BREAKDOWN_LIMIT_S = 120.0
# A run predicted to take longer than this (linear from the smaller counts) is not run, only predicted.
RUN_LIMIT_S = 180.0


def volumes(count: int, size: int) -> list[dict]:
    """``count`` volumes: private and root of count/2 VMs (appvms/vm0000/private, appvms/vm0000/root, ...)."""
    return [{'vid': 'appvms/vm%04d/%s' % (index // 2, 'root' if index % 2 else 'private'), 'size': '%dMiB' % (size // MiB)}
            for index in range(count)]


def role_play(pool: str, vols: list[dict]) -> list:
    return [{'name': 'Pool of %d volumes, role dom0.reflink.pool' % len(vols), 'hosts': 'localhost',
             'connection': 'local', 'gather_facts': False,
             'roles': [{'role': 'dom0.reflink.pool', 'vars': {'pool_path': pool, 'pool_volumes': vols}}]}]


def loop_play(pool: str, vols: list[dict]) -> list:
    return [{'name': 'Pool of %d volumes, one reflink_volume task per volume' % len(vols), 'hosts': 'localhost',
             'connection': 'local', 'gather_facts': False, 'vars': {'bench_pool': pool, 'bench_volumes': vols},
             'tasks': [
                 {'name': 'Set up the pool', 'dom0.reflink.reflink_pool': {'path': '{{ bench_pool }}'}},
                 {'name': 'Create the volumes', 'loop': '{{ bench_volumes }}', 'loop_control': {'label': '{{ item.vid }}'},
                  'dom0.reflink.reflink_volume': {'pool': '{{ bench_pool }}', 'vid': '{{ item.vid }}',
                                                  'size': '{{ item.size }}'}}]}]


PLAYS = {'role': role_play, 'loop': loop_play}


def recap(out: str) -> dict:
    found = _RECAP.search(out)
    if not found:
        raise RuntimeError('no PLAY RECAP in the output: %s' % out[-2000:])
    return dict(zip(('ok', 'changed', 'unreachable', 'failed'), (int(n) for n in found.groups()), strict=True))


def images_made(pool: str, vols: list[dict]) -> int:
    return sum(1 for vol in vols if os.path.isfile(os.path.join(pool, vol['vid'] + '.img')))


def remove_pool(pool: str) -> None:
    """Remove a pool and write the removal back, untimed, so that the next run does not pay for it."""
    parent = os.path.dirname(pool)
    shutil.rmtree(pool)
    bl.syncfs(parent)


class Setup:
    """One way (role or loop) of setting up ``count`` volumes: its playbooks and the pool of its last creation."""

    def __init__(self, ctx, kind: str, count: int, size: int, base: str):
        self.ctx, self.kind, self.count, self.base = ctx, kind, count, base
        self.vols = volumes(count, size)
        self.serial = 0
        self.pool = None
        self.playbook = None
        self.pending = None
        self.last_out = None

    def _fresh(self):
        """A new pool path (not created: the play's first task makes it) and a playbook for it."""
        self.serial += 1
        name = '%s-%d-%d' % (self.kind, self.count, self.serial)
        self.pending = os.path.join(self.base, name)
        path = os.path.join(self.ctx.scratch, 'case6-%s.yml' % name)
        # JSON is YAML: the playbook needs no YAML writer.
        with open(path, 'w', encoding='utf-8') as handle:
            json.dump(PLAYS[self.kind](self.pending, self.vols), handle)
        self.playbook = path

    def _run(self, playbook):
        _wall, self.last_out = procs.playbook(self.ctx, playbook)

    def creation(self) -> bl.Variant:
        def finish():
            counts = recap(self.last_out)
            made = images_made(self.pending, self.vols)
            if made != self.count or not counts['changed']:
                raise RuntimeError('case 6: %s creation of %d volumes made %d images (changed=%d)'
                                   % (self.kind, self.count, made, counts['changed']))
            if self.pool:
                remove_pool(self.pool)
            self.pool = self.pending
            bl.syncfs(self.pool)
            return {'images': made, 'changed': counts['changed']}
        return bl.Variant(self.kind, lambda: self._run(self.playbook), self._fresh, finish)

    def rerun(self) -> bl.Variant:
        def finish():
            counts = recap(self.last_out)
            if counts['changed']:
                raise RuntimeError('case 6: %s rerun of %d volumes changed %d: %s'
                                   % (self.kind, self.count, counts['changed'], self.last_out[-3000:]))
            bl.syncfs(self.pool)
            return {'changed': 0}
        # Every rerun uses the playbook of the creation that made the pool.
        playbook = self.playbook
        return bl.Variant(self.kind, lambda: self._run(playbook), None, finish)


def rounds(variants: list[bl.Variant], max_rounds: int, budget: float) -> dict:
    """Like bl.alternate, but a round is started only while the rounds so far, plus one, fit in ``budget``."""
    out = {v.name: bl.Series([], []) for v in variants}
    spent = 0.0
    for index in range(max_rounds):
        if index and spent / index * (index + 1) > budget:
            break
        shift = index % len(variants)
        round_start = time.perf_counter()
        for variant in variants[shift:] + variants[:shift]:
            if variant.prepare:
                variant.prepare()
            start = time.perf_counter()
            variant.run()
            elapsed = time.perf_counter() - start
            out[variant.name].times.append(elapsed)
            out[variant.name].metrics.append(variant.finish() if variant.finish else None)
        spent += time.perf_counter() - round_start
    return out


def breakdown(ctx, setup: Setup) -> tuple[float, list]:
    """One more rerun of ``setup`` with the junit callback: (wall, [(task, seconds)] slowest first)."""
    out_dir = os.path.join(ctx.scratch, 'case6-junit')
    os.makedirs(out_dir, exist_ok=True)
    env = {'ANSIBLE_CALLBACKS_ENABLED': 'ansible.builtin.junit', 'JUNIT_OUTPUT_DIR': out_dir,
           'JUNIT_HIDE_TASK_ARGUMENTS': 'true'}
    wall, out = procs.playbook(ctx, setup.playbook, env)
    if recap(out)['changed']:
        raise RuntimeError('case 6: the breakdown rerun changed something')
    tasks = []
    for name in os.listdir(out_dir):
        for case in ET.parse(os.path.join(out_dir, name)).getroot().iter('testcase'):  # noqa: S314 (our own file)
            # "[localhost] <play>: <task>"; the play's name has no ': ' (see the plays above).
            task = case.get('name').split(': ', 1)[-1]
            tasks.append((task, float(case.get('time') or 0)))
    shutil.rmtree(out_dir)
    tasks.sort(key=lambda item: -item[1])
    return wall, tasks


def run(ctx) -> list:
    root = ctx.fs['btrfs']
    base = os.path.join(root, 'pool6')
    os.makedirs(base, exist_ok=True)
    counts = ctx.reps((1, 3, 6), (1, 100, 1000))
    loop_counts = counts[:2]
    size = ctx.reps(1, 64) * MiB
    max_rounds = ctx.reps(1, 3)
    section = bl.Section('6', 'The role dom0.reflink.pool through ansible-playbook, %s sparse volumes (btrfs): '
                         'medians of whole runs' % bl.fmt_size(size),
                         ['volumes', 'set up by', 'creation', 'creation / 1 volume', 'rerun (no-op)', 'rerun / 1 volume',
                          'rerun per added volume', 'rounds (creation, rerun)'], aligns='rlrrrrrr')

    if not ctx.quick:
        # First runs of ansible-playbook and of each play, untimed (cold page cache of Python and the collection).
        for kind in PLAYS:
            warm = Setup(ctx, kind, 1, size, base)
            rounds([warm.creation()], 1, BUDGET_S)
            rounds([warm.rerun()], 1, BUDGET_S)
            remove_pool(warm.pool)

    results = {}
    setups = {}

    def per_volume(kind, count, what):
        """The marginal cost of a volume: (time(count) - time(1)) / (count - 1)."""
        if count == counts[0]:
            return None
        return (results[kind, count][what].median - results[kind, counts[0]][what].median) / (count - counts[0])

    def predict(kind, count):
        """{what: seconds} for ``count`` volumes, linear from the two largest counts measured (None: too few)."""
        done = [c for c in counts if (kind, c) in results]
        if len(done) < 2:
            return None
        return {what: results[kind, done[-1]][what].median + per_volume(kind, done[-1], what) * (count - done[-1])
                for what in ('creation', 'rerun')}

    predicted = {}
    for count in counts:
        kinds = []
        for kind in PLAYS:
            guess = predict(kind, count)
            # The loop only up to loop_counts (at 1,000 volumes it takes minutes); the role unless it would take
            # more than RUN_LIMIT_S a run (the role of one task per volume takes a quarter of an hour at 1,000).
            if (kind == 'loop' and count not in loop_counts) or (guess and max(guess.values()) > RUN_LIMIT_S):
                predicted[kind, count] = guess
                ctx.log('case 6: %s, %d volumes: not run, predicted creation ~%s, rerun ~%s'
                        % (kind, count, bl.fmt_time(guess['creation']), bl.fmt_time(guess['rerun'])))
            else:
                kinds.append(kind)
        if not kinds:
            continue
        made = {kind: Setup(ctx, kind, count, size, base) for kind in kinds}
        ctx.log('case 6: creation of %d volumes (%s), up to %d rounds' % (count, ', '.join(kinds), max_rounds))
        created = rounds([made[kind].creation() for kind in kinds], max_rounds, BUDGET_S)
        ctx.log('case 6: rerun of %d volumes (%s), up to %d rounds' % (count, ', '.join(kinds), max_rounds))
        rerun = rounds([made[kind].rerun() for kind in kinds], max_rounds, BUDGET_S)
        for kind in kinds:
            results[kind, count] = {'creation': created[kind], 'rerun': rerun[kind]}
            ctx.log('case 6: %s, %d volumes: creation %s, rerun %s'
                    % (kind, count, bl.fmt_time(created[kind].median), bl.fmt_time(rerun[kind].median)))
        setups[count] = made

    def ratio(kind, count, what):
        if (kind, count) in results:
            return results[kind, count][what].median / results[kind, counts[0]][what].median
        return predicted[kind, count][what] / results[kind, counts[0]][what].median

    for count in counts:
        for kind in PLAYS:
            label = 'role dom0.reflink.pool' if kind == 'role' else 'loop: one reflink_volume task per volume'
            if (kind, count) in predicted:
                guess = predicted[kind, count]
                why = ('run up to %d volumes only' % loop_counts[-1] if kind == 'loop'
                       else 'a run would take over %d s' % RUN_LIMIT_S)
                section.rows.append([count, '%s (not run, %s: linear from %s)'
                                     % (label, why, ' and '.join(str(c) for c in counts if (kind, c) in results)),
                                     '~' + bl.fmt_time(guess['creation']), '~' + bl.fmt_ratio(ratio(kind, count, 'creation')),
                                     '~' + bl.fmt_time(guess['rerun']), '~' + bl.fmt_ratio(ratio(kind, count, 'rerun')),
                                     '-', '-'])
                section.data.append({'setup': kind, 'volumes': count, 'run': False, 'predicted_s': guess})
                continue
            entry = results[kind, count]
            section.rows.append([count, label, bl.fmt_time(entry['creation'].median),
                                 bl.fmt_ratio(ratio(kind, count, 'creation')), bl.fmt_time(entry['rerun'].median),
                                 bl.fmt_ratio(ratio(kind, count, 'rerun')), bl.fmt_time(per_volume(kind, count, 'rerun')),
                                 '%d, %d' % (len(entry['creation'].times), len(entry['rerun'].times))])
            section.data.append({'setup': kind, 'volumes': count, 'run': True,
                                 'median_s': {what: entry[what].median for what in ('creation', 'rerun')},
                                 'ratio_to_1': {what: ratio(kind, count, what) for what in ('creation', 'rerun')},
                                 'samples_s': {what: entry[what].times for what in ('creation', 'rerun')}})

    one, mid, top = counts
    for what, count, limit in (('rerun', mid, 1.3), ('rerun', top, 2.0), ('creation', mid, 2.0)):
        value = ratio('role', count, what)
        text = 'role: %s of %d volumes within %.1fx of the %s of 1 (issue 12)' % (what, count, limit, what)
        if ('role', count) in results:
            section.goal(text, '%s (%s / %s)' % (bl.fmt_ratio(value), bl.fmt_time(results['role', count][what].median),
                                                 bl.fmt_time(results['role', one][what].median)), value <= limit)
        else:
            section.goal(text, 'not run: predicted ~%s (~%s)' % (bl.fmt_ratio(value),
                                                                 bl.fmt_time(predicted['role', count][what])), False)
    loop_top = loop_counts[-1]
    section.notes.append('Wall time of the whole ansible-playbook run (start-up included); "/ 1 volume": the median '
                         'against the median for 1 volume; "per added volume": (rerun(N) - rerun(1)) / (N - 1). '
                         'Creation on a fresh pool each round, rerun (changed=0 checked) on the pool of the last '
                         'creation; role and loop alternate. Loop / role at %d volumes: creation %s, rerun %s.'
                         % (loop_top, bl.fmt_ratio(results['loop', loop_top]['creation'].median
                                                   / results['role', loop_top]['creation'].median),
                            bl.fmt_ratio(results['loop', loop_top]['rerun'].median
                                         / results['role', loop_top]['rerun'].median)))
    sections = [section]

    # Where the time of the largest rerun under BREAKDOWN_LIMIT_S goes.
    target = max((count for count in counts if ('role', count) in results
                  and results['role', count]['rerun'].median < BREAKDOWN_LIMIT_S), default=None)
    if target is not None:
        ctx.log('case 6: one more rerun of %d volumes with the junit callback (time per task)' % target)
        wall, tasks = breakdown(ctx, setups[target]['role'])
        detail = bl.Section('6b', 'Where the time of the role\'s rerun of %d volumes goes (one run, junit callback)'
                            % target, ['task', 'time', 'share of the run'], aligns='lrr')
        for task, seconds in tasks[:6]:
            detail.rows.append([task, bl.fmt_time(seconds), '%.0f%%' % (100 * seconds / wall)])
        in_tasks = sum(seconds for _task, seconds in tasks)
        detail.rows.append(['%d other tasks' % max(len(tasks) - 6, 0), bl.fmt_time(sum(s for _t, s in tasks[6:])),
                            '%.0f%%' % (100 * sum(s for _t, s in tasks[6:]) / wall)])
        detail.rows.append(['outside the tasks (start-up, parsing, inventory, end)', bl.fmt_time(wall - in_tasks),
                            '%.0f%%' % (100 * (wall - in_tasks) / wall)])
        detail.rows.append(['whole run', bl.fmt_time(wall), '100%'])
        detail.data.append({'volumes': target, 'wall_s': wall, 'tasks_s': tasks})
        detail.notes.append('A task\'s time: from its start to its result (junit callback), loops and skipped '
                            'tasks included. One run of its own, with the callback\'s work added: its whole run '
                            'differs from the median in the table above (%s) by that and by the noise of the machine.'
                            % bl.fmt_time(results['role', target]['rerun'].median))
        sections.append(detail)
    else:
        section.notes.append('No breakdown: every rerun takes over %s.' % bl.fmt_time(BREAKDOWN_LIMIT_S))

    for made in setups.values():
        for setup in made.values():
            remove_pool(setup.pool)
    section.notes.append('Counts %s; %d round(s) at most, fewer when a measurement would pass %d s. Statistics: '
                         'median of %s.' % (', '.join(str(c) for c in counts), max_rounds, BUDGET_S,
                                            'the rounds' if max_rounds > 1 else 'one run'))
    return sections

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stdout callback of the fleet suite: the whole run as one JSON document.

ansible-core ships no json callback (it lives in ansible.posix, which the
tests do not install), so the fleet suite brings this small one.  The
document printed at the end is::

    {"tasks": [{"name": ..., "hosts": {host: result}}, ...],
     "stats": {host: {"ok": n, "changed": n, "failures": n, "unreachable": n, ...}}}

A task's result per host is what ``register`` would hold (loops included).
Warnings and errors of Ansible itself still go to stderr.
"""

from __future__ import annotations

import json

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: fleet_json
    type: stdout
    short_description: The run as one JSON document (tests/fleet)
    description:
        - Prints every task's per-host results and the play recap as JSON at the end of the run.
"""


class CallbackModule(CallbackBase):
    """Collect the results of every task and print them with the stats at the end."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'stdout'
    CALLBACK_NAME = 'fleet_json'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tasks = []

    def _task_entry(self, task):
        # Results arrive per host after v2_playbook_on_task_start; a handler or an
        # included task may come without one, so look the task up by its id.
        uuid = task._uuid
        for entry in reversed(self._tasks):
            if entry['uuid'] == uuid:
                return entry
        entry = {'uuid': uuid, 'name': task.get_name(), 'hosts': {}}
        self._tasks.append(entry)
        return entry

    def _record(self, result, **outcome):
        # ansible-core 2.19 names them host, task and result; older ones _host, _task and _result.
        data = result.result if hasattr(result, 'result') else result._result
        task = result.task if hasattr(result, 'task') else result._task
        host = result.host if hasattr(result, 'host') else result._host
        # _dump_results knows how to serialise Ansible's own types (tagged strings ...).
        record = json.loads(self._dump_results(data, indent=None))
        # What the event says, which the result itself may not (2.19 keeps "failed" apart).
        record.update(outcome)
        self._task_entry(task)['hosts'][host.get_name()] = record

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_entry(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._task_entry(task)

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, failed=True)

    def v2_runner_on_skipped(self, result):
        self._record(result, skipped=True)

    def v2_runner_on_unreachable(self, result):
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats):
        document = {
            'tasks': [{'name': entry['name'], 'hosts': entry['hosts']} for entry in self._tasks],
            'stats': {host: stats.summarize(host) for host in sorted(stats.processed)},
        }
        self._display.display(json.dumps(document, indent=2, sort_keys=True))

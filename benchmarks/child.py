# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs one piece of work in a child process, timed from the inside.

    python child.py module NAME ARGS_JSON TIMING_JSON
        Run the module dom0.reflink.NAME the way `python -m` does (arguments
        from the file ARGS_JSON = {"ANSIBLE_MODULE_ARGS": {...}}).  Python's
        start and the imports (ansible.module_utils.basic, the module, the core)
        happen before the clock starts; the time from main() to exit_json
        (argument checks, the work, the JSON result) is written to TIMING_JSON.
    python child.py scan|info|info-space|info-nofindings|gc POOL TIMING_JSON
        PoolScan.read, run_info_task (info-space: with space: true;
        info-nofindings: with the findings left out, to measure what they
        cost), or run_gc_task in check mode.

The timed part is framed by two failing unlink() calls of marker paths, so
that a strace of the child can count only the system calls made inside it.
PYTHONPATH must hold the directory with ansible_collections/dom0/reflink.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time

MARKER = '/nonexistent/dom0-reflink-bench-marker-'


def marker(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(MARKER + name)


def _timed(work):
    marker('start')
    start = time.perf_counter()
    exit_code = 0
    try:
        work()
    except SystemExit as exc:
        exit_code = exc.code
    elapsed = time.perf_counter() - start
    marker('end')
    return elapsed, exit_code


def _pool_work(kind: str, pool: str):
    # Imported here, before the clock starts, from the collection PYTHONPATH points at.
    from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory  # noqa: PLC0415
    from ansible_collections.dom0.reflink.plugins.module_utils._tasks.gc import run_gc_task  # noqa: PLC0415
    from ansible_collections.dom0.reflink.plugins.module_utils._state.scan import PoolScan  # noqa: PLC0415
    from ansible_collections.dom0.reflink.plugins.module_utils._tasks.info import run_info_task  # noqa: PLC0415

    if kind == 'scan':
        def work():
            with Directory.open_pool(pool) as pool_dir:
                PoolScan.read(pool_dir)
        return work
    if kind == 'info':
        return lambda: run_info_task({'pool': pool, 'vids': None, 'lock_timeout': 60})
    if kind == 'info-space':
        return lambda: run_info_task({'pool': pool, 'vids': None, 'lock_timeout': 60, 'space': True})
    if kind == 'info-nofindings':
        info = importlib.import_module('ansible_collections.dom0.reflink.plugins.module_utils._tasks.info')
        info.pool_findings = lambda facts, space=None: []
        PoolScan.note_flags = lambda scan, directory, relative: None
        return lambda: run_info_task({'pool': pool, 'vids': None, 'lock_timeout': 60})
    return lambda: run_gc_task(gc_params(pool), True)


def gc_params(pool: str) -> dict:
    """reflink_gc's options with their defaults."""
    return {'pool': pool, 'vids': None, 'keep_vids': None, 'remove_orphans': False, 'min_age': '1h',
            'import_max_age': '1d', 'revisions_to_keep': 1, 'revisions_to_keep_per_volume': {},
            'rebuild_precache': False, 'lock_timeout': 60}


def main(argv: list[str]) -> int:
    if argv[0] == 'module':
        name, args_path, timing_path = argv[1:4]
        import ansible.module_utils.basic  # noqa: F401, PLC0415  pylint: disable=unused-import,import-outside-toplevel
        module = importlib.import_module('ansible_collections.dom0.reflink.plugins.modules.' + name)
        sys.argv = [module.__file__, args_path]
        elapsed, exit_code = _timed(module.main)
    else:
        kind, pool, timing_path = argv[0], argv[1], argv[2]
        work = _pool_work(kind, pool)
        elapsed, exit_code = _timed(work)
    with open(timing_path, 'w', encoding='utf-8') as handle:
        json.dump({'seconds': elapsed, 'exit': exit_code}, handle)
    return exit_code if isinstance(exit_code, int) else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

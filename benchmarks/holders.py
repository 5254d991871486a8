# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What reflink_gc's walk of /proc/*/fd costs on a busy host (prints figures; asserts nothing).

    sudo .venv/bin/python benchmarks/holders.py [--processes 300] [--files-each 4] [--volumes 400]

Starts PROCESSES ``sleep`` processes that each hold FILES_EACH files open (a
few of them files gc wants to remove), builds a pool of VOLUMES volumes on a
btrfs loop filesystem (as benchmarks/case_pool.py lays it out: each volume has
a tempfile two days old and a revision beyond revisions_to_keep=1, so gc plans
two removals per volume), then times, in this process, medians of 5 runs:
the /proc walk alone against the planned removals, a whole gc run in check mode
with and without the walk, one real gc run, and one in-use check of the
executor's guard.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import case_pool  # noqa: E402  pylint: disable=wrong-import-position
import run as bench_run  # noqa: E402  pylint: disable=wrong-import-position

ROUNDS = 5


def median_time(function, rounds=ROUNDS):
    times = []
    for _round in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def start_holders(scratch, processes, files_each, pool_files):
    """``processes`` sleep processes, each with ``files_each`` files open (the first few hold pool files)."""
    children = []
    for index in range(processes):
        fds = []
        for number in range(files_each):
            if index < len(pool_files) and number == 0:
                path = pool_files[index]
            else:
                path = os.path.join(scratch, "held-%d-%d" % (index, number))
                with open(path, "wb"):
                    pass
            fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        children.append(subprocess.Popen(["sleep", "3600"], pass_fds=fds))
        for fd in fds:
            os.close(fd)
    return children


def gc_params(pool):
    return {"pool": pool, "vids": None, "keep_vids": None, "remove_orphans": False, "min_age": "1h",
            "import_max_age": "1d", "revisions_to_keep": 1, "revisions_to_keep_per_volume": {},
            "rebuild_precache": False, "lock_timeout": 60}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--processes", type=int, default=300)
    parser.add_argument("--files-each", type=int, default=4)
    parser.add_argument("--volumes", type=int, default=400)
    options = parser.parse_args(argv)

    sys.path.insert(0, bench_run._collections_dir(bench_run.REPO))  # pylint: disable=protected-access
    prefix = "ansible_collections.dom0.reflink.plugins.module_utils."
    gc = importlib.import_module(prefix + "_plans.gc")
    gc_task = importlib.import_module(prefix + "_tasks.gc")
    workspace_module = importlib.import_module(prefix + "_engine.workspace")
    holders = importlib.import_module(prefix + "_fs.holders")
    guard_module = importlib.import_module(prefix + "_engine.inuse_guard")
    names = importlib.import_module(prefix + "_base.names")
    volume_module = importlib.import_module(prefix + "_state.files")
    surroundings_module = importlib.import_module(prefix + "_state.surroundings")
    fsops = importlib.import_module(prefix + "_fs.directory")
    loopfs = bench_run._load_loopfs()  # pylint: disable=protected-access

    fs = loopfs.create("btrfs", 2 * 1024 ** 3, "/var/tmp/dom0-reflink-tests")
    children = []
    try:
        pool = os.path.join(fs.path, "pool")
        scratch = os.path.join(fs.path, "scratch")
        os.mkdir(scratch)
        files = case_pool.build_pool(pool, options.volumes)
        tempfiles = sorted(os.path.join(root, name) for root, _dirs, names in os.walk(pool)
                           for name in names if "~tmp" in name)
        children = start_holders(scratch, options.processes, options.files_each, tempfiles[:5])
        fd_total = sum(len(os.listdir("/proc/%s/fd" % pid)) for pid in os.listdir("/proc")
                       if pid.isdigit() and os.path.isdir("/proc/%s/fd" % pid))
        process_total = sum(1 for pid in os.listdir("/proc") if pid.isdigit())

        planned = gc_task.run_gc_task(gc_params(pool), True)
        identities = []
        for entry in planned["removed"] + planned["skipped_files"]:
            st = os.stat(os.path.join(pool, entry["file"]))
            identities.append((st.st_dev, st.st_ino))
        walk = median_time(lambda: holders.open_holders(identities))
        check_with = median_time(lambda: gc_task.run_gc_task(gc_params(pool), True))
        original = gc.set_aside_held_files
        gc.set_aside_held_files = lambda per_volume: []
        try:
            check_without = median_time(lambda: gc_task.run_gc_task(gc_params(pool), True))
        finally:
            gc.set_aside_held_files = original

        vid = names.parse_vid("appvms/vm00001/private")
        with fsops.Directory.open_pool(pool) as pool_dir:
            workspace = workspace_module.Workspace(pool_dir, vid).open_vm_dir()
            with workspace:
                files_now = volume_module.read_volume(workspace.vm_dir, vid)
                guard = guard_module.InUseGuard(files_now, surroundings_module.Surroundings.read(pool))
                guard_s = median_time(lambda: [guard(workspace) for _i in range(100)]) / 100

        start = time.perf_counter()
        real = gc_task.run_gc_task(gc_params(pool), False)
        real_s = time.perf_counter() - start

        print("host: %d processes, %d open file descriptors in all (%d sleep processes with %d files each)"
              % (process_total, fd_total, options.processes, options.files_each))
        print("pool: %d volumes, %d files; gc plans %d removals" % (options.volumes, files, len(planned["removed"])
                                                                    + len(planned["skipped_files"])))
        print("/proc/*/fd walk against %d candidates: %.1f ms (%.2f us per fd)"
              % (len(identities), walk * 1e3, walk * 1e6 / max(fd_total, 1)))
        print("gc check mode, whole run: %.1f ms with the walk, %.1f ms without (walk = %.0f%% of the run)"
              % (check_with * 1e3, check_without * 1e3, 100 * (check_with - check_without) / check_with))
        print("gc real run (removes %d files, %d set aside as held open): %.1f ms"
              % (len(real["removed"]), len(real["skipped_files"]), real_s * 1e3))
        print("one in-use check of the executor's guard: %.3f ms" % (guard_s * 1e3))
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()
        shutil.rmtree(os.path.join(fs.path, "pool"), ignore_errors=True)
        fs.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())

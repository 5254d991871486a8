# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What building a module's payload costs the controller, and how much of it is garbage collection.

    .venv/bin/python benchmarks/controller_gc.py [--rounds N] [--collection ROOT ...] [--json PATH]

Runs ``ansible localhost -c local -m MODULE --check`` (a pool that does not
exist: check mode plans it as empty and changes nothing) for
``ansible.builtin.stat`` and for the no-op's and the import's modules of each
collection given, alternating, in fresh processes.  A hook loaded into the
ansible process (``controller_gc_hook/sitecustomize.py``) times, in the worker
that runs the task, ansible-core's ``recursive_finder`` (the payload builder)
and every full (generation 2) garbage collection made while it runs.

``--break-cycles`` also runs each module with the builder's import finder
made to drop the ``parent`` links it sets on import statements after reading a
file (what a fix in ansible-core would do): each syntax tree is then freed as
soon as its file is read, and the difference is what those links cost.
No root needed; nothing is written outside a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HOOK_DIR = os.path.join(HERE, "controller_gc_hook")
MODULES = ("ansible.builtin.stat", "dom0.reflink.reflink_volume", "dom0.reflink.reflink_import")


def _collections_dir(root: str, scratch: str, index: int) -> str:
    """A directory whose ansible_collections/dom0/reflink is a symlink to ``root``."""
    base = os.path.join(scratch, "collections-%d" % index)
    os.makedirs(os.path.join(base, "ansible_collections", "dom0"))
    os.symlink(os.path.abspath(root), os.path.join(base, "ansible_collections", "dom0", "reflink"))
    return base


def _arguments(module: str, scratch: str) -> dict:
    pool = os.path.join(scratch, "no-pool")
    if module.endswith(".stat"):
        return {"path": scratch, "get_checksum": False, "get_mime": False, "get_attributes": False}
    if module.endswith("reflink_volume"):
        return {"pool": pool, "vid": "appvms/bench/private", "size": "1G"}
    return {"pool": pool, "vid": "appvms/bench/root", "src": os.path.join(scratch, "no-source.img")}


def run_once(module: str, collections: str, scratch: str, break_cycles: bool) -> dict:
    """One ad-hoc run; the hook's figures of its worker (milliseconds and counts)."""
    record = os.path.join(scratch, "record.json")
    if os.path.exists(record):
        os.unlink(record)
    env = dict(os.environ, PYTHONPATH=HOOK_DIR, DOM0_REFLINK_GC_RECORD=record,
               ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_PYTHON_INTERPRETER=sys.executable,
               ANSIBLE_HOME=os.path.join(scratch, "ansible-home"), ANSIBLE_LOCALHOST_WARNING="False",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="False", ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8")
    if break_cycles:
        env["DOM0_REFLINK_GC_BREAK_CYCLES"] = "1"
    command = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-c", "local", "--check",
               "-m", module, "-a", json.dumps(_arguments(module, scratch))]
    # The module may fail (the import's source does not exist): the payload was built all the same.
    subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, env=env, check=False)
    with open(record, encoding="utf-8") as handle:
        return json.load(handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--collection", action="append", help="collection root(s) (default: this repository)")
    parser.add_argument("--break-cycles", action="store_true", help="also run with the finder's parent links dropped")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    roots = args.collection or [REPO]
    with tempfile.TemporaryDirectory(prefix="dom0-reflink-controller-gc-") as scratch:
        variants = [("stat", MODULES[0], _collections_dir(roots[0], scratch, 0), False)]
        for index, root in enumerate(roots):
            collections = _collections_dir(root, scratch, index + 1) if index else variants[0][2]
            label = os.path.basename(os.path.abspath(root)) if len(roots) > 1 else "this"
            for module in MODULES[1:]:
                for broken in (False, True) if args.break_cycles else (False,):
                    name = "%s %s%s" % (label, module.rsplit(".", 1)[1], " (no cycles)" if broken else "")
                    variants.append((name, module, collections, broken))
        samples: dict[str, list[dict]] = {name: [] for name, _m, _c, _b in variants}
        for round_number in range(args.rounds + 1):   # round 0 warms the page cache, not counted
            order = variants if round_number % 2 else variants[::-1]
            for name, module, collections, broken in order:
                figures = run_once(module, collections, scratch, broken)
                if round_number:
                    samples[name].append(figures)
    print("%-40s %14s %12s %14s %10s" % ("payload of", "builder (ms)", "full GCs", "their ms", "AST nodes"))
    summary = {}
    for name, runs in samples.items():
        row = {key: statistics.median(run[key] for run in runs)
               for key in ("finder_ms", "full_collections", "full_collection_ms", "ast_nodes")}
        summary[name] = dict(row, rounds=len(runs))
        print("%-40s %14.1f %12.1f %14.1f %10d" % (name, row["finder_ms"], row["full_collections"],
                                                   row["full_collection_ms"], row["ast_nodes"]))
    print("medians of %d rounds; 'full GCs': generation-2 collections while the payload was built" % args.rounds)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Loaded by every Python that benchmarks/controller_gc.py starts (PYTHONPATH); acts only in ansible's controller.

When ansible's task queue manager is imported (the controller, before it
forks the worker that runs the task), it wraps ansible-core's payload builder
``recursive_finder``: the worker then writes to $DOM0_REFLINK_GC_RECORD the
builder's time, the full garbage collections made meanwhile and their time,
and the syntax-tree nodes of the files it parsed.  With
$DOM0_REFLINK_GC_BREAK_CYCLES set, the builder's import finder drops the
``parent`` links it sets on import statements once it has read a file.
"""

from __future__ import annotations

import ast
import gc
import importlib.abc
import json
import os
import sys
import time

RECORD = os.environ.get("DOM0_REFLINK_GC_RECORD")


def _install() -> None:
    # Imported only now, in the controller: at start-up it would load ansible into every Python it runs.
    from ansible.executor import module_common  # noqa: PLC0415  pylint: disable=import-outside-toplevel

    # "counting": the hook's own time inside the builder (counting nodes), taken off the builder's time.
    state = {"active": False, "collections": 0, "gc_seconds": 0.0, "started": 0.0, "nodes": 0, "counting": 0.0}

    def on_gc(phase: str, info: dict) -> None:
        if not state["active"] or info["generation"] != 2:
            return
        if phase == "start":
            state["started"] = time.perf_counter()
        else:
            state["collections"] += 1
            state["gc_seconds"] += time.perf_counter() - state["started"]

    gc.callbacks.append(on_gc)
    compile_ast = getattr(module_common, "_compile_module_ast", None)
    if compile_ast is not None:   # ansible-core 2.19; 2.16 parses inline (nodes not counted there)
        def counting_compile(*args, **kwargs):
            tree = compile_ast(*args, **kwargs)
            start = time.perf_counter()
            state["nodes"] += len(list(ast.walk(tree)))
            state["counting"] += time.perf_counter() - start
            return tree
        module_common._compile_module_ast = counting_compile  # pylint: disable=protected-access

    if os.environ.get("DOM0_REFLINK_GC_BREAK_CYCLES"):
        finder = module_common.ModuleDepFinder
        finder_init, visit_import, visit_import_from = finder.__init__, finder.visit_Import, finder.visit_ImportFrom
        # The finder sets ``parent`` on import statements only, just before it visits them: remember those.
        linked: list = []

        def init_without_cycles(self, module_fqn, tree, *args, **kwargs):
            finder_init(self, module_fqn, tree, *args, **kwargs)
            for node in linked:
                del node.parent
            linked.clear()
            self._tree = None  # pylint: disable=protected-access

        def remembering(visit):
            def visit_and_remember(self, node):
                linked.append(node)
                return visit(self, node)
            return visit_and_remember
        finder.__init__ = init_without_cycles
        finder.visit_Import = remembering(visit_import)
        finder.visit_ImportFrom = remembering(visit_import_from)
        # generic_visit calls the visitors through a map made in __init__ from the bound methods: new ones are used.

    recursive_finder = module_common.recursive_finder

    def timed_finder(*args, **kwargs):
        state.update(active=True, collections=0, gc_seconds=0.0, nodes=0, counting=0.0)
        start = time.perf_counter()
        try:
            return recursive_finder(*args, **kwargs)
        finally:
            seconds = time.perf_counter() - start - state["counting"]
            state["active"] = False
            with open(RECORD, "w", encoding="utf-8") as handle:
                json.dump({"finder_ms": 1000 * seconds, "full_collections": state["collections"],
                           "full_collection_ms": 1000 * state["gc_seconds"], "ast_nodes": state["nodes"]}, handle)
    module_common.recursive_finder = timed_finder


class _AfterTaskQueueManager(importlib.abc.MetaPathFinder):
    """Installs the wrappers when the controller first imports its task queue manager, then steps aside."""

    def find_spec(self, fullname, path, target=None):  # pylint: disable=unused-argument
        if fullname == "ansible.executor.task_queue_manager":
            sys.meta_path.remove(self)
            _install()


if RECORD:
    sys.meta_path.insert(0, _AfterTaskQueueManager())

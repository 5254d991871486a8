# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What each module's AnsiballZ payload carries of this collection: files and bytes.

    .venv/bin/python benchmarks/payload.py [--collection ROOT] [--json PATH]

Builds each module's payload in process with ansible-core's own
``recursive_finder`` (what the controller runs for every task) and counts the
files of ``plugins/module_utils/`` in it, with their bytes, and everything of
``ansible_collections/`` (the module and the package ``__init__.py`` files
too).  Standard library and ansible-core only; no root needed.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import inspect
import io
import json
import os
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODULES = ("reflink_pool", "reflink_volume", "reflink_import", "reflink_revert", "reflink_pin", "reflink_gc",
           "reflink_info", "reflink_dedupe")
OURS = "ansible_collections/dom0/reflink/"
MODULE_UTILS = OURS + "plugins/module_utils/"


def _collections_dir(collection_root: str) -> str:
    """A directory whose ansible_collections/dom0/reflink is ``collection_root`` (a symlink made under build/)."""
    marker = os.path.join("ansible_collections", "dom0", "reflink")
    if os.path.abspath(collection_root).endswith(os.sep + marker):
        return os.path.abspath(collection_root)[:-len(marker) - 1]
    base = os.path.join(REPO, "build", "payload-collections")
    namespace = os.path.join(base, "ansible_collections", "dom0")
    os.makedirs(namespace, exist_ok=True)
    link = os.path.join(namespace, "reflink")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(os.path.abspath(collection_root), link)
    return base


def payload(module: str, collection_root: str) -> dict:
    """The files of ours in ``module``'s payload: {path in the zip: bytes}."""
    from ansible.executor import module_common  # noqa: PLC0415  pylint: disable=import-outside-toplevel

    path = os.path.join(collection_root, "plugins", "modules", module + ".py")
    with open(path, "rb") as handle:
        data = handle.read()
    fqn = "ansible_collections.dom0.reflink.plugins.modules." + module
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        when = datetime.datetime(1980, 1, 1)
        parameters = inspect.signature(module_common.recursive_finder).parameters
        if "extension_manager" in parameters:   # ansible-core 2.19
            from ansible._internal._ansiballz import _builder  # noqa: PLC0415  pylint: disable=import-outside-toplevel
            manager = _builder.ExtensionManager()
            module_common.recursive_finder(module, fqn, data, zf, when, manager)
            module_common._add_module_to_zip(zf, when, fqn, data, path, manager)  # pylint: disable=protected-access
        else:                                    # ansible-core 2.16
            module_common.recursive_finder(module, fqn, data, zf, date_time=when)
            module_common._add_module_to_zip(zf, when, fqn, data)  # pylint: disable=protected-access
        found = {info.filename: info.file_size for info in zf.infolist() if info.filename.startswith(OURS)}
        nodes = {info.filename: ast_nodes(zf.read(info.filename)) for info in zf.infolist()
                 if info.filename.endswith(".py")}
    return {"files": found, "zip_bytes": len(buffer.getvalue()),
            "our_ast_nodes": sum(n for name, n in nodes.items() if name.startswith(OURS)),
            "ast_nodes": sum(nodes.values()) + ast_nodes(data)}


def ast_nodes(source: bytes) -> int:
    """The nodes of the syntax tree the controller makes of ``source`` (it parses every payload file).

    ansible-core 2.19's import finder links each import statement to its parent node, so every
    tree stays alive until a full garbage collection; the count is what such a collection has
    to free (docs/performance.md, "A full collection on the controller").
    """
    return len(list(ast.walk(ast.parse(source))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--collection", default=REPO, help="collection root (default: this repository)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--list", action="store_true", help="list the module_utils files of each payload")
    args = parser.parse_args(argv)
    collections = _collections_dir(args.collection)
    os.environ["ANSIBLE_COLLECTIONS_PATH"] = collections
    from ansible.plugins.loader import init_plugin_loader  # noqa: PLC0415  pylint: disable=import-outside-toplevel
    init_plugin_loader([collections])
    root = os.path.join(collections, "ansible_collections", "dom0", "reflink")
    figures = {}
    print("%-15s %12s %14s %12s %14s %12s %10s %10s" % ("module", "module_utils", "their bytes", "all of ours",
                                                        "their bytes", "zip bytes", "our nodes", "all nodes"))
    for module in MODULES:
        if not os.path.exists(os.path.join(root, "plugins", "modules", module + ".py")):
            continue   # an older commit (--collection) without this module
        found = payload(module, root)
        utils = {name: size for name, size in found["files"].items() if name.startswith(MODULE_UTILS)}
        figures[module] = {"module_utils_files": len(utils), "module_utils_bytes": sum(utils.values()),
                           "our_files": len(found["files"]), "our_bytes": sum(found["files"].values()),
                           "zip_bytes": found["zip_bytes"], "our_ast_nodes": found["our_ast_nodes"],
                           "ast_nodes": found["ast_nodes"], "files": sorted(found["files"])}
        print("%-15s %12d %14d %12d %14d %12d %10d %10d" % (module, len(utils), sum(utils.values()), len(found["files"]),
                                                            sum(found["files"].values()), found["zip_bytes"],
                                                            found["our_ast_nodes"], found["ast_nodes"]))
        if args.list:
            for name in sorted(utils):
                print("    %-60s %7d" % (name[len(MODULE_UTILS):], utils[name]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

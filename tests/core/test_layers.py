# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The core's floors: every import points down the layers, and the modules stand on _tasks only.

The layers of plugins/module_utils, lowest first (README, "Layout of this
repository"); a file may import from its own layer and from the layers below
it, never from a layer above.  Read from the source (ast), so that an import
inside a function counts as much as one at the top: Ansible's payload builder
sees both.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
MODULE_UTILS = REPO / "plugins" / "module_utils"
MODULES = REPO / "plugins" / "modules"
PACKAGE = "ansible_collections.dom0.reflink.plugins.module_utils"
LAYERS = ("_base", "_fs", "_state", "_inspect", "_dedupe", "_engine", "_plans", "_tasks")
MAX_LINES = 450   # "no file much past 400 lines"


def core_files():
    return sorted(path for path in MODULE_UTILS.rglob("*.py") if "__pycache__" not in path.parts)


def imported_modules(path):
    """(line, imported module's dotted name, names imported from it) of every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "%s:%d: a relative import (the house style is absolute)" % (path, node.lineno)
            names = tuple(alias.name for alias in node.names)
            if node.module == PACKAGE or node.module in ("%s.%s" % (PACKAGE, layer) for layer in LAYERS):
                # from <package> import <submodule>: each name is a module
                found.extend((node.lineno, "%s.%s" % (node.module, name), ()) for name in names)
            else:
                found.append((node.lineno, node.module, names))
    return found


def layer_of(dotted):
    """The layer of a dotted module name of the core, or None for anything else."""
    if not dotted.startswith(PACKAGE + "."):
        return None
    return dotted[len(PACKAGE) + 1:].split(".")[0]


def test_every_core_file_is_in_a_layer():
    for path in core_files():
        relative = path.relative_to(MODULE_UTILS)
        assert len(relative.parts) == 2 and relative.parts[0] in LAYERS, "%s is not in a layer subpackage" % relative


@pytest.mark.parametrize("layer", [layer for layer in LAYERS if (MODULE_UTILS / layer).is_dir()])
def test_subpackage_init_is_empty(layer):
    # ansible-test's sanity requires empty __init__.py files in module_utils.
    assert (MODULE_UTILS / layer / "__init__.py").read_text() == ""


def test_every_import_points_down():
    upward = []
    for path in core_files():
        own = path.relative_to(MODULE_UTILS).parts[0]
        for line, dotted, _names in imported_modules(path):
            target = layer_of(dotted)
            if target is not None and LAYERS.index(target) > LAYERS.index(own):
                upward.append("%s:%d imports %s (%s is above %s)" % (path.relative_to(REPO), line, dotted, target, own))
    assert not upward, "\n".join(upward)


def test_no_private_name_crosses_a_file():
    private = []
    for path in core_files() + sorted(MODULES.glob("*.py")):
        for line, dotted, names in imported_modules(path):
            if layer_of(dotted) is not None:
                private.extend("%s:%d imports %s from %s" % (path.relative_to(REPO), line, name, dotted)
                               for name in names if name.startswith("_"))
    assert not private, "\n".join(private)


def test_the_core_imports_no_ansible():
    found = ["%s:%d imports %s" % (path.relative_to(REPO), line, dotted)
             for path in core_files() for line, dotted, _names in imported_modules(path)
             if dotted == "ansible" or dotted.startswith("ansible.")]
    assert not found, "\n".join(found)


def test_modules_stand_on_tasks_only():
    found = []
    for path in sorted(MODULES.glob("*.py")):
        for line, dotted, _names in imported_modules(path):
            if layer_of(dotted) not in (None, "_tasks"):
                found.append("%s:%d imports %s" % (path.relative_to(REPO), line, dotted))
    assert not found, "\n".join(found)


def test_no_core_file_is_much_past_400_lines():
    long_files = ["%s: %d lines" % (path.relative_to(REPO), count) for path in core_files()
                  if (count := len(path.read_text().splitlines())) > MAX_LINES]
    assert not long_files, "\n".join(long_files)

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""core_api.DEFAULTS stays what the modules' argument specs say (read from their source, not imported)."""

from __future__ import annotations

import ast
import pathlib

import pytest

from core_api import DEFAULTS, arguments

MODULES_DIR = pathlib.Path(__file__).resolve().parents[2] / "plugins" / "modules"


def _spec(node: ast.expr) -> arguments.ArgumentSpec:
    """The ArgumentSpec that ``node`` builds: a shared spec of _tasks/arguments.py, ArgumentSpec(...), or .merge(...)."""
    if isinstance(node, ast.Name):
        return getattr(arguments, node.id)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "ArgumentSpec":
        return arguments.ArgumentSpec(*(ast.literal_eval(arg) for arg in node.args),
                                      **{keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords})
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "merge":
        return _spec(node.func.value).merge(_spec(node.args[0]))
    raise AssertionError("cannot read the argument spec %s" % ast.dump(node))


def argument_spec(module: str) -> dict:
    """{option: default} of the spec whose create_module(AnsibleModule) makes the module."""
    tree = ast.parse((MODULES_DIR / (module + ".py")).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "create_module":
            return {name: option.get("default") for name, option in _spec(node.func.value).options.items()}
    raise AssertionError("no <spec>.create_module(AnsibleModule) in %s" % module)


@pytest.mark.parametrize("module", sorted(DEFAULTS))
def test_defaults_match_the_modules(module):
    assert DEFAULTS[module] == argument_spec(module)

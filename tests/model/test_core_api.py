# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""core_api.DEFAULTS stays what the modules' argument specs say (read from their source, not imported)."""

from __future__ import annotations

import ast
import pathlib

import pytest

from core_api import DEFAULTS

MODULES_DIR = pathlib.Path(__file__).resolve().parents[2] / "plugins" / "modules"
# The options that volume_argument_spec() and QUBES_XML_ARGUMENT_SPEC add (plugins/module_utils/_task.py).
SHARED = {"pool": None, "vid": None, "lock_timeout": 60, "qubes_xml": "auto"}


def _options(node: ast.expr) -> dict:
    """{option: default} of a dict literal of option specs."""
    found = {}
    for key, value in zip(node.keys, node.values, strict=True):
        if key is None:      # **QUBES_XML_ARGUMENT_SPEC
            found["qubes_xml"] = "auto"
            continue
        spec = ast.literal_eval(value)
        found[key.value] = spec.get("default")
    return found


def argument_spec(module: str) -> dict:
    tree = ast.parse((MODULES_DIR / (module + ".py")).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "AnsibleModule":
            spec = next(keyword.value for keyword in node.keywords if keyword.arg == "argument_spec")
            if isinstance(spec, ast.Dict):
                return _options(spec)
            options = dict(SHARED)   # volume_argument_spec(name={...}, ...)
            options.update({keyword.arg: ast.literal_eval(keyword.value).get("default") for keyword in spec.keywords})
            return options
    raise AssertionError("no AnsibleModule(argument_spec=...) in %s" % module)


@pytest.mark.parametrize("module", sorted(DEFAULTS))
def test_defaults_match_the_modules(module):
    assert DEFAULTS[module] == argument_spec(module)

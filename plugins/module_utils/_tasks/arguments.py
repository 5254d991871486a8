# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument specs: a module's options with the rules between them, built from the parts the modules share.

An :class:`ArgumentSpec` holds what AnsibleModule takes (``argument_spec``
and the rules between options); specs are merged, so each module states only
its own options on top of the shared ones below, which the doc fragments
``dom0.reflink.volume`` and ``dom0.reflink.qubes_xml`` document.  Nothing
here imports Ansible: the module hands in its AnsibleModule class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

M = TypeVar("M")


class ArgumentSpec:
    """Options (name -> Ansible option spec) and the rules between them; ``merge`` and ``create_module``."""

    def __init__(self, options: Mapping[str, dict[str, Any]] | None = None, mutually_exclusive: Iterable[Sequence[str]] = (),
                 required_one_of: Iterable[Sequence[str]] = (), required_by: Mapping[str, str] | None = None) -> None:
        self.options = dict(options or {})
        self.mutually_exclusive = list(mutually_exclusive)
        self.required_one_of = list(required_one_of)
        self.required_by = dict(required_by or {})

    def merge(self, other: ArgumentSpec) -> ArgumentSpec:
        """A new spec with the options and rules of both; an option of ``other`` replaces one of the same name."""
        return ArgumentSpec(dict(self.options, **other.options), self.mutually_exclusive + other.mutually_exclusive,
                            self.required_one_of + other.required_one_of, dict(self.required_by, **other.required_by))

    def module_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of AnsibleModule; every module of the collection supports check mode."""
        rules = {"mutually_exclusive": self.mutually_exclusive, "required_one_of": self.required_one_of,
                 "required_by": self.required_by}
        return dict({name: rule for name, rule in rules.items() if rule}, argument_spec=self.options,
                    supports_check_mode=True)

    def create_module(self, module_class: Callable[..., M]) -> M:
        """``module_class`` (AnsibleModule) made with this spec: it checks the options, or fails the task."""
        return module_class(**self.module_kwargs())


# The option every module has (doc fragment dom0.reflink.qubes_xml).
QUBES_XML = ArgumentSpec({"qubes_xml": {"type": "str", "default": "auto"}})

LOCK_TIMEOUT = ArgumentSpec({"lock_timeout": {"type": "int", "default": 60}})

# reflink_gc and reflink_info: a pool as a whole.
POOL_TASK = ArgumentSpec({"pool": {"type": "path", "required": True}}).merge(LOCK_TIMEOUT).merge(QUBES_XML)

# The options of the modules that work on one volume (doc fragments dom0.reflink.volume and dom0.reflink.qubes_xml).
VOLUME_TASK = ArgumentSpec({
    "pool": {"type": "path", "required": True},
    "vid": {"type": "str", "required": True},
}).merge(LOCK_TIMEOUT).merge(QUBES_XML)

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The stateful property-based test: PoolMachine on btrfs, XFS and ext4 (see machine.py, harness.py).

Budget (environment, as `make test-model` passes them):
  MODEL_EXAMPLES  sequences per file system (default 80; ext4 gets half)
  MODEL_STEPS     steps per sequence at most (default 50)
  MODEL_SEED      unset: the same sequences every run (derandomized); a number: that seed;
                  "random": a new seed each run (printed by Hypothesis on a failure)
  MODEL_STRICT    known defects that fail instead of being reported (see known_defects.py)
"""

from __future__ import annotations

import os

import hypothesis
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from dedupe_step import DedupeMachine
from machine import PoolMachine

OTHER_FS = {"btrfs": "xfs", "xfs": "btrfs", "ext4": "btrfs"}


def model_settings(kind: str) -> settings:
    examples = int(os.environ.get("MODEL_EXAMPLES", "80"))
    if kind == "ext4":
        examples = max(1, examples // 2)
    seed = os.environ.get("MODEL_SEED", "")
    return settings(max_examples=examples, stateful_step_count=int(os.environ.get("MODEL_STEPS", "50")),
                    deadline=None, derandomize=seed == "", database=None, print_blob=False,
                    suppress_health_check=list(HealthCheck))


def run_machine(filesystems, kind: str) -> None:
    fs_root = filesystems[kind].path
    other_root = filesystems[OTHER_FS[kind]].path

    def factory():
        return PoolMachine(fs_root, kind, other_root)

    seed = os.environ.get("MODEL_SEED", "")
    if seed and seed != "random":
        factory = hypothesis.seed(int(seed))(factory)
    run_state_machine_as_test(factory, settings=model_settings(kind))


@pytest.mark.parametrize("kind", ["btrfs", "xfs", "ext4"])
def test_pool_machine(filesystems, kind):
    run_machine(filesystems, kind)


def run_dedupe_machine(filesystems, kind: str) -> None:
    """DedupeMachine: an eighth of the sequences, half as long (its steps cost more).  A function of its own:
    Hypothesis derives the derandomized sequences from the factory's source, and PoolMachine's stay the same."""
    base = model_settings(kind)
    fs_root, other_root = filesystems[kind].path, filesystems[OTHER_FS[kind]].path

    def dedupe_factory():
        return DedupeMachine(fs_root, kind, other_root)

    seed = os.environ.get("MODEL_SEED", "")
    if seed and seed != "random":
        dedupe_factory = hypothesis.seed(int(seed))(dedupe_factory)
    run_state_machine_as_test(dedupe_factory, settings=settings(base, max_examples=max(1, base.max_examples // 8),
                                                                stateful_step_count=max(1, base.stateful_step_count // 2)))


@pytest.mark.parametrize("kind", ["btrfs", "xfs", "ext4"])
def test_dedupe_machine(filesystems, kind):
    run_dedupe_machine(filesystems, kind)

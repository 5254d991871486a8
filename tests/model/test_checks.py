# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The model's check of gc's space figures finds what it should (checks.gc_space_problems)."""

from __future__ import annotations

import pytest

from checks import gc_space_problems

REMOVED = [{"file": "appvms/a/private.img.1@x", "bytes": 65536, "exclusive_bytes": 4096},
           {"file": "appvms/a/private.img.2@y", "bytes": 65536, "exclusive_bytes": 0}]


def result(reclaimed, removed=REMOVED, alias=None):
    return {"removed": removed, "reclaimed_bytes": reclaimed,
            "reclaimed_exclusive_bytes": reclaimed if alias is None else alias}


@pytest.mark.parametrize("kind", ["btrfs", "xfs", "ext4"])
def test_figures_that_agree_pass(kind):
    assert gc_space_problems(result(0, removed=[]), kind) == []
    assert gc_space_problems(result(69632), kind) == []


@pytest.mark.parametrize("kind", ["btrfs", "xfs", "ext4"])
def test_figures_that_contradict_each_other_fail(kind):
    assert gc_space_problems(result(4096, removed=[]), kind)               # freed without a removal
    assert gc_space_problems(result(0), kind)                              # less than one file frees alone
    assert gc_space_problems(result(131072, alias=4096), kind)             # the old figures: a sum of bytes
    assert gc_space_problems(result(None), kind)


def test_more_than_the_removed_files_hold_fails_outside_btrfs():
    assert gc_space_problems(result(200000), "xfs") and gc_space_problems(result(200000), "ext4")
    assert gc_space_problems(result(200000), "btrfs") == []   # stranded bytes of partly referenced extents

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The model-based test's report: the known defects it saw (tests/output/model/known-defects.json)."""

from __future__ import annotations

import os

import known_defects
from harness import STATS

REPORT = os.path.join(os.path.dirname(__file__), "..", "output", "model", "known-defects.json")


def pytest_terminal_summary(terminalreporter):
    if STATS:
        labels = sorted({label for label, _end in STATS})
        terminalreporter.write_line("model: tasks run (changed / unchanged / refused / failed at a step):")
        for label in labels:
            terminalreporter.write_line("  %-22s %5d %5d %5d %5d" % (label, *(STATS[(label, end)] for end in (
                "changed", "unchanged", "refused", "failed"))))
    terminalreporter.write_line(known_defects.report(os.path.normpath(REPORT)))

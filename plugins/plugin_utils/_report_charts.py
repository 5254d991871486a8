# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Geometry of the maintenance report's inline SVG charts, so that the template only places what is computed here.

Coordinates are in SVG user units of a fixed-width drawing (``WIDTH``); the page
scales it to the window or paper with ``viewBox``.  Every length is rounded to
a tenth of a unit, which keeps a page of 1,000 volumes small.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from typing import Any

WIDTH = 960
LABEL_WIDTH = 230     # room for "vm-name  volume" on the left of every row
VALUE_WIDTH = 92      # room for the figure at the end of a bar
BAR_ROW = 26
TIMELINE_ROW = 20
AXIS_HEIGHT = 26

# The time line's axis is the age of the data on a log scale: a calendar of hourly, daily, weekly,
# monthly and yearly pins then spreads evenly instead of crowding at the right edge.
_HOUR = 3600
_DAY = 24 * _HOUR
_AGE_TICKS = ((_HOUR, "1 h"), (6 * _HOUR, "6 h"), (_DAY, "1 d"), (7 * _DAY, "1 w"), (30 * _DAY, "1 mo"),
              (91 * _DAY, "3 mo"), (182 * _DAY, "6 mo"), (365 * _DAY, "1 y"), (730 * _DAY, "2 y"),
              (1826 * _DAY, "5 y"), (3652 * _DAY, "10 y"))
_YOUNGEST = 20 * 60   # ages below this are drawn at "now"
_OLDEST_SHOWN = 8 * _DAY  # the axis spans at least a week, whatever the data


def _r(value: float) -> float:
    return round(value, 1)


def space_bars(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Bars of the volume rows ``rows`` (each with ``space``: figures allocated, exclusive, revisions_exclusive, stranded).

    Each bar is the volume's allocated bytes on one scale, split into what
    removing its revisions frees, what else removing the volume frees, and
    what other volumes share; a thin bar under it is the stranded part.
    """
    plot = WIDTH - LABEL_WIDTH - VALUE_WIDTH
    scale = max([row["space"]["allocated"]["v"] for row in rows] + [1])
    bars = []
    for number, row in enumerate(rows):
        space = row["space"]
        allocated = space["allocated"]["v"]
        exclusive = min(space["exclusive"]["v"], allocated)
        revisions = min(space["revisions_exclusive"]["v"], exclusive)
        stranded = min(space["stranded"]["v"], allocated)
        top = number * BAR_ROW + 4
        x = float(LABEL_WIDTH)
        segments = []
        for part, size in (("revisions", revisions), ("exclusive", exclusive - revisions), ("shared", allocated - exclusive)):
            width = size * plot / scale
            segments.append({"part": part, "x": _r(x), "w": _r(width)})
            x += width
        bars.append({"row": row, "y": top, "bar_h": 14, "segments": segments, "end": _r(x + 6),
                     "stranded_w": _r(stranded * plot / scale), "stranded_y": top + 16, "text_y": top + 11})
    return {"width": WIDTH, "height": max(len(rows), 1) * BAR_ROW + 4, "label_x": LABEL_WIDTH - 8, "bars": bars}


def filesystem_bar(fs_size: int, fs_free: int, allocated: int, referenced: int) -> dict[str, Any] | None:
    """Two bars on the file system's scale: what it holds (pool images, other data, free) and du's count against the disk's."""
    if fs_size <= 0:
        return None
    plot = WIDTH - 2
    used = max(fs_size - fs_free, 0)
    pool = min(allocated, used)
    parts = []
    x = 1.0
    for part, size in (("pool", pool), ("other", used - pool), ("free", max(fs_free, 0))):
        width = size * plot / fs_size
        parts.append({"part": part, "x": _r(x), "w": _r(width)})
        x += width
    scale = max(referenced, allocated, 1)
    return {"width": WIDTH, "height": 92, "parts": parts,
            "referenced_w": _r(referenced * plot / scale), "allocated_w": _r(allocated * plot / scale)}


def _age_x(age: float, oldest: float) -> float:
    """x of data of age ``age`` seconds: log scale, now at the right edge, ``oldest`` at the left."""
    left, right = float(LABEL_WIDTH), float(WIDTH - 16)
    age = max(age, _YOUNGEST)
    span = math.log(oldest / _YOUNGEST)
    return _r(right - (right - left) * min(math.log(age / _YOUNGEST) / span, 1.0))


def timeline(rows: Sequence[dict[str, Any]], now: datetime.datetime) -> dict[str, Any]:
    """Marks of each row's revisions and pins on one axis of age; ``rows`` carry ``marks`` of (kind, name, moment)."""
    ages = [(now - moment).total_seconds() for row in rows for _kind, _name, moment in row["marks"]]
    oldest = max(ages + [_OLDEST_SHOWN]) * 1.15
    ticks = [{"x": _age_x(age, oldest), "label": label} for age, label in _AGE_TICKS if age < oldest]
    out_rows = []
    for number, row in enumerate(rows):
        middle = AXIS_HEIGHT + number * TIMELINE_ROW + TIMELINE_ROW // 2
        marks = []
        # pins first, revisions drawn small on top: a revision kept by a scheduled pin shows both
        for kind, name, moment in sorted(row["marks"], key=lambda mark: mark[0] == "revision"):
            marks.append({"kind": kind, "name": name, "x": _age_x((now - moment).total_seconds(), oldest),
                          "when": moment.strftime("%Y-%m-%dT%H:%M:%SZ")})
        out_rows.append({"row": row, "y": middle, "marks": marks})
    height = AXIS_HEIGHT + max(len(rows), 1) * TIMELINE_ROW + 6
    return {"width": WIDTH, "height": height, "label_x": LABEL_WIDTH - 8, "left": LABEL_WIDTH, "right": WIDTH - 16,
            "ticks": ticks, "rows": out_rows, "axis_bottom": height - 4}

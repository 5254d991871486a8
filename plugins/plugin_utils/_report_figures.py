# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Figures of the maintenance report: a number, how it reads, and where it comes from.

Every number the report shows is a figure: ``v`` the exact value, ``t`` the text
a person reads (``1.50 GiB``, ``1,024``), ``of`` its source in the results the
report was made from, ``{"info": ..., "gc": ..., "dedupe": ...}``.  A source is
terms joined by `` + `` and `` - ``, each term one of:

- a JSON pointer (RFC 6901) to a number: ``/info/volumes/3/space/exclusive``;
- a count, ``#`` and a pointer to a list (or dict), then conditions on its items,
  all of which must hold: ``key=text``, ``key!=text`` (the item's value as text),
  ``key?`` (present, not null), ``any=key1,key2`` (one of them non-empty):
  ``#/info/findings kind=nocow``, ``#/info/volumes space?``;
- a whole number: ``12``.

The page carries the source next to each number (``<data value=... data-of=...>``),
so that anyone, and the tests, can hold every number against its source.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


class Figure(TypedDict):
    v: int
    t: str
    of: str


def human_bytes(value: int) -> str:
    """``1.50 GiB``: binary units, three significant digits (up to 1023 in the unit)."""
    if value < 1024:
        return "%d B" % value
    number = float(value)
    unit = ""
    for unit in _UNITS:
        number /= 1024
        if number < 1024 or unit == _UNITS[-1]:
            break
    if number < 10:
        return "%.2f %s" % (number, unit)
    if number < 100:
        return "%.1f %s" % (number, unit)
    return "%.0f %s" % (number, unit)


def pointer(*parts: str | int) -> str:
    """A JSON pointer (RFC 6901) of ``parts``."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def size_figure(value: int, of: str) -> Figure:
    return {"v": value, "t": human_bytes(value), "of": of}


def count_figure(value: int, of: str) -> Figure:
    return {"v": value, "t": f"{value:,}", "of": of}


def as_int(value: Any) -> int:
    """A figure from a result: an int (a bool or anything else counts as 0, never an error)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return value


def as_text(value: Any) -> str:
    return "" if value is None else str(value)


def as_dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else []


def sum_of(pointers: Iterable[str]) -> str:
    return " + ".join(pointers) or "0"


def parse_time(text: Any) -> datetime.datetime | None:
    """A result's UTC timestamp (``2026-11-26T03:40:59Z``); None if it is missing or malformed."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return moment.replace(tzinfo=datetime.timezone.utc)


def show_time(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")

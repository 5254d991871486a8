# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The calendar of scheduled pins: which images of a volume to keep as ``auto-<YYYYMMDD>t<HHMMSS>`` pins.

qubesd prunes revisions by count at every VM stop; a schedule keeps them by the
calendar instead.  The candidates of a volume are its clean image, its
revisions and its scheduled pins, each with the time of its data.  For each
class (hourly, daily, weekly, monthly, yearly) with a count N, the periods
that hold a candidate are taken newest first, and the newest candidate of each
of the first N is selected.  A selected time is kept as the pin named after it;
a scheduled pin whose time is not selected is removed; a pin of any other name
is never touched.  Periods are UTC; a week is an ISO week (Monday to Sunday,
numbered within its ISO year), so 2021-01-03 is in week 53 of 2020.

Where this differs from the tools it learnt from (so that nobody carries over
an expectation that does not hold):
- snapper's timeline and btrbk keep the *first* (oldest) snapshot of a period,
  we keep the *newest*: a period's pin follows the latest data until the
  period is over, and the current period always holds the newest data.
- snapper and btrbk count in local time, btrbk's weeks start on a day of its
  configuration (Sunday by default) and its days at an hour of it; ours are
  UTC, ISO weeks, days from midnight: the same pins whatever the host's zone.
- btrbk and sanoid count periods back from now (sanoid also prunes by age);
  we count the periods that hold a candidate, like snapper: a volume that was
  not used for a month keeps its last N days, it does not lose them.
- sanoid takes a snapshot per class; here one image serves every class that
  selects it, so a schedule holds at most hourly+daily+weekly+monthly+yearly
  pins, usually fewer.
- There is no minimum age (snapper's TIMELINE_MIN_AGE, btrbk's preserve_min):
  an image is a candidate from the moment it exists.

This file is pure (no I/O, no clock): the plan that makes and removes the pins
is built from its result elsewhere.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument

CLASSES = ("hourly", "daily", "weekly", "monthly", "yearly")

# Kinds of candidate.
CLEAN = "clean"
REVISION = "revision"
PIN = "pin"

# auto-20261126t034059: the whole name also matches the contract's pin-name pattern
# [a-z0-9][a-z0-9_-]{0,39} (a lower-case 't', 20 characters).
SCHEDULED_PIN_PREFIX = "auto-"
_SCHEDULED_PIN_RE = re.compile(r"auto-(\d{4})(\d\d)(\d\d)t(\d\d)(\d\d)(\d\d)\Z")

_UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)

_SCHEDULE_HELP = ("schedule is a dict of hourly, daily, weekly, monthly and yearly, each how many pins of "
                  "that class to keep (a non-negative integer), e.g. {daily: 7, weekly: 4, monthly: 6}")


@dataclass(frozen=True)
class Candidate:
    """One image of a volume that a schedule may keep: its kind, its name within the kind, its data time.

    ``name`` is ``"clean"`` for the clean image, the revision's id (as text) for a
    revision, the pin's name for a pin.  ``time`` is the data's time: whole seconds
    since the epoch (a float is rounded down) or an aware datetime.
    """

    kind: str
    name: str
    time: int | float | datetime.datetime


@dataclass(frozen=True)
class PinToMake:
    """A selected time that has no pin yet: ``name`` is made from ``source`` (a clean image or a revision)."""

    name: str
    time: int               # seconds since the epoch, UTC
    source: Candidate
    periods: tuple[str, ...]  # the periods that selected it, e.g. ('daily 2026-11-26', 'weekly 2026-W48')


@dataclass(frozen=True)
class ScheduleResult:
    """What a schedule makes of one volume's candidates.

    ``pin``: pins to make, newest first.  ``unpin``: scheduled pins to remove.
    ``keep``: scheduled pins that stay.  ``unpin`` and ``keep`` are sorted by name.
    ``periods`` maps every selected pin name (made or kept) to the periods that
    selected it.  ``drifted``: scheduled pins whose given time differs from the
    time in their name (the name's time is used; the caller may warn).
    """

    pin: tuple[PinToMake, ...]
    unpin: tuple[str, ...]
    keep: tuple[str, ...]
    periods: Mapping[str, tuple[str, ...]]
    drifted: tuple[str, ...]

    @property
    def changes(self) -> bool:
        return bool(self.pin or self.unpin)


def parse_schedule(value: object) -> dict[str, int]:
    """The schedule option checked: a dict of every class to its count (missing classes are 0).

    Refused with InvalidArgument, before anything is done: anything but a dict, an
    empty dict (most likely an empty template variable; it would remove every
    scheduled pin: say so with explicit zeros), an unknown key, and a value that is
    not a non-negative integer (a bool, a float, a negative number).  A string of
    decimal digits is taken as its number, as templated values arrive as strings.
    """
    if not isinstance(value, Mapping):
        raise InvalidArgument("%s (got %r)" % (_SCHEDULE_HELP, value))
    if not value:
        raise InvalidArgument("schedule is empty: name at least one of %s; to remove every scheduled pin, "
                              "give the classes as 0, e.g. {daily: 0}" % ", ".join(CLASSES))
    unknown = sorted(str(key) for key in value if key not in CLASSES)
    if unknown:
        raise InvalidArgument("schedule has unknown key(s) %s; the keys are %s"
                              % (", ".join(repr(key) for key in unknown), ", ".join(CLASSES)))
    return {name: _count(name, value.get(name, 0)) for name in CLASSES}


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidArgument("schedule %s must be a non-negative integer (got %r)" % (name, value))
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            raise InvalidArgument("schedule %s must be a non-negative integer (got %r)" % (name, value))
        return int(text)
    if value < 0:
        raise InvalidArgument("schedule %s must not be negative (got %d)" % (name, value))
    return value


def epoch_seconds(value: int | float | datetime.datetime) -> int:
    """Whole seconds since the epoch of a data time (rounded down); a naive datetime is refused."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidArgument("data time %s has no time zone; give it in UTC" % value.isoformat())
        return (value - _EPOCH) // datetime.timedelta(seconds=1)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument("data time must be seconds since the epoch or a datetime (got %r)" % (value,))
    try:
        return int(value // 1)
    except (ValueError, OverflowError):
        raise InvalidArgument("data time %r is not a time" % (value,)) from None


def _moment(seconds: int) -> datetime.datetime:
    try:
        return _EPOCH + datetime.timedelta(seconds=seconds)
    except OverflowError:
        raise InvalidArgument("data time %d is outside the years 1 to 9999 (fix the file's mtime, e.g. "
                              "with touch)" % seconds) from None


def scheduled_pin_name(time: int | float | datetime.datetime) -> str:
    """``auto-<YYYYMMDD>t<HHMMSS>`` of a data time, UTC."""
    moment = _moment(epoch_seconds(time))
    return "%s%04d%02d%02dt%02d%02d%02d" % (SCHEDULED_PIN_PREFIX, moment.year, moment.month, moment.day,
                                            moment.hour, moment.minute, moment.second)


def scheduled_pin_time(name: str) -> int | None:
    """Seconds since the epoch that scheduled pin ``name`` stands for; None if ``name`` is not one.

    Only a name this module would make is one: ``auto-20260230t000000`` (no such
    day) or any other spelling is a pin of the user's, never touched.
    """
    match = _SCHEDULED_PIN_RE.fullmatch(name)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    try:
        moment = datetime.datetime(year, month, day, hour, minute, second, tzinfo=_UTC)
    except ValueError:
        return None
    return (moment - _EPOCH) // datetime.timedelta(seconds=1)


def _hour(moment: datetime.datetime) -> str:
    return "hourly %04d-%02d-%02dT%02d" % (moment.year, moment.month, moment.day, moment.hour)


def _day(moment: datetime.datetime) -> str:
    return "daily %04d-%02d-%02d" % (moment.year, moment.month, moment.day)


def _week(moment: datetime.datetime) -> str:
    iso = moment.isocalendar()
    return "weekly %04d-W%02d" % (iso.year, iso.week)


def _month(moment: datetime.datetime) -> str:
    return "monthly %04d-%02d" % (moment.year, moment.month)


def _year(moment: datetime.datetime) -> str:
    return "yearly %04d" % moment.year


# The period of a moment, per class, as a label that says it in plain words; equal labels, same period.
PERIOD_OF: Mapping[str, Callable[[datetime.datetime], str]] = {
    "hourly": _hour, "daily": _day, "weekly": _week, "monthly": _month, "yearly": _year,
}


def select_times(times: Iterable[int], schedule: Mapping[str, int]) -> dict[int, tuple[str, ...]]:
    """The selected times (seconds since the epoch), each with the periods that selected it.

    For each class, the newest time of each of the N most recent periods that hold
    a time.  ``schedule`` is as parse_schedule returns it.
    """
    newest_first = [(seconds, _moment(seconds)) for seconds in sorted(set(times), reverse=True)]
    selected: dict[int, list[str]] = {}
    for name in CLASSES:
        wanted = schedule.get(name, 0)
        period_of = PERIOD_OF[name]
        seen: set[str] = set()
        for seconds, moment in newest_first:
            if len(seen) >= wanted:
                break
            period = period_of(moment)
            if period not in seen:   # newest first: the first time of a period is its newest
                seen.add(period)
                selected.setdefault(seconds, []).append(period)
    return {seconds: tuple(periods) for seconds, periods in selected.items()}


# Of several candidates with the same data time, the one a new pin is made from:
# the clean image, else the revision with the highest id (the latest copy of it).
def _source_rank(candidate: Candidate) -> tuple[int, int]:
    if candidate.kind == CLEAN:
        return (2, 0)
    try:
        return (1, int(candidate.name))
    except ValueError:
        return (1, 0)


def plan_schedule(candidates: Iterable[Candidate], schedule: Mapping[str, int]) -> ScheduleResult:
    """Which scheduled pins a volume gets, keeps and loses under ``schedule`` (from parse_schedule).

    ``candidates``: the volume's clean image, revisions and pins.  Pins whose name is
    not a scheduled pin's are not candidates and appear nowhere in the result.  A
    scheduled pin counts at the time its name says (its given time is reported in
    ``drifted`` when it differs): the name is the record that a copy or a restore
    cannot change.  Two candidates with the same data time are one.
    """
    scheduled: dict[str, int] = {}
    sources: dict[int, Candidate] = {}
    drifted: list[str] = []
    for candidate in candidates:
        if candidate.kind == PIN:
            named_time = scheduled_pin_time(candidate.name)
            if named_time is None:
                continue
            scheduled[candidate.name] = named_time
            if epoch_seconds(candidate.time) != named_time:
                drifted.append(candidate.name)
        elif candidate.kind in (CLEAN, REVISION):
            seconds = epoch_seconds(candidate.time)
            best = sources.get(seconds)
            if best is None or _source_rank(candidate) > _source_rank(best):
                sources[seconds] = candidate
        else:
            raise InvalidArgument("candidate kind must be %s, %s or %s (got %r)" % (CLEAN, REVISION, PIN, candidate.kind))

    selected = select_times(list(sources) + list(scheduled.values()), schedule)
    periods = {scheduled_pin_name(seconds): why for seconds, why in selected.items()}
    to_make = tuple(
        PinToMake(name=scheduled_pin_name(seconds), time=seconds, source=sources[seconds], periods=why)
        for seconds, why in sorted(selected.items(), reverse=True)
        if scheduled_pin_name(seconds) not in scheduled)
    return ScheduleResult(
        pin=to_make,
        unpin=tuple(sorted(name for name in scheduled if name not in periods)),
        keep=tuple(sorted(name for name in scheduled if name in periods)),
        periods=periods,
        drifted=tuple(sorted(drifted)),
    )

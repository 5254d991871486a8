# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The calendar of scheduled pins: periods, selection, what is pinned, kept and removed, and the schedule option."""

from __future__ import annotations

import datetime
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import PIN_NAME_PATTERN
from ansible_collections.dom0.reflink.plugins.module_utils._plans.schedule import (
    CLASSES,
    Candidate,
    parse_schedule,
    plan_schedule,
    scheduled_pin_name,
    scheduled_pin_time,
)

UTC = datetime.timezone.utc
HOUR = 3600
DAY = 86400


def at(text):
    """Seconds since the epoch of '2026-11-26T03:40:59' (UTC)."""
    return int(datetime.datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def name_of(text):
    return scheduled_pin_name(at(text))


def schedule(**counts):
    return parse_schedule(counts)


def clean(time):
    return Candidate("clean", "clean", time)


def revision(number, time):
    return Candidate("revision", str(number), time)


def pin(name, time=None):
    return Candidate("pin", name, scheduled_pin_time(name) if time is None else time)


def pinned_names(result):
    return {made.name for made in result.pin} | set(result.keep)


# ------------------------------------------------------------------- names

def test_pin_names_are_the_utc_data_time_and_read_back():
    assert scheduled_pin_name(at("2026-11-26T03:40:59")) == "auto-20261126t034059"
    assert scheduled_pin_name(datetime.datetime(2026, 11, 26, 4, 40, 59, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))) \
        == "auto-20261126t034059"
    assert scheduled_pin_name(at("2026-11-26T03:40:59") + 0.999) == "auto-20261126t034059"
    assert scheduled_pin_time("auto-20261126t034059") == at("2026-11-26T03:40:59")
    assert re.fullmatch(PIN_NAME_PATTERN, "auto-20261126t034059")
    assert scheduled_pin_name(at("0999-01-01T00:00:00")) == "auto-09990101t000000"


@pytest.mark.parametrize("name", [
    "automatic", "auto-before-upgrade", "auto-20261126T034059", "auto-20261126t034059x", "auto-2026112t034059",
    "auto-20230229t000000", "auto-20261126t246000", "auto-00000101t000000", "auto-20261126t034059\n", "x-auto-20261126t034059",
])
def test_only_names_the_schedule_would_make_are_scheduled_pins(name):
    assert scheduled_pin_time(name) is None


def test_naive_and_impossible_times_are_refused():
    with pytest.raises(InvalidArgument, match="no time zone"):
        scheduled_pin_name(datetime.datetime(2026, 1, 1))
    with pytest.raises(InvalidArgument, match="outside the years 1 to 9999"):
        plan_schedule([clean(10 ** 12)], schedule(daily=1))
    with pytest.raises(InvalidArgument, match="is not a time"):
        plan_schedule([clean(float("nan"))], schedule(daily=1))


# ------------------------------------------------------------------- the schedule option

def test_missing_classes_are_zero_and_digit_strings_are_numbers():
    assert parse_schedule({"daily": 7, "weekly": "4"}) == {"hourly": 0, "daily": 7, "weekly": 4, "monthly": 0, "yearly": 0}
    assert parse_schedule({"daily": 0}) == dict.fromkeys(CLASSES, 0)


@pytest.mark.parametrize("value, message", [
    ({"dayly": 7}, r"unknown key\(s\) 'dayly'; the keys are hourly, daily, weekly, monthly, yearly"),
    ({"Daily": 7}, r"unknown key\(s\) 'Daily'"),
    ({"daily": -1}, "schedule daily must not be negative"),
    ({"daily": "-1"}, "schedule daily must be a non-negative integer"),
    ({"daily": 1.0}, "schedule daily must be a non-negative integer"),
    ({"daily": True}, "schedule daily must be a non-negative integer"),
    ({"daily": None}, "schedule daily must be a non-negative integer"),
    ({"daily": "seven"}, "schedule daily must be a non-negative integer"),
    ({"daily": ""}, "schedule daily must be a non-negative integer"),
    ({"daily": "\u0663"}, "schedule daily must be a non-negative integer"),   # an Arabic-Indic three
    ({"daily": [7]}, "schedule daily must be a non-negative integer"),
    ({}, "schedule is empty: name at least one of hourly"),
    ([("daily", 7)], "schedule is a dict of hourly, daily"),
    ("daily=7", "schedule is a dict of hourly, daily"),
    (None, "schedule is a dict of hourly, daily"),
])
def test_bad_schedules_are_refused_clearly(value, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_schedule(value)


# ------------------------------------------------------------------- periods

def test_newest_of_each_period_and_periods_without_a_candidate_do_not_count():
    times = ["2026-11-26T03:40:59", "2026-11-26T01:00:00", "2026-11-25T22:00:00", "2026-11-20T10:00:00"]
    result = plan_schedule([clean(at(times[0]))] + [revision(n, at(t)) for n, t in enumerate(times[1:], 1)], schedule(daily=3))
    # three days that hold a candidate, newest of each; 21..24 November hold none and are skipped
    assert pinned_names(result) == {name_of(times[0]), name_of(times[2]), name_of(times[3])}
    assert result.periods[name_of(times[3])] == ("daily 2026-11-20",)


def test_hour_boundaries():
    result = plan_schedule([revision(1, at("2026-11-26T03:59:59")), clean(at("2026-11-26T04:00:00"))], schedule(hourly=2))
    assert pinned_names(result) == {"auto-20261126t035959", "auto-20261126t040000"}


@pytest.mark.parametrize("texts, weekly, expected, label", [
    # 2020 has 53 ISO weeks: Sunday 3 January 2021 ends week 53 of 2020, Monday 4 January starts week 1 of 2021
    (["2020-12-28T09:00:00", "2021-01-03T23:59:59", "2021-01-04T00:00:00"], 2,
     ["2021-01-03T23:59:59", "2021-01-04T00:00:00"], "weekly 2020-W53"),
    # Monday 30 December 2024 is in week 1 of 2025
    (["2024-12-29T12:00:00", "2024-12-30T00:00:00", "2025-01-05T08:00:00"], 2,
     ["2024-12-29T12:00:00", "2025-01-05T08:00:00"], "weekly 2024-W52"),
])
def test_iso_weeks_across_a_year_boundary(texts, weekly, expected, label):
    candidates = [revision(n, at(t)) for n, t in enumerate(texts, 1)]
    result = plan_schedule(candidates, schedule(weekly=weekly))
    assert pinned_names(result) == {name_of(t) for t in expected}
    assert label in result.periods[name_of(expected[0])]


def test_weeks_start_on_monday():
    sunday, monday = "2026-11-29T23:00:00", "2026-11-30T01:00:00"
    result = plan_schedule([revision(1, at(sunday)), clean(at(monday))], schedule(weekly=1))
    assert pinned_names(result) == {name_of(monday)}
    result = plan_schedule([revision(1, at(sunday)), clean(at(monday))], schedule(weekly=2))
    assert pinned_names(result) == {name_of(sunday), name_of(monday)}


def test_months_of_different_lengths_and_the_leap_day():
    texts = ["2024-01-31T23:59:59", "2024-02-29T23:59:59", "2024-03-01T00:00:00", "2024-04-30T12:00:00",
             "2024-04-01T00:00:00", "2023-02-28T10:00:00"]
    candidates = [revision(n, at(t)) for n, t in enumerate(texts, 1)]
    result = plan_schedule(candidates, schedule(monthly=4))
    assert pinned_names(result) == {name_of(t) for t in texts[:4]}
    assert result.periods[name_of("2024-02-29T23:59:59")] == ("monthly 2024-02",)
    result = plan_schedule(candidates, schedule(daily=6))
    assert name_of("2024-02-29T23:59:59") in pinned_names(result)
    result = plan_schedule(candidates, schedule(yearly=5))
    assert pinned_names(result) == {name_of("2024-04-30T12:00:00"), name_of("2023-02-28T10:00:00")}


def test_one_image_serves_every_class_that_selects_it():
    result = plan_schedule([clean(at("2026-11-26T03:40:59"))], dict.fromkeys(CLASSES, 3))
    assert [made.name for made in result.pin] == ["auto-20261126t034059"]
    assert result.pin[0].periods == ("hourly 2026-11-26T03", "daily 2026-11-26", "weekly 2026-W48", "monthly 2026-11",
                                     "yearly 2026")


# ------------------------------------------------------------------- pins made, kept and removed

def test_a_volume_restarted_often_keeps_its_days():
    # qubesd kept one revision; yesterday's and the day before's data live on in their scheduled pins
    candidates = [
        clean(at("2026-11-26T08:00:00")),
        revision(7, at("2026-11-26T07:00:00")),
        pin("auto-20261125t180000"), pin("auto-20261124t090000"), pin("auto-20261123t090000"),
        pin("auto-20261126t060000"),  # today's pin of earlier data: today's newest is now the clean image
        pin("before-upgrade", at("2026-01-01T00:00:00")), pin("automatic", at("2026-11-26T09:00:00")),
    ]
    result = plan_schedule(candidates, schedule(daily=3))
    assert [(made.name, made.source) for made in result.pin] == [("auto-20261126t080000", candidates[0])]
    assert result.keep == ("auto-20261124t090000", "auto-20261125t180000")
    assert result.unpin == ("auto-20261123t090000", "auto-20261126t060000")
    assert result.changes


def test_same_data_time_is_one_candidate_made_from_the_clean_image():
    moment = at("2026-11-26T03:40:59")
    candidates = [revision(3, moment), clean(moment), revision(2, moment), revision(1, moment - DAY)]
    result = plan_schedule(candidates, schedule(daily=1))
    assert [(made.name, made.source.kind) for made in result.pin] == [("auto-20261126t034059", "clean")]
    result = plan_schedule([revision(2, moment), revision(3, moment)], schedule(daily=1))
    assert result.pin[0].source == revision(3, moment)


def test_an_existing_pin_of_the_selected_time_is_kept_not_made_again():
    moment = at("2026-11-26T03:40:59")
    result = plan_schedule([clean(moment), pin("auto-20261126t034059", moment)], schedule(daily=1))
    assert (result.pin, result.unpin, result.keep, result.changes) == ((), (), ("auto-20261126t034059",), False)


def test_a_pin_whose_mtime_drifted_counts_at_its_names_time_and_is_reported():
    # a copy without preserved times gave every pin today's mtime: the names still hold the calendar
    now = at("2026-11-26T12:00:00")
    pins = [pin("auto-20261124t090000", now), pin("auto-20261125t090000", now)]
    result = plan_schedule([clean(now)] + pins, schedule(daily=3))
    assert result.keep == ("auto-20261124t090000", "auto-20261125t090000")
    assert result.unpin == ()
    assert result.drifted == ("auto-20261124t090000", "auto-20261125t090000")


def test_a_zero_schedule_removes_every_scheduled_pin_and_only_those():
    candidates = [clean(at("2026-11-26T08:00:00")), pin("auto-20261125t180000"), pin("keep-me", at("2026-11-25T18:00:00"))]
    result = plan_schedule(candidates, schedule(daily=0))
    assert (result.pin, result.unpin, result.keep) == ((), ("auto-20261125t180000",), ())


def test_unknown_candidate_kinds_are_refused():
    with pytest.raises(InvalidArgument, match="candidate kind must be"):
        plan_schedule([Candidate("dirty", "dirty", 0)], schedule(daily=1))


# ------------------------------------------------------------------- properties

# Times clustered around a few year boundaries and a leap day, so that periods hold several candidates.
_ANCHORS = [at("2020-12-27T00:00:00"), at("2024-02-26T00:00:00"), at("2026-11-20T00:00:00")]
times = st.builds(lambda anchor, offset: anchor + offset, st.sampled_from(_ANCHORS),
                  st.one_of(st.integers(0, 21 * DAY), st.integers(0, 21 * 24).map(lambda h: h * HOUR),
                            st.integers(-800 * DAY, 800 * DAY)))
schedules = st.fixed_dictionaries({name: st.integers(0, 6) for name in CLASSES})
user_pin_names = st.sampled_from(["automatic", "auto-before-upgrade", "auto-20230229t000000", "known-good"])


@st.composite
def volumes(draw):
    """Candidates of one volume: maybe a clean image, revisions, scheduled pins and pins of the user's."""
    candidates = []
    if draw(st.booleans()):
        candidates.append(clean(draw(times)))
    candidates += [revision(n, t) for n, t in enumerate(draw(st.lists(times, max_size=12)), 1)]
    for moment in draw(st.lists(times, max_size=8)):
        candidates.append(pin(scheduled_pin_name(moment)))
    for name in draw(st.lists(user_pin_names, max_size=3, unique=True)):
        candidates.append(pin(name, draw(times)))
    return candidates


def oracle(candidates, counts):
    """The selection, computed another way: period keys from arithmetic, N largest keys, newest of each."""
    data = {c.time for c in candidates if c.kind != "pin"} | {
        scheduled_pin_time(c.name) for c in candidates if c.kind == "pin" and scheduled_pin_time(c.name) is not None}

    def key(name, seconds):
        moment = datetime.datetime.fromtimestamp(seconds, UTC)
        return {"hourly": seconds // HOUR, "daily": seconds // DAY,
                "weekly": (moment.date() - datetime.timedelta(days=moment.weekday())).toordinal(),
                "monthly": moment.year * 12 + moment.month, "yearly": moment.year}[name]

    chosen = set()
    for name, count in counts.items():
        newest = {}
        for seconds in data:
            period = key(name, seconds)
            newest[period] = max(newest.get(period, seconds), seconds)
        chosen |= {newest[period] for period in sorted(newest, reverse=True)[:count]}
    return {scheduled_pin_name(seconds) for seconds in chosen}


def applied(candidates, result):
    """The volume's candidates after the result was carried out."""
    unpinned = set(result.unpin)
    after = [c for c in candidates if not (c.kind == "pin" and c.name in unpinned)]
    return after + [pin(made.name, made.time) for made in result.pin]


PROPERTY_SETTINGS = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(volumes(), schedules)
def test_selection_properties(candidates, counts):
    result = plan_schedule(candidates, counts)
    selected = pinned_names(result)
    scheduled = {c.name for c in candidates if c.kind == "pin" and scheduled_pin_time(c.name) is not None}
    user_pins = {c.name for c in candidates if c.kind == "pin"} - scheduled

    assert selected == oracle(candidates, counts) == set(result.periods)
    assert len(selected) <= sum(counts.values())
    # every scheduled pin is either kept or removed, never both; no pin of the user's is in the result
    assert set(result.keep) | set(result.unpin) == scheduled
    assert not set(result.keep) & set(result.unpin)
    assert not user_pins & (set(result.unpin) | set(result.keep) | {made.name for made in result.pin})
    assert not {made.name for made in result.pin} & scheduled
    for name in selected:
        assert re.fullmatch(PIN_NAME_PATTERN, name)
        assert scheduled_pin_name(scheduled_pin_time(name)) == name
    for made in result.pin:
        assert made.source.kind in ("clean", "revision")
        assert made.source.time == made.time == scheduled_pin_time(made.name)
    # the newest data is always kept when any class keeps anything
    data_times = [c.time for c in candidates if c.kind != "pin"] + [scheduled_pin_time(n) for n in scheduled]
    if data_times and any(counts.values()):
        assert scheduled_pin_name(max(data_times)) in selected


@PROPERTY_SETTINGS
@given(volumes(), schedules)
def test_a_rerun_changes_nothing_also_after_qubesd_pruned_every_revision(candidates, counts):
    result = plan_schedule(candidates, counts)
    after = applied(candidates, result)
    again = plan_schedule(after, counts)
    assert (again.pin, again.unpin) == ((), ())
    assert set(again.keep) == pinned_names(result)
    pruned = [c for c in after if c.kind != "revision"]
    again = plan_schedule(pruned, counts)
    assert (again.pin, again.unpin) == ((), ())
    assert set(again.keep) == pinned_names(result)


@PROPERTY_SETTINGS
@given(volumes(), schedules)
def test_each_selected_pin_is_the_newest_of_its_periods(candidates, counts):
    result = plan_schedule(candidates, counts)
    data = {c.time for c in candidates if c.kind in ("clean", "revision")}
    data |= {t for t in (scheduled_pin_time(c.name) for c in candidates if c.kind == "pin") if t is not None}
    periods_of = {seconds: plan_schedule([clean(seconds)], dict.fromkeys(CLASSES, 1)).pin[0].periods for seconds in data}
    for pin_name, periods in result.periods.items():
        seconds = scheduled_pin_time(pin_name)
        for period in periods:
            assert period in periods_of[seconds]
            assert all(other <= seconds for other in data if period in periods_of[other])
    for name in CLASSES:
        assert len({p for ps in result.periods.values() for p in ps if p.startswith(name + " ")}) <= counts[name]

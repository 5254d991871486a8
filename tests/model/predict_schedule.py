# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What ``reflink_pin`` with ``schedule`` should do to the model (modules.md, "Scheduled pins").

The calendar here is the test's own, written from the spec's words and not
from the core's code: per class, the candidates' times are grouped by their
period (a tuple that sorts in time: (year, month, day, hour) for hourly, the
ISO (year, week) for weekly, ...), the newest time of each period is its
choice, and the N latest periods that hold a time are kept.  A scheduled pin
counts at the time in its name (the decision of this branch; the pin's mtime
is the same time unless a copy changed it).
"""

from __future__ import annotations

import calendar
import datetime
import re
import time

from disk import parse_name
from predict import Refuse, vid_ok
from pool_model import Vol, stamp

CLASSES = ("hourly", "daily", "weekly", "monthly", "yearly")
SCHEDULED_RE = re.compile(r"auto-(\d{8}t\d{6})\Z")


def _utc(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


PERIOD = {
    "hourly": lambda t: (_utc(t).year, _utc(t).month, _utc(t).day, _utc(t).hour),
    "daily": lambda t: (_utc(t).year, _utc(t).month, _utc(t).day),
    "weekly": lambda t: tuple(_utc(t).isocalendar())[:2],
    "monthly": lambda t: (_utc(t).year, _utc(t).month),
    "yearly": lambda t: (_utc(t).year,),
}


def seconds_of(timestamp: str) -> int:
    """``2026-11-26T03:40:59Z`` (a revision's name, a stamp of an mtime) as seconds since the epoch."""
    return calendar.timegm(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ"))


def pin_name(seconds: int) -> str:
    return time.strftime("auto-%Y%m%dt%H%M%S", time.gmtime(seconds))


def scheduled_time(name: str) -> int | None:
    """The time a scheduled pin's name stands for; None for any other name (a pin of the user's)."""
    match = SCHEDULED_RE.fullmatch(name)
    if match is None:
        return None
    try:
        moment = datetime.datetime.strptime(match.group(1), "%Y%m%dt%H%M%S")
    except ValueError:
        return None
    return calendar.timegm(moment.timetuple())


def is_scheduled(name: str) -> bool:
    return scheduled_time(name) is not None


def schedule_of(value) -> dict:
    """The schedule option as the spec takes it (and this branch's decisions: digit strings count, {} is refused)."""
    if not isinstance(value, dict):
        raise Refuse("schedule %r is not a dict" % (value,))
    if not value:
        raise Refuse("an empty schedule")
    counts = {}
    for key, given in value.items():
        if key not in CLASSES:
            raise Refuse("unknown class %r" % (key,))
        digits = isinstance(given, str) and given.strip().isascii() and given.strip().isdigit()
        count = int(given.strip()) if digits else given
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise Refuse("bad count %r for %s" % (given, key))
        counts[key] = count
    return counts


def kept_times(times, schedule: dict) -> set:
    """The times the calendar keeps: per class, the newest time of each of the N latest periods holding one."""
    kept = set()
    for name, count in schedule.items():
        newest: dict = {}
        for seconds in times:
            period = PERIOD[name](seconds)
            newest[period] = max(newest.get(period, seconds), seconds)
        latest = sorted(newest)[max(len(newest) - count, 0):] if count else []
        kept.update(newest[period] for period in latest)
    return kept


def candidates(vol: Vol) -> dict:
    """time -> (content, timestamp) of the image a new pin of that time copies: the clean image, else the
    revision with the highest id of that time; the scheduled pins' times are candidates too (no new copy)."""
    found = {}
    for number in sorted(vol.revisions):
        content, timestamp = vol.revisions[number]
        found[seconds_of(timestamp)] = (content, timestamp)
    if vol.clean is not None:
        found[seconds_of(vol.clean_ts)] = (vol.clean, vol.clean_ts)
    return found


def volume_schedule(vol: Vol, schedule: dict) -> dict:
    """Change ``vol`` as the schedule does; return the names pinned (newest first), unpinned and kept."""
    sources = candidates(vol)
    scheduled = {name: scheduled_time(name) for name in vol.pins if is_scheduled(name)}
    keep = kept_times(set(sources) | set(scheduled.values()), schedule)
    pinned = []
    for seconds in sorted(keep, reverse=True):
        name = pin_name(seconds)
        if name not in vol.pins:
            content, _timestamp = sources[seconds]
            vol.pins[name] = (content, stamp(seconds * 10 ** 9))
            pinned.append(name)
    unpinned = sorted(name for name, seconds in scheduled.items() if seconds not in keep)
    for name in unpinned:
        del vol.pins[name]
    kept = sorted(name for name, seconds in scheduled.items() if seconds in keep)
    return {"pinned": pinned, "unpinned": unpinned, "kept": kept,
            "after": sorted(name for name in vol.pins if is_scheduled(name))}


def run_schedule(model, options: dict, ctx, report: dict) -> None:
    """The whole task: every volume checked before any is changed; ``report`` gets vid -> pinned/unpinned/kept."""
    schedule = schedule_of(options["schedule"])
    given = [options["vid"]] if options.get("vid") is not None else options.get("vids")
    vids = []
    for vid in given:
        vid_ok(vid)
        if vid not in vids:
            vids.append(vid)
    for vid in vids:
        if not model.vol(vid).exists:
            # Check mode warns and plans nothing for it: an earlier task of the play may create it.
            raise Refuse("volume %s does not exist" % vid, check_knows=False)
    for vid in vids:
        report[vid] = volume_schedule(model.vol(vid), schedule)
        if report[vid]["pinned"]:
            ctx.allocates = True


def _pin_of(rel: str) -> tuple | None:
    """(vid, pin name) of a pin's path in a listing (``pool/appvms/a/data.img.pin-p1``), else None."""
    parts = rel.split("/")
    image = parse_name(parts[-1]) if len(parts) == 4 and parts[0] == "pool" else None
    if image is None or image.kind != "pin" or image.tempfile:
        return None
    return "%s/%s/%s" % (parts[1], parts[2], image.volume), image.pin


def untouchable_changes(before: dict, after: dict, vids) -> list:
    """What the task changed besides making and removing scheduled pins of ``vids`` (listings of harness.snapshot).

    A pin of the user's (any other name), a pin of a volume not named, every
    other file, and a scheduled pin that stays must be as they were.
    """
    found = []
    for rel in sorted(set(before) | set(after)):
        pin = _pin_of(rel)
        ours = pin is not None and pin[0] in vids and is_scheduled(pin[1])
        if ours and (rel not in before or rel not in after):
            continue
        if before.get(rel) != after.get(rel):
            what = "pin %s of %s" % (pin[1], pin[0]) if pin is not None else rel
            found.append("%s: %s -> %s" % (what, before.get(rel), after.get(rel)))
    return found


def report_problems(result: dict, expected: dict) -> list:
    """Where the task's per-volume ``pinned``, ``unpinned`` and ``kept`` differ from the calendar's."""
    given = {item.get("vid"): item for item in result.get("volumes", [])}
    found = []
    if sorted(given) != sorted(expected):
        found.append("volumes reported %s, expected %s" % (sorted(given), sorted(expected)))
    for vid, wanted in expected.items():
        item = given.get(vid, {})
        for key in ("pinned", "unpinned", "kept"):
            if item.get(key) != wanted[key]:
                found.append("%s %s: reported %s, expected %s" % (vid, key, item.get(key), wanted[key]))
    return found


def check_run(h, before: dict, options: dict, expected: dict, result) -> None:
    """The scheduled run's own checks (harness ``h``, its listing ``before`` the run, the prediction
    ``expected``): nothing but scheduled pins of the vids named changed; after a success, the scheduled pins
    are the calendar's and so is the report."""
    named = [options["vid"]] if options.get("vid") is not None else options["vids"]
    changed = untouchable_changes(before, h.snapshot(), named)
    if changed:
        outcome = "failed: " + result.msg if result.failed else "ok"
        h.flag("schedule_touched_others", "%s; %s" % (outcome, "; ".join(changed)))
    if result.failed:
        return
    for vid, wanted in expected.items():
        found = sorted(name for name in h.model.vol(vid).pins if is_scheduled(name))
        if found != wanted["after"]:
            h.flag("schedule_selection", "%s keeps the scheduled pins %s, the calendar says %s"
                   % (vid, found, wanted["after"]))
    wrong = report_problems(result.result, expected)
    if wrong:
        h.flag("schedule_report", "; ".join(wrong))

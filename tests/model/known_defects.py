# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Defects the model-based test knows about: reported and passed over, until they are switched strict.

Each entry is a defect that is known and not fixed yet (none now: issue 26's
and those this test found beyond it are fixed).  While it is listed here, a step that shows it is
recorded (see ``report()``; ``make test-model`` prints the list at the end),
the model is read again from the disk, and the run goes on.  A violation that
is not listed fails the run.

Switching them strict (once the fixes are merged):
- ``MODEL_STRICT=all make test-model`` (or a comma-separated list of names)
  turns the listed defects into failures for one run;
- for good, delete the entry below: its check is then strict in every run.
"""

from __future__ import annotations

import json
import os

KNOWN: dict[str, str] = {
    # Empty: issue 26's defects and the three this test found beyond them are fixed (see README.md).
}

_SEEN: dict[str, dict] = {}


def strict_names() -> set:
    value = os.environ.get("MODEL_STRICT", "").strip()
    if value in ("", "0", "no", "none"):
        return set()
    if value in ("1", "all", "yes"):
        return set(KNOWN)
    return {name.strip() for name in value.split(",") if name.strip()}


def is_lenient(name: str | None) -> bool:
    """Whether a violation tagged ``name`` is a known defect to report and pass over."""
    return name is not None and name in KNOWN and name not in strict_names()


def record(name: str, text: str, steps: list) -> None:
    entry = _SEEN.setdefault(name, {"count": 0, "first": text, "steps": list(steps)})
    entry["count"] += 1
    if len(steps) < len(entry["steps"]):   # keep the shortest way there
        entry.update(first=text, steps=list(steps))


def seen() -> dict:
    return dict(_SEEN)


def count(name: str) -> int:
    """How often the known defect ``name`` was seen in this process so far."""
    return _SEEN.get(name, {}).get("count", 0)


def report(path: str | None = None) -> str:
    """The known defects seen so far, in words (and as JSON in ``path``)."""
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(_SEEN, handle, indent=1, sort_keys=True)
    if not _SEEN:
        return "model: no known defect was seen"
    lines = ["model: known defects seen (reported, not failed; MODEL_STRICT=all makes them fail):"]
    for name in sorted(_SEEN):
        entry = _SEEN[name]
        lines.append("  %s (%d times): %s" % (name, entry["count"], KNOWN.get(name, "?")))
        lines.append("      first: %s" % entry["first"][:400])
        lines.append("      shortest way there: %s" % "; ".join(entry["steps"])[:600])
    return "\n".join(lines)

# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter maintenance_report: the content of the maintenance role's HTML report (figures and chart geometry)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: maintenance_report
author: dom0.reflink contributors
version_added: 0.2.0
short_description: What the maintenance report shows, computed from the nightly run's results
description:
  - Turns the registered results of M(dom0.reflink.reflink_info) (with C(space=true)),
    M(dom0.reflink.reflink_gc) and M(dom0.reflink.reflink_dedupe) into the content of the role
    C(dom0.reflink.maintenance)'s HTML report. That is the figures (each with its text and its source), the volumes
    grouped by VM, the findings grouped by kind, and the geometry of the inline SVG charts.
  - The role's template C(report.html.j2) lays it out; anything else can too.
  - Strings from the pool (volume ids, file names, messages) are returned as they are. Escape them where they are
    written (the role's template applies C(e) to every value).
  - A step that did not run or failed, or a pool whose space was not measured, gives a report that says so; it is
    never an error.
positional: _input
options:
  _input:
    description: The registered result of M(dom0.reflink.reflink_info).
    type: dict
    required: true
  gc:
    description: The registered result of M(dom0.reflink.reflink_gc), if it ran.
    type: dict
  dedupe:
    description: The registered result of M(dom0.reflink.reflink_dedupe), if it ran.
    type: dict
  now:
    description:
      - The time of the run, UTC, like V(2026-11-26T03:40:59Z); the time line measures ages from it.
      - Default the newest timestamp of a revision or pin in the results (the report then does not depend on the
        clock of the controller).
    type: str
  top:
    description: How many volumes the space chart shows (the largest); the table lists every volume.
    type: int
    default: 25
  timeline_rows:
    description: How many volumes the time line shows (those with the most pins and revisions).
    type: int
    default: 40
"""

EXAMPLES = r"""
- name: Write the report
  ansible.builtin.template:
    src: report.html.j2
    dest: /var/lib/qubes/maintenance-report.html
    mode: "0644"
  vars:
    # in report.html.j2:
    #   {% set report = maintenance_info | dom0.reflink.maintenance_report(gc=maintenance_gc,
    #        dedupe=maintenance_dedupe, now=now(utc=true, fmt='%Y-%m-%dT%H:%M:%SZ')) %}
    maintenance_info: "{{ info_result }}"

- name: The figure of what gc freed, as text
  ansible.builtin.debug:
    msg: "{{ (info_result | dom0.reflink.maintenance_report(gc=gc_result)).gc.reclaimed.t }}"
"""

RETURN = r"""
_value:
  description:
    - The report's content. Every number is a figure C({v, t, of}), the exact value, its text (V(1.50 GiB),
      V(1,024)) and its source, a JSON pointer into C({info, gc, dedupe}) (V(/info/volumes/3/space/exclusive)),
      a sum or difference of such pointers, or a count (V(#/info/findings kind=nocow)).
    - Keys C(generated), C(pool), C(volume_count), C(vm_groups), C(space), C(space_measured), C(filesystem),
      C(space_chart), C(space_chart_more), C(findings), C(warning_count), C(finding_count), C(missing), C(gc),
      C(dedupe), C(timeline), C(timeline_more).
  type: dict
"""

import datetime
from collections.abc import Callable
from typing import Any

from ansible.errors import AnsibleFilterError  # type: ignore[import-untyped]

from ansible_collections.dom0.reflink.plugins.plugin_utils._report_figures import parse_time
from ansible_collections.dom0.reflink.plugins.plugin_utils._report_model import build


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AnsibleFilterError("maintenance_report: %s must be a positive integer (got %r)" % (name, value))
    return value


def maintenance_report(info: Any, gc: Any = None, dedupe: Any = None, now: Any = None, top: Any = 25,
                       timeline_rows: Any = 40) -> dict[str, Any]:
    """The report's content (see DOCUMENTATION)."""
    if not isinstance(info, dict):
        raise AnsibleFilterError("maintenance_report: the input must be the registered result of reflink_info, a dict "
                                 "(got %s)" % type(info).__name__)
    moment: datetime.datetime | None = None
    if isinstance(now, datetime.datetime):
        moment = now if now.tzinfo is not None else now.replace(tzinfo=datetime.timezone.utc)
    elif now is not None:
        moment = parse_time(now)
        if moment is None:
            raise AnsibleFilterError("maintenance_report: now must be a UTC time like 2026-11-26T03:40:59Z (got %r)" % (now,))
    return build(info, gc, dedupe, moment, _positive(top, "top"), _positive(timeline_rows, "timeline_rows"))


class FilterModule:
    """The collection's filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"maintenance_report": maintenance_report}

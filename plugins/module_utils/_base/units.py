# -*- coding: utf-8 -*-
# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sizes and durations as users write them in playbooks."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument

_SIZE_FACTORS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024,
    "m": 1024 ** 2, "mib": 1024 ** 2,
    "g": 1024 ** 3, "gib": 1024 ** 3,
    "t": 1024 ** 4, "tib": 1024 ** 4,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*\Z")

_DURATION_FACTORS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*\Z", re.IGNORECASE)

_SIZE_HELP = "an integer number of bytes or a number with K, M, G, T (or KiB, MiB, GiB, TiB), e.g. 20G or 512MiB"


# The largest file size Linux can represent (off_t is a signed 64-bit integer).
MAX_SIZE = 2 ** 63 - 1


def parse_size(value, what="size"):
    """Bytes of ``value``: an int, or a string such as ``20G``, ``512MiB``, ``1.5G``.

    Suffixes are powers of 1024 and case-insensitive; a fractional result is
    rounded down to a whole byte.  Negative numbers, booleans, floats given as
    numbers (ambiguous in YAML) and unknown suffixes are refused.
    """
    if isinstance(value, bool):
        raise InvalidArgument("%s must be %s, not a boolean" % (what, _SIZE_HELP))
    if isinstance(value, int):
        return _in_range(value, what)
    if not isinstance(value, str):
        raise InvalidArgument("%s must be %s (got %r)" % (what, _SIZE_HELP, value))
    match = _SIZE_RE.match(value)
    if match is None:
        raise InvalidArgument("%s %r is not %s" % (what, value, _SIZE_HELP))
    number, suffix = match.groups()
    factor = _SIZE_FACTORS.get(suffix.lower())
    if factor is None:
        raise InvalidArgument("%s %r has an unknown unit %r; use %s" % (what, value, suffix, _SIZE_HELP))
    try:
        return _in_range(int(Decimal(number) * factor), what)
    except InvalidOperation:
        raise InvalidArgument("%s %r is not %s" % (what, value, _SIZE_HELP)) from None


def _in_range(value, what):
    if value < 0:
        raise InvalidArgument("%s must not be negative (got %d)" % (what, value))
    if value > MAX_SIZE:
        raise InvalidArgument("%s %d is larger than any file can be (%d bytes)" % (what, value, MAX_SIZE))
    return value


def parse_volume_size(value, what="size"):
    """Like parse_size, for the size of a volume: zero bytes is no volume at all."""
    size = parse_size(value, what)
    if size == 0:
        raise InvalidArgument("%s must be more than 0 bytes: a volume of zero bytes cannot hold anything" % what)
    return size


def parse_duration(value, what="duration"):
    """Seconds of ``value``: an int, or a string such as ``90``, ``30m``, ``2h``, ``1d``."""
    if isinstance(value, bool):
        raise InvalidArgument("%s must be a number of seconds or a number with s, m, h or d" % what)
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgument("%s must not be negative (got %d)" % (what, value))
        return value
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            number, unit = match.groups()
            return int(Decimal(number) * _DURATION_FACTORS[unit.lower()])
    raise InvalidArgument(
        "%s %r is not a number of seconds or a number with s, m, h or d (e.g. 30m, 2h, 1d)" % (what, value))


def format_size(value):
    """A short human form of a byte count, for messages (``1.5 GiB``)."""
    for unit, factor in (("TiB", 1024 ** 4), ("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if value >= factor:
            return "%.4g %s" % (value / factor, unit)
    return "%d bytes" % value

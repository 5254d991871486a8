# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sizes and durations as users write them."""

from __future__ import annotations

import pytest

from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument
from ansible_collections.dom0.reflink.plugins.module_utils._base.units import parse_duration, parse_size, parse_volume_size

GIB = 1024 ** 3


@pytest.mark.parametrize("value, expected", [
    (0, 0), (4096, 4096), ("4096", 4096), ("20G", 20 * GIB), ("20g", 20 * GIB), ("20GiB", 20 * GIB),
    ("20gib", 20 * GIB), ("512MiB", 512 * 1024 ** 2), ("512m", 512 * 1024 ** 2), ("1K", 1024),
    ("1kib", 1024), ("2T", 2 * 1024 ** 4), ("2TiB", 2 * 1024 ** 4), ("1.5G", 3 * GIB // 2),
    ("1.3K", 1331), (" 7 M ", 7 * 1024 ** 2), ("10b", 10), (".5K", 512),
])
def test_size_forms(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", [
    -1, "-1", "-1G", "", "G", "1.2.3G", "1 G B", "1GB", "1Gi", "1P", "1e3", "twenty", "0x10",
    True, 1.5, None, [1], 2 ** 63, "8388608T",
])
def test_bad_sizes_are_refused(value):
    with pytest.raises(InvalidArgument) as excinfo:
        parse_size(value)
    assert "size" in str(excinfo.value)


def test_largest_size_is_accepted_and_volume_sizes_are_not_zero():
    assert parse_size(2 ** 63 - 1) == 2 ** 63 - 1
    assert parse_volume_size("1") == 1
    with pytest.raises(InvalidArgument) as excinfo:
        parse_volume_size("0G")
    assert "more than 0 bytes" in str(excinfo.value)


@pytest.mark.parametrize("value, expected", [
    (0, 0), (90, 90), ("90", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("45s", 45), ("1.5h", 5400),
    ("2H", 7200),
])
def test_duration_forms(value, expected):
    assert parse_duration(value) == expected


@pytest.mark.parametrize("value", [-5, "-5m", "5w", "m", "", "soon", True, None])
def test_bad_durations_are_refused(value):
    with pytest.raises(InvalidArgument):
        parse_duration(value)

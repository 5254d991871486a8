# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pin names, how pin files are classified, and which volume's files they are."""

from __future__ import annotations

import pytest

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument
from ansible_collections.dom0.reflink.plugins.module_utils._plans.pins import (
    MakePin,
    RemovePin,
    RestorePin,
    check_pin_name,
    parse_pin_source,
)
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import FileInfo, VolumeFiles

BAD_PIN_NAMES = ["", "../x", "A", "x@y", "x~y", "a" * 41, "good\n", "x/y", "-x", "_x", "x.y", "x y", None, 7]


@pytest.mark.parametrize("value", BAD_PIN_NAMES, ids=repr)
def test_bad_pin_names_are_refused_with_a_clear_message(value):
    with pytest.raises(InvalidArgument, match=r"pin name .* is not valid: use 1 to 40 characters"):
        check_pin_name(value)


@pytest.mark.parametrize("value", ["a", "0", "before-upgrade", "known_good", "x" * 40, "9-a_b"])
def test_good_pin_names_pass(value):
    assert check_pin_name(value) == value


@pytest.mark.parametrize("value, expected", [
    (None, "clean"), ("clean", "clean"), (" Clean ", "clean"), ("latest", "latest"), (3, 3), ("12", 12),
])
def test_pin_sources(value, expected):
    assert parse_pin_source(value) == expected


@pytest.mark.parametrize("value", [0, -1, "x", True, "3.5"])
def test_bad_pin_sources_are_refused(value):
    with pytest.raises(InvalidArgument, match="revision must be 'clean', 'latest' or a revision id"):
        parse_pin_source(value)


def test_a_pin_file_is_a_pin_of_its_volume():
    image = names.classify("private.img.pin-before-upgrade")
    assert (image.volume, image.kind, image.pin, image.tempfile) == ("private", names.PIN, "before-upgrade", False)
    assert not image.junk_revision
    assert image.final_name == "private.img.pin-before-upgrade"
    assert names.parse_vid("appvms/work/private").pin("before-upgrade") == image.final_name


def test_a_pin_tempfile_is_a_tempfile_of_its_volume():
    image = names.classify("private.img.pin-x~ab12cd_9")
    assert (image.volume, image.kind, image.tempfile, image.final_name) == \
        ("private", names.PIN, True, "private.img.pin-x")


@pytest.mark.parametrize("filename", ["private.img.pin-A", "private.img.pin-", "private.img.pin-" + "a" * 41,
                                      "private.img.pin-x.y", "private.img.pin-x~short"])
def test_names_that_are_no_pin_are_no_image(filename):
    assert names.classify(filename) is None


def test_a_name_with_an_at_suffix_is_a_junk_revision_not_a_pin():
    image = names.classify("private.img.pin-x@2026-11-26T03:40:59Z")
    assert image.kind == names.REVISION and image.junk_revision


def test_sibling_volumes_never_see_each_others_pins():
    vid = names.parse_vid("appvms/work/data")
    listing = ["data.img", "data.img.pin-a", "data2.img", "data2.img.pin-b", "data2.img.pin-a~abcdefgh",
               "data.img.pin-c~abcdefgh"]
    files = VolumeFiles.from_infos(vid, [FileInfo(name, 1, 1) for name in listing])
    assert sorted(files.pins) == ["a"]
    assert [info.name for info in files.tempfiles] == ["data.img.pin-c~abcdefgh"]
    assert [info.name for info in files.junk_revisions] == []
    assert "data.img.pin-a" not in [info.name for info in files.all()]
    assert "data.img.pin-a" in [info.name for info in files.all_with_pins()]


def test_pins_are_reported_by_name_with_the_data_time():
    vid = names.parse_vid("appvms/work/private")
    files = VolumeFiles.from_infos(vid, [FileInfo("private.img.pin-z", 5, 5, 10 ** 9),
                                         FileInfo("private.img.pin-a", 7, 7, 2 * 10 ** 9)])
    assert files.pin_report() == [
        {"name": "a", "size": 7, "timestamp": "1970-01-01T00:00:02Z"},
        {"name": "z", "size": 5, "timestamp": "1970-01-01T00:00:01Z"},
    ]


def test_the_in_use_guard_checks_before_a_pin_replaces_clean_and_not_before_pin_files():
    rel = "appvms/work/%s".__mod__
    restore = RestorePin(rel, "private.img.pin-a", "private.img", "a")
    assert restore.destructive and restore.completes and restore.long
    assert not MakePin(rel, "private.img", "private.img.pin-a", 0, "pin a").destructive
    assert not RemovePin(rel, "private.img.pin-a", "pin removed").destructive

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Volume ids, image file names, revision names and tempfile patterns."""

from __future__ import annotations

import pytest

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument

BAD_VIDS = {
    "empty": ("", "non-empty"),
    "absolute": ("/appvms/work/private", "absolute"),
    "traversal vm": ("appvms/../private", "must not start with '.'"),
    "traversal volume": ("appvms/work/..", "must not start with '.'"),
    "traversal deep": ("appvms/work/../../etc", "exactly three parts"),
    "dot": ("appvms/./private", "must not start with '.'"),
    "hidden vm": ("appvms/.work/private", "must not start with '.'"),
    "dash vm": ("appvms/-work/private", "must not start with '-'"),
    "dash volume": ("appvms/work/-private", "must not start with '-'"),
    "nul": ("appvms/work/priv\0ate", "NUL"),
    "two parts": ("appvms/work", "exactly three parts"),
    "four parts": ("appvms/work/private/x", "exactly three parts"),
    "empty vm": ("appvms//private", "non-empty"),
    "empty volume": ("appvms/work/", "non-empty"),
    "other prefix": ("dispvms/work/private", "prefix must be one of"),
    "prefix case": ("AppVMs/work/private", "prefix must be one of"),
    "space": ("appvms/my work/private", "may only contain"),
    "tilde": ("appvms/work/priv~ate", "may only contain"),
    "at": ("appvms/work/p@x", "may only contain"),
    "img in volume": ("appvms/work/root.img", "'.img'"),
    "dirty suffix": ("appvms/work/root-dirty", "must not end in '-dirty'"),
    "precache suffix": ("appvms/work/root-precache", "must not end in '-precache'"),
    "import suffix": ("appvms/work/root-import", "must not end in '-import'"),
    "too long": ("appvms/%s/private" % ("a" * 129), "longer than"),
    "not a string": (42, "non-empty string"),
}


@pytest.mark.parametrize("vid, message", list(BAD_VIDS.values()), ids=list(BAD_VIDS))
def test_bad_vid_is_refused_with_a_clear_message(vid, message):
    with pytest.raises(InvalidArgument) as excinfo:
        names.parse_vid(vid)
    assert message in str(excinfo.value)


@pytest.mark.parametrize("vid", ["appvms/work/private", "vm-templates/debian-12/root",
                                 "appvms/sys-net/volatile", "appvms/a.b_c+d/kernel", "appvms/W0rk/data2"])
def test_good_vid_round_trips(vid):
    parsed = names.parse_vid(vid)
    assert str(parsed) == vid
    assert parsed.vm_dir == vid.rsplit("/", 1)[0]


def test_file_names_of_a_volume():
    vid = names.parse_vid("appvms/work/private")
    assert (vid.clean, vid.dirty, vid.precache, vid.import_) == (
        "private.img", "private-dirty.img", "private-precache.img", "private-import.img")
    assert vid.revision(3, "2026-11-26T03:40:59Z") == "private.img.3@2026-11-26T03:40:59Z"
    assert vid.lock_name == "appvms-work-private.lock"
    assert names.parse_vid("appvms/my-vm/private").lock_name == "appvms-my--vm-private.lock"


def test_timestamps_are_utc_whole_seconds():
    assert names.format_timestamp(0) == "1970-01-01T00:00:00Z"
    assert names.format_timestamp(1795664459.9) == "2026-11-26T03:40:59Z"
    assert names.parse_timestamp("2026-11-26T03:40:59Z") == 1795664459
    with pytest.raises(InvalidArgument):
        names.parse_timestamp("2026-11-26 03:40:59")


CLASSIFIED = {
    "private.img": ("private", names.CLEAN, None, False),
    "private-dirty.img": ("private", names.DIRTY, None, False),
    "private-precache.img": ("private", names.PRECACHE, None, False),
    "private-import.img": ("private", names.IMPORT, None, False),
    "private.img.7@2026-11-26T03:40:59Z": ("private", names.REVISION, 7, False),
    "private.img.x@2026-11-26T03:40:59Z": ("private", names.REVISION, None, False),
    "private.img~ab_12xyz": ("private", names.CLEAN, None, True),
    "private-import.img~abcdefgh": ("private", names.IMPORT, None, True),
    "private.img.2@2026-11-26T03:40:59Z~abcdefgh": ("private", names.REVISION, 2, True),
    "data2.img~abcdefgh": ("data2", names.CLEAN, None, True),
    "my.vol.img": ("my.vol", names.CLEAN, None, False),
}


@pytest.mark.parametrize("filename", list(CLASSIFIED))
def test_classify_image_names(filename):
    image = names.classify(filename)
    volume, kind, revision, tempfile = CLASSIFIED[filename]
    assert (image.volume, image.kind, image.revision, image.tempfile) == (volume, kind, revision, tempfile)
    if not tempfile:
        assert image.final_name == filename


@pytest.mark.parametrize("filename", [
    "firewall.xml", "libvirt.xml", "private.img~short", "private.img~ABCDEFGH", "private.img~abcdefghi",
    "private.img.3@2026-11-26T03:40:59", "private.img.3@2026-11-26", "private.imgx", "notes.txt", "private",
])
def test_non_image_names_are_not_classified(filename):
    assert names.classify(filename) is None


def test_tempfile_of_data_is_not_a_tempfile_of_data2():
    # Qubes' glob 'data*.img*~*' matches both; ours must tell them apart.
    assert names.classify("data.img~abcdefgh").volume == "data"
    assert names.classify("data2.img~abcdefgh").volume == "data2"
    assert names.classify("data2-dirty.img~abcdefgh").volume == "data2"


def test_junk_revision_is_flagged():
    image = names.classify("private.img.1x@2026-11-26T03:40:59Z")
    assert image.junk_revision
    assert not names.classify("private.img.12@2026-11-26T03:40:59Z").junk_revision

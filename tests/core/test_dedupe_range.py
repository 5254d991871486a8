# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""FIDEDUPERANGE through _fs/dedupe_range on real btrfs, XFS and ext4."""

from __future__ import annotations

import errno
import os

import pytest

from ansible_collections.dom0.reflink.plugins.module_utils._fs import dedupe_range
from ansible_collections.dom0.reflink.plugins.module_utils._fs.dedupe_range import (
    FILE_DEDUPE_RANGE_DIFFERS, MAX_DESTINATIONS, DedupeUnsupported, Destination, dedupe_fully, dedupe_range as dedupe,
    probe_dedupe)
from ansible_collections.dom0.reflink.plugins.module_utils._dedupe.extent_maps import read_extent_map
from dedupe_helpers import MIB, used_bytes

DATA = bytes(range(256)) * 4096 * 4   # 4 MiB that no block of which is all zeros


def make(path, data, mtime_ns=1_600_000_000 * 10 ** 9):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)
    return os.open(path, os.O_RDONLY)


def physical(fd):
    return [(extent.logical, extent.physical, extent.length) for extent in read_extent_map(fd)]


def test_equal_ranges_come_to_share_one_copy_through_read_only_descriptors(reflink_dir):
    src = make(reflink_dir / "a", DATA)
    dst = make(reflink_dir / "b", DATA)
    try:
        before = os.fstat(dst)
        used = used_bytes(reflink_dir)
        results = dedupe(src, 0, len(DATA), [Destination(dst, 0)])
        assert [(result.status, result.deduped) for result in results] == [(0, len(DATA))]
        assert physical(dst) == physical(src)
        assert used - used_bytes(reflink_dir) >= len(DATA) - 64 * 1024
        after = os.fstat(dst)
        assert (after.st_mtime_ns, after.st_ctime_ns, after.st_ino, after.st_size) == \
            (before.st_mtime_ns, before.st_ctime_ns, before.st_ino, before.st_size)
        assert os.pread(dst, len(DATA), 0) == DATA
    finally:
        os.close(src)
        os.close(dst)


def test_different_data_is_left_alone_and_each_destination_has_its_own_status(reflink_dir):
    changed = bytearray(DATA)
    changed[3 * MIB + 7] ^= 0xFF
    src = make(reflink_dir / "a", DATA)
    same = make(reflink_dir / "same", DATA)
    other = make(reflink_dir / "other", bytes(changed))
    try:
        map_before = physical(other)
        results = dedupe(src, 0, len(DATA), [Destination(other, 0), Destination(same, 0)])
        assert [result.status for result in results] == [FILE_DEDUPE_RANGE_DIFFERS, 0]
        assert results[0].deduped == 0 and results[0].differs and results[0].describe() == "the data differs"
        assert physical(other) == map_before
        assert os.pread(other, len(DATA), 0) == bytes(changed)
    finally:
        for fd in (src, same, other):
            os.close(fd)


def test_an_offset_off_the_block_size_is_refused_for_that_destination(reflink_dir):
    src = make(reflink_dir / "a", DATA)
    dst = make(reflink_dir / "b", DATA)
    try:
        result = dedupe(src, 512, 4096, [Destination(dst, 512)])[0]
        assert result.status == -errno.EINVAL and result.unsupported and result.deduped == 0
    finally:
        os.close(src)
        os.close(dst)


def test_dedupe_fully_goes_on_after_partial_calls_and_batches_destinations(reflink_dir, monkeypatch):
    monkeypatch.setattr(dedupe_range, "MAX_CALL_BYTES", 256 * 1024)
    monkeypatch.setattr(dedupe_range, "MAX_DESTINATIONS", 2)
    calls = []
    real = dedupe_range._ioctl

    def counting(fd, request, argument):
        calls.append(len(argument))
        return real(fd, request, argument)

    monkeypatch.setattr(dedupe_range, "_ioctl", counting)
    src = make(reflink_dir / "a", DATA[:MIB])
    others = [make(reflink_dir / ("b%d" % index), DATA[:MIB]) for index in range(3)]
    try:
        results = dedupe_fully(src, 0, MIB, [Destination(fd, 0) for fd in others])
        assert [(result.status, result.deduped) for result in results] == [(0, MIB)] * 3
        assert len(calls) == 4 * 2   # 4 steps of 256 KiB, each in a call of 2 and a call of 1 destination
        assert all(physical(fd) == physical(src) for fd in others)
    finally:
        for fd in [src, *others]:
            os.close(fd)


def test_more_destinations_than_one_call_takes_are_refused(reflink_dir):
    src = make(reflink_dir / "a", DATA[:4096])
    try:
        with pytest.raises(ValueError, match="1 to %d destinations" % MAX_DESTINATIONS):
            dedupe(src, 0, 4096, [Destination(src, 0)] * (MAX_DESTINATIONS + 1))
    finally:
        os.close(src)


def test_ext4_cannot_dedupe(ext4_dir):
    src = make(ext4_dir / "a", DATA[:MIB])
    dst = make(ext4_dir / "b", DATA[:MIB])
    try:
        with pytest.raises(DedupeUnsupported, match="not supported"):
            dedupe(src, 0, MIB, [Destination(dst, 0)])
    finally:
        os.close(src)
        os.close(dst)


def test_the_probe_says_which_file_systems_can_dedupe_and_leaves_nothing(any_fs_dir):
    fd = os.open(any_fs_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert probe_dedupe(fd) == ("ext4" not in str(any_fs_dir))
    finally:
        os.close(fd)
    assert os.listdir(any_fs_dir) == []

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The clone/copy contract on real btrfs, XFS and ext4, and the errno gate."""

from __future__ import annotations

import errno
import os

import pytest

from ansible_collections.dom0.reflink.plugins.module_utils._fs import clone
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import CloneError
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory

from disk_helpers import MIB, allocated, listing, same_bytes, write_image

EXPECTED_HOW = {"btrfs": clone.REFLINK, "xfs": clone.REFLINK, "ext4": clone.COPY}


@pytest.fixture
def image(any_fs_dir):
    """An 8 MiB image with two data segments and holes, on the filesystem under test."""
    path = any_fs_dir / "src.img"
    write_image(path, 8 * MIB, [(0, 64 * 1024), (3 * MIB + 4096, MIB + 123)])
    return path


def clone_in(directory, src, dst, **options):
    with Directory.open_pool(str(directory)) as handle:
        return clone.clone_file(handle, src, handle, dst, **options)


def test_clone_is_a_new_inode_with_identical_bytes(image, request):
    kind = request.node.callspec.params["any_fs_dir"]
    how = clone_in(image.parent, "src.img", "dst.img")
    dst = image.parent / "dst.img"
    assert how == EXPECTED_HOW[kind]
    assert os.stat(dst).st_ino != os.stat(image).st_ino
    assert os.stat(dst).st_size == os.stat(image).st_size
    assert same_bytes(image, dst)
    assert os.stat(dst).st_mode & 0o7777 == 0o600
    assert sorted(os.listdir(image.parent)) == ["dst.img", "src.img"]


def test_clone_replaces_an_existing_destination_atomically(image):
    old = image.parent / "dst.img"
    old.write_bytes(b"old content")
    old_ino = os.stat(old).st_ino
    clone_in(image.parent, "src.img", "dst.img")
    assert os.stat(old).st_ino != old_ino
    assert same_bytes(image, old)


@pytest.mark.parametrize("dst_size", [12 * MIB, 3 * MIB + 10000, 4096])
def test_dst_size_extends_or_truncates(image, dst_size):
    clone_in(image.parent, "src.img", "dst.img", dst_size=dst_size)
    dst = image.parent / "dst.img"
    assert os.stat(dst).st_size == dst_size
    data = image.read_bytes()
    expected = data[:dst_size] + bytes(max(0, dst_size - len(data)))
    assert dst.read_bytes() == expected


def test_dst_size_zero_gives_an_empty_file_without_reading(image):
    how = clone_in(image.parent, "src.img", "dst.img", dst_size=0)
    assert how == clone.EMPTY
    assert os.stat(image.parent / "dst.img").st_size == 0


def test_copy_mtime(image):
    os.utime(image, ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    clone_in(image.parent, "src.img", "with.img", copy_mtime=True)
    clone_in(image.parent, "src.img", "without.img")
    assert os.stat(image.parent / "with.img").st_mtime_ns == 1_700_000_000_987_654_321
    assert os.stat(image.parent / "without.img").st_mtime_ns != 1_700_000_000_987_654_321


def test_copy_on_ext4_stays_sparse_and_turns_zero_chunks_into_holes(ext4_dir):
    src = ext4_dir / "src.img"
    write_image(src, 64 * MIB, [(MIB, 2 * MIB), (40 * MIB, 100)])
    with open(src, "r+b") as handle:  # 8 MiB of written zeros: allocated, but no data
        handle.seek(16 * MIB)
        handle.write(bytes(8 * MIB))
    assert allocated(src) >= 10 * MIB
    how = clone_in(ext4_dir, "src.img", "dst.img")
    dst = ext4_dir / "dst.img"
    assert how == clone.COPY
    assert same_bytes(src, dst)
    assert allocated(dst) <= allocated(src) - 8 * MIB
    assert allocated(dst) <= 4 * MIB


def test_copy_across_filesystems_is_exdev_then_copied(cross_fs_pair):
    left, right = cross_fs_pair
    src = left / "src.img"
    write_image(src, 4 * MIB, [(0, 5000), (2 * MIB, 70000)])
    with Directory.open_pool(str(left)) as src_dir, Directory.open_pool(str(right)) as dst_dir:
        src_fd = src_dir.open_file("src.img", os.O_RDONLY)
        dst_fd, _temp_name = dst_dir.open_unnamed("probe")
        try:
            with pytest.raises(OSError) as excinfo:
                clone.ficlone(dst_fd, src_fd)
            assert excinfo.value.errno == errno.EXDEV
        finally:
            os.close(src_fd)
            os.close(dst_fd)
        how = clone.clone_file(src_dir, "src.img", dst_dir, "dst.img")
    assert how == clone.COPY
    assert same_bytes(src, right / "dst.img")


def test_real_eopnotsupp_on_ext4(ext4_dir):
    src = write_image(ext4_dir / "src.img", MIB, [(0, 4096)])
    with Directory.open_pool(str(ext4_dir)) as handle:
        src_fd = handle.open_file("src.img", os.O_RDONLY)
        dst_fd, _temp_name = handle.open_unnamed("x")
        try:
            with pytest.raises(OSError) as excinfo:
                clone.ficlone(dst_fd, src_fd)
        finally:
            os.close(src_fd)
            os.close(dst_fd)
    assert excinfo.value.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL)
    assert excinfo.value.errno in clone.FALLBACK_ERRNOS
    assert src.exists()


def test_real_ebadf_is_in_the_gate(reflink_dir):
    """A source opened for writing only: FICLONE says EBADF for real, an errno the gate lets through."""
    src = write_image(reflink_dir / "src.img", 2 * MIB, [(4096, 8192)])
    src_fd = os.open(src, os.O_WRONLY)
    with Directory.open_pool(str(reflink_dir)) as handle:
        dst_fd, _temp_name = handle.open_unnamed("x")
        try:
            with pytest.raises(OSError) as excinfo:
                clone.ficlone(dst_fd, src_fd)
            assert excinfo.value.errno == errno.EBADF
            assert errno.EBADF in clone.FALLBACK_ERRNOS
        finally:
            os.close(dst_fd)
            os.close(src_fd)


@pytest.mark.parametrize("gated", ["EBADF", "EINVAL", "EOPNOTSUPP", "EXDEV"])
def test_each_gated_errno_falls_back_to_a_correct_copy(reflink_dir, monkeypatch, gated):
    src = write_image(reflink_dir / "src.img", 4 * MIB, [(0, 3000), (MIB, 2 * MIB)])
    fail_with(monkeypatch, getattr(errno, gated))
    how = clone_in(reflink_dir, "src.img", "dst.img")
    assert how == clone.COPY
    assert same_bytes(src, reflink_dir / "dst.img")


def fail_with(monkeypatch, code):
    """Make the FICLONE ioctl itself fail with ``code`` (the lowest level reachable in-process)."""
    real = clone._ioctl

    def ioctl(fd, request, arg=0):
        if request == clone.ficlone_request():
            raise OSError(code, os.strerror(code))
        return real(fd, request, arg)
    monkeypatch.setattr(clone, "_ioctl", ioctl)


@pytest.mark.parametrize("code", ["EIO", "ENOSPC", "EPERM", "ENOTTY", "EAGAIN"])
def test_other_errnos_are_raised_never_copied(reflink_dir, monkeypatch, code):
    src = write_image(reflink_dir / "src.img", 2 * MIB, [(0, 5000)])
    dst = reflink_dir / "dst.img"
    dst.write_bytes(b"previous")
    before = listing(reflink_dir)
    fail_with(monkeypatch, getattr(errno, code))
    with pytest.raises(CloneError) as excinfo:
        clone_in(reflink_dir, "src.img", "dst.img")
    message = str(excinfo.value)
    assert code in message and str(src) in message and str(dst) in message
    assert excinfo.value.errno == getattr(errno, code)
    assert listing(reflink_dir) == before  # destination untouched, no tempfile left
    assert dst.read_bytes() == b"previous"


def test_fallback_never_refuses_to_copy(ext4_dir):
    write_image(ext4_dir / "src.img", MIB, [(0, 4096)])
    with pytest.raises(CloneError) as excinfo:
        clone_in(ext4_dir, "src.img", "dst.img", allow_copy=False)
    assert "fallback: never" in str(excinfo.value)
    assert os.listdir(ext4_dir) == ["src.img"]


def test_unknown_architecture_is_a_clear_error_at_call_time(monkeypatch):
    monkeypatch.delattr(clone.fcntl, "FICLONE", raising=False)
    monkeypatch.setattr(clone.platform, "machine", lambda: "vax")
    with pytest.raises(CloneError) as excinfo:
        clone.ficlone_request()
    assert "vax" in str(excinfo.value)


@pytest.mark.parametrize("machine, value", [("x86_64", 0x40049409), ("aarch64", 0x40049409),
                                            ("ppc64le", 0x80049409), ("mips", 0x80049409),
                                            ("armv7l", 0x40049409), ("s390x", 0x40049409)])
def test_ficlone_number_by_architecture(monkeypatch, machine, value):
    monkeypatch.delattr(clone.fcntl, "FICLONE", raising=False)
    monkeypatch.setattr(clone.platform, "machine", lambda: machine)
    assert clone.ficlone_request() == value


def test_probe(any_fs_dir, request):
    kind = request.node.callspec.params["any_fs_dir"]
    before = listing(any_fs_dir)
    with Directory.open_pool(str(any_fs_dir)) as handle:
        assert clone.probe_reflink(handle) is (kind != "ext4")
    assert listing(any_fs_dir) == before

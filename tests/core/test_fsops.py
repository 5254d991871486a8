# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Durable file operations: atomic new files, modes, cleanup on error, no symlink followed."""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.dom0.reflink.plugins.module_utils._fs import directory as fsops
from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import UnsafePath
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory

from disk_helpers import listing


@pytest.fixture(params=["unnamed", "named"])
def tempfile_kind(request, monkeypatch):
    """Run the test with O_TMPFILE, and again with the named-tempfile fallback."""
    if request.param == "named":
        monkeypatch.setattr(fsops, "_O_TMPFILE", None)
    return request.param


def test_write_new_file_is_0600_and_leaves_no_tempfile(any_fs_dir, tempfile_kind):
    old_umask = os.umask(0)
    try:
        with Directory.open_pool(str(any_fs_dir)) as handle:
            handle.write_new_file("a.img", lambda fd: os.write(fd, b"data"))
    finally:
        os.umask(old_umask)
    assert (any_fs_dir / "a.img").read_bytes() == b"data"
    assert stat.S_IMODE(os.stat(any_fs_dir / "a.img").st_mode) == 0o600
    assert os.listdir(any_fs_dir) == ["a.img"]


def test_failed_fill_leaves_old_file_and_no_tempfile(any_fs_dir, tempfile_kind):
    target = any_fs_dir / "a.img"
    target.write_bytes(b"old")
    before = listing(any_fs_dir)
    seen = []

    def fill(fd):
        os.write(fd, b"half")
        seen.extend(os.listdir(any_fs_dir))
        raise OSError(28, "No space left on device")

    with Directory.open_pool(str(any_fs_dir)) as handle, pytest.raises(OSError):
        handle.write_new_file("a.img", fill)
    assert listing(any_fs_dir) == before
    assert target.read_bytes() == b"old"
    if tempfile_kind == "named":
        assert any(name.startswith("a.img~") and len(name) == len("a.img~") + 8 for name in seen)
    else:
        assert seen == ["a.img"]  # the unnamed file never shows while it is being written


def test_tempfile_names_follow_the_contract():
    name = fsops.temp_name("private.img")
    prefix, _separator, suffix = name.partition("~")
    assert prefix == "private.img" and len(suffix) == 8
    assert set(suffix) <= set("abcdefghijklmnopqrstuvwxyz0123456789_")
    found = names.classify(name)
    assert found is not None and found.tempfile and found.final_name == "private.img"
    assert len({fsops.temp_name("private.img") for _attempt in range(100)}) == 100


@pytest.mark.parametrize("level", ["prefix", "vm", "image", "metadata"])
def test_planted_symlink_is_refused(btrfs_dir, tmp_path, level):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.img").write_bytes(b"secret")
    pool = btrfs_dir / "pool"
    (pool / "appvms").mkdir(parents=True)
    if level == "prefix":
        os.rmdir(pool / "appvms")
        os.symlink(outside, pool / "appvms")
    elif level == "vm":
        os.symlink(outside, pool / "appvms" / "work")
    elif level == "image":
        (pool / "appvms" / "work").mkdir()
        os.symlink(outside / "private.img", pool / "appvms" / "work" / "private.img")
    else:
        os.symlink(outside, pool / ".reflink")
    with Directory.open_pool(str(pool)) as handle, pytest.raises(UnsafePath) as excinfo:
        if level == "metadata":
            handle.open_dir(".reflink", create=True)
        else:
            with handle.open_dir("appvms") as prefix, prefix.open_dir("work") as vm:
                if vm is None:
                    raise AssertionError("no vm directory")
                vm.open_file("private.img", os.O_RDONLY)
    assert "symlink" in str(excinfo.value)
    assert (outside / "private.img").read_bytes() == b"secret"
    assert sorted(os.listdir(outside)) == ["private.img"]


def test_regular_lstat_refuses_other_kinds(btrfs_dir):
    os.mkfifo(btrfs_dir / "fifo.img")
    with Directory.open_pool(str(btrfs_dir)) as handle:
        with pytest.raises(UnsafePath) as excinfo:
            handle.regular_lstat("fifo.img")
        assert handle.regular_lstat("missing.img") is None
    assert "special file" in str(excinfo.value)


def test_open_dir_creates_one_level_only(btrfs_dir):
    with Directory.open_pool(str(btrfs_dir)) as handle:
        with handle.open_dir("new", create=True, mode=0o700) as made:
            assert made is not None
        assert handle.open_dir("absent") is None
    assert stat.S_IMODE(os.stat(btrfs_dir / "new").st_mode) == 0o700


def test_names_can_be_listed_twice(btrfs_dir):
    (btrfs_dir / "a").write_bytes(b"")
    with Directory.open_pool(str(btrfs_dir)) as handle:
        assert handle.names() == ["a"]
        assert handle.names() == ["a"]

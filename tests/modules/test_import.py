# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_import through ansible-playbook, on real btrfs, XFS and ext4: what ends up on disk."""

from __future__ import annotations

import os
import socket
import subprocess
import threading

import pytest

from module_helpers import (
    MIB,
    T0,
    T0_STAMP,
    VOLUME_KEYS,
    allocated,
    how_suffix,
    listing,
    make_pool,
    make_volume,
    mode_of,
    put_file,
    same_bytes,
    stamp,
    start_volume,
    strip_how,
)
from staging_helpers import (
    SOURCE_SIZE,
    VID,
    assert_no_leftovers,
    assert_ok,
    assert_refused,
    files_only,
    image,
    journals,
    make_source,
    qubes_running_file,
    read_only_loop,
    revision_ids,
    revisions,
    sha256_file,
    snapshot,
    vm_dir_of,
)

REL = "appvms/work/private"


def fs_kind(request, fixture):
    return request.node.callspec.params[fixture]


def stage_text(src, size):
    return "stage %s in %s-import.img, size %d bytes" % (src, REL, size)


def commit_texts(revision=None, precache=True, keep_precache=True):
    """The actions of a commit of the import image into an existing volume (without the how suffixes)."""
    texts = []
    if revision is not None:
        texts.append("keep the old image as a revision: %s.img.%s from %s.img" % (REL, revision, REL))
    if precache:
        texts.append("remove %s-precache.img (the precache is about to go stale)" % REL)
    texts.append("commit: rename %s-import.img to %s.img" % (REL, REL))
    if keep_precache:
        texts.append("refresh precache: %s-precache.img from %s.img" % (REL, REL))
    return texts


def assert_precache_fresh(pool, vid=VID):
    clean, precache = image(pool, vid), image(pool, vid, "precache")
    st_clean, st_pre = os.stat(clean), os.stat(precache)
    assert (st_pre.st_size, st_pre.st_mtime_ns) == (st_clean.st_size, st_clean.st_mtime_ns)
    assert st_pre.st_ino != st_clean.st_ino
    assert mode_of(precache) == 0o600
    assert same_bytes(clean, precache)


# ------------------------------------------------------------ one shot, from a file

def test_import_file_on_each_filesystem(any_fs_dir, run_module, request):
    """Clean gets the source's bytes; larger size pads with holes, smaller cuts; old clean kept as revision."""
    kind = fs_kind(request, "any_fs_dir")
    pool = make_pool(any_fs_dir)
    old_data = make_volume(pool, VID)
    src = any_fs_dir / "source.img"
    src_data = make_source(src)
    src_facts = listing(any_fs_dir)["source.img"]
    clean = image(pool)

    result = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src=str(src)), True)
    # What was done, in plain words, and how the data got there.
    assert [strip_how(text) for text in result["actions"]] == (
        [stage_text(src, SOURCE_SIZE)] + commit_texts("1@" + T0_STAMP))
    assert result["actions"][0].startswith(stage_text(src, SOURCE_SIZE) + how_suffix(kind)), result["actions"]
    assert result["import_image"] is None
    # The clean image: the source's bytes, a new inode, 0600; on ext4 a sparse copy no bigger than the source.
    assert clean.read_bytes() == src_data
    assert os.stat(clean).st_ino != os.stat(src).st_ino
    assert mode_of(clean) == 0o600
    assert allocated(clean) <= allocated(src)
    if kind == "ext4":
        assert allocated(clean) < 8 * MIB  # holes stayed holes
    # The old clean image became revision 1, named from its mtime, with its bytes.
    assert revisions(pool) == {1: vm_dir_of(pool) / ("private.img.1@" + T0_STAMP)}
    assert revisions(pool)[1].read_bytes() == old_data
    assert mode_of(revisions(pool)[1]) == 0o600
    assert_precache_fresh(pool)
    assert result["volume"] == {
        "vid": VID, "image": str(clean), "size": SOURCE_SIZE, "usage": allocated(clean),
        "revisions": [{"id": 1, "timestamp": T0_STAMP}], "state": "stopped", "in_use": False,
        "in_use_reasons": [], "precache": "fresh", "pins": [],
    }
    # The source is read, never changed.
    assert listing(any_fs_dir)["source.img"] == src_facts and src.read_bytes() == src_data
    assert_no_leftovers(pool, any_fs_dir)

    # The same import again: nothing to do, the clean inode stays.
    before = snapshot(pool)
    again = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src=str(src)), False)
    assert again["actions"] == []
    assert snapshot(pool) == before

    # A larger size: the source's data, then zeros (holes) up to the size.
    first_clean_mtime = os.stat(clean).st_mtime
    larger = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src=str(src), size="40M"), True)
    assert larger["actions"][0].startswith(stage_text(src, 40 * MIB) + how_suffix(kind)), larger["actions"]
    assert larger["volume"]["size"] == 40 * MIB == os.path.getsize(clean)
    data = clean.read_bytes()
    assert data[:SOURCE_SIZE] == src_data and data[SOURCE_SIZE:] == bytes(8 * MIB)
    assert allocated(clean) <= allocated(src)
    # revisions_to_keep=1 (default): revision 2 (the previous clean) replaces revision 1.
    assert sorted(revisions(pool)) == [2]
    assert revisions(pool)[2].name == "private.img.2@" + stamp(first_clean_mtime)
    assert revisions(pool)[2].read_bytes() == src_data
    assert_precache_fresh(pool)

    # A smaller size cuts the data off.
    smaller = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src=str(src), size=16 * MIB), True)
    assert smaller["volume"]["size"] == 16 * MIB
    assert clean.read_bytes() == src_data[:16 * MIB]
    assert revision_ids(smaller) == [3] and revisions(pool)[3].read_bytes() == data
    assert_precache_fresh(pool)
    assert listing(any_fs_dir)["source.img"] == src_facts
    assert_no_leftovers(pool, any_fs_dir)


def test_same_data_is_no_change_and_force_commits_anyway(btrfs_dir, run_module):
    """A source equal to clean (a plain copy, not a reflink) changes nothing; force makes a new revision."""
    pool = make_pool(btrfs_dir)
    clean_data = make_volume(pool, VID, size=8 * MIB)
    src = btrfs_dir / "copy.img"
    src.write_bytes(clean_data)  # same bytes, fully allocated: equal content, different extents
    before = snapshot(pool)
    clean_ino = os.stat(image(pool)).st_ino

    same = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src=str(src)), False)
    assert same["actions"] == [] and same["import_image"] is None
    assert snapshot(pool) == before and os.stat(image(pool)).st_ino == clean_ino

    forced = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src=str(src), force=True), True)
    assert os.stat(image(pool)).st_ino != clean_ino
    assert image(pool).read_bytes() == clean_data
    assert revision_ids(forced) == [1] and revisions(pool)[1].read_bytes() == clean_data
    assert_no_leftovers(pool, btrfs_dir)


def test_import_into_a_new_volume_clears_leftovers(btrfs_dir, run_module):
    """A volume that does not exist is created by the import; an earlier volume's leftovers go first."""
    pool = make_pool(btrfs_dir)
    vm_dir = pool / "appvms" / "work"
    vm_dir.mkdir()
    stale_revision = vm_dir / ("private.img.4@" + T0_STAMP)
    put_file(stale_revision, MIB, [(0, 4096)], seed=5)
    put_file(vm_dir / "private-precache.img", MIB, [(0, 4096)], seed=6)
    put_file(vm_dir / "firewall.xml", 10, [(0, 10)], seed=7)  # qubesd's own file: never touched
    other_facts = listing(vm_dir)["firewall.xml"]
    src = btrfs_dir / "source.img"
    src_data = make_source(src)

    result = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src=str(src)), True)
    assert image(pool).read_bytes() == src_data
    assert revisions(pool) == {} and result["volume"]["revisions"] == []
    assert sorted(os.listdir(vm_dir)) == ["firewall.xml", "private-precache.img", "private.img"]
    assert listing(vm_dir)["firewall.xml"] == other_facts
    assert_precache_fresh(pool)
    assert any("leftover" in text and "private.img.4@" in text for text in result["actions"]), result["actions"]
    assert_no_leftovers(pool, btrfs_dir)


# ------------------------------------------------------------ one shot, from a volume

def test_import_from_another_volume_of_the_pool(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    src_vid = "vm-templates/debian/root"
    (pool / "vm-templates" / "debian").mkdir()
    src_data = make_volume(pool, src_vid, size=16 * MIB, seed=3)
    src_before = snapshot(pool / "vm-templates")

    # Into a volume that does not exist yet: created, no revision.
    result = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src_vid=src_vid, size="20M"), True)
    clean = image(pool)
    assert result["actions"][0] == "create VM directory appvms/work"
    assert result["actions"][1].endswith("(reflink)"), result["actions"]
    assert "volume %s" % src_vid in result["actions"][1]
    data = clean.read_bytes()
    assert data == src_data + bytes(4 * MIB)
    assert os.stat(clean).st_ino != os.stat(image(pool, src_vid)).st_ino and mode_of(clean) == 0o600
    assert result["volume"]["size"] == 20 * MIB and result["volume"]["revisions"] == []
    assert_precache_fresh(pool)
    # The source volume is untouched.
    assert snapshot(pool / "vm-templates") == src_before

    # The same import again: nothing to do.
    before = snapshot(pool)
    again = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src_vid=src_vid, size="20M"), False)
    assert again["actions"] == [] and snapshot(pool) == before
    assert_no_leftovers(pool)


def test_import_from_a_volume_of_another_pool_and_a_file_on_another_filesystem(cross_fs_pair, run_module):
    """Sources on XFS, pool on btrfs: the clone fails with EXDEV for real, the data is copied sparsely."""
    btrfs, xfs = cross_fs_pair
    pool = make_pool(btrfs)
    old_data = make_volume(pool, VID, size=4 * MIB)
    other_pool = make_pool(xfs)
    src_vid = "appvms/other/private"
    (other_pool / "appvms" / "other").mkdir()
    src_data = make_volume(other_pool, src_vid, size=12 * MIB, seed=9)
    other_before = snapshot(other_pool)

    result = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src_vid=src_vid,
                                  src_pool=str(other_pool)), True)
    assert "(sparse copy" in result["actions"][0], result["actions"]
    assert image(pool).read_bytes() == src_data
    assert allocated(image(pool)) <= allocated(image(other_pool, src_vid))
    assert revisions(pool)[1].read_bytes() == old_data
    assert snapshot(other_pool) == other_before
    assert_precache_fresh(pool)

    src = xfs / "source.img"
    file_data = make_source(src)
    result = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src=str(src)), True)
    assert result["actions"][0] == stage_text(src, SOURCE_SIZE) + " (sparse copy: reflink not possible here)"
    assert image(pool).read_bytes() == file_data
    assert allocated(image(pool)) <= allocated(src)
    assert revision_ids(result) == [2]

    # fallback: never across filesystems: EXDEV is not a licence to copy.
    before = snapshot(pool)
    make_source(src, seed=12)
    refused = run_module("reflink_import", pool=str(pool), vid=VID, src=str(src), fallback="never")
    assert_refused(refused, "fallback: never", "EXDEV")
    assert snapshot(pool) == before
    assert_no_leftovers(pool, other_pool, xfs)


def test_import_from_a_block_device(btrfs_dir, run_module):
    """A block device (a read-only loop device over a file): copied (no reflink from a device), same bytes."""
    pool = make_pool(btrfs_dir)
    old_data = make_volume(pool, VID)
    backing = btrfs_dir / "disk.img"
    src_data = make_source(backing)
    with read_only_loop(backing) as device:
        result = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src=device), True)
        assert result["actions"][0] == stage_text(device, SOURCE_SIZE) + " (sparse copy: reflink not possible here)"
        assert image(pool).read_bytes() == src_data
        assert result["volume"]["size"] == SOURCE_SIZE
        # A device has no holes to look for: all-zero MiB chunks are left out instead.
        assert allocated(image(pool)) <= 6 * MIB
        assert revisions(pool)[1].read_bytes() == old_data
        assert_precache_fresh(pool)
        assert_no_leftovers(pool, btrfs_dir)

        # The same import again changes nothing (and must not push the real old image out of the revisions).
        before = snapshot(pool)
        again = run_module("reflink_import", pool=str(pool), vid=VID, src=device)
    assert not again.get("failed"), again
    assert (again["changed"], again["actions"]) == (False, []), again["actions"]
    assert snapshot(pool) == before


# ------------------------------------------------------------ clearing

def test_size_alone_clears_the_volume(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    old_data = make_volume(pool, VID, size=4 * MIB)

    result = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, size="8M"), True)
    assert [strip_how(text) for text in result["actions"]] == (
        ["stage an empty (all-zero) sparse image %s-import.img of %d bytes" % (REL, 8 * MIB)]
        + commit_texts("1@" + T0_STAMP))
    clean = image(pool)
    assert clean.read_bytes() == bytes(8 * MIB)
    assert allocated(clean) == 0 and result["volume"]["usage"] == 0
    assert revisions(pool)[1].read_bytes() == old_data
    assert_precache_fresh(pool)

    # Clearing an already clear volume changes nothing.
    before = snapshot(pool)
    assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, size=8 * MIB), False)
    assert snapshot(pool) == before
    assert_no_leftovers(pool)


# ------------------------------------------------------------ checksum

def test_checksum_that_matches(btrfs_dir, run_module):
    """The checksum is of the image at its final size (tail zeros included)."""
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    src = btrfs_dir / "source.img"
    src_data = make_source(src)
    digest = sha256_file(src, size=40 * MIB)

    result = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src=str(src), size="40M",
                                  checksum="sha256:" + digest.upper()), True)
    assert "verify that %s-import.img has sha256 %s" % (REL, digest) in result["actions"], result["actions"]
    assert image(pool).read_bytes() == src_data + bytes(8 * MIB)
    assert_no_leftovers(pool, btrfs_dir)


def test_checksum_mismatch_leaves_the_volume_alone(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    old_data = make_volume(pool, VID)
    src = btrfs_dir / "source.img"
    src_data = make_source(src)
    wrong = sha256_file(src)[::-1]
    before = snapshot(pool)

    result = run_module("reflink_import", pool=str(pool), vid=VID, src=str(src), checksum="sha256:" + wrong)
    assert result.get("failed") is True, result
    assert "checksum mismatch" in result["msg"] and wrong in result["msg"], result["msg"]
    assert sha256_file(src) in result["msg"]
    # The clean image byte for byte, every file of the pool as it was (a staged file came and went).
    assert image(pool).read_bytes() == old_data
    assert files_only(snapshot(pool)) == files_only(before)
    assert not image(pool, kind="import").exists()
    assert src.read_bytes() == src_data
    assert_no_leftovers(pool, btrfs_dir)


def test_checksum_is_checked_even_when_the_data_is_already_there(btrfs_dir, run_module):
    """A wrong checksum must not pass just because the clean image already holds the source's data."""
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    src = btrfs_dir / "source.img"
    make_source(src)
    assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src=str(src)), True)
    before = snapshot(pool)
    wrong = "0" * 64
    result = run_module("reflink_import", pool=str(pool), vid=VID, src=str(src), checksum="sha256:" + wrong)
    assert snapshot(pool) == before
    assert result.get("failed") is True and "checksum mismatch" in result.get("msg", ""), result
    assert wrong in result["msg"] and sha256_file(src) in result["msg"], result["msg"]
    assert "check the source and the checksum" in result["msg"], result["msg"]


def test_bad_checksum_syntax_is_refused(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    src = btrfs_dir / "source.img"
    make_source(src)
    before = snapshot(pool)
    result = run_module("reflink_import", pool=str(pool), vid=VID, src=str(src), checksum="md5:abc")
    assert_refused(result, "checksum", "sha256")
    assert snapshot(pool) == before
    assert_no_leftovers(pool, btrfs_dir)


# ------------------------------------------------------------ fallback

def test_fallback_never_with_a_real_pool_on_ext4_and_errno_default_copies(ext4_dir, run_module):
    """End to end with reflink_pool and reflink_volume: fallback never fails and leaves nothing; the default copies."""
    pool = ext4_dir / "pool"
    made = assert_ok(run_module("reflink_pool", path=str(pool), require_reflink=False), True)
    assert made["pool"]["reflink"] is False and made["pool"]["fstype"] == "ext4"
    assert_ok(run_module("reflink_volume", pool=str(pool), vid=VID, size="32M"), True)
    src = ext4_dir / "source.img"
    src_data = make_source(src)
    before = snapshot(pool)

    old_data = image(pool).read_bytes()
    refused = run_module("reflink_import", pool=str(pool), vid=VID, src=str(src), fallback="never")
    assert_refused(refused, "fallback: never", "cannot reflink")
    assert snapshot(pool) == before  # not even a tempfile came and went: nothing was named
    assert image(pool).read_bytes() == old_data
    assert_no_leftovers(pool, ext4_dir)

    copied = assert_ok(run_module("reflink_import", pool=str(pool), vid=VID, src=str(src)), True)
    assert "(sparse copy" in copied["actions"][0]
    assert image(pool).read_bytes() == src_data
    assert allocated(image(pool)) <= allocated(src)
    assert revision_ids(copied) == [1] and allocated(revisions(pool)[1]) == 0
    assert_no_leftovers(pool, ext4_dir)


# ------------------------------------------------------------ two phases

def test_two_phases_begin_write_commit(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    old_data = make_volume(pool, VID)
    staged = image(pool, kind="import")
    args = {"pool": str(pool), "vid": VID}

    begun = assert_ok(run_module("reflink_import", state="begin", size="24M", **args), True)
    assert begun["import_image"] == str(staged)
    assert os.path.getsize(staged) == 24 * MIB and allocated(staged) == 0 and mode_of(staged) == 0o600
    assert staged.read_bytes() == bytes(24 * MIB)
    assert len(journals(pool)) == 1 and journals(pool)[0].endswith(".json")
    assert mode_of(pool / ".reflink" / "imports" / journals(pool)[0]) == 0o600
    # The volume itself is untouched until the commit.
    assert image(pool).read_bytes() == old_data
    assert begun["volume"]["size"] == 4 * MIB and begun["volume"]["precache"] == "fresh"
    assert_no_leftovers(pool, imports=[staged])

    # begin again: the same import, nothing to do.
    before = snapshot(pool)
    again = assert_ok(run_module("reflink_import", state="begin", size=24 * MIB, **args), False)
    assert again["import_image"] == str(staged) and again["actions"] == []
    assert snapshot(pool) == before

    # Another program writes the data.
    with open(staged, "r+b") as handle:
        handle.seek(3 * MIB)
        handle.write(b"written by another program" * 1000)
    wanted = staged.read_bytes()
    staged_ino = os.stat(staged).st_ino

    committed = assert_ok(run_module("reflink_import", state="commit", **args), True)
    assert committed["import_image"] is None and not staged.exists()
    assert image(pool).read_bytes() == wanted
    assert os.stat(image(pool)).st_ino == staged_ino  # renamed into place, not copied
    assert revisions(pool)[1].read_bytes() == old_data
    assert committed["volume"]["size"] == 24 * MIB and revision_ids(committed) == [1]
    assert_precache_fresh(pool)

    # commit again: already done.
    before = snapshot(pool)
    recommitted = assert_ok(run_module("reflink_import", state="commit", **args), False)
    assert recommitted["actions"] == [] and recommitted["import_image"] is None
    assert snapshot(pool) == before
    assert_no_leftovers(pool)


def test_two_phases_into_a_new_volume_with_size_and_checksum_at_commit(btrfs_dir, run_module):
    """The writer wrote past the begun size: commit wants size; with it (and a checksum) the volume is created."""
    pool = make_pool(btrfs_dir)
    vid = "appvms/fresh/private"
    args = {"pool": str(pool), "vid": vid}
    staged = image(pool, vid, "import")

    begun = assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    assert begun["actions"][0] == "create VM directory appvms/fresh"
    assert begun["volume"]["state"] == "absent" and begun["import_image"] == str(staged)
    with open(staged, "r+b") as handle:
        handle.seek(9 * MIB)
        handle.write(b"tail" * 1024)
    assert os.path.getsize(staged) == 9 * MIB + 4096
    before = snapshot(pool)

    grown = run_module("reflink_import", state="commit", **args)
    assert_refused(grown, "begun with %d bytes" % (8 * MIB), "state=commit with size", "state=abort")
    assert snapshot(pool) == before

    wanted = staged.read_bytes() + bytes(3 * MIB - 4096)
    digest = sha256_file(staged, size=12 * MIB)
    committed = assert_ok(run_module("reflink_import", state="commit", size="12M", checksum="sha256:" + digest,
                                     **args), True)
    assert image(pool, vid).read_bytes() == wanted
    assert committed["volume"]["size"] == 12 * MIB and committed["volume"]["revisions"] == []
    assert committed["volume"]["state"] == "stopped"
    assert_precache_fresh(pool, vid)
    assert_no_leftovers(pool)


def test_two_phases_begin_abort(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID}
    before = files_only(snapshot(pool))

    assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    assert image(pool, kind="import").exists() and journals(pool)
    aborted = assert_ok(run_module("reflink_import", state="abort", **args), True)
    assert aborted["import_image"] is None
    assert not image(pool, kind="import").exists() and journals(pool) == []
    assert files_only(snapshot(pool)) == before

    again = snapshot(pool)
    assert_ok(run_module("reflink_import", state="abort", **args), False)
    assert snapshot(pool) == again
    assert_no_leftovers(pool)


def test_two_phase_refusals(btrfs_dir, run_module):
    """commit without begin; commit after the import image vanished; begin with another size."""
    pool = make_pool(btrfs_dir)
    old_data = make_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID}
    before = snapshot(pool)

    no_begin = run_module("reflink_import", state="commit", **args)
    assert_refused(no_begin, "begin")
    assert snapshot(pool) == before

    assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    one_shot = run_module("reflink_import", size="8M", force=True, **args)
    assert_refused(one_shot, "begun", "state=commit", "state=abort")
    other_size = run_module("reflink_import", state="begin", size="16M", **args)
    assert_refused(other_size, "begun", "state=commit", "state=abort")
    assert os.path.getsize(image(pool, kind="import")) == 8 * MIB

    # qubesd deletes an uncommitted import image when the VM starts.
    os.unlink(image(pool, kind="import"))
    begun_state = snapshot(pool)
    gone = run_module("reflink_import", state="commit", **args)
    assert_refused(gone, "gone", "begin again")
    assert snapshot(pool) == begun_state
    assert image(pool).read_bytes() == old_data
    assert_no_leftovers(pool)


def test_commit_refuses_an_import_image_that_is_not_the_one_begun(btrfs_dir, run_module):
    """The journal must let commit check that the import is the one that was begun.

    The begun image vanished (qubesd deletes it when the VM starts) and qubesd's own
    import (qvm-volume import) made a new one of the same size, which it is still
    filling: committing that would put qubesd's half-written data into the volume.
    """
    pool = make_pool(btrfs_dir)
    old_data = make_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID}
    assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    staged = image(pool, kind="import")
    os.unlink(staged)
    put_file(staged, 8 * MIB, [(0, 4096)], seed=99)  # a new inode: not the image begun
    before = snapshot(pool)

    result = run_module("reflink_import", state="commit", **args)
    assert image(pool).read_bytes() == old_data, "a foreign import image was committed"
    assert snapshot(pool) == before
    assert_refused(result, "begin")


# ------------------------------------------------------------ refused sources

def _run_with_deadline(run_module, seconds, unblock, **args):
    """run_module in a thread; if it is not done after ``seconds``, call unblock() and fail."""
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=run_module("reflink_import", **args)))
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        unblock()
        thread.join()
        pytest.fail("reflink_import hung on the source (still running after %d s)" % seconds)
    return outcome["result"]


@pytest.mark.parametrize("kind", ["directory", "fifo", "socket", "chardev", "missing", "missing_vid", "own_clean",
                                  "own_vid", "src_with_begin"])
def test_refused_sources(btrfs_dir, run_module, kind):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    src = btrfs_dir / ("source-" + kind)
    args = {"pool": str(pool), "vid": VID}
    server = None
    if kind == "directory":
        src.mkdir()
        args["src"], words = str(src), ("directory",)
    elif kind == "fifo":
        os.mkfifo(src)
        args["src"], words = str(src), ("fifo",)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(src))
        server.listen(1)
        args["src"], words = str(src), ("socket",)
    elif kind == "chardev":
        args["src"], words = "/dev/zero", ("character device",)
    elif kind == "missing":
        args["src"], words = str(src), ("does not exist",)
    elif kind == "missing_vid":
        args["src_vid"], words = "appvms/nothing/private", ("appvms/nothing/private", "no clean image")
    elif kind == "src_with_begin":
        make_source(src)
        args.update(src=str(src), state="begin", size="8M")
        words = ("state=present",)
    elif kind == "own_clean":
        args["src"], words = str(image(pool)), ("own image",)
    else:
        args["src_vid"], words = VID, ("being imported into",)
    before = snapshot(pool)

    def unblock():
        fd = os.open(src, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)

    try:
        result = _run_with_deadline(run_module, 60, unblock, **args)
    finally:
        if server is not None:
            server.close()
    msg = assert_refused(result, *words)
    if "src" in args and kind != "src_with_begin":
        assert args["src"] in msg
    assert snapshot(pool) == before
    assert_no_leftovers(pool, btrfs_dir)


def test_a_file_on_another_btrfs_subvolume_with_the_same_inode_number_is_not_the_volume(btrfs_dir, run_module):
    """Inode numbers are per filesystem (per btrfs subvolume): only (st_dev, st_ino) names the clean image.

    On a Fedora-style dom0 /home is another btrfs subvolume than /var/lib/qubes, and
    both number their inodes from 256 up.
    """
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    clean_st = os.stat(image(pool))
    subvolume = btrfs_dir / "home"
    subprocess.run(["btrfs", "-q", "subvolume", "create", str(subvolume)], check=True)
    try:
        src = subvolume / "source.img"
        for _attempt in range(1000000):  # btrfs gives each new file the subvolume's highest inode number + 1
            fd = os.open(src, os.O_CREAT | os.O_WRONLY, 0o600)
            ino = os.fstat(fd).st_ino
            os.close(fd)
            if ino >= clean_st.st_ino:
                break
            os.unlink(src)
        assert os.stat(src).st_ino == clean_st.st_ino and os.stat(src).st_dev != clean_st.st_dev
        src_data = put_file(src, 4 * MIB, [(0, 65536)], seed=77)
        result = run_module("reflink_import", pool=str(pool), vid=VID, src=str(src))
        assert not result.get("failed"), result["msg"]
        assert result["changed"] is True and image(pool).read_bytes() == src_data
        assert_no_leftovers(pool)
    finally:
        subprocess.run(["btrfs", "-q", "subvolume", "delete", str(subvolume)], check=False, capture_output=True)


def test_src_vid_equal_to_the_volume_through_another_pool_path(btrfs_dir, run_module):
    """The same pool named differently (a symlink) is still the volume itself."""
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    alias = btrfs_dir / "alias"
    alias.symlink_to(pool)
    before = snapshot(pool)
    result = run_module("reflink_import", pool=str(pool), vid=VID, src_vid=VID, src_pool=str(alias))
    assert_refused(result, "being imported into")
    assert snapshot(pool) == before
    assert_no_leftovers(pool)


# ------------------------------------------------------------ in use

def test_refused_while_a_dirty_image_exists(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    start_volume(pool, VID)
    src = btrfs_dir / "source.img"
    make_source(src)
    before = snapshot(pool)
    for args in ({"src": str(src)}, {"state": "begin", "size": "8M"}):
        result = run_module("reflink_import", pool=str(pool), vid=VID, **args)
        assert_refused(result, "in use", "private-dirty.img")
        assert snapshot(pool) == before
    assert_no_leftovers(pool, btrfs_dir)


def test_refused_while_a_loop_device_is_attached(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    src = btrfs_dir / "source.img"
    make_source(src)
    before = snapshot(pool)
    with read_only_loop(image(pool)) as device:
        result = run_module("reflink_import", pool=str(pool), vid=VID, src=str(src))
        assert_refused(result, "in use", device)
        assert snapshot(pool) == before
    assert_no_leftovers(pool, btrfs_dir)


@pytest.mark.serial
def test_refused_while_qubesd_says_the_volume_is_running(btrfs_dir, run_module):
    """qubesd's /var/run/qubes/volume-running-<pool>:<escaped vid>, whatever the pool's Qubes name."""
    pool = make_pool(btrfs_dir)
    vid = "appvms/qrun-%d/private" % os.getpid()  # unique: the file is global to the host
    make_volume(pool, vid)
    before = snapshot(pool)
    with qubes_running_file("some-pool:appvms-qrun--%d-private" % os.getpid()):
        result = run_module("reflink_import", pool=str(pool), vid=vid, size="8M")
        assert_refused(result, "in use", "running-state file")
    assert snapshot(pool) == before
    assert_no_leftovers(pool)


def test_commit_refused_while_a_loop_device_is_attached(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID}
    assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    before = snapshot(pool)
    with read_only_loop(image(pool)) as device:
        result = run_module("reflink_import", state="commit", **args)
        assert_refused(result, "in use", device)
        assert snapshot(pool) == before
    assert_ok(run_module("reflink_import", state="abort", **args), True)
    assert_no_leftovers(pool)


# ------------------------------------------------------------ revision numbering

def test_revision_numbers_across_pruning(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    clean = image(pool)
    make_volume(pool, VID, revisions=[(2, T0 - 300), (5, T0 - 200), (7, T0 - 100)])
    args = {"pool": str(pool), "vid": VID}
    history = []  # (revisions_to_keep, ids after)
    # (revisions_to_keep, the ids expected after the import): numbers go on from the highest one,
    # restart at 1 only when none is left; -1 removes every revision (Qubes removes only the oldest).
    steps = [(3, [5, 7, 8]), (1, [9]), (0, []), (3, [1]), (3, [1, 2]), (-1, [])]
    for number, (keep, expected) in enumerate(steps):
        previous = clean.read_bytes()
        previous_mtime = os.stat(clean).st_mtime
        src = btrfs_dir / ("source-%d.img" % number)
        data = put_file(src, 2 * MIB, [(number * 4096, 8192)], seed=100 + number)
        result = assert_ok(run_module("reflink_import", src=str(src), revisions_to_keep=keep, **args), True)
        history.append((keep, revision_ids(result)))
        assert revision_ids(result) == expected, history
        assert sorted(revisions(pool)) == expected, history
        assert clean.read_bytes() == data
        if keep > 0:
            newest = revisions(pool)[expected[-1]]
            assert newest.name == "private.img.%d@%s" % (expected[-1], stamp(previous_mtime))
            assert newest.read_bytes() == previous
        if keep == -1:
            assert not image(pool, kind="precache").exists()
            assert result["volume"]["precache"] == "missing"
            assert not any("precache" in text and "refresh" in text for text in result["actions"])
        else:
            assert_precache_fresh(pool)
    assert_no_leftovers(pool, btrfs_dir)


# ------------------------------------------------------------ check mode

def test_check_mode_one_shot_changes_nothing_and_predicts_the_real_run(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID, revisions=[(1, T0 - 100)])
    src = btrfs_dir / "source.img"
    make_source(src)
    args = {"pool": str(pool), "vid": VID, "src": str(src), "size": "40M"}
    before = listing(pool)  # no .reflink/ yet: check mode must not even create the lock files

    check = assert_ok(run_module("reflink_import", check=True, diff=True, **args), True)
    assert listing(pool) == before
    real = assert_ok(run_module("reflink_import", diff=True, **args), True)
    assert set(check) == set(real)
    assert check["actions"] == real["actions"]   # "(reflink)" too: check mode probes the source
    assert check["import_image"] is None is real["import_image"]
    assert set(real["volume"]) >= VOLUME_KEYS
    assert check["volume"] == real["volume"]
    assert check["diff"] == real["diff"]
    assert real["diff"]["after"]["revisions"] == [2]
    assert_no_leftovers(pool, btrfs_dir)


def test_check_mode_two_phases(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    make_volume(pool, VID)
    args = {"pool": str(pool), "vid": VID}
    before = listing(pool)

    check = assert_ok(run_module("reflink_import", check=True, state="begin", size="8M", **args), True)
    assert listing(pool) == before
    real = assert_ok(run_module("reflink_import", state="begin", size="8M", **args), True)
    assert set(check) == set(real) and check["actions"] == real["actions"]
    assert check["import_image"] == real["import_image"] == str(image(pool, kind="import"))

    begun = snapshot(pool)
    for state in ("commit", "abort"):
        check = assert_ok(run_module("reflink_import", check=True, state=state, **args), True)
        assert snapshot(pool) == begun, state
        assert check["import_image"] is None, state
    assert_ok(run_module("reflink_import", state="abort", **args), True)
    assert_no_leftovers(pool)

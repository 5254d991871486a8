# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bad input, table-driven: every row fails with a clear message and changes nothing.

"Changes nothing" is checked on the pool's full listing (mode, inode, size,
mtime of every entry, the pool directory itself included) and on a directory
outside the pool that planted symlinks point to.  The one thing left out is
``.reflink/locks/``: a task that takes its lock before it finds the input bad
creates the lock file of that volume, and lock files are never removed by
design (removing one while another process waits on it would split the lock).

What tests/modules already covers is not repeated here: bad sizes of an
existing volume, the vids appvms/../../etc, appvms/../etc, an absolute vid and
a bad prefix, a symlinked VM directory and clean image, bad revision ids
(9, 0, -1, "abc", true), and sources that are a directory, a FIFO, a socket, a
character device, missing, the volume's own clean image or its own vid.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import socket
import subprocess

import pytest

import reliability_helpers as rh
from module_helpers import T0, copy_file, put_file, start_volume

SIZE = 4 * rh.MIB
VID = "appvms/work/private"

BAD_VIDS = [
    "", "appvms", "appvms/work", "appvms/work/private/x", "/appvms/work/private", "appvms//private",
    "appvms/work/", "appvms/./private", "appvms/../private", "appvms/work/..", "appvms/work/.",
    "appvms/.hidden/private", "appvms/-rf/private", "appvms/work/-x", "appvms/wo rk/private",
    "appvms/work/pri\nvate", "appvms/w\x00rk/private", "appvms/%s/private" % ("a" * 129),
    "appvms/work/private.img", "appvms/work/root-dirty", "appvms/work/root-import", "appvms/work/root-precache",
    "APPVMS/work/private", "appvms/wörk/private", "appvms/work/private~abcd1234", "appvms/work/p*",
    "vm-templates/../appvms/work", "appvms\\work\\private", ".reflink/locks/x",
]


def make_pool(base):
    pool = base / "pool"
    for path in (pool, pool / "appvms", pool / "vm-templates"):
        path.mkdir(mode=0o755)
    return pool


def make_volume(pool, vid=VID, revisions=((1, T0 - 2 * 86400), (2, T0 - 86400))):
    vm_dir = pool / os.path.dirname(vid)
    volume = os.path.basename(vid)
    vm_dir.mkdir(exist_ok=True)
    data = put_file(vm_dir / (volume + ".img"), SIZE, [(0, 65536), (SIZE - 8192, 8192)], seed=1, mtime=T0)
    copy_file(vm_dir / (volume + ".img"), vm_dir / (volume + "-precache.img"))
    for number, mtime in revisions:
        put_file(vm_dir / ("%s.img.%d@%s" % (volume, number, rh.stamp(mtime))), SIZE, [(0, 4096)],
                 seed=1000 + number, mtime=mtime)
    return data


_LOCKS = re.compile(r"(\A|/)\.reflink/locks(/|\Z)")


def strict_listing(root):
    """rh.listing() without .reflink/locks (see the module docstring)."""
    return {name: facts for name, facts in rh.listing(root).items() if not _LOCKS.search(name)}


def prime(pool, vids=(VID,)):
    """Make .reflink/locks/ and the lock files, as a first task would, so that the listing does not see them come."""
    locks = pool / ".reflink" / "locks"
    locks.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(pool / ".reflink", 0o700)
    for name in ["pool.lock"] + [vid.replace("-", "--").replace("/", "-") + ".lock" for vid in vids]:
        (locks / name).touch(mode=0o600)


def run_isolated(base, rows, make=None):
    """Run each row on a pool of its own (rows that are wrongly accepted must not disturb the others).

    ``rows`` use the string "POOL" for their pool; returns the problems (check_rows and listing diffs).
    """
    make = make or make_volume
    cases = []
    for index, (module, args, pattern) in enumerate(rows):
        root = base / ("row%d" % index)
        root.mkdir()
        pool = make_pool(root)
        make(pool)
        prime(pool, (VID, "appvms/new/private"))
        resolved = {key: (value.replace("POOL", str(pool)) if isinstance(value, str) else value)
                    for key, value in args.items()}
        cases.append(((module, resolved, pattern), root, strict_listing(root)))
    results = rh.run_many([(module, args) for (module, args, _p), _r, _b in cases])
    problems = check_rows([row for row, _r, _b in cases], results)
    for (row, root, before) in cases:
        problems += ["%s %r changed: %s" % (row[0], {k: v for k, v in row[1].items() if k != "pool"}, item)
                     for item in rh.diff_listings(before, strict_listing(root))]
    return problems


def check_rows(rows, results):
    """Each row (module, args, pattern) failed, changed nothing it reports, and its msg matches pattern."""
    problems = []
    for (module, args, pattern), result in zip(rows, results, strict=True):
        shown = {k: v for k, v in args.items() if k != "pool"}
        if pattern is None and not result["failed"]:
            if result.get("changed"):
                problems.append("%s %r changed something: %s" % (module, shown, result.get("actions")))
            continue
        if not result["failed"]:
            problems.append("%s %r was accepted: %s" % (module, shown, result.get("actions")))
            continue
        msg = result.get("msg", "")
        if result.get("status", {}).get("exit", 1) != 1 or "Traceback" in result.get("output", ""):
            lines = [line for line in (result.get("output") or msg).splitlines() if line.strip()]
            problems.append("%s %r crashed instead of failing cleanly: %s" % (module, shown, lines[-1] if lines else "?"))
            continue
        if result.get("changed"):
            problems.append("%s %r failed but reports changes: %s" % (module, shown, result.get("actions")))
        if pattern is not None and not re.search(pattern, msg, re.IGNORECASE):
            problems.append("%s %r: message %r does not match %r" % (module, shown, msg, pattern))
    return problems


@pytest.fixture
def table_pool(btrfs_dir):
    pool = make_pool(btrfs_dir)
    make_volume(pool)
    make_volume(pool, "vm-templates/tpl/root", revisions=())
    make_volume(pool, "appvms/halted/private", revisions=())
    start_volume(pool, "appvms/halted/private")
    prime(pool, (VID, "vm-templates/tpl/root"))
    return pool


def test_malformed_vids_in_every_module(table_pool, btrfs_dir, modrun):
    pool = str(table_pool)
    rows = []
    for vid in BAD_VIDS:
        rows += [
            ("reflink_volume", {"pool": pool, "vid": vid, "size": "1M"}, r"vid|name"),
            ("reflink_volume", {"pool": pool, "vid": vid, "state": "absent"}, r"vid|name"),
            ("reflink_volume", {"pool": pool, "vid": vid, "state": "stopped"}, r"vid|name"),
            ("reflink_import", {"pool": pool, "vid": vid, "size": "1M"}, r"vid|name"),
            ("reflink_import", {"pool": pool, "vid": VID, "src_vid": vid}, r"vid|name"),
            ("reflink_revert", {"pool": pool, "vid": vid}, r"vid|name"),
            ("reflink_pin", {"pool": pool, "vid": vid, "name": "keep"}, r"vid|name"),
            ("reflink_info", {"pool": pool, "vids": [VID, vid]}, r"vid|name"),
            ("reflink_gc", {"pool": pool, "vids": [vid], "min_age": 0}, r"vid|name"),
            ("reflink_gc", {"pool": pool, "keep_vids": [VID, vid], "remove_orphans": True}, r"vid|name"),
            ("reflink_dedupe", {"pool": pool, "vids": [VID, vid]}, r"vid|name"),
        ]
    before = strict_listing(btrfs_dir)
    results = rh.run_many([(module, args) for module, args, _p in rows])
    problems = check_rows(rows, results)
    problems += ["changed: %s" % item for item in rh.diff_listings(before, strict_listing(btrfs_dir))]
    assert not problems, "%d problem(s) over %d rows:\n%s" % (len(problems), len(rows), "\n".join(problems))


BAD_SIZES = ["", " ", "1.5.5G", "0x10", "1e3", "nan", "inf", "-1M", "1G1", "+5", -5, 1.5, [1], {"a": 1}, "1 PiB"]
NUMERIC = r"size|integer|number"


def test_sizes(btrfs_dir, modrun):
    """Junk, negative, zero where it makes no sense, and beyond what a file can be (off_t)."""
    rows = []
    for size in BAD_SIZES:
        rows += [
            ("reflink_volume", {"pool": "POOL", "vid": "appvms/new/private", "size": size}, NUMERIC),
            ("reflink_volume", {"pool": "POOL", "vid": VID, "size": size}, NUMERIC),
            ("reflink_import", {"pool": "POOL", "vid": VID, "size": size}, NUMERIC),
            ("reflink_import", {"pool": "POOL", "vid": "appvms/new/private", "state": "begin", "size": size}, NUMERIC),
        ]
    for size in (2 ** 64, "9000000T", str(2 ** 63)):
        rows += [
            ("reflink_volume", {"pool": "POOL", "vid": "appvms/new/private", "size": size}, r"too large|size"),
            ("reflink_volume", {"pool": "POOL", "vid": VID, "size": size}, r"too large|size"),
            ("reflink_import", {"pool": "POOL", "vid": VID, "size": size, "src": "POOL/appvms/work/private.img.1@%s"
                                % rh.stamp(T0 - 2 * 86400)}, r"too large|size"),
            ("reflink_import", {"pool": "POOL", "vid": "appvms/new/private", "state": "begin", "size": size},
             r"too large|size"),
        ]
    rows += [
        ("reflink_volume", {"pool": "POOL", "vid": "appvms/new/private", "size": 0}, r"size|zero|empty"),
        ("reflink_volume", {"pool": "POOL", "vid": "appvms/new/private", "size": "0M"}, r"size|zero|empty"),
        ("reflink_volume", {"pool": "POOL", "vid": VID, "size": 0}, r"more than 0 bytes"),
        ("reflink_import", {"pool": "POOL", "vid": "appvms/new/private", "state": "begin", "size": 0},
         r"size|zero|empty"),
        ("reflink_import", {"pool": "POOL", "vid": VID, "size": 0, "force": True}, r"size|zero|empty"),
    ]
    problems = run_isolated(btrfs_dir, rows)
    assert not problems, "%d problem(s) over %d rows:\n%s" % (len(problems), len(rows), "\n".join(problems))


def test_size_beyond_the_maximum_file_size_of_ext4(ext4_dir, modrun):
    """ext4 (4 KiB blocks) files end at 16 TiB: 20T fails with EFBIG, clearly, and leaves nothing."""
    pool = make_pool(ext4_dir)
    make_volume(pool, revisions=())
    prime(pool, (VID,))
    rows = [
        ("reflink_volume", {"pool": str(pool), "vid": "appvms/big/private", "size": "20T"}, r"too large"),
        ("reflink_volume", {"pool": str(pool), "vid": VID, "size": "20T"}, r"too large"),
        ("reflink_import", {"pool": str(pool), "vid": "appvms/big2/private", "state": "begin", "size": "20T"},
         r"too large"),
    ]
    before = strict_listing(ext4_dir)
    results = [rh.run_direct(module, **args) for module, args, _p in rows]
    problems = check_rows(rows, results)
    problems += ["changed: %s" % item for item in rh.diff_listings(before, strict_listing(ext4_dir))]
    assert not problems, "\n".join(problems)


def test_larger_than_the_filesystem_is_a_sparse_volume(btrfs_dir, modrun):
    """A nominal size beyond the filesystem's size is accepted, as qubesd does: the image is sparse (thin)."""
    pool = make_pool(btrfs_dir)
    result = rh.run_direct("reflink_volume", pool=str(pool), vid=VID, size="100G")
    assert not result["failed"], result
    clean = pool / VID
    assert os.stat(str(clean) + ".img").st_size == 100 * 1024 ** 3
    assert os.stat(str(clean) + ".img").st_blocks == 0


def test_revision_ids_and_gc_options(table_pool, modrun):
    pool = str(table_pool)
    rows = [("reflink_revert", {"pool": pool, "vid": VID, "revision": revision}, pattern)
            for revision, pattern in [("1.5", "revision"), (" ", "revision"), ("latest2", "revision"),
                                      ([1], "revision"), ({"a": 1}, "revision"), (2 ** 70, "no revision"),
                                      ("-0", "revision"), (3, "no revision 3"), ("00", "revision")]]
    rows += [("reflink_revert", {"pool": pool, "vid": "appvms/nothing/private", "revision": 1}, r"no revision|absent|exist")]
    rows += [("reflink_gc", dict({"pool": pool}, **args), pattern) for args, pattern in [
        ({"min_age": "-1"}, "min_age"), ({"min_age": "1w"}, "min_age"), ({"min_age": -5}, "min_age"),
        ({"min_age": "abc"}, "min_age"), ({"import_max_age": "x"}, "import_max_age"),
        ({"revisions_to_keep": -2}, "revisions_to_keep"),
        ({"revisions_to_keep_per_volume": {VID: "x"}}, "revisions_to_keep_per_volume"),
        ({"revisions_to_keep_per_volume": {VID: -3}}, "revisions_to_keep"),
        ({"revisions_to_keep_per_volume": {"bad": 1}}, r"vid"),
    ]]
    rows += [("reflink_volume", {"pool": pool, "vid": VID, "state": "stopped", "revisions_to_keep": keep},
              "revisions_to_keep") for keep in (-2, "x")]
    rows += [("reflink_import", {"pool": pool, "vid": VID, "size": "4M", "revisions_to_keep": -7}, "revisions_to_keep")]
    before = strict_listing(table_pool)
    results = rh.run_many([(module, args) for module, args, _p in rows])
    problems = check_rows(rows, results)
    problems += ["changed: %s" % item for item in rh.diff_listings(before, strict_listing(table_pool))]
    assert not problems, "%d problem(s) over %d rows:\n%s" % (len(problems), len(rows), "\n".join(problems))


def test_sources(table_pool, btrfs_dir, modrun):
    pool = str(table_pool)
    clean = table_pool / (VID + ".img")
    (btrfs_dir / "link-to-clean.img").symlink_to(clean)
    os.link(clean, btrfs_dir / "hardlink-to-clean.img")
    (btrfs_dir / "dirlink").symlink_to(table_pool / "appvms" / "work")
    rows = [
        ("reflink_import", {"pool": pool, "vid": VID, "src": str(btrfs_dir / "link-to-clean.img")}, "own image"),
        ("reflink_import", {"pool": pool, "vid": VID, "src": str(btrfs_dir / "hardlink-to-clean.img")}, "own image"),
        ("reflink_import", {"pool": pool, "vid": VID, "src": str(btrfs_dir / "dirlink" / "private.img")}, "own image"),
        ("reflink_import", {"pool": pool, "vid": "appvms/halted/private",
                            "src": str(table_pool / "appvms/halted/private-dirty.img")}, r"own image|in use"),
        ("reflink_import", {"pool": pool, "vid": VID, "src_vid": "appvms/nothing/private"}, "no clean image"),
        ("reflink_import", {"pool": pool, "vid": VID, "src_vid": "appvms/x/private",
                            "src_pool": str(table_pool / "appvms")}, r"no clean image|not a pool|appvms"),
        ("reflink_import", {"pool": pool, "vid": VID, "src_vid": "appvms/x/private", "src_pool": str(btrfs_dir / "nope")},
         "does not exist"),
        ("reflink_import", {"pool": pool, "vid": VID, "src": ""}, r"src|source|exist"),
        ("reflink_import", {"pool": pool, "vid": VID, "src": str(clean), "src_vid": "appvms/x/private"},
         "mutually exclusive"),
        ("reflink_import", {"pool": pool, "vid": VID, "state": "begin", "size": "1M", "src": "/etc/hostname"},
         "state=present"),
    ]
    before = strict_listing(table_pool)
    results = rh.run_many([(module, args) for module, args, _p in rows])
    problems = check_rows(rows, results)
    problems += ["changed: %s" % item for item in rh.diff_listings(before, strict_listing(table_pool))]
    assert not problems, "%d problem(s) over %d rows:\n%s" % (len(problems), len(rows), "\n".join(problems))


def test_pools_that_are_not_pools(btrfs_dir, ext4_dir, modrun):
    (btrfs_dir / "a-file").write_text("x")
    (btrfs_dir / "no-prefix").mkdir()
    ext4_pool = make_pool(ext4_dir)
    make_volume(ext4_pool, revisions=())
    rows = []
    for path, pattern in [(btrfs_dir / "missing", "does not exist"), (btrfs_dir / "a-file", "not a directory"),
                          (btrfs_dir / "no-prefix", r"appvms|set-up pool")]:
        rows += [
            ("reflink_volume", {"pool": str(path), "vid": VID, "size": "1M"}, pattern),
            ("reflink_import", {"pool": str(path), "vid": VID, "size": "1M"}, pattern),
            ("reflink_revert", {"pool": str(path), "vid": VID}, pattern),
            ("reflink_gc", {"pool": str(path), "min_age": 0},
             None if path.name == "no-prefix" else r"does not exist|not a directory"),
            ("reflink_info", {"pool": str(path)}, None if path.name == "no-prefix" else r"does not exist|not a directory"),
        ]
    rows += [("reflink_pool", {"path": str(ext4_pool)}, r"reflink.*ext4|ext4.*reflink")]
    before = (strict_listing(btrfs_dir), strict_listing(ext4_dir))
    results = rh.run_many([(module, args) for module, args, _p in rows])
    problems = check_rows(rows, results)
    problems += ["changed: %s" % item for item in rh.diff_listings(before[0], strict_listing(btrfs_dir))]
    problems += ["changed: %s" % item for item in rh.diff_listings(before[1], strict_listing(ext4_dir))]
    assert not problems, "%d problem(s) over %d rows:\n%s" % (len(problems), len(rows), "\n".join(problems))


# ------------------------------------------------------------------ symlinks

def _plant(pool, outside, level):
    """Replace one level of the pool by a symlink into ``outside`` (which holds a look-alike)."""
    if level == "prefix":
        shutil.copytree(pool / "appvms", outside / "appvms", symlinks=True)
        shutil.rmtree(pool / "appvms")
        (pool / "appvms").symlink_to(outside / "appvms")
    elif level == ".reflink":
        shutil.copytree(pool / ".reflink", outside / ".reflink")
        shutil.rmtree(pool / ".reflink")
        (pool / ".reflink").symlink_to(outside / ".reflink")
    elif level == ".reflink/locks":
        shutil.copytree(pool / ".reflink" / "locks", outside / "locks")
        shutil.rmtree(pool / ".reflink" / "locks")
        (pool / ".reflink" / "locks").symlink_to(outside / "locks")
    elif level == "lock file":
        lock = pool / ".reflink" / "locks" / "appvms-work-private.lock"
        lock.unlink()
        (outside / "victim").write_text("do not truncate me\n")
        lock.symlink_to(outside / "victim")
    elif level == ".reflink/imports":
        (outside / "imports").mkdir()
        (outside / "imports" / "appvms-work-private.json").write_text('{"vid": "appvms/work/private", "state": "begun", "size": 1}')
        (pool / ".reflink" / "imports").symlink_to(outside / "imports")
    else:  # an image name: clean, precache, dirty, import, revision, tempfile
        name = {"precache": "private-precache.img", "import": "private-import.img", "dirty": "private-dirty.img",
                "revision": "private.img.9@2026-01-01T00:00:00Z", "tempfile": "private.img~abcd1234",
                "pin": "private.img.pin-keep"}[level]
        target = outside / ("victim-" + level)
        target.write_text("not a volume\n")
        path = pool / "appvms" / "work" / name
        if path.exists():
            path.unlink()
        path.symlink_to(target)


SYMLINK_LEVELS = ["prefix", ".reflink", ".reflink/locks", "lock file", ".reflink/imports",
                  "precache", "import", "dirty", "revision", "tempfile", "pin"]
_VOLUME_ROWS = [
    ("reflink_volume", {"size": "8M"}),
    ("reflink_volume", {"state": "absent"}),
    ("reflink_volume", {"state": "stopped"}),
    ("reflink_import", {"src": "SOURCE"}),
    ("reflink_import", {"state": "begin", "size": "1M"}),
    ("reflink_import", {"state": "abort"}),
    ("reflink_revert", {"revision": 1}),
]
_POOL_ROWS = [
    ("reflink_gc", {"min_age": 0, "revisions_to_keep": 10, "rebuild_precache": True}),
    ("reflink_info", {}),
]
# Rows that must refuse, per level: every task on the volume whose path goes through the symlink.
_MUST_REFUSE = {
    "prefix": "volume", ".reflink": "volume", ".reflink/locks": "volume", "lock file": "volume",
    ".reflink/imports": "import", "precache": "volume", "import": "volume", "dirty": "volume",
    "revision": "volume", "tempfile": "volume", "pin": "volume",
}


def _symlink_case(base, level):
    pool = make_pool(base)
    make_volume(pool)
    source = base / "source.img"
    put_file(source, SIZE, [(4096, 8192)], seed=9)
    locks = pool / ".reflink" / "locks"
    locks.mkdir(parents=True, mode=0o700)
    for name in ("pool.lock", "appvms-work-private.lock"):
        (locks / name).touch(mode=0o600)
    outside = base / "outside"
    outside.mkdir()
    _plant(pool, outside, level)
    return pool, source, outside


@pytest.mark.parametrize("level", SYMLINK_LEVELS)
def test_planted_symlink(btrfs_dir, modrun, level):
    """A symlink at one level of the pool (into a look-alike outside it), each task from a fresh copy.

    Tasks whose path goes through the symlink refuse, naming it, and change
    nothing; no task (gc and info included) reads or writes through it.
    """
    rows = [(module, dict(args, vid=VID)) for module, args in _VOLUME_ROWS] + list(_POOL_ROWS)
    cases = []
    for index, (module, args) in enumerate(rows):
        base = btrfs_dir / ("row%d" % index)
        base.mkdir()
        pool, source, outside = _symlink_case(base, level)
        resolved = {key: (str(source) if value == "SOURCE" else value) for key, value in args.items()}
        contents = {path: path.read_bytes() for path in outside.rglob("*") if path.is_file()}
        cases.append((module, dict(resolved, pool=str(pool)), pool, outside, rh.listing(outside), contents,
                      strict_listing(pool)))
    results = rh.run_many([case[:2] for case in cases])
    problems = []
    for (module, args, pool, outside, outside_before, contents, before), result in zip(cases, results, strict=True):
        shown = "%s %r" % (module, {k: v for k, v in args.items() if k not in ("vid", "pool")})
        refuse = module not in ("reflink_info", "reflink_gc") and (
            _MUST_REFUSE[level] == "volume" or module == "reflink_import")
        if "Traceback" in result.get("output", ""):
            problems.append("%s crashed: %s" % (shown, result["output"].strip().splitlines()[-1]))
        elif refuse and not result["failed"]:
            problems.append("%s went ahead through the symlink: %s" % (shown, result.get("actions")))
        elif refuse and not re.search(r"symlink|not a directory|expected a", result["msg"], re.I):
            problems.append("%s failed without naming the symlink: %s" % (shown, result["msg"]))
        if refuse:
            problems += ["%s changed the pool: %s" % (shown, item)
                         for item in rh.diff_listings(before, strict_listing(pool))]
        problems += ["%s: outside changed: %s" % (shown, item)
                     for item in rh.diff_listings(outside_before, rh.listing(outside))]
        problems += ["%s wrote through the symlink into %s" % (shown, path)
                     for path, data in contents.items() if path.read_bytes() != data]
    assert not problems, "\n".join(problems)


# ------------------------------------------------- without CAP_DAC_OVERRIDE

DROPPED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


@pytest.fixture(scope="module")
def unprivileged():
    """A zygote whose module processes run as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH.

    Root reads any file regardless of its mode; without these two
    capabilities the mode bits apply to it as to its owner, so "unreadable"
    means something.
    """
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    runner = rh.Zygote(prefix=DROPPED)
    probe = subprocess.run([*DROPPED, "cat", "/proc/self/status"], capture_output=True, text=True, check=True).stdout
    effective = int(re.search(r"CapEff:\s*([0-9a-f]+)", probe).group(1), 16)
    assert not effective & (1 << 1 | 1 << 2), "setpriv did not drop CAP_DAC_OVERRIDE"
    yield runner
    runner.close()


def test_unreadable_things(btrfs_dir, modrun, unprivileged):
    pool = make_pool(btrfs_dir)
    make_volume(pool)
    make_volume(pool, "appvms/locked/private", revisions=())
    make_volume(pool, "appvms/secret/private", revisions=())
    prime(pool, (VID, "appvms/locked/private", "appvms/secret/private"))
    source = btrfs_dir / "unreadable.img"
    put_file(source, SIZE, [(0, 4096)], seed=3)
    os.chmod(source, 0)
    unreadable_pool = btrfs_dir / "unreadable-pool"
    unreadable_pool.mkdir()
    (unreadable_pool / "appvms").mkdir()
    os.chmod(unreadable_pool, 0)
    os.chmod(pool / "appvms" / "locked", 0)                     # a VM directory
    os.chmod(pool / "appvms" / "secret" / "private.img", 0)     # a clean image
    p = {"pool": str(pool), "vid": VID}
    rows = [
        ("reflink_import", dict(p, src=str(source)), r"not readable|permission denied"),
        ("reflink_volume", {"pool": str(unreadable_pool), "vid": VID, "size": "1M"}, r"permission denied"),
        ("reflink_info", {"pool": str(unreadable_pool)}, r"permission denied"),
        ("reflink_gc", {"pool": str(unreadable_pool)}, r"permission denied"),
        ("reflink_volume", {"pool": str(pool), "vid": "appvms/locked/private", "size": "8M"}, r"permission denied"),
        ("reflink_volume", {"pool": str(pool), "vid": "appvms/secret/private", "size": "8M"}, r"permission denied"),
        ("reflink_import", dict(p, src_vid="appvms/secret/private"), r"permission denied"),
    ]
    before = strict_listing(btrfs_dir)
    results = [rh.run_direct(module, runner=unprivileged, **args) for module, args, _p in rows]
    problems = check_rows(rows, results)
    problems += ["changed: %s" % item for item in rh.diff_listings(before, strict_listing(btrfs_dir))]
    # The same pool is fine for a process with the capabilities: the refusals were about permissions.
    ok = rh.run_direct("reflink_info", pool=str(pool))
    assert not ok["failed"], ok
    os.chmod(unreadable_pool, 0o700)
    os.chmod(pool / "appvms" / "locked", 0o700)
    assert not problems, "%d problem(s) over %d rows:\n%s" % (len(problems), len(rows), "\n".join(problems))


def test_socket_as_pool_and_source(btrfs_dir, modrun):
    """A socket where the pool or a source should be: refused at once (no hang, no crash)."""
    pool = make_pool(btrfs_dir)
    make_volume(pool)
    prime(pool)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(btrfs_dir / "sock"))
    try:
        rows = [
            ("reflink_volume", {"pool": str(btrfs_dir / "sock"), "vid": VID, "size": "1M"}, r"not a directory|pool"),
            ("reflink_info", {"pool": str(btrfs_dir / "sock")}, r"not a directory|pool"),
        ]
        before = strict_listing(pool)
        results = rh.run_many([(module, args) for module, args, _p in rows])
    finally:
        server.close()
    problems = check_rows(rows, results)
    problems += ["changed: %s" % item for item in rh.diff_listings(before, strict_listing(pool))]
    assert not problems, "\n".join(problems)
    assert pathlib.Path(btrfs_dir / "sock").exists()

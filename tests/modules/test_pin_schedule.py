# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""reflink_pin with schedule, through ansible-playbook: pins kept by the calendar while qubesd prunes by count.

The volumes change as qubesd's file-reflink driver changes them (contract, section 4):
at every stop the clean image becomes a revision named after its mtime (the file's own
mtime is the time of the copy), the dirty image becomes the clean one, and revisions
beyond revisions_to_keep are pruned.  The times are simulated (mtimes set, names made
from them), so weeks pass in a second.  Every pin is checked on disk: its bytes are
those the volume held at the time in its name, its mtime is that time, it is a file of
its own (not the source's inode).
"""

from __future__ import annotations

import calendar
import hashlib
import os
import time

from module_helpers import MIB, copy_file, loop_device, put_file, stamp, strip_how
from staging_helpers import assert_no_leftovers, assert_ok, assert_refused, snapshot, vm_dir_of

WORK = "appvms/work/private"
MAIL = "appvms/mail/private"


def at(text):
    """Seconds since the epoch of a UTC time '2026-03-02T09:00:00'."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


def auto(text):
    """The scheduled pin's name of a UTC time."""
    return "auto-" + time.strftime("%Y%m%dt%H%M%S", time.gmtime(at(text)))


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_pool(base):
    pool = base / "pool"
    for path in (pool, pool / "appvms", pool / "vm-templates"):
        path.mkdir(mode=0o755)
    return pool


class QubesdVolume:
    """A volume's files, changed as qubesd changes them; ``data`` maps each data time to the digest it had."""

    def __init__(self, pool, vid, first, size=MIB):
        self.pool = pool
        self.vid = vid
        self.dir = vm_dir_of(pool, vid)
        self.name = os.path.basename(vid)
        self.clean = self.dir / (self.name + ".img")
        self.dirty = self.dir / (self.name + "-dirty.img")
        self.precache = self.dir / (self.name + "-precache.img")
        self.size = size
        self.next_id = 1
        self.seed = 0
        self.data = {}
        put_file(self.clean, size, [(0, 8192), (size // 2, 4096)], seed=1, mtime=at(first))
        self.data[at(first)] = digest(self.clean)
        copy_file(self.clean, self.precache)

    def path(self, suffix):
        return self.dir / (self.name + suffix)

    def pin(self, name):
        return self.path(".img.pin-" + name)

    def revisions(self):
        """{id: path} of the revision files."""
        prefix = self.name + ".img."
        return {int(entry.split("@")[0][len(prefix):]): self.dir / entry for entry in os.listdir(self.dir)
                if entry.startswith(prefix) and "@" in entry}

    def start(self):
        """The VM starts: the precache becomes the dirty image, and the VM writes into it."""
        os.rename(self.precache, self.dirty)
        self.seed += 1
        put_file_part(self.dirty, self.seed)

    def stop(self, when, keep):
        """The VM stops at ``when``: qubesd's commit with revisions_to_keep ``keep``."""
        old = os.stat(self.clean).st_mtime
        if keep > 0:
            revision = self.path(".img.%d@%s" % (self.next_id, stamp(old)))
            copy_file(self.clean, revision, keep_mtime=False)   # its mtime: the time of the copy
            os.utime(revision, (at(when), at(when)))
            self.next_id += 1
        for number in sorted(self.revisions())[:max(len(self.revisions()) - max(keep, 0), 0)]:
            os.unlink(self.revisions()[number])
        os.utime(self.dirty, (at(when), at(when)))
        os.rename(self.dirty, self.clean)
        self.data[at(when)] = digest(self.clean)
        if keep >= 0:
            copy_file(self.clean, self.precache)

    def session(self, when, keep):
        self.start()
        self.stop(when, keep)

    def pins(self):
        prefix = self.name + ".img.pin-"
        return sorted(entry[len(prefix):] for entry in os.listdir(self.dir) if entry.startswith(prefix))

    def check_scheduled_pin(self, name, sources):
        """The pin holds the data of the time in its name, has that mtime, mode 0600, and an inode of its own."""
        moment = calendar.timegm(time.strptime(name, "auto-%Y%m%dt%H%M%S"))
        path = self.pin(name)
        st = os.stat(path)
        assert digest(path) == self.data[moment], name
        assert st.st_mtime == moment and st.st_mode & 0o7777 == 0o600, (name, st)
        assert st.st_ino not in sources, name


def put_file_part(path, seed):
    """What a VM writes: 8 KiB of new data at the start of its image."""
    with open(path, "r+b") as handle:
        handle.write(hashlib.sha256(b"%d" % seed).digest() * 256)
        handle.flush()
        os.fsync(handle.fileno())


def inodes(volume):
    return {os.stat(path).st_ino for path in [volume.clean, *volume.revisions().values()]}


def pin_facts(volume, names):
    """What must never change of the user's own pins: name -> (inode, mtime, digest)."""
    return {name: (os.stat(volume.pin(name)).st_ino, os.stat(volume.pin(name)).st_mtime_ns, digest(volume.pin(name)))
            for name in names}


def without_usage(diff):
    return {side: {vid: dict(files, files=[dict(item, usage=None) for item in files["files"]])
                   for vid, files in volumes.items()} for side, volumes in diff.items()}


def same_plan(check, real, fs_kind):
    """Check mode's result is the real run's (the real run also says how each clone went).

    On XFS a new pin's allocated bytes are not its source's (the clean image has blocks allocated
    beyond its data that a clone does not share), so check mode's diff can only say them on btrfs.
    """
    assert check["actions"] == [strip_how(text) for text in real["actions"]]
    strip = [dict(item, actions=[strip_how(text) for text in item["actions"]]) for item in real["volumes"]]
    assert check["volumes"] == strip
    if fs_kind == "btrfs":
        assert check["diff"] == real["diff"]
    else:
        assert without_usage(check["diff"]) == without_usage(real["diff"])


def test_the_calendar_keeps_older_states_than_qubesd(reflink_dir, run_module, request):
    pool = make_pool(reflink_dir)
    volume = QubesdVolume(pool, WORK, "2026-02-13T12:00:00")
    # A week of use with revisions_to_keep 5: the 13th is pruned, five revisions and the clean image are left.
    for when in ("2026-02-20T18:00:00", "2026-02-27T08:00:00", "2026-03-01T20:00:00", "2026-03-02T09:00:00",
                 "2026-03-02T10:30:00", "2026-03-02T11:15:00"):
        volume.session(when, keep=5)
    assert sorted(volume.revisions()) == [2, 3, 4, 5, 6]
    # The user's pins: never touched.  auto-20260230t000000 names no real day, so it is the user's too.
    for name, revision in (("automatic", 2), ("auto-before-upgrade", 3), ("auto-20260230t000000", 4)):
        copy_file(volume.revisions()[revision], volume.pin(name))
    # A scheduled pin of an earlier schedule that no period selects now.
    copy_file(volume.revisions()[2], volume.pin(auto("2026-01-01T00:00:00")))
    os.utime(volume.pin(auto("2026-01-01T00:00:00")), (at("2026-01-01T00:00:00"),) * 2)
    volume.data[at("2026-01-01T00:00:00")] = digest(volume.pin(auto("2026-01-01T00:00:00")))
    mine = pin_facts(volume, ["auto-20260230t000000", "auto-before-upgrade", "automatic"])
    args = {"pool": str(pool), "vid": WORK, "schedule": {"hourly": 2, "daily": 2, "weekly": 2, "monthly": 2}}

    before = snapshot(pool)
    check = assert_ok(run_module("reflink_pin", check=True, diff=True, **args), True)
    assert snapshot(pool) == before
    first = assert_ok(run_module("reflink_pin", diff=True, **args), True)
    same_plan(check, first, request.node.callspec.params["reflink_dir"])
    # hourly: 11h and 10h of the 2nd; daily: the 2nd and the 1st (a Sunday); weekly: W10 (the 2nd) and W09 (the 1st,
    # its newest); monthly: March (the 2nd) and February (the 27th): four pins, from clean and revisions 6, 4 and 3.
    made = [auto("2026-03-02T11:15:00"), auto("2026-03-02T10:30:00"), auto("2026-03-01T20:00:00"),
            auto("2026-02-27T08:00:00")]
    result = first["volume"]
    assert first["volumes"] == [result]
    assert (result["pinned"], result["unpinned"], result["kept"]) == (made, [auto("2026-01-01T00:00:00")], [])
    assert result["periods"] == {
        made[0]: ["hourly 2026-03-02T11", "daily 2026-03-02", "weekly 2026-W10", "monthly 2026-03"],
        made[1]: ["hourly 2026-03-02T10"],
        made[2]: ["daily 2026-03-01", "weekly 2026-W09"],
        made[3]: ["monthly 2026-02"],
    }
    assert [strip_how(text).split(":")[0] for text in first["actions"]] == [
        "scheduled pin %s (clean; hourly 2026-03-02T11, daily 2026-03-02, weekly 2026-W10, monthly 2026-03)" % made[0],
        "scheduled pin %s (revision 6; hourly 2026-03-02T10)" % made[1],
        "scheduled pin %s (revision 4; daily 2026-03-01, weekly 2026-W09)" % made[2],
        "scheduled pin %s (revision 3; monthly 2026-02)" % made[3],
        "remove %s/private.img.pin-%s (scheduled pin %s" % (os.path.dirname(WORK), auto("2026-01-01T00:00:00"),
                                                            auto("2026-01-01T00:00:00")),
    ]
    for name in made:
        volume.check_scheduled_pin(name, inodes(volume))
    assert volume.pins() == sorted(made + list(mine))
    assert pin_facts(volume, mine) == mine
    assert [pin["name"] for pin in result["pins"]] == volume.pins()
    assert {pin["name"]: pin["timestamp"] for pin in result["pins"]}[made[2]] == "2026-03-01T20:00:00Z"
    diff_after = [item["name"] for item in first["diff"]["after"][WORK]["files"]]
    assert "private.img.pin-" + made[0] in diff_after and "private.img.pin-" + auto("2026-01-01T00:00:00") not in diff_after
    assert_no_leftovers(pool)

    # revisions_to_keep 1 from now on: qubesd prunes every revision the first run saw.  The 3rd is never seen
    # by a run; the 9th twice, in the same hour.
    for when in ("2026-03-03T09:00:00", "2026-03-09T09:00:00", "2026-03-09T09:40:00"):
        volume.session(when, keep=1)
    assert list(volume.revisions()) == [9]
    second = assert_ok(run_module("reflink_pin", **args), True)["volume"]
    # hourly: 09h of the 9th (its newest, the clean image), 11h of the 2nd; daily and weekly: the 9th and the 2nd;
    # monthly: March (the 9th) and February (the 27th, whose revision is long gone: its pin stands for it).
    assert second["pinned"] == [auto("2026-03-09T09:40:00")]
    assert second["unpinned"] == [auto("2026-03-01T20:00:00"), auto("2026-03-02T10:30:00")]
    assert second["kept"] == [auto("2026-02-27T08:00:00"), auto("2026-03-02T11:15:00")]
    for name in second["kept"] + second["pinned"]:
        volume.check_scheduled_pin(name, inodes(volume))
    assert pin_facts(volume, mine) == mine

    before = snapshot(pool)
    again = assert_ok(run_module("reflink_pin", **args), False)
    assert again["actions"] == [] and snapshot(pool) == before
    assert (again["volume"]["pinned"], again["volume"]["unpinned"]) == ([], [])
    assert again["volume"]["kept"] == sorted([auto("2026-03-09T09:40:00"), auto("2026-02-27T08:00:00"),
                                              auto("2026-03-02T11:15:00")])


def test_two_volumes_running_one_without_a_clean_image(btrfs_dir, run_module):
    pool = make_pool(btrfs_dir)
    # work: running (a loop device on its dirty image); its clean image is the state of its last start.
    work = QubesdVolume(pool, WORK, "2024-06-01T12:00:00")
    work.session("2025-12-31T23:59:59", keep=2)
    work.session("2026-03-02T09:00:00", keep=2)
    work.start()
    # mail: revisions_to_keep -1 and running: its only image is the dirty one.  Its scheduled pins are left
    # from before; one was restored from a backup that did not keep mtimes (it drifted).
    mail = QubesdVolume(pool, MAIL, "2025-01-01T00:00:00")
    copy_file(mail.clean, mail.pin(auto("2025-01-01T00:00:00")), keep_mtime=False)
    mail.session("2026-02-01T12:00:00", keep=0)
    copy_file(mail.clean, mail.pin(auto("2026-02-01T12:00:00")))
    copy_file(mail.clean, mail.pin("automatic"))
    os.unlink(mail.precache)
    os.rename(mail.clean, mail.dirty)
    mine = pin_facts(mail, ["automatic"])
    args = {"pool": str(pool), "vids": [MAIL, WORK, MAIL], "schedule": {"yearly": 3, "hourly": 1}}

    with loop_device(work.dirty):
        before = snapshot(pool)
        check = assert_ok(run_module("reflink_pin", check=True, diff=True, **args), True)
        assert snapshot(pool) == before
        real = assert_ok(run_module("reflink_pin", diff=True, **args), True)
        same_plan(check, real, "btrfs")
        assert "volume" not in real
        assert [item["vid"] for item in real["volumes"]] == [MAIL, WORK]
        mail_result, work_result = real["volumes"]
        assert work_result["state"] == "running" and work_result["changed"] is True
        # yearly: 2026 (the clean image), 2025 (revision 2), 2024 (revision 1); hourly: the clean image.
        assert work_result["pinned"] == [auto("2026-03-02T09:00:00"), auto("2025-12-31T23:59:59"),
                                         auto("2024-06-01T12:00:00")]
        for name in work_result["pinned"]:
            work.check_scheduled_pin(name, inodes(work))
        # mail: no clean image, no revision: its scheduled pins are its candidates, counted at the time in
        # their names (the restored one too), so both stay and nothing is made.
        assert mail_result["state"] == "dirty" and mail_result["changed"] is False and mail_result["actions"] == []
        assert (mail_result["pinned"], mail_result["unpinned"]) == ([], [])
        assert mail_result["kept"] == [auto("2025-01-01T00:00:00"), auto("2026-02-01T12:00:00")]
        assert pin_facts(mail, mine) == mine
        warnings = " ".join(real["warnings"])
        assert "volume %s has no clean image now" % MAIL in warnings
        assert "scheduled pin %s of volume %s has the mtime" % (auto("2025-01-01T00:00:00"), MAIL) in warnings
        assert sorted(real["diff"]["before"]) == [MAIL, WORK]

        before = snapshot(pool)
        again = assert_ok(run_module("reflink_pin", **args), False)
        assert snapshot(pool) == before and again["actions"] == []

    nothing = assert_ok(run_module("reflink_pin", pool=str(pool), vids=[], schedule={"daily": 0}), False)
    assert nothing["volumes"] == [] and nothing["actions"] == [] and snapshot(pool) == before


BAD_INPUT = [
    ("empty", {"vid": WORK, "schedule": {}}, ["schedule is empty", "{daily: 0}"]),
    ("negative", {"vid": WORK, "schedule": {"daily": -1}}, ["schedule daily must not be negative"]),
    ("unknown", {"vid": WORK, "schedule": {"daily": 2, "fortnightly": 1}}, ["unknown key", "'fortnightly'", "hourly, daily"]),
    ("text", {"vid": WORK, "schedule": {"daily": "many"}}, ["schedule daily must be a non-negative integer"]),
    ("bool", {"vid": WORK, "schedule": {"daily": True}}, ["schedule daily must be a non-negative integer"]),
    ("name", {"vid": WORK, "schedule": {"daily": 1}, "name": "x"}, ["mutually exclusive", "schedule|name"]),
    ("state", {"vid": WORK, "schedule": {"daily": 1}, "state": "absent"}, ["mutually exclusive", "schedule|state"]),
    ("revision", {"vid": WORK, "schedule": {"daily": 1}, "revision": 1}, ["mutually exclusive", "schedule|revision"]),
    ("force", {"vid": WORK, "schedule": {"daily": 1}, "force": True}, ["mutually exclusive", "schedule|force"]),
    ("vids without schedule", {"vids": [WORK], "name": "x"}, ["required by 'vids'", "schedule"]),
    ("vid and vids", {"vid": WORK, "vids": [WORK], "schedule": {"daily": 1}}, ["mutually exclusive", "vid|vids"]),
    ("bad vid", {"vids": [WORK, "appvms/work"], "schedule": {"daily": 1}}, ["vid 'appvms/work'", "three parts"]),
    ("missing volume", {"vids": [WORK, MAIL], "schedule": {"daily": 1}},
     ["volume %s does not exist" % MAIL, "nothing was changed"]),
]


def test_bad_input_is_refused_and_changes_nothing(btrfs_dir, run_modules):
    pool = make_pool(btrfs_dir)
    # One pin to make on WORK: a refusal must keep it from being made.
    QubesdVolume(pool, WORK, "2026-03-02T09:00:00")
    before = snapshot(pool)
    results = run_modules([("reflink_pin", dict(args, pool=str(pool))) for _label, args, _words in BAD_INPUT])
    for (label, _args, words), result in zip(BAD_INPUT, results, strict=True):
        try:
            assert_refused(result, *words)
        except AssertionError as exc:
            raise AssertionError("%s: %s" % (label, exc)) from None
    assert snapshot(pool) == before
    # The same volume and schedule with nothing wrong: a pin is made (so the refusals above kept it from being made).
    made = run_modules([("reflink_pin", {"pool": str(pool), "vids": [WORK], "schedule": {"daily": 1}})])
    assert assert_ok(made[0], True)["volumes"][0]["pinned"] == [auto("2026-03-02T09:00:00")]

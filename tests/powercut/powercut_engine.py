# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Power cuts replayed from a block-level write log: what a disk may hold after losing power.

For one operation (a crash-matrix Scenario, see tests/reliability/crash_engine.py)
on one file system (btrfs, or XFS with reflink=1):

1. recording: a sparse image on the host's reflink file system gets ``mkfs``; the
   scenario's initial pool is made on it (attached to a plain loop device) and it is
   unmounted: that image is the *base*.  A reflink copy of it is served by the
   recording disk (recording_disk.py), a loop device is attached to the served file,
   the file system is mounted on it, the module runs once (it must succeed), and the
   number of events in the log when it returned is noted; then it is unmounted (the
   unmount's writes are recorded too).
2. crash states: the log up to each flush marker (what the disk had to keep); between
   two flushes, a seeded sample of what a volatile write cache may have kept of the
   writes since the last flush: prefixes, and random subsets (it may reorder); and
   the whole log.  The state *at the module's exit* is the log up to the last flush
   before the module returned: acknowledged means durable, so that state, and every
   later one, must already hold the operation's result.
3. each state is replayed without copying the image: a running copy of the base
   (a reflink clone, so it costs only the blocks written) has the log applied up to
   the state's flush point, a reflink clone of it gets the state's extra writes.
   It is attached to a loop device and mounted read-write at the mount point the
   recording used (so the scenario's paths hold; the file system's own log
   recovery runs: XFS needs read-write for that), then checked:
     - the scenario's crash rules (clean image entirely the old or the new content,
       no revision lost that the task did not mean to prune, every image of the
       initial state that must survive is intact, no file under a final name with
       content that is neither old nor new); from the module's exit on, its
       intended result instead;
     - the same task run again succeeds, ``reflink_gc min_age=0`` succeeds and leaves
       no tempfile, the result is the intended one, and the task run once more
       reports ``changed: false``.

Replayed copies have the recorded file system's UUID.  Only one of them is mounted
at any time, and never while the recorded one is: this suite relies on that, not
on XFS's ``nouuid`` or btrfs's temporary fsid.  btrfs is told to forget a device
once its copy is unmounted, so that the next copy's device is scanned afresh.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import filecmp
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

import crash_engine as ce
import reliability_helpers as rh
import write_log as wl

HERE = pathlib.Path(__file__).resolve().parent
DAEMON = HERE / "recording_disk.py"
DISK_NAME = "disk.img"   # the file the recording disk serves (recording_disk.DISK_NAME)
MIB = 1024 * 1024

IMAGE_SIZES = {"btrfs": 256 * MIB, "xfs": 320 * MIB}
# -K: no discard of the whole image by mkfs (it would only be recorded as zeros).
MKFS_COMMANDS = {
    "btrfs": ["mkfs.btrfs", "-q", "-f", "-K"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-K", "-m", "reflink=1"],
}
# nodiscard: btrfs turns on discard=async by itself on devices that can discard.
MOUNT_OPTIONS = {"btrfs": "nodiscard", "xfs": "nodiscard"}
FICLONE = 0x40049409
RIG_PARENT = "/var/tmp"
RIG_PREFIX = "dom0-reflink-powercut-"
OWNER_FILE = "owner.json"


def _run(cmd, check=True):
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), result.returncode,
                                                   (result.stderr or result.stdout).strip()))
    return result


def _start_time(pid):
    """Field 22 of /proc/PID/stat (with the pid, it names one process for good), or None if it is gone."""
    try:
        text = pathlib.Path("/proc/%d/stat" % pid).read_text(errors="replace")
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


def _loop_devices():
    """{loop device: backing file} of every attached loop device."""
    listing = _run(["losetup", "--list", "--noheadings", "--raw", "--output", "NAME,BACK-FILE"]).stdout
    found = {}
    for line in listing.splitlines():
        device, _space, back = line.partition(" ")
        found[device] = back.replace("\\x20", " ").removesuffix(" (deleted)")
    return found


def cleanup_stale_rigs():
    """Remove what rigs of dead processes left: their mounts, their loop devices, the daemon's FUSE mount.

    Rigs of live processes (another session) are left alone.  Returns the directories removed.
    """
    removed = []
    for top in sorted(pathlib.Path(RIG_PARENT).glob(RIG_PREFIX + "*")):
        try:
            owner = json.loads((top / OWNER_FILE).read_text())
        except (OSError, ValueError):
            owner = {}
        if owner.get("pid") and _start_time(owner["pid"]) == owner.get("start"):
            continue
        if os.path.ismount(top / "mnt"):
            _run(["umount", "--lazy", str(top / "mnt")], check=False)
        for device, back in _loop_devices().items():
            if back.startswith(str(top) + "/") or (owner.get("images") and back.startswith(owner["images"] + "/")):
                _run(["losetup", "--detach", device], check=False)
        if os.path.ismount(top / "fuse"):
            _run(["fusermount3", "-u", "-z", str(top / "fuse")], check=False)
        if owner.get("images"):
            shutil.rmtree(owner["images"], ignore_errors=True)
        if not any(os.path.ismount(top / name) for name in ("mnt", "fuse")):
            shutil.rmtree(top, ignore_errors=True)
            removed.append(str(top))
    return removed


def reflink_copy(src, dst):
    """``dst`` becomes a copy-on-write clone of ``src`` (FICLONE: no data is copied)."""
    with open(src, "rb") as source, open(dst, "wb") as target:
        fcntl.ioctl(target.fileno(), FICLONE, source.fileno())


class Rig:
    """The mount points, loop devices and daemon of one recording; cleanup() undoes whatever is left.

    ``images``: a directory on the host's reflink file system (base image, log,
    replayed copies); ``mnt``: where the recorded file system and each replayed copy
    are mounted; ``fuse``: where the recording disk serves ``disk.img``.
    """

    def __init__(self, images_root):
        self.images = pathlib.Path(tempfile.mkdtemp(prefix="powercut-", dir=images_root))
        self.top = pathlib.Path(tempfile.mkdtemp(prefix=RIG_PREFIX, dir=RIG_PARENT))
        self.mnt = self.top / "mnt"
        self.fuse = self.top / "fuse"
        self.mnt.mkdir()
        self.fuse.mkdir()
        # Who made it, so that a later session can remove it if this process dies (cleanup_stale_rigs).
        (self.top / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid()),
                                                       "images": str(self.images)}))
        self.devices = []
        self.daemon = None
        self.daemon_output = self.top / "daemon.out"

    # -- loop devices and mounts

    def attach(self, path):
        device = _run(["losetup", "--find", "--show", str(path)]).stdout.strip()
        self.devices.append(device)
        return device

    def detach(self, device):
        for attempt in range(20):
            if _run(["losetup", "--detach", device], check=False).returncode == 0:
                break
            time.sleep(0.05 * (attempt + 1))
        else:
            raise RuntimeError("cannot detach %s" % device)
        self.devices.remove(device)

    def mount(self, device, kind):
        return _run(["mount", "-t", kind, "-o", MOUNT_OPTIONS[kind], device, str(self.mnt)], check=False)

    def umount(self, kind=None, device=None):
        for attempt in range(20):
            if not os.path.ismount(self.mnt) or _run(["umount", str(self.mnt)], check=False).returncode == 0:
                break
            time.sleep(0.05 * (attempt + 1))
        else:
            _run(["umount", "--lazy", str(self.mnt)], check=False)
        if kind == "btrfs" and device:
            _run(["btrfs", "device", "scan", "--forget", device], check=False)

    @contextlib.contextmanager
    def mounted(self, image, kind):
        """``image`` attached and mounted at ``mnt``; yields the failed mount's result, or None."""
        device = self.attach(image)
        try:
            result = self.mount(device, kind)
            yield None if result.returncode == 0 else result
        finally:
            self.umount(kind, device)
            self.detach(device)

    # -- the recording disk

    def start_daemon(self, image, log):
        with open(self.daemon_output, "wb") as output:
            self.daemon = subprocess.Popen([sys.executable, str(DAEMON), str(self.fuse), str(image), str(log)],
                                           stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        rh.wait_for(self._daemon_ready, "the recording disk to be mounted", timeout=20)
        return self.fuse / DISK_NAME

    def _daemon_ready(self):
        if self.daemon.poll() is not None:
            raise RuntimeError("the recording disk exited: %s" % self.daemon_output.read_text(errors="replace"))
        return os.path.ismount(self.fuse) and (self.fuse / DISK_NAME).exists()

    def stop_daemon(self):
        if self.daemon is None:
            return
        if os.path.ismount(self.fuse):
            _run(["fusermount3", "-u", str(self.fuse)], check=False)
        try:
            self.daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()
            _run(["fusermount3", "-u", "-z", str(self.fuse)], check=False)
        self.daemon = None

    def cleanup(self):
        """Unmount, detach this rig's own loop devices, stop the daemon, remove the directories."""
        if os.path.ismount(self.mnt):
            self.umount()
        for device in list(self.devices):
            try:
                self.detach(device)
            except RuntimeError:
                print("powercut: could not detach %s" % device, file=sys.stderr)
        self.stop_daemon()
        for path in (self.mnt, self.fuse):
            if os.path.ismount(path):
                _run(["umount", "--lazy", str(path)], check=False)
        shutil.rmtree(self.images, ignore_errors=True)
        if not any(os.path.ismount(path) for path in (self.mnt, self.fuse)):
            shutil.rmtree(self.top, ignore_errors=True)


@dataclasses.dataclass
class Recording:
    kind: str
    base: pathlib.Path
    events: list
    exit_events: int        # events in the log when the module returned
    ctx: ce.Context
    result: dict
    recorded: pathlib.Path  # the image as the recording disk left it

    @property
    def flush_positions(self):
        """For each flush marker, the number of events before it."""
        return [index for index, event in enumerate(self.events) if event.kind == wl.FLUSH]


def run_module(module, args):
    return rh.run_direct(module, **args)


def record(rig, scenario, kind, runner=run_module):
    """Make the base image with the scenario's initial pool, then run its task on the recording disk."""
    base = rig.images / "base.img"
    with open(base, "wb") as handle:
        handle.truncate(IMAGE_SIZES[kind])
    _run(MKFS_COMMANDS[kind] + [str(base)])
    with rig.mounted(base, kind) as failed:
        if failed:
            raise RuntimeError("cannot mount the new %s: %s" % (kind, failed.stderr))
        top = rig.mnt / "t"
        top.mkdir()
        ctx = scenario.setup(top)
    recorded = rig.images / "recorded.img"
    reflink_copy(base, recorded)
    log = rig.images / "writes.log"
    disk = rig.start_daemon(recorded, log)
    try:
        device = rig.attach(disk)
        try:
            failed = rig.mount(device, kind)
            if failed.returncode != 0:
                raise RuntimeError("cannot mount %s on the recording disk: %s" % (kind, failed.stderr))
            result = runner(scenario.module, ctx.args)
            exit_events = len(wl.read_log(log))
        finally:
            rig.umount(kind, device)
            rig.detach(device)
    finally:
        rig.stop_daemon()
    return Recording(kind, base, wl.read_log(log), exit_events, ctx, result, recorded)


@dataclasses.dataclass(frozen=True)
class CrashState:
    """The disk after a power cut: every event before ``durable`` plus the writes ``extra`` (indices) after it.

    ``acknowledged``: the cut came after the last flush before the module returned,
    so the operation's result must be on the disk.
    """

    durable: int
    extra: tuple = ()
    what: str = ""
    at_exit: bool = False
    acknowledged: bool = False


@dataclasses.dataclass
class Sampling:
    """How many states to take between two flushes (prefixes and random subsets), and the seed."""

    prefixes: int = 2
    subsets: int = 2
    seed: int = 15

    def describe(self):
        return "per gap between flushes: up to %d prefixes and %d random subsets (seed %d)" % (
            self.prefixes, self.subsets, self.seed)


def crash_states(recording, sampling, name):
    """Every flush point, the whole log, the module's exit, and a seeded sample between flushes.

    Every state from the module's exit on is ``acknowledged``: what the disk holds
    after the last flush before the module returned is its result, whatever
    happened after it (more writes, the unmount's flushes).
    """
    events = recording.events
    flushes = recording.flush_positions
    rng = random.Random(zlib.crc32(("%s/%s/%d" % (name, recording.kind, sampling.seed)).encode()))
    exit_flush = max([0] + [position for position in flushes if position < recording.exit_events])
    states = [CrashState(0, (), "no write reached the disk", exit_flush == 0)]
    states += [CrashState(position, (), "flush %d" % (number + 1), position == exit_flush)
               for number, position in enumerate(flushes)]
    states.append(CrashState(len(events), (), "every write reached the disk"))
    starts = [0] + [position + 1 for position in flushes]
    ends = flushes + [len(events)]
    for number, (start, end) in enumerate(zip(starts, ends, strict=True)):
        writes = [index for index in range(start, end) if events[index].kind != wl.FLUSH]
        if len(writes) < 2:
            continue
        durable = start - 1 if start else 0
        lengths = rng.sample(range(1, len(writes)), min(sampling.prefixes, len(writes) - 1))
        states += [CrashState(durable, tuple(writes[:length]), "after flush %d: first %d of %d writes"
                              % (number, length, len(writes))) for length in sorted(lengths)]
        seen = set()
        tries = 0
        while len(seen) < sampling.subsets and tries < sampling.subsets * 4:
            tries += 1
            kept = tuple(index for index in writes if rng.random() < 0.5)
            if 0 < len(kept) < len(writes):
                seen.add(kept)
        states += [CrashState(durable, kept, "after flush %d: %d of %d writes, in any order"
                              % (number, len(kept), len(writes))) for kept in sorted(seen)]
    states = [dataclasses.replace(state, acknowledged=state.durable >= exit_flush) for state in states]
    return sorted(states, key=lambda state: (state.durable, len(state.extra)))


def state_problems(scenario, ctx, acknowledged):
    """The checks of one mounted crash state (see the module docstring).

    Returns (plain-word problems, what the clean image held before the rerun).
    """
    state = rh.read_state(ctx.pool, ctx.vid)
    clean_found = ctx.labels.of(state.clean) or "absent"
    # From the module's exit on, its result must be there; before, any state its crash rules allow.
    problems = (["acknowledged, so durable: %s" % item for item in scenario.final_problems(ctx, state)]
                if acknowledged else scenario.crash_problems(ctx, state))
    rerun = rh.run_direct(scenario.module, **ctx.args)
    if rerun["failed"]:
        problems.append("the same task run again failed: %s" % rerun.get("msg"))
    if scenario.run_gc:
        gc = rh.run_direct("reflink_gc", pool=str(ctx.pool), min_age=0, revisions_to_keep=ctx.gc_keep)
        if gc["failed"]:
            problems.append("reflink_gc failed: %s" % gc.get("msg"))
    state = rh.read_state(ctx.pool, ctx.vid)
    if state.tempfiles:
        problems.append("after rerun and gc: tempfiles left: %s" % ", ".join(state.tempfiles))
    problems += ["after rerun and gc: %s" % item for item in scenario.final_problems(ctx, state)]
    again = rh.run_direct(scenario.module, **ctx.args)
    if again["failed"] or again.get("changed"):
        outcome = "failed" if again["failed"] else "still changes something"
        problems.append("the task run once more %s: %s" % (outcome, again.get("msg") or again.get("actions")))
    return problems, clean_found


def replay(rig, recording, scenario, states):
    """Mount and check each state.

    Returns {state: [problems]}, {clean image found: number of states}, and whether
    the base image with every event of the log applied is the recorded image.
    """
    durable_image = rig.images / "durable.img"
    reflink_copy(recording.base, durable_image)
    applied = 0
    found = {}
    clean_seen = collections.Counter()
    fd = os.open(durable_image, os.O_RDWR)
    try:
        for state in states:
            for event in recording.events[applied:state.durable]:
                event.apply(fd)
            applied = max(applied, state.durable)
            image = rig.images / "state.img"
            reflink_copy(durable_image, image)
            if state.extra:
                state_fd = os.open(image, os.O_RDWR)
                try:
                    for index in state.extra:
                        recording.events[index].apply(state_fd)
                finally:
                    os.close(state_fd)
            with rig.mounted(image, recording.kind) as failed:
                if failed:
                    found[state] = ["the file system does not mount: %s" % failed.stderr.strip()]
                else:
                    found[state], clean_found = state_problems(scenario, recording.ctx, state.acknowledged)
                    clean_seen[clean_found] += 1
            os.unlink(image)
        for event in recording.events[applied:]:
            event.apply(fd)
    finally:
        os.close(fd)
    # The log is the whole story: base + every event must be the image the disk ended with.
    log_complete = filecmp.cmp(durable_image, recording.recorded, shallow=False)
    return found, clean_seen, log_complete


def run_operation(images_root, name, scenario, kind, sampling, runner=run_module):
    """Record ``scenario`` on ``kind`` and check its crash states; returns the report dict."""
    started = time.monotonic()
    rig = Rig(images_root)
    recording = None
    try:
        recording = record(rig, scenario, kind, runner)
        if recording.result["failed"]:
            raise RuntimeError("%s on %s: the recorded run failed: %s" % (name, kind, recording.result.get("msg")))
        states = crash_states(recording, sampling, name)
        found, clean_seen, log_complete = replay(rig, recording, scenario, states)
    finally:
        # The scenario's own cleanups (a source file outside the recorded pool) first, then the rig.
        if recording is not None:
            recording.ctx.cleanup()
        rig.cleanup()
    problems = ["%s: %s" % (state.what + (" (the module's exit)" if state.at_exit else ""), item)
                for state in states for item in found[state]]
    if not log_complete:
        problems.insert(0, "the base image with the whole log applied differs from the recorded image: "
                           "the recording disk missed writes")
    lost_states = sum(1 for state in states if found[state])
    return {
        "operation": name,
        "fs": kind,
        "events": len(recording.events),
        "writes": sum(1 for event in recording.events if event.kind != wl.FLUSH),
        "flushes": len(recording.flush_positions),
        "exit_events": recording.exit_events,
        "states": len(states),
        "states_with_problems": lost_states,
        "acknowledged_states": sum(1 for state in states if state.acknowledged),
        # Whether the states span the operation: how many showed the old and the new clean image.
        "clean_image_seen": dict(sorted(clean_seen.items())),
        "problems": problems,
        "sampling": sampling.describe(),
        "seconds": round(time.monotonic() - started, 1),
    }

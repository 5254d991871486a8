# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running modules as bare processes (optionally under strace) and reading what is on disk.

The modules run without ansible-playbook: a child of ``module_zygote.py``
(see there) runs ``main()`` with an ``{"ANSIBLE_MODULE_ARGS": ...}`` file, as
``python -m ansible_collections.dom0.reflink.plugins.modules.<name> args.json``
would, and prints the result JSON.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
PYTEST_COLLECTIONS = REPO_ROOT / "build" / "pytest-collections"
ZYGOTE = HERE / "module_zygote.py"

# Every system call that changes a name in a directory or the data, size,
# mode, times or attributes of a file.  The call that opens a new unnamed
# file (openat O_TMPFILE) is left out: it changes nothing anyone can see, so
# killing there leaves the same state as killing at the next call below.
TRACED = (
    "rename", "renameat", "renameat2", "unlink", "unlinkat", "link", "linkat",
    "mkdir", "mkdirat", "rmdir",
    "ioctl", "fsync", "fdatasync", "sync_file_range",
    "ftruncate", "truncate", "fallocate", "copy_file_range", "sendfile",
    "write", "pwrite64", "pwritev", "pwritev2", "writev",
    "fchmod", "fchmodat", "fsetxattr", "setxattr", "lsetxattr", "utimensat",
)
_WRITES = {"write", "pwrite64", "pwritev", "pwritev2", "writev"}
TEMPFILE_RE = re.compile(r"~[a-z0-9_]{8}\Z")
_QUERY_IOCTL = re.compile(r"\d+, (TCGETS|TIOCGWINSZ|TCSETS|FS_IOC_FIEMAP|FS_IOC_GETFLAGS|BTRFS_IOC_TREE_SEARCH(_V2)?|"
                          r"BTRFS_IOC_INO_LOOKUP|BTRFS_IOC_FS_INFO|BTRFS_IOC_LOGICAL_INO(_V2)?)\b")
_UNFINISHED_RE = re.compile(r"^(?P<pid>\d+)\s+(?P<name>\w+)\((?P<args>.*) <unfinished \.\.\.>$")
_RESUMED_RE = re.compile(r"^(?P<pid>\d+)\s+<\.\.\. (?P<name>\w+) resumed>(?P<rest>.*)\)\s+=\s+(?P<ret>.*)$")
_CALL_RE = re.compile(r"^(?P<pid>\d+)\s+(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>.*)$")
_STRING_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')

MIB = 1024 * 1024


# ------------------------------------------------------------ module processes

class Zygote:
    """One module_zygote.py process; not thread-safe (use one per thread, see zygote())."""

    def __init__(self, prefix=(), umask=-1):
        """``prefix``: a command that runs it (e.g. setpriv dropping capabilities); ``umask`` for its children."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PYTEST_COLLECTIONS), env.get("PYTHONPATH")]))
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        self.proc = subprocess.Popen([*prefix, sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True, bufsize=1, umask=umask)

    def _ask(self, request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("module_zygote.py died (exit status %s)" % self.proc.poll())
        return json.loads(line)

    def spawn(self, module, args_path, out_path, stop=False):
        return self._ask({"op": "spawn", "module": module, "args": str(args_path), "out": str(out_path),
                          "stop": stop})["pid"]

    def wait(self, pid):
        return self._ask({"op": "wait", "pid": pid})

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


_local = threading.local()
_all_zygotes = []
_zygotes_lock = threading.Lock()


def zygote():
    """This thread's Zygote (started on first use)."""
    found = getattr(_local, "zygote", None)
    if found is None or found.proc.poll() is not None:
        found = _local.zygote = Zygote()
        with _zygotes_lock:
            _all_zygotes.append(found)
    return found


def close_zygotes():
    with _zygotes_lock:
        for found in _all_zygotes:
            found.close()
        _all_zygotes.clear()


def write_args(path, args, check=False, diff=False):
    module_args = {key: (os.fspath(value) if isinstance(value, os.PathLike) else value)
                   for key, value in args.items()}
    module_args["_ansible_check_mode"] = check
    module_args["_ansible_diff"] = diff
    pathlib.Path(path).write_text(json.dumps({"ANSIBLE_MODULE_ARGS": module_args}))


def parse_result(text, status):
    """The module's result dict from its output (the last line that is a JSON object)."""
    for line in reversed(text.splitlines()):
        candidate = line.strip()
        if candidate.startswith("{"):
            try:
                result = json.loads(candidate)
            except ValueError:
                continue
            result.setdefault("failed", False)
            return result
    return {"failed": True, "msg": "the module printed no result", "output": text, "status": status}


@contextlib.contextmanager
def _workdir():
    path = tempfile.mkdtemp(prefix="dom0-reflink-rel-")
    try:
        yield pathlib.Path(path)
    finally:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)


def run_direct(module, check=False, diff=False, runner=None, **args):
    """Run module ``module`` (e.g. "reflink_volume") once as a process; return its result dict.

    ``runner``: a Zygote of one's own (other capabilities or umask), else this thread's.
    """
    with _workdir() as work:
        write_args(work / "args.json", args, check, diff)
        runner = runner or zygote()
        pid = runner.spawn(module, work / "args.json", work / "out.txt")
        status = runner.wait(pid)
        return parse_result((work / "out.txt").read_text(errors="replace"), status)


def run_many(calls, workers=4):
    """Run several (module, args) at once in separate processes; results in order."""
    with ThreadPoolExecutor(max_workers=workers) as executor:
        futures = [executor.submit(run_direct, module, **args) for module, args in calls]
        return [future.result() for future in futures]


# ---------------------------------------------------------------------- strace

@dataclasses.dataclass(frozen=True)
class Call:
    """One traced system call."""

    name: str
    args: str
    ret: str

    @property
    def noise(self):
        """Not a step of the operation: a terminal query, a query of the file system that changes nothing
        (FIEMAP, btrfs's tree search: how many of them a run makes depends on where its data happens to lie
        on the disk), or the module writing its result.  A kill there leaves what a kill at the next step
        leaves; the matrix still kills there, but does not seek them out."""
        if self.name == "ioctl" and _QUERY_IOCTL.match(self.args):
            return True
        return self.name in _WRITES and self.args.split(",", 1)[0] in ("1", "2")

    @property
    def signature(self):
        """The call without what changes from run to run (tempfile suffixes, addresses, pids, times).

        Only what the call was given counts: a killed call has no result
        (strace shows it ``<unfinished ...>``, without the ``=> ...`` of what
        an ioctl returned), and must have the signature of the same call
        finished.
        """
        args = self.args.replace(" <unfinished ...>", "").split(" => ", 1)[0]
        first = args.split(",", 1)[0]
        if self.name in _WRITES:
            parts = [first]
            if self.name in ("pwrite64", "pwritev", "pwritev2"):
                parts.append("@" + args.rsplit(",", 1)[-1].strip())
            return "%s(%s)" % (self.name, ", ".join(parts))
        if self.name == "ioctl":
            # The request's name only: its argument is a structure whose fields are partly results.  A dedupe
            # is named without its file: which image is the source of the k-th one depends on how the images'
            # extents happen to lie on the disk, which changes from run to run.
            request = args.split(",")[1].strip() if "," in args else ""
            return "ioctl(%s)" % request if "FIDEDUPERANGE" in request else "ioctl(%s, %s)" % (first, request)
        strings = [TEMPFILE_RE.sub("~XXXXXXXX", text) for text in _STRING_RE.findall(args)]
        parts = [first] + ['"%s"' % text for text in strings]
        if self.name == "ftruncate":
            parts.append(args.rsplit(",", 1)[-1].strip())
        return "%s(%s)" % (self.name, ", ".join(parts))

    def __str__(self):
        return "%s(%s) = %s" % (self.name, self.args, self.ret)


def parse_trace(text):
    """The calls of an ``strace -f`` log, in the order they began.

    A call that another thread's line interrupts is split in two lines
    (``name(args <unfinished ...>`` and ``<... name resumed>rest) = ret``):
    put back together, at the place of its first line.
    """
    calls = []
    pending = {}   # pid -> index in calls of its unfinished call
    for line in text.splitlines():
        unfinished = _UNFINISHED_RE.match(line)
        if unfinished:
            pending[unfinished.group("pid")] = len(calls)
            calls.append(Call(unfinished.group("name"), unfinished.group("args"), "?"))
            continue
        resumed = _RESUMED_RE.match(line)
        if resumed:
            index = pending.pop(resumed.group("pid"), None)
            if index is not None:
                first = calls[index]
                calls[index] = Call(first.name, first.args + resumed.group("rest"), resumed.group("ret").strip())
            continue
        match = _CALL_RE.match(line)
        if match:
            calls.append(Call(match.group("name"), match.group("args"), match.group("ret").strip()))
    return calls


@dataclasses.dataclass
class TracedRun:
    status: dict            # {"exit": N} or {"signal": N}
    calls: list             # [Call], in order; the last one is the killed one when killed
    result: dict
    output: str
    inject: tuple | None = None   # (syscall, k) of the kill asked for

    @property
    def killed(self):
        return self.status.get("signal") == signal.SIGKILL

    @property
    def killed_call(self):
        """The call the kill was injected at: the k-th of its syscall (strace counts them per thread; only one
        thread of a module makes traced calls).  strace delivers the signal when the call is entered and shows
        it unfinished (``= ?``), but a call that does not wait may still complete (an ioctl shows its result)."""
        if not self.killed:
            return None
        if self.inject is not None:
            name, when = self.inject
            found = [call for call in self.calls if call.name == name]
            return found[when - 1] if len(found) >= when else None
        return self.calls[-1] if self.calls and self.calls[-1].ret == "?" else None


def wait_for(predicate, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for %s" % what)
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def process_state(pid):
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def wait_for_trace(tracer, trace, predicate, what):
    """Wait until ``predicate(text of the trace file)`` holds; an strace that exits first is an error."""
    def seen():
        if tracer.poll() is not None:
            raise RuntimeError("strace exited early: %s" % tracer.stderr.read().decode(errors="replace"))
        return os.path.exists(trace) and predicate(pathlib.Path(trace).read_text(errors="replace"))
    wait_for(seen, what)


def attach_strace(pid, trace, options):
    """``strace -f -o trace -p pid`` with ``options``, on a module spawned with ``stop=True``.

    Returns once strace has attached (it reports the module's self-stop); the module stays
    stopped until it gets SIGCONT.
    """
    wait_for(lambda: process_state(pid) == "T", "the module process to stop itself")
    tracer = subprocess.Popen(["strace", "-f", "-o", str(trace), "-p", str(pid), *options],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_trace(tracer, trace, lambda text: "stopped by SIGSTOP" in text, "strace to attach")
    except BaseException:
        tracer.kill()
        tracer.wait()
        raise
    return tracer


def run_traced(module, args, inject=None, fault=None):
    """Run the module under ``strace -f -p``, attached once its start-up is done.

    ``inject=(syscall, k)`` kills it with SIGKILL at the k-th call of that
    syscall (strace's ``-e inject=<syscall>:signal=SIGKILL:when=k``);
    ``fault=(syscall, errno_name, when)`` makes calls fail instead
    (``-e inject=<syscall>:error=<errno>:when=<when>``).  Counting starts
    after the module's imports: the child stops itself before main() and is
    continued once strace is attached.
    """
    with _workdir() as work:
        write_args(work / "args.json", args)
        runner = zygote()
        pid = runner.spawn(module, work / "args.json", work / "out.txt", stop=True)
        trace = work / "trace.txt"
        options = ["-e", "trace=" + ",".join("?" + name for name in TRACED)]
        if inject is not None:
            options += ["-e", "inject=%s:signal=SIGKILL:when=%d" % inject]
        if fault is not None:
            options += ["-e", "inject=%s:error=%s:when=%s" % fault]
        try:
            tracer = attach_strace(pid, trace, options)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            runner.wait(pid)
            raise
        os.kill(pid, signal.SIGCONT)
        status = runner.wait(pid)
        tracer.wait(timeout=60)
        output = (work / "out.txt").read_text(errors="replace")
        return TracedRun(status, parse_trace(trace.read_text(errors="replace")), parse_result(output, status), output,
                         inject)


# ----------------------------------------------------------------- disk state

def digest_of(path):
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(4 * MIB)
            if not chunk:
                return hasher.hexdigest()
            hasher.update(chunk)


def digest_bytes(data):
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True)
class FileFacts:
    name: str
    digest: str
    size: int
    mtime_ns: int
    ino: int
    mode: int
    uid: int


@dataclasses.dataclass
class VolumeState:
    """One volume's files (an independent reading of the contract's names), and the pool's tempfiles."""

    vm_dir_exists: bool
    clean: FileFacts | None = None
    dirty: FileFacts | None = None
    precache: FileFacts | None = None
    import_: FileFacts | None = None
    revisions: dict = dataclasses.field(default_factory=dict)   # id -> (timestamp, FileFacts)
    junk: list = dataclasses.field(default_factory=list)        # other names of this volume
    pins: dict = dataclasses.field(default_factory=dict)        # pin name -> FileFacts
    tempfiles: list = dataclasses.field(default_factory=list)   # pool-wide, relative paths

    @property
    def precache_fresh(self):
        return (self.clean is not None and self.precache is not None
                and (self.precache.mtime_ns, self.precache.size) == (self.clean.mtime_ns, self.clean.size))

    def images(self):
        found = [facts for facts in (self.clean, self.dirty, self.precache, self.import_) if facts]
        found.extend(facts for _stamp, facts in self.revisions.values())
        found.extend(self.pins[name] for name in sorted(self.pins))
        return found


def facts_of(path):
    st = os.lstat(path)
    digest = digest_of(path) if stat.S_ISREG(st.st_mode) else "not a regular file"
    return FileFacts(os.path.basename(path), digest, st.st_size, st.st_mtime_ns, st.st_ino, stat.S_IMODE(st.st_mode), st.st_uid)


def pool_tempfiles(pool):
    found = []
    for root, dirs, files in os.walk(pool):
        for name in files + dirs:
            if TEMPFILE_RE.search(name):
                found.append(os.path.relpath(os.path.join(root, name), pool))
    return sorted(found)


def read_state(pool, vid):
    vm_dir = pathlib.Path(pool) / os.path.dirname(vid)
    volume = os.path.basename(vid)
    state = VolumeState(vm_dir.is_dir())
    state.tempfiles = pool_tempfiles(pool)
    if not state.vm_dir_exists:
        return state
    revision_re = re.compile(re.escape(volume) + r"\.img\.(\d+)@(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\Z")
    pin_re = re.compile(re.escape(volume) + r"\.img\.pin-([a-z0-9][a-z0-9_-]{0,39})\Z")
    for name in sorted(os.listdir(vm_dir)):
        if TEMPFILE_RE.search(name) or not name.startswith(volume):
            continue
        facts = facts_of(vm_dir / name)
        match = revision_re.match(name)
        pin = pin_re.match(name)
        if name == volume + ".img":
            state.clean = facts
        elif name == volume + "-dirty.img":
            state.dirty = facts
        elif name == volume + "-precache.img":
            state.precache = facts
        elif name == volume + "-import.img":
            state.import_ = facts
        elif match:
            state.revisions[int(match.group(1))] = (match.group(2), facts)
        elif pin:
            state.pins[pin.group(1)] = facts
        elif name.startswith(volume + ".img") or name.startswith(volume + "-"):
            state.junk.append(name)
    return state


def listing(root, skip=()):
    """Every entry below ``root``: relative path -> (mode, inode, size, mtime_ns); also root itself."""
    found = {}
    root = os.fspath(root)
    st = os.lstat(root)
    found["."] = (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns)
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(current, name)
            rel = os.path.relpath(path, root)
            if any(rel == item or rel.startswith(item + "/") for item in skip):
                continue
            st = os.lstat(path)
            found[rel] = (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def diff_listings(before, after):
    """Plain-word differences between two listings (empty when equal)."""
    problems = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            problems.append("%s disappeared" % name)
        elif name not in before:
            problems.append("%s appeared" % name)
        elif before[name] != after[name]:
            what = [field for field, old, new in zip(("mode", "inode", "size", "mtime"), before[name], after[name], strict=True)
                    if old != new]
            problems.append("%s changed (%s)" % (name, ", ".join(what)))
    return problems


def stamp(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


class Labels:
    """Names for known contents (digest -> label), so that messages say "old clean" and not a hash."""

    def __init__(self):
        self.by_digest = {}

    def add(self, label, data):
        self.by_digest.setdefault(digest_bytes(data), label)
        return label

    def of(self, facts):
        if facts is None:
            return None
        return self.by_digest.get(facts.digest, "UNKNOWN CONTENT (%d bytes, sha256 %s...)" % (facts.size, facts.digest[:12]))


def counter_text(counts):
    return ", ".join("%s %d" % (name, count) for name, count in sorted(counts.items()))


def count_calls(calls):
    return collections.Counter(call.name for call in calls)


# -- a module held at a system call (strace SIGSTOP injection) -----------------------

class HeldModule:
    """A module process that strace stopped; resume() lets it finish and returns its result, kill() ends it."""

    def __init__(self, runner, pid, work):
        self.runner, self.pid, self.work = runner, pid, work
        self.tracer = None
        self.status = None

    def _end_tracer(self):
        if self.tracer is not None:
            self.tracer.terminate()   # strace detaches on SIGTERM; the tracee stays stopped
            try:
                self.tracer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.tracer.kill()
                self.tracer.wait(timeout=30)
            self.tracer = None

    def resume(self):
        self._end_tracer()
        os.kill(self.pid, signal.SIGCONT)
        self.status = self.runner.wait(self.pid)
        out = pathlib.Path(self.work, "out.txt")
        return parse_result(out.read_text(errors="replace") if out.exists() else "", self.status)

    def kill(self):
        """SIGKILL it; returns how it ended (see zygote's wait)."""
        os.kill(self.pid, signal.SIGKILL)
        self.status = self.runner.wait(self.pid)
        self._end_tracer()
        return self.status


@contextlib.contextmanager
def held_after(module, args, syscall, when=1, path=None):
    """Run ``module`` until it has made its ``when``-th ``syscall`` (on ``path``, if given); strace stops it there.

    ``syscall`` may name several calls ("unlinkat,unlink"): the ``when``-th of any of them.
    """
    work = tempfile.mkdtemp(prefix="dom0-reflink-held-")
    held = None
    names = syscall.split(",")
    try:
        write_args(os.path.join(work, "args.json"), args)
        runner = zygote()
        pid = runner.spawn(module, os.path.join(work, "args.json"), os.path.join(work, "out.txt"), stop=True)
        held = HeldModule(runner, pid, work)
        trace = os.path.join(work, "trace.txt")
        options = ["-e", "trace=" + syscall, "-e", "inject=%s:signal=SIGSTOP:when=%d" % (syscall, when)]
        held.tracer = attach_strace(pid, trace, options + (["-P", path] if path else []))
        os.kill(pid, signal.SIGCONT)
        wait_for_trace(held.tracer, trace,
                       lambda text: sum(text.count(name + "(") for name in names) >= when
                       and text.count("stopped by SIGSTOP") >= 2,
                       "the module to stop after its %s #%d" % (syscall, when))
        yield held
    finally:
        try:
            if held is not None and held.status is None:
                held.kill()
        finally:
            shutil.rmtree(work, ignore_errors=True)

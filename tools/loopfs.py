# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Create and destroy small loop-mounted filesystems for tests (root only).

Standard library only.  Each filesystem lives in its own work directory under
a base directory::

    <base_dir>/<kind>-XXXXXX/image.img     sparse image file
    <base_dir>/<kind>-XXXXXX/mnt/          mount point  (LoopFs.path)
    <base_dir>/<kind>-XXXXXX/loopfs.json   what was made, and by which process

Python use::

    from loopfs import create, cleanup_stale
    cleanup_stale('/var/tmp/x')
    fs = create('xfs', 320 * MiB, '/var/tmp/x')
    try:
        ...  # use fs.path
    finally:
        fs.destroy()

Command line (prints JSON)::

    python3 tools/loopfs.py create btrfs [--size 256M] [--base-dir DIR]
    python3 tools/loopfs.py destroy DIR          (the mount point or work directory)
    python3 tools/loopfs.py cleanup [--base-dir DIR] [--all]
    python3 tools/loopfs.py list [--base-dir DIR]

cleanup_stale() removes what an aborted earlier run left under base_dir
(mounts, attached loop devices whose backing file is there, image files) but
leaves alone the filesystems of processes that are still running, so two test
sessions (two pytest-xdist workers, or two checkouts) can share a base
directory.  Both hold the flock of <base_dir>/.loopfs.lock while they look at
or make a work directory, so that a cleanup never sees a work directory whose
loopfs.json is not written yet; names starting with a dot are lock files,
never removed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

DEFAULT_BASE_DIR = '/var/tmp/dom0-reflink-loopfs'

# Default and smallest sizes of each kind of filesystem.
DEFAULT_SIZES = {'btrfs': 256 * MiB, 'xfs': 320 * MiB, 'ext4': 64 * MiB}
MINIMUM_SIZES = {'btrfs': 128 * MiB, 'xfs': 300 * MiB, 'ext4': 8 * MiB}

MKFS_COMMANDS = {
    'btrfs': ['mkfs.btrfs', '-q', '-f'],
    'xfs': ['mkfs.xfs', '-q', '-f', '-m', 'reflink=1'],
    'ext4': ['mkfs.ext4', '-q', '-F', '-E', 'nodiscard'],
}
KINDS = tuple(MKFS_COMMANDS)

IMAGE_NAME = 'image.img'
MOUNT_NAME = 'mnt'
META_NAME = 'loopfs.json'
LOCK_NAME = '.loopfs.lock'

# Where the tools live when the caller's PATH lacks the sbin directories.
_SBIN_PATH = '/usr/local/sbin:/usr/sbin:/sbin'


class LoopFsError(Exception):
    """A loop filesystem could not be created or removed."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env['PATH'] = env.get('PATH', '/usr/bin:/bin') + ':' + _SBIN_PATH
    env['LC_ALL'] = 'C'
    return env


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_env(), check=False)
    except FileNotFoundError as exc:
        raise LoopFsError('%s is not installed (run `make deps`)' % cmd[0]) from exc
    if check and result.returncode != 0:
        raise LoopFsError('command %s failed with status %d: %s' % (
            ' '.join(cmd), result.returncode, (result.stderr or result.stdout).strip()))
    return result


def _process_start_time(pid: int) -> str | None:
    """Return the start time of a process (field 22 of /proc/PID/stat), or None if it is gone."""
    try:
        with open('/proc/%d/stat' % pid, encoding='utf-8', errors='replace') as stat:
            data = stat.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = data[data.rindex(')') + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _owner_alive(meta: dict) -> bool:
    pid = meta.get('owner_pid')
    if not isinstance(pid, int) or pid <= 0:
        return False
    started = _process_start_time(pid)
    return started is not None and started == meta.get('owner_start')


def _unescape_mountinfo(field: str) -> str:
    """Decode the octal escapes (\\040 for a space ...) of /proc/self/mountinfo."""
    out = []
    i = 0
    while i < len(field):
        if field[i] == '\\' and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return ''.join(out)


def mount_points() -> list[str]:
    """Return the mount points of this mount namespace, in mount order."""
    points = []
    with open('/proc/self/mountinfo', encoding='utf-8', errors='surrogateescape') as info:
        for line in info:
            fields = line.split()
            if len(fields) > 4:
                points.append(_unescape_mountinfo(fields[4]))
    return points


def loop_devices() -> dict[str, str]:
    """Return {loop device: backing file} for every attached loop device."""
    result = _run(['losetup', '--list', '--noheadings', '--raw', '--output', 'NAME,BACK-FILE'])
    devices = {}
    for line in result.stdout.splitlines():
        name, _sep, back = line.partition(' ')
        if not name:
            continue
        # losetup --raw escapes spaces as \x20; a removed backing file is shown with " (deleted)".
        back = back.replace('\\x20', ' ')
        if back.endswith(' (deleted)'):
            back = back[:-len(' (deleted)')]
        devices[name] = back
    return devices


def _is_under(path: str, directory: str) -> bool:
    directory = directory.rstrip('/') or '/'
    return path == directory or path.startswith(directory + '/')


def _umount(path: str, attempts: int = 10) -> None:
    """Unmount path, retrying while it is busy; as a last resort detach it lazily."""
    delay = 0.1
    message = ''
    for _attempt in range(attempts):
        if not os.path.ismount(path):
            return
        result = _run(['umount', path], check=False)
        if result.returncode == 0:
            return
        message = (result.stderr or result.stdout).strip()
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    if os.path.ismount(path):
        result = _run(['umount', '--lazy', path], check=False)
        if result.returncode != 0:
            raise LoopFsError('cannot unmount %s: %s' % (path, message or result.stderr.strip()))
        print('loopfs: %s was busy (%s); detached it lazily' % (path, message), file=sys.stderr)


def _detach(device: str, attempts: int = 10) -> None:
    """Detach a loop device, retrying while the kernel still holds it."""
    delay = 0.1
    for _attempt in range(attempts):
        if device not in loop_devices():
            return
        result = _run(['losetup', '--detach', device], check=False)
        if result.returncode == 0:
            return
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    if device in loop_devices():
        raise LoopFsError('cannot detach loop device %s' % device)


@contextlib.contextmanager
def _base_dir_lock(base_dir: str):
    """Hold the exclusive flock of <base_dir>/.loopfs.lock (released when the process dies, too)."""
    fd = os.open(os.path.join(base_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_meta(workdir: str, meta: dict) -> None:
    """Write loopfs.json whole or not at all (a reader never sees half of it)."""
    temp_path = os.path.join(workdir, META_NAME + '.tmp')
    with open(temp_path, 'w', encoding='utf-8') as meta_file:
        json.dump(meta, meta_file, indent=2)
    os.replace(temp_path, os.path.join(workdir, META_NAME))


@dataclasses.dataclass
class LoopFs:
    """A mounted loop filesystem: path is the mount point."""

    path: str
    image: str
    device: str
    kind: str
    workdir: str = ''
    size: int = 0

    def destroy(self) -> None:
        """Unmount (retrying while busy), detach the loop device and remove the files.

        Safe to call more than once and on a partly made filesystem.
        """
        if self.path and os.path.ismount(self.path):
            _umount(self.path)
        if self.device:
            _detach(self.device)
        for device, back in loop_devices().items():
            if self.image and back == self.image:
                _detach(device)
        if self.workdir and os.path.isdir(self.workdir) and not os.path.ismount(self.path):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def to_dict(self) -> dict:
        """Return the fields as a JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, directory: str) -> LoopFs:
        """Return the LoopFs recorded in a work directory (or its mount point)."""
        directory = os.path.abspath(directory)
        for candidate in (directory, os.path.dirname(directory)):
            meta_path = os.path.join(candidate, META_NAME)
            if os.path.isfile(meta_path):
                with open(meta_path, encoding='utf-8') as meta_file:
                    meta = json.load(meta_file)
                fields = {f.name for f in dataclasses.fields(cls)}
                return cls(**{k: v for k, v in meta.items() if k in fields})
        raise LoopFsError('%s is not a loopfs work directory or mount point' % directory)

    def __enter__(self) -> LoopFs:
        return self

    def __exit__(self, *exc_info) -> None:
        self.destroy()


def create(kind: str, size_bytes: int | None = None, base_dir: str = DEFAULT_BASE_DIR,
           owner_pid: int | None = None) -> LoopFs:
    """Make a sparse image of size_bytes, attach it to a loop device, mkfs and mount it.

    kind is btrfs, xfs (made with reflink=1; at least 300 MiB) or ext4.  The
    filesystem counts as in use (cleanup_stale leaves it alone) while the
    process owner_pid (default: this one) runs.  Everything is undone if a
    step fails.
    """
    if kind not in MKFS_COMMANDS:
        raise LoopFsError('unknown filesystem kind %r (expected one of %s)' % (kind, ', '.join(KINDS)))
    size = DEFAULT_SIZES[kind] if size_bytes is None else int(size_bytes)
    if size < MINIMUM_SIZES[kind]:
        raise LoopFsError('%s needs at least %d MiB, %d bytes asked' % (kind, MINIMUM_SIZES[kind] // MiB, size))
    if os.geteuid() != 0:
        raise LoopFsError('loop filesystems can only be made by root')

    base_dir = os.path.realpath(base_dir)
    os.makedirs(base_dir, exist_ok=True)
    pid = os.getpid() if owner_pid is None else owner_pid
    with _base_dir_lock(base_dir):
        # Under the lock: a cleanup_stale() of another session sees the work directory
        # only with its loopfs.json naming a live owner.
        workdir = tempfile.mkdtemp(prefix=kind + '-', dir=base_dir)
        fs = LoopFs(path=os.path.join(workdir, MOUNT_NAME), image=os.path.join(workdir, IMAGE_NAME),
                    device='', kind=kind, workdir=workdir, size=size)
        meta = fs.to_dict()
        meta.update(owner_pid=pid, owner_start=_process_start_time(pid))
        try:
            _write_meta(workdir, meta)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
    try:
        with open(fs.image, 'wb') as image:
            image.truncate(size)  # sparse: no block is written
        fs.device = _run(['losetup', '--find', '--show', fs.image]).stdout.strip()
        meta['device'] = fs.device
        _write_meta(workdir, meta)
        _run(MKFS_COMMANDS[kind] + [fs.device])
        os.mkdir(fs.path)
        _run(['mount', '-t', kind, fs.device, fs.path])
        os.chmod(fs.path, 0o755)  # noqa: S103 (a mount point others may traverse)
    except BaseException:
        fs.destroy()
        raise
    return fs


def _read_meta(workdir: str) -> dict | None:
    try:
        with open(os.path.join(workdir, META_NAME), encoding='utf-8') as meta_file:
            meta = json.load(meta_file)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def cleanup_stale(base_dir: str = DEFAULT_BASE_DIR, include_live: bool = False) -> list[str]:
    """Remove what earlier, aborted runs left under base_dir; return what was removed.

    Unmounts every mount under base_dir (deepest first), detaches every loop
    device whose backing file is under base_dir and deletes the work
    directories and image files.  A work directory whose owner process is
    still running is kept, with its mount and device, unless include_live.
    """
    base_dir = os.path.realpath(base_dir)
    if not os.path.isdir(base_dir):
        return []
    with _base_dir_lock(base_dir):
        return _cleanup_stale_locked(base_dir, include_live)


def _cleanup_stale_locked(base_dir: str, include_live: bool) -> list[str]:
    removed: list[str] = []
    live = []
    if not include_live:
        for name in os.listdir(base_dir):
            workdir = os.path.join(base_dir, name)
            meta = _read_meta(workdir)
            if meta is not None and _owner_alive(meta):
                live.append(workdir)

    def is_live(path: str) -> bool:
        return any(_is_under(path, workdir) for workdir in live)

    mounts = [p for p in mount_points() if _is_under(p, base_dir) and p != base_dir and not is_live(p)]
    for point in sorted(set(mounts), key=len, reverse=True):
        _umount(point)
        removed.append('mount ' + point)

    for device, back in loop_devices().items():
        if back and _is_under(back, base_dir) and not is_live(back):
            _detach(device)
            removed.append('loop device %s (%s)' % (device, back))

    for name in sorted(os.listdir(base_dir)):
        entry = os.path.join(base_dir, name)
        if name.startswith('.') or is_live(entry):
            continue
        if any(_is_under(p, entry) for p in mount_points()):
            print('loopfs: %s is still mounted somewhere, leaving it' % entry, file=sys.stderr)
            continue
        if os.path.isdir(entry) and not os.path.islink(entry):
            shutil.rmtree(entry, ignore_errors=True)
        else:
            os.unlink(entry)
        removed.append('file ' + entry)
    return removed


def list_filesystems(base_dir: str = DEFAULT_BASE_DIR) -> list[dict]:
    """Return the recorded filesystems under base_dir with their state."""
    base_dir = os.path.realpath(base_dir)
    found = []
    if not os.path.isdir(base_dir):
        return found
    for name in sorted(os.listdir(base_dir)):
        meta = _read_meta(os.path.join(base_dir, name))
        if meta is None:
            continue
        meta['mounted'] = os.path.ismount(meta.get('path', ''))
        meta['owner_alive'] = _owner_alive(meta)
        found.append(meta)
    return found


def parse_size(text: str) -> int:
    """Parse a size such as 4096, 64M, 320MiB or 1G (binary units)."""
    value = text.strip().upper().removesuffix('IB').removesuffix('B')
    units = {'K': KiB, 'M': MiB, 'G': GiB}
    if value and value[-1] in units:
        return int(float(value[:-1]) * units[value[-1]])
    return int(value)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog='loopfs.py', description='Loop-mounted test filesystems.')
    sub = parser.add_subparsers(dest='command', required=True)

    p_create = sub.add_parser('create', help='make and mount a filesystem; prints its JSON')
    p_create.add_argument('kind', choices=KINDS)
    p_create.add_argument('--size', type=parse_size, default=None, help='e.g. 256M (default: per kind)')
    p_create.add_argument('--base-dir', default=DEFAULT_BASE_DIR)
    p_create.add_argument('--owner-pid', type=int, default=os.getppid(),
                          help='process whose life keeps it from cleanup (default: the calling shell)')

    p_destroy = sub.add_parser('destroy', help='unmount, detach and remove one filesystem')
    p_destroy.add_argument('directory', help='its mount point or work directory')

    p_cleanup = sub.add_parser('cleanup', help='remove leftovers of aborted runs')
    p_cleanup.add_argument('--base-dir', default=DEFAULT_BASE_DIR)
    p_cleanup.add_argument('--all', action='store_true', help='also those whose owner still runs')

    p_list = sub.add_parser('list', help='show the filesystems under the base directory')
    p_list.add_argument('--base-dir', default=DEFAULT_BASE_DIR)

    args = parser.parse_args(argv)
    try:
        if args.command == 'create':
            output: object = create(args.kind, args.size, args.base_dir, owner_pid=args.owner_pid).to_dict()
        elif args.command == 'destroy':
            fs = LoopFs.load(args.directory)
            fs.destroy()
            output = {'destroyed': fs.to_dict()}
        elif args.command == 'cleanup':
            output = {'removed': cleanup_stale(args.base_dir, include_live=args.all)}
        else:
            output = list_filesystems(args.base_dir)
    except LoopFsError as exc:
        print('loopfs: %s' % exc, file=sys.stderr)
        return 1
    print(json.dumps(output, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())

# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared helpers of the benchmarks (standard library only).

- timing in alternation: every variant of a comparison runs once per round,
  the order rotating from round to round (A B C, B C A, C A B, ...), so slow
  drifts of the machine hit every variant alike; medians and paired ratios;
- test images: dense, sparse, fragmented, zero-filled;
- small tools: syncfs, filefrag's extent count, allocated bytes, formatting.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import os
import re
import statistics
import struct
import subprocess
import time

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

SBIN_PATH = '/usr/local/sbin:/usr/sbin:/sbin'

_LIBC = ctypes.CDLL(None, use_errno=True)


# -- system helpers -----------------------------------------------------------

def tool_env(extra: dict | None = None) -> dict:
    """The environment for the tools we spawn: C locale, sbin on PATH."""
    env = dict(os.environ)
    env['PATH'] = env.get('PATH', '/usr/bin:/bin') + ':' + SBIN_PATH
    env['LC_ALL'] = 'C'
    if extra:
        env.update(extra)
    return env


def syncfs(path: str) -> None:
    """Write back everything of the filesystem holding ``path`` (syncfs(2))."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _LIBC.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def allocated(path: str) -> int:
    """Bytes the filesystem allocated to ``path``."""
    return os.stat(path).st_blocks * 512


_EXTENTS_RE = re.compile(r'(\d+) extents? found')


def extent_count(path: str) -> int:
    """Extent count of ``path`` as filefrag (e2fsprogs) reports it."""
    result = subprocess.run(['filefrag', path], capture_output=True, text=True, env=tool_env(), check=True)
    found = _EXTENTS_RE.search(result.stdout)
    if not found:
        raise RuntimeError('cannot parse filefrag output: %r' % result.stdout)
    return int(found.group(1))


_FIEMAP = 0xC020660B
_FIEMAP_HEADER = struct.Struct('=QQIIII')
_FIEMAP_EXTENT_SIZE = 56
_FIEMAP_LAST = 0x1


def fiemap_count(path: str) -> int:
    """Number of extents FIEMAP lists for ``path`` (logical extents; filefrag merges physically adjacent ones)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        count = 0
        start = 0
        batch = 1024
        while True:
            request = bytearray(_FIEMAP_HEADER.size + batch * _FIEMAP_EXTENT_SIZE)
            _FIEMAP_HEADER.pack_into(request, 0, start, 0xFFFFFFFFFFFFFFFF - start, 0, 0, batch, 0)
            fcntl.ioctl(fd, _FIEMAP, request)
            mapped = _FIEMAP_HEADER.unpack_from(request, 0)[3]
            if mapped == 0:
                return count
            count += mapped
            last = _FIEMAP_HEADER.size + (mapped - 1) * _FIEMAP_EXTENT_SIZE
            logical, _physical, length = struct.unpack_from('=QQQ', request, last)
            flags = struct.unpack_from('=I', request, last + 40)[0]
            if flags & _FIEMAP_LAST:
                return count
            start = logical + length
    finally:
        os.close(fd)


def identical(left: str, right: str) -> bool:
    """Whether the two files have the same bytes.

    ``cmp`` up to CMP_LIMIT bytes.  Beyond, cmp reads every hole (a 10 GiB
    sparse pair took 61 s and filled 20 GiB of page cache), so larger files
    are compared where either has data (SEEK_DATA/SEEK_HOLE); where both have
    a hole they are equal without reading.
    """
    if os.stat(left).st_size != os.stat(right).st_size:
        return False
    if os.stat(left).st_size <= CMP_LIMIT:
        result = subprocess.run(['cmp', '--quiet', left, right], env=tool_env(), check=False)
        if result.returncode > 1:
            raise RuntimeError('cmp %s %s failed' % (left, right))
        return result.returncode == 0
    left_fd, right_fd = os.open(left, os.O_RDONLY), os.open(right, os.O_RDONLY)
    try:
        size = os.fstat(left_fd).st_size
        ranges = sorted(data_ranges(left_fd, size) + data_ranges(right_fd, size))
        merged = []
        for start, end in ranges:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        for start, end in merged:
            position = start
            while position < end:
                step = min(8 * MiB, end - position)
                if os.pread(left_fd, step, position) != os.pread(right_fd, step, position):
                    return False
                position += step
        return True
    finally:
        os.close(left_fd)
        os.close(right_fd)


CMP_LIMIT = 2 * GiB


def data_ranges(fd: int, size: int) -> list:
    """[(start, end)] of the data segments of ``fd`` (SEEK_DATA/SEEK_HOLE)."""
    ranges = []
    position = 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        ranges.append((start, end))
        position = end
    return ranges


def run_quiet(cmd: list[str], env: dict | None = None) -> None:
    """Run ``cmd``; raise with its output if it fails."""
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            env=env or tool_env(), check=False)
    if result.returncode != 0:
        raise RuntimeError('%s failed (%d): %s' % (' '.join(cmd), result.returncode,
                                                   (result.stderr or result.stdout).strip()[-2000:]))


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def durable_cp(cp_options: list[str], src_path: str, tmp_path: str, dst_path: str, dir_fd: int) -> None:
    """cp into a tempfile, fsync it, rename it over ``dst_path``, fsync the directory ``dir_fd``.

    What Qubes' file-reflink driver does around its cp, and the like-with-like
    counterpart of the core's durable file writing.
    """
    subprocess.run(['cp', *cp_options, '--', src_path, tmp_path], check=True)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp_path, dst_path)
    os.fsync(dir_fd)


def warm(path: str) -> None:
    """Read the data of ``path`` once (holes are skipped), so later runs find it in the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for start, end in data_ranges(fd, os.fstat(fd).st_size):
            position = start
            while position < end:
                got = len(os.pread(fd, min(8 * MiB, end - position), position))
                if not got:
                    break
                position += got
    finally:
        os.close(fd)


# -- images -----------------------------------------------------------------------

class _Pattern:
    """Cheap non-zero pseudo-random data: one random MiB, repeated, each write stamped with its offset."""

    def __init__(self):
        base = bytearray(os.urandom(MiB))
        # No 4 KiB block of the pattern may be all zeros (it never is, in practice; make sure).
        for block in range(0, MiB, 4 * KiB):
            base[block] |= 1
        self.base = bytes(base)

    def data(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        done = 0
        while done < length:
            start = (offset + done) % MiB
            take = min(MiB - start, length - done)
            out[done:done + take] = self.base[start:start + take]
            done += take
        stamp = (offset | 1).to_bytes(8, 'little')[:length]
        out[:len(stamp)] = stamp
        return bytes(out)


_PATTERNS: list = []


def pattern() -> _Pattern:
    """The data pattern of this run (made on first use)."""
    if not _PATTERNS:
        _PATTERNS.append(_Pattern())
    return _PATTERNS[0]


def write_image(path: str, size: int, pieces: list[tuple[int, int, str]], sync_every: int = 0) -> None:
    """Make ``path``: a sparse file of ``size`` with ``pieces`` = (offset, length, 'data'|'zero') written.

    ``sync_every`` > 0 fsyncs after that many pieces (to keep small writes from
    being merged into large extents).  The file is fsynced at the end.
    """
    remove(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        zero_mib = bytes(MiB)
        for index, (offset, length, kind) in enumerate(pieces):
            done = 0
            while done < length:
                step = min(MiB, length - done)
                buf = pattern().data(offset + done, step) if kind == 'data' else zero_mib[:step]
                os.pwrite(fd, buf, offset + done)
                done += step
            if sync_every and (index + 1) % sync_every == 0:
                os.fsync(fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def dense_pieces(size: int) -> list:
    return [(0, size, 'data')]


def spread_pieces(size: int, count: int, length: int, align: int = 64 * KiB) -> list:
    """``count`` data pieces of ``length`` spread over ``size``, at slightly irregular aligned offsets."""
    stride = size // count
    pieces = []
    for index in range(count):
        jitter = ((index * 37) % 17) * align
        offset = index * stride + min(jitter, max(stride - length, 0) // align * align)
        pieces.append((offset, length, 'data'))
    return pieces


def fragmented_pieces(count: int, piece: int = 4 * KiB, stride: int = 64 * KiB) -> list:
    return [(index * stride, piece, 'data') for index in range(count)]


def zero_region_pieces(size: int, data: int, zeros: int) -> list:
    """Alternating data and written-zero regions (zeros are written, so they are allocated)."""
    pieces = []
    offset = 0
    while offset < size:
        pieces.append((offset, min(data, size - offset), 'data'))
        offset += data
        if offset < size:
            pieces.append((offset, min(zeros, size - offset), 'zero'))
            offset += zeros
    return pieces


def small_zero_run_pieces(size: int, data: int = 768 * KiB, period: int = MiB) -> list:
    """In every ``period``, ``data`` bytes of data then zeros: a zero run shorter than a copy chunk."""
    pieces = []
    for offset in range(0, size, period):
        pieces.append((offset, data, 'data'))
        pieces.append((offset + data, period - data, 'zero'))
    return pieces


# -- timing -------------------------------------------------------------------------

@dataclasses.dataclass
class Variant:
    """One side of a comparison.

    ``run()`` is timed.  ``prepare()`` runs untimed before it, ``finish()``
    untimed after it and may return a dict of metrics for that run.
    """

    name: str
    run: object
    prepare: object = None
    finish: object = None


@dataclasses.dataclass
class Series:
    times: list
    metrics: list

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def metric(self, key: str):
        """Median of a numeric metric over the runs (None when it was never recorded)."""
        values = [m[key] for m in self.metrics if m and key in m and m[key] is not None]
        return statistics.median(values) if values else None


def alternate(variants: list[Variant], reps: int, warmup: bool = False) -> dict:
    """Run every variant ``reps`` times in rotating alternation; {name: Series}.

    With ``warmup`` each variant first runs once untimed (first-call effects,
    lazy imports, a clone that flushes its source).
    """
    out = {v.name: Series([], []) for v in variants}
    if warmup:
        for variant in variants:
            _one(variant)
    for round_index in range(reps):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            elapsed, metrics = _one(variant)
            out[variant.name].times.append(elapsed)
            out[variant.name].metrics.append(metrics)
    return out


def _one(variant: Variant):
    if variant.prepare:
        variant.prepare()
    start = time.perf_counter()
    variant.run()
    elapsed = time.perf_counter() - start
    metrics = variant.finish() if variant.finish else None
    return elapsed, metrics


def paired_ratio(series: dict, ours: str, theirs: str) -> float:
    """Median of the per-round ratios ours/theirs (rounds pair up by index)."""
    pairs = zip(series[ours].times, series[theirs].times, strict=True)
    return statistics.median(a / b for a, b in pairs if b > 0)


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


# -- formatting -----------------------------------------------------------------------

def fmt_time(seconds) -> str:
    if seconds is None:
        return '-'
    if seconds < 1e-3:
        return '%.0f µs' % (seconds * 1e6)
    if seconds < 1:
        return '%.1f ms' % (seconds * 1e3) if seconds < 0.1 else '%.0f ms' % (seconds * 1e3)
    return '%.2f s' % seconds


def fmt_bytes(value) -> str:
    if value is None:
        return '-'
    for unit, size in (('GiB', GiB), ('MiB', MiB), ('KiB', KiB)):
        if value >= size:
            return '%.1f %s' % (value / size, unit) if value % size else '%d %s' % (value // size, unit)
    return '%d B' % value


def fmt_ratio(value) -> str:
    return '-' if value is None else '%.2fx' % value


def fmt_size(value: int) -> str:
    return fmt_bytes(value).replace('.0 ', ' ')


def table(headers: list[str], rows: list[list[str]], aligns: str | None = None) -> str:
    """A plain-text table; ``aligns`` is a string of 'l'/'r' per column (default: first left)."""
    aligns = aligns or 'l' + 'r' * (len(headers) - 1)
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells):
        parts = []
        for cell, width, align in zip(cells, widths, aligns, strict=True):
            parts.append(str(cell).ljust(width) if align == 'l' else str(cell).rjust(width))
        return '  '.join(parts).rstrip()

    out = [line(headers), line(['-' * w for w in widths])]
    out.extend(line(row) for row in rows)
    return '\n'.join(out)


def markdown_table(headers: list[str], rows: list[list[str]], aligns: str | None = None) -> str:
    aligns = aligns or 'l' + 'r' * (len(headers) - 1)
    out = ['| ' + ' | '.join(headers) + ' |',
           '|' + '|'.join(':--' if a == 'l' else '--:' for a in aligns) + '|']
    out.extend('| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows)
    return '\n'.join(out)


# -- results ------------------------------------------------------------------------------

@dataclasses.dataclass
class Section:
    """The result of one case: a table (formatted cells), the raw data, goals and notes."""

    key: str
    title: str
    headers: list
    rows: list = dataclasses.field(default_factory=list)
    data: list = dataclasses.field(default_factory=list)
    goals: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    aligns: str | None = None

    def goal(self, text: str, measured: str, met: bool) -> None:
        self.goals.append({'case': self.key, 'goal': text, 'measured': measured, 'met': bool(met)})

    def as_dict(self) -> dict:
        return {'key': self.key, 'title': self.title, 'headers': self.headers, 'rows': self.rows,
                'data': self.data, 'goals': self.goals, 'notes': self.notes}

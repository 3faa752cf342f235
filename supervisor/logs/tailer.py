"""Incremental, memory-bounded reading of a growing job log, resumable from persisted state.

Only complete lines are returned: a line ends at `\\r` or `\\n` (each counts as one break, so `\\r\\n`
is two, matching the scanner's numbering). A partial last line stays unread, with the offset at its
start, until it is completed. A line longer than `max_line` is returned as its first `max_line` bytes
(one logical line) and the rest of it is skipped without being held in memory.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

# One call reads at most this much whatever `max_bytes` allows. Measured on the bench log: with 8 MiB
# reads the daemon's read-and-scan loop ran ~1.3x slower than with 1 MiB ones, because a fresh multi-MiB
# buffer per call, alive next to the caller's previous one, makes malloc hand memory back to the OS and
# page-fault it in again every call, and because the chunk no longer stays in L2 between count and scan.
_MAX_READ = 1024 * 1024
DEFAULT_MAX_BYTES = _MAX_READ
DEFAULT_MAX_LINE = 1024 * 1024
_SKIP_BLOCK = 1024 * 1024
# How far back from the end of a full read window to look for the last break before reading the window,
# so that the lines can be read at their exact length instead of read whole and copied into a slice.
_TAIL_PROBE = 16 * 1024
# Counting line breaks is most of the tailer's work: numpy's vectorised compare-and-count does it at
# memory speed (~0.14 s per GiB here, against ~0.33 s for the best pure-Python way, deleting with
# bytes.replace), which is what brings the whole scan to grep's speed (bench/scan_bench.py).
_LF, _CR = 0x0A, 0x0D
# Below this, two bytes.count calls (~0.8 s per GiB, a few microseconds for the lines a log gains between
# two passes) do, and numpy is imported only for the first large read: a daemon following logs that grow a
# line at a time never loads it, which keeps ~12 MB out of its RSS (bench/daemon_load.py).
_NUMPY_FROM = 64 * 1024


def count_lines(data: bytes) -> int:
    """Logical line breaks in `data`: every `\\r` and every `\\n`."""
    if len(data) < _NUMPY_FROM:
        return data.count(b"\n") + data.count(b"\r")
    import numpy as np

    view = np.frombuffer(data, dtype=np.uint8)
    return int(np.count_nonzero(view == _LF)) + int(np.count_nonzero(view == _CR))


def keep_chunk_memory() -> bool:
    """Ask glibc to serve MiB-sized buffers from its heap and keep freed memory, for a log-reading process.

    Every read returns a fresh ~1 MiB bytes object. By default glibc maps each one with mmap and unmaps it
    when freed, so every chunk is page-faulted in anew: a third of the scan's CPU time (measured with
    bench/scan_bench.py). Raising the mmap and trim thresholds keeps those pages in the heap for reuse.
    Returns False where it does not apply (not glibc); nothing else depends on it.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 16 << 20)) and bool(mallopt(m_trim_threshold, 64 << 20))


def give_back_memory() -> bool:
    """Return the heap's free pages to the OS (glibc ``malloc_trim``), once a burst of allocations is over.

    With :func:`keep_chunk_memory`'s thresholds glibc never trims by itself, so the tens of MB a Hyperscan
    compile allocates and frees again would stay in the daemon's RSS. Returns False where it does not apply
    (not glibc) or nothing could be given back.
    """
    try:
        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    return bool(malloc_trim(0))


@dataclass(frozen=True)
class TailState:
    path: Path
    inode: int | None = None  # None until the file was first seen
    offset: int = 0  # byte offset of the first unread byte (always at a line start)
    line_no: int = 0  # logical lines consumed before `offset`; the next line is line_no + 1
    in_long_line: bool = False  # inside an over-long line whose head was already returned

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TailState:
        inode = data.get("inode")
        return cls(
            path=Path(data["path"]),
            inode=int(inode) if inode is not None else None,
            offset=int(data.get("offset", 0)),
            line_no=int(data.get("line_no", 0)),
            in_long_line=bool(data.get("in_long_line", False)),
        )

    @property
    def next_line(self) -> int:
        """The 1-based number of the first line `read_new` will return: pass it to the scanner."""
        return self.line_no + 1


def _last_break(buf: bytes) -> int:
    return max(buf.rfind(b"\n"), buf.rfind(b"\r"))


def _first_break(buf: bytes) -> int:
    ends = [e for e in (buf.find(b"\n"), buf.find(b"\r")) if e != -1]
    return min(ends) if ends else -1


def read_new(
    state: TailState, max_bytes: int = DEFAULT_MAX_BYTES, max_line: int = DEFAULT_MAX_LINE
) -> tuple[TailState, bytes]:
    """Return the next complete lines (at most about `max_bytes`, and about 1 MiB whatever it allows,
    but at least one line when one is complete) and the state after them. A missing file returns the state
    unchanged; a truncated file or a different inode at the path starts over at offset 0, line 0."""
    if max_bytes < 1 or max_line < 1:
        raise ValueError("max_bytes and max_line must be positive")
    max_bytes = min(max_bytes, _MAX_READ)
    try:
        # Unbuffered: every read below is a positioned read of a known size straight into its bytes.
        with open(state.path, "rb", buffering=0) as fh:
            return _read(fh.fileno(), state, max_bytes, max_line)
    except FileNotFoundError:
        return state, b""


def _read(fd: int, state: TailState, max_bytes: int, max_line: int) -> tuple[TailState, bytes]:
    st = os.fstat(fd)
    if state.inode is None or st.st_ino != state.inode or st.st_size < state.offset:
        if state.inode is None and state.offset <= st.st_size:
            state = replace(state, inode=st.st_ino)
        else:
            state = TailState(path=state.path, inode=st.st_ino)
    if st.st_size == state.offset:
        return state, b""
    if state.in_long_line:
        state = _skip_long_line(fd, state, max_line)
        if state.in_long_line:
            return state, b""
    data = _read_lines(fd, state.offset, max_bytes, st.st_size)
    if data is None:
        buf = os.pread(fd, max_bytes, state.offset)
        cut = _last_break(buf)
        if cut == -1:
            if len(buf) < max_bytes and len(buf) < max_line:
                return state, b""  # a line still being written: leave it for later
            return _long_line_head(fd, state, buf, max_line)
        data = buf if cut + 1 == len(buf) else buf[: cut + 1]
    return replace(state, offset=state.offset + len(data), line_no=state.line_no + count_lines(data)), data


def _read_lines(fd: int, offset: int, max_bytes: int, size: int) -> bytes | None:
    """The complete lines of a window that the file fills, read at their exact length: its last break is
    found in the window's tail first. None when that does not apply (the window reaches the end of the
    file, no break near its end, or the file changed between the two reads)."""
    probe_len = min(_TAIL_PROBE, max_bytes)
    if size - offset <= max_bytes or probe_len == max_bytes:
        return None
    probe_at = offset + max_bytes - probe_len
    brk = _last_break(os.pread(fd, probe_len, probe_at))
    if brk == -1:
        return None
    length = probe_at + brk + 1 - offset
    data = os.pread(fd, length, offset)
    return data if len(data) == length and data[-1:] in (b"\n", b"\r") else None


def _long_line_head(fd: int, state: TailState, first: bytes, max_line: int) -> tuple[TailState, bytes]:
    """`first` holds no line break. Extend the read until a break or `max_line` bytes; a line that
    reaches the cap is returned as its head plus a synthetic newline and the rest is skipped."""
    buf = bytearray(first)
    while len(buf) < max_line:
        more = os.pread(fd, min(_SKIP_BLOCK, max_line - len(buf)), state.offset + len(buf))
        if not more:
            return state, b""  # shorter than the cap and not yet complete
        brk = _first_break(more)
        if brk != -1:
            buf += more[: brk + 1]
            return replace(state, offset=state.offset + len(buf), line_no=state.line_no + 1), bytes(buf)
        buf += more
    del buf[max_line:]
    skipping = replace(state, offset=state.offset + max_line, line_no=state.line_no + 1, in_long_line=True)
    buf += b"\n"
    return _skip_long_line(fd, skipping, max_line), bytes(buf)


def _skip_long_line(fd: int, state: TailState, max_line: int) -> TailState:
    """Discard the rest of an over-long line (whose head was already returned) up to and including its
    break, one block at a time; without a break yet, remember how far it was skipped."""
    offset = state.offset
    block_size = min(_SKIP_BLOCK, max_line)
    while True:
        block = os.pread(fd, block_size, offset)
        if not block:
            return replace(state, offset=offset)
        brk = _first_break(block)
        if brk != -1:
            return replace(state, offset=offset + brk + 1, in_long_line=False)
        offset += len(block)

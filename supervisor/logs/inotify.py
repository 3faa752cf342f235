"""Wake the daemon early when a job log changes, through Linux inotify.

Only a hint: NFS and Lustre deliver no inotify events for writes made on other nodes, so the daemon
still polls every log on each tick. A directory that does not exist yet, or that inotify refuses
(watch limit reached), is simply left to polling and retried on the next `set_dirs`; so is every
directory where inotify is not there at all (another OS, no instance left).

One inotify instance and one thread serve every directory, through libc's three calls. A log written a
line at a time raises an event per line: with 100 logs each appended a line a second, watchdog's observer
(a buffer thread, an emitter per directory and a dispatch queue) spent 1.8-2.9 % of a core on their
events, this 0.4 %, measured side by side (docs/benchmarks.md, "Daemon RSS and CPU").
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

# From <sys/inotify.h>.
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
# Reading a log ourselves raises IN_OPEN, IN_ACCESS and IN_CLOSE_NOWRITE: waking on those would loop.
WAKE_MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
_READ_SIZE = 64 * 1024
# After reporting a read's changes, the thread lets events gather this long before it reads again: logs
# written a line at a time then cost a read per interval instead of one per line. The first change after a
# quiet spell is still reported at once, and no later one waits longer than the daemon's own minimum gap
# between two wake-up passes (0.2 s) would make it wait anyway.
COALESCE_S = 0.05


def parse_events(data: bytes) -> Iterator[tuple[int, int, str]]:
    """(watch descriptor, mask, file name) of each event in one read of an inotify descriptor."""
    pos = 0
    while pos + _EVENT.size <= len(data):
        wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
        name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
        pos += _EVENT.size + length
        yield wd, mask, os.fsdecode(name)


class _Inotify:
    """One inotify instance (non-blocking), through ctypes."""

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            self._add, self._rm = libc.inotify_add_watch, libc.inotify_rm_watch
            init = libc.inotify_init1
        except (OSError, AttributeError) as exc:
            raise OSError(errno.ENOSYS, f"no inotify here ({exc})") from None
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.fd = init(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            raise _errno_error()

    def add(self, path: Path) -> int:
        wd = self._add(self.fd, os.fsencode(path), WAKE_MASK | IN_ONLYDIR)
        if wd < 0:
            raise _errno_error()
        return int(wd)

    def remove(self, wd: int) -> None:
        self._rm(self.fd, wd)  # fails only for a watch already gone with its directory

    def close(self) -> None:
        os.close(self.fd)


def _errno_error() -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code))


class LogDirWatcher:
    """Watches a changing set of directories (not recursively) and sets `wake` on file changes."""

    def __init__(
        self, on_change: Callable[[Path], None] | None = None, *, wake: threading.Event | None = None,
    ) -> None:
        self.wake = wake if wake is not None else threading.Event()
        self._on_change = on_change
        self._inotify: _Inotify | None = None
        self._unavailable = ""  # why there is no inotify instance, once start() found out
        self._thread: threading.Thread | None = None
        self._stop_w = -1
        self._watches: dict[Path, int] = {}
        self._dirs: dict[int, set[Path]] = {}  # watch descriptor -> its directories (one inode, several paths)
        self._wanted: set[Path] = set()
        self._lock = threading.Lock()
        self.unwatched: dict[Path, str] = {}  # directory -> why it is left to polling

    def _notify(self, path: Path) -> None:
        self.wake.set()
        if self._on_change is not None:
            self._on_change(path)

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            try:
                self._inotify = _Inotify()
            except OSError as exc:
                self._unavailable = f"inotify unavailable: {exc.strerror}"
            stop_r, self._stop_w = os.pipe()
            self._thread = threading.Thread(target=self._run, args=(self._inotify, stop_r), name="inotify",
                                            daemon=True)
            self._thread.start()
            self._sync()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            os.write(self._stop_w, b"x")
        thread.join(timeout)
        with self._lock:
            os.close(self._stop_w)
            if self._inotify is not None:
                self._inotify.close()  # removes every watch
            self._inotify = None
            self._watches.clear()
            self._dirs.clear()

    def __enter__(self) -> LogDirWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def watched(self) -> frozenset[Path]:
        with self._lock:
            return frozenset(self._watches)

    def set_dirs(self, dirs: Iterable[Path]) -> None:
        """Make the watch set exactly `dirs`; call it every tick (cheap when nothing changed)."""
        with self._lock:
            self._wanted = {Path(d).resolve() for d in dirs}
            self._sync()

    def wait(self, timeout: float | None) -> bool:
        """Block until a change or `timeout`; True when woken by a change. Clears the flag."""
        woke = self.wake.wait(timeout)
        self.wake.clear()
        return woke

    def _sync(self) -> None:
        if self._thread is None:
            return
        for path in set(self._watches) - self._wanted:
            self._unwatch(path)
        self.unwatched = {p: why for p, why in self.unwatched.items() if p in self._wanted}
        for path in self._wanted - set(self._watches):
            if not path.is_dir():
                self.unwatched[path] = "not a directory (yet)"
                continue
            if self._inotify is None:
                self.unwatched[path] = self._unavailable
                continue
            try:
                wd = self._inotify.add(path)
            except OSError as exc:
                self.unwatched[path] = f"inotify refused: {exc.strerror}"
                continue
            self._watches[path] = wd
            self._dirs.setdefault(wd, set()).add(path)
            self.unwatched.pop(path, None)

    def _unwatch(self, path: Path) -> None:
        wd = self._watches.pop(path)
        paths = self._dirs.get(wd, set())
        paths.discard(path)
        if not paths:
            self._dirs.pop(wd, None)
            if self._inotify is not None:
                self._inotify.remove(wd)

    def _run(self, inotify: _Inotify | None, stop_r: int) -> None:
        stopped = select.poll()
        stopped.register(stop_r, select.POLLIN)
        either = select.poll()
        either.register(stop_r, select.POLLIN)
        if inotify is not None:
            either.register(inotify.fd, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in either.poll()}
                if stop_r in ready or inotify is None:
                    return
                try:
                    data = os.read(inotify.fd, _READ_SIZE)
                except BlockingIOError:
                    continue
                for path in self._changed(data):
                    self._notify(path)
                if stopped.poll(COALESCE_S * 1000):
                    return
        finally:
            os.close(stop_r)

    def _changed(self, data: bytes) -> list[Path]:
        """The files (or, after lost events, the directories) a read's events say changed."""
        changed: list[Path] = []
        with self._lock:
            for wd, mask, name in parse_events(data):
                if mask & IN_Q_OVERFLOW:
                    changed.extend(self._watches)  # events were lost: anything may have changed
                elif mask & IN_IGNORED:
                    # The directory went away (deleted, unmounted): the next set_dirs watches it again.
                    for path in self._dirs.pop(wd, set()):
                        self._watches.pop(path, None)
                elif mask & WAKE_MASK and name and not mask & IN_ISDIR:
                    changed.extend(path / name for path in sorted(self._dirs.get(wd, ())))
        return changed

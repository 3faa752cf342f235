"""Wake the daemon early when a job log changes, through inotify (watchdog).

Only a hint: NFS and Lustre deliver no inotify events for writes made on other nodes, so the daemon
still polls every log on each tick. A directory that does not exist yet, or that inotify refuses
(watch limit reached), is simply left to polling and retried on the next `set_dirs`.

On Linux every watched directory is a watch on one inotify descriptor, read by one thread of ours
(``_Reader``) with watchdog's inotify bindings: at once after a quiet spell, at most every 0.1 s while
events keep coming. watchdog's ``Observer`` runs an emitter thread per watched directory and a dispatcher
thread, and every event crosses them; its shared reader (``InotifyFD``) still wakes once per event. For a
hundred logs that each grow by a line a second, written at different moments, this reader took 0.42-0.58 % of
a core on the 2-CPU test machine, watchdog's shared reader 3.0 % and its Observer 7.41 %
(bench/inotify_load.py, 2026-12-03; docs/benchmarks.md). Elsewhere, or given an ``observer_factory``, the
Observer is used.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

try:
    from watchdog.observers.inotify_c import (
        InotifyConstants,
        WatchDescriptor,
        inotify_add_watch,
        inotify_init,
        inotify_rm_watch,
    )
except (ImportError, OSError):  # not Linux (watchdog.utils.UnsupportedLibcError is an OSError)
    inotify_init = None  # type: ignore[assignment]

# Reading a log ourselves produces opened/closed_no_write events: waking on those would loop.
_WAKE_EVENTS = (FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileClosedEvent)


class _Handler(FileSystemEventHandler):
    def __init__(self, notify: Callable[[Path | None], None]) -> None:
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or not isinstance(event, _WAKE_EVENTS):
            return
        path = event.dest_path if isinstance(event, FileMovedEvent) else event.src_path
        self._notify(Path(path if isinstance(path, str) else path.decode(errors="replace")))


class _Reader:
    """One inotify descriptor for every watched directory, read by one thread; while events come faster than
    one per PACE_S, at most every PACE_S.

    watchdog's inotify bindings (``inotify_init``, ``inotify_add_watch``, ``inotify_rm_watch``) with a read
    loop of our own: the kernel queues the events that arrive between two reads (up to
    ``/proc/sys/fs/inotify/max_queued_events``; past that one IN_Q_OVERFLOW, which wakes too), so a burst
    costs one wake-up of this thread instead of one per write."""

    # The events _WAKE_EVENTS come from, asked of the kernel for nothing else.
    MASK = (InotifyConstants.IN_MODIFY | InotifyConstants.IN_CREATE | InotifyConstants.IN_MOVED_TO
            | InotifyConstants.IN_CLOSE_WRITE) if inotify_init is not None else 0
    # The daemon steps at most one log wake-up pass per 0.2 s (app/daemon.py MIN_WAKE_INTERVAL): a change read
    # up to this much later than it happened is still read before the pass it would have woken.
    PACE_S = 0.1
    _BUFFER = 64 * 1024

    def __init__(self, notify: Callable[[Path | None], None]) -> None:
        self._notify = notify
        fd = inotify_init()
        if fd == -1:
            raise _errno_error()
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe()
        self._stopping = threading.Event()
        self._dirs: dict[int, Path] = {}  # watch descriptor -> directory
        self._thread = threading.Thread(target=self._run, name="inotify", daemon=True)
        self._thread.start()

    def add(self, path: Path) -> int:
        wd = int(inotify_add_watch(self._fd, os.fsencode(path), self.MASK))
        if wd == -1:
            raise _errno_error()
        self._dirs[wd] = path
        return wd

    def remove(self, wd: int) -> None:
        if self._dirs.pop(wd, None) is not None:
            # -1 (EINVAL) when the kernel removed it already: nothing to undo.
            inotify_rm_watch(self._fd, WatchDescriptor(wd))

    def watching(self, wd: int) -> bool:
        """False once the kernel removed the watch (its directory was deleted or unmounted)."""
        return wd in self._dirs

    def close(self, timeout: float) -> None:
        self._stopping.set()
        os.write(self._stop_w, b"x")
        self._thread.join(timeout)
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        last = 0.0
        while not self._stopping.is_set():
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                data = os.read(self._fd, self._BUFFER)
            except OSError:
                return  # closed under us
            self._dispatch(data)
            now = time.monotonic()
            if now - last < self.PACE_S:
                # Events are coming fast: let the kernel queue them for one read. A change after a quiet
                # spell is read at once (bench/detect_latency.py: pacing every read cost its p50 15-30 ms).
                self._stopping.wait(self.PACE_S)
            last = now

    def _dispatch(self, data: bytes) -> None:
        at = 0
        while at + 16 <= len(data):
            wd, mask, _cookie, length = struct.unpack_from("iIII", data, at)
            name = data[at + 16:at + 16 + length].rstrip(b"\0")
            at += 16 + length
            if mask & InotifyConstants.IN_Q_OVERFLOW:
                self._notify(None)  # events were lost: any log may have changed
            elif mask & InotifyConstants.IN_IGNORED:
                self._dirs.pop(wd, None)
            elif mask & self.MASK and not mask & InotifyConstants.IN_ISDIR and (d := self._dirs.get(wd)) is not None:
                self._notify(d / os.fsdecode(name))


def _errno_error() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


class LogDirWatcher:
    """Watches a changing set of directories (not recursively) and sets `wake` on file changes."""

    def __init__(
        self,
        on_change: Callable[[Path | None], None] | None = None,
        *,
        wake: threading.Event | None = None,
        observer_factory: Callable[[], BaseObserver] | None = None,
    ) -> None:
        self.wake = wake if wake is not None else threading.Event()
        self._on_change = on_change
        self._observer_factory = observer_factory
        self._observer: BaseObserver | None = None
        self._reader: _Reader | None = None
        self._watches: dict[Path, ObservedWatch | int] = {}
        self._wanted: set[Path] = set()
        self._lock = threading.Lock()
        self.unwatched: dict[Path, str] = {}  # directory -> why it is left to polling

    def _notify(self, path: Path | None) -> None:
        self.wake.set()
        if self._on_change is not None:
            self._on_change(path)

    def start(self) -> None:
        with self._lock:
            if self._observer is not None or self._reader is not None:
                return
            if self._observer_factory is None and inotify_init is not None:
                self._reader = _Reader(self._notify)
            else:
                observer = Observer() if self._observer_factory is None else self._observer_factory()
                observer.daemon = True
                observer.start()
                self._observer = observer
            self._sync()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            observer, self._observer = self._observer, None
            reader, self._reader = self._reader, None
            self._watches.clear()
        if reader is not None:
            reader.close(timeout)
        if observer is not None:
            observer.stop()
            observer.join(timeout)

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
        observer, reader = self._observer, self._reader
        if observer is None and reader is None:
            return
        if reader is not None:
            # A directory deleted and made again is a new inode: watch it anew.
            self._watches = {p: w for p, w in self._watches.items() if isinstance(w, int) and reader.watching(w)}
        for path in set(self._watches) - self._wanted:
            watch = self._watches.pop(path)
            with contextlib.suppress(KeyError, OSError):  # already gone with its directory
                if isinstance(watch, int):
                    if reader is not None:
                        reader.remove(watch)
                elif observer is not None:
                    observer.unschedule(watch)
        self.unwatched = {p: why for p, why in self.unwatched.items() if p in self._wanted}
        handler = _Handler(self._notify)
        for path in self._wanted - set(self._watches):
            if not path.is_dir():
                self.unwatched[path] = "not a directory (yet)"
                continue
            try:
                if reader is not None:
                    self._watches[path] = reader.add(path)
                elif observer is not None:
                    self._watches[path] = observer.schedule(
                        handler, str(path), recursive=False, event_filter=list(_WAKE_EVENTS)
                    )
            except OSError as exc:
                self.unwatched[path] = f"inotify refused: {exc}"
                continue
            self.unwatched.pop(path, None)

"""Wake the daemon early when a job log changes, through inotify (watchdog).

Only a hint: NFS and Lustre deliver no inotify events for writes made on other nodes, so the daemon
still polls every log on each tick. A directory that does not exist yet, or that inotify refuses
(watch limit reached), is simply left to polling and retried on the next `set_dirs`.
"""

from __future__ import annotations

import contextlib
import threading
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

# Reading a log ourselves produces opened/closed_no_write events: waking on those would loop.
_WAKE_EVENTS = (FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileClosedEvent)


class _Handler(FileSystemEventHandler):
    def __init__(self, notify: Callable[[Path], None]) -> None:
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or not isinstance(event, _WAKE_EVENTS):
            return
        path = event.dest_path if isinstance(event, FileMovedEvent) else event.src_path
        self._notify(Path(path if isinstance(path, str) else path.decode(errors="replace")))


class LogDirWatcher:
    """Watches a changing set of directories (not recursively) and sets `wake` on file changes."""

    def __init__(
        self,
        on_change: Callable[[Path], None] | None = None,
        *,
        wake: threading.Event | None = None,
        observer_factory: Callable[[], BaseObserver] = Observer,
    ) -> None:
        self.wake = wake if wake is not None else threading.Event()
        self._on_change = on_change
        self._observer_factory = observer_factory
        self._observer: BaseObserver | None = None
        self._watches: dict[Path, ObservedWatch] = {}
        self._wanted: set[Path] = set()
        self._lock = threading.Lock()
        self.unwatched: dict[Path, str] = {}  # directory -> why it is left to polling

    def _notify(self, path: Path) -> None:
        self.wake.set()
        if self._on_change is not None:
            self._on_change(path)

    def start(self) -> None:
        with self._lock:
            if self._observer is not None:
                return
            observer = self._observer_factory()
            observer.daemon = True
            observer.start()
            self._observer = observer
            self._sync()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            observer, self._observer = self._observer, None
            self._watches.clear()
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
        observer = self._observer
        if observer is None:
            return
        for path in set(self._watches) - self._wanted:
            with contextlib.suppress(KeyError, OSError):  # already gone with its directory
                observer.unschedule(self._watches.pop(path))
        self.unwatched = {p: why for p, why in self.unwatched.items() if p in self._wanted}
        handler = _Handler(self._notify)
        for path in self._wanted - set(self._watches):
            if not path.is_dir():
                self.unwatched[path] = "not a directory (yet)"
                continue
            try:
                self._watches[path] = observer.schedule(
                    handler, str(path), recursive=False, event_filter=list(_WAKE_EVENTS)
                )
            except OSError as exc:
                self.unwatched[path] = f"inotify refused: {exc}"
                continue
            self.unwatched.pop(path, None)

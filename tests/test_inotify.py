"""The inotify wake-ups (supervisor.logs.inotify) against the real kernel, and the decoding of its events."""

from __future__ import annotations

import os
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.logs import inotify
from supervisor.logs.inotify import IN_CREATE, IN_ISDIR, IN_MODIFY, LogDirWatcher, parse_events

WAIT_S = 10.0  # bounds a hang; not a claim about speed


class Changes:
    """What a watcher reported, with a way to wait for the next report."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.seen = threading.Event()

    def __call__(self, path: Path) -> None:
        self.paths.append(path)
        self.seen.set()

    def next(self) -> Path:
        assert self.seen.wait(WAIT_S), "no change reported"
        self.seen.clear()
        return self.paths[-1]


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
def watcher(changes: Changes) -> Iterator[LogDirWatcher]:
    with LogDirWatcher(changes) as w:
        yield w


def event(wd: int, mask: int, name: str) -> bytes:
    raw = name.encode()
    padded = raw + b"\0" * (16 - len(raw) % 16) if raw else b""
    return struct.pack("iIII", wd, mask, 0, len(padded)) + padded


def test_events_of_one_read_are_decoded_in_order() -> None:
    data = event(1, IN_MODIFY, "train-L1.log") + event(2, IN_CREATE | IN_ISDIR, "sub") + event(1, IN_MODIFY, "")
    assert list(parse_events(data)) == [(1, IN_MODIFY, "train-L1.log"), (2, IN_CREATE | IN_ISDIR, "sub"),
                                        (1, IN_MODIFY, "")]
    assert list(parse_events(b"")) == []


def test_a_line_appended_to_a_log_wakes_with_its_path(
    tmp_path: Path, watcher: LogDirWatcher, changes: Changes,
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "train-L1.log"
    log.write_text("")
    watcher.set_dirs([logs])
    with log.open("a") as out:
        out.write("step 1\n")
        out.flush()
        assert changes.next() == log.resolve()


def test_reading_a_log_or_making_a_directory_does_not_wake(
    tmp_path: Path, watcher: LogDirWatcher, changes: Changes,
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("written before the watch\n")
    watcher.set_dirs([logs])
    (logs / "a.log").read_bytes()  # what every pass does: it must not call for another pass
    (logs / "sub").mkdir()
    (logs / "b.log").write_text("x\n")  # the first change to report
    assert changes.next().name == "b.log"
    assert [p.name for p in changes.paths] == ["b.log"] * len(changes.paths)


def test_a_directory_removed_and_made_again_is_watched_again(
    tmp_path: Path, watcher: LogDirWatcher, changes: Changes,
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    watcher.set_dirs([logs])
    assert watcher.watched == {logs.resolve()}
    shutil.rmtree(logs)
    # The kernel drops the watch with its directory; the watcher learns it from the event that says so.
    deadline = time.monotonic() + WAIT_S
    while watcher.watched and time.monotonic() < deadline:
        time.sleep(0.02)
    assert watcher.watched == frozenset()
    watcher.set_dirs([logs])
    assert logs.resolve() in watcher.unwatched
    logs.mkdir()
    watcher.set_dirs([logs])
    assert watcher.watched == {logs.resolve()} and watcher.unwatched == {}
    (logs / "a.log").write_text("x\n")
    assert changes.next().name == "a.log"


def test_without_inotify_every_directory_is_left_to_polling(
    tmp_path: Path, changes: Changes, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unavailable() -> None:
        raise OSError(38, os.strerror(38))

    monkeypatch.setattr(inotify, "_Inotify", unavailable)
    with LogDirWatcher(changes) as watcher:
        watcher.set_dirs([tmp_path])
        assert watcher.watched == frozenset()
        assert watcher.unwatched[tmp_path.resolve()].startswith("inotify unavailable: ")

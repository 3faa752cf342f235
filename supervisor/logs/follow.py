"""Following the logs of live attempts: read what is new since the stored offset, scan it, report.

The offset lives in the attempt row (``log_tail``) and is written in the same transaction as the
reaction to what was read, so a restarted supervisor continues where it stopped and never reacts to
an old line twice. inotify (``watchdog``) only wakes the daemon early; every tick also reads, because
NFS and Lustre do not deliver inotify events for writes made on other nodes. For those the daemon asks
:meth:`LogWatcher.grown` every ``--log-poll``: one ``stat`` per live log, no read, no database write.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.domain import verdict
from supervisor.domain.types import LogMatch, Progress
from supervisor.logs.progress import last_loss
from supervisor.logs.scanner import Catalogue
from supervisor.logs.tailer import TailState, read_new

# Bound the work one tick spends on one log; the rest is read on the next tick.
MAX_BYTES_PER_TICK = 64 * 1024 * 1024
# 1 MiB reads measured faster than 8 MiB (cache-friendly) in bench/scan_bench.py.
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class LogCursor:
    """Where one attempt's log was left: what :meth:`LogWatcher.read` needs, copied out of the database."""

    path: str | None  # None or still containing %j: the job has no log yet
    tail: dict[str, Any] | None  # the stored TailState
    hang_hint: dict[str, Any] | None  # the hang hint stored with the last read


@dataclass(frozen=True)
class Seen:
    tail: dict[str, Any] = field(default_factory=dict)  # attempt columns to store with the reaction
    matches: tuple[LogMatch, ...] = ()  # the finishes and the deciding match (domain.verdict)
    progress: Progress | None = None
    new_output: bool = False
    loss: float | None = None  # the last finite training loss in what was read

    @property
    def hang_hint(self) -> dict[str, Any] | None:
        return self.tail.get("hang_hint")


def _hang_hint(matches: Sequence[LogMatch], last_line: int, earlier: dict[str, Any] | None) -> dict[str, Any] | None:
    """The hang hint the log now ends on, if any: new in this read, or an earlier one still near the end."""
    if matches:
        hint = verdict.hang_cause(matches, last_line)
        return {"signature": hint.signature, "text": hint.text, "line": hint.line} if hint is not None else None
    if earlier is not None and last_line - int(earlier.get("line", 0)) <= verdict.HINT_WITHIN_LINES:
        return earlier
    return None


class LogWatcher:
    def __init__(self) -> None:
        self._catalogues: dict[int, tuple[str, Catalogue]] = {}
        self._watcher: Any = None
        # Per log, the size that last made grown() say yes: a partial last line stays unread (the stored
        # offset stays before it), and must not call for a pass every --log-poll until it is completed.
        self._announced: dict[str, int] = {}

    def resubmit_limits(self, run_id: int, run_name: str, entries: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Signatures that may cause only so many resubmissions before the stage fails (e.g. ECC, NCCL)."""
        catalogue = self.catalogue(run_id, run_name, entries)
        return {sig.name: sig.spec.max_resubmits for sig in catalogue.signatures
                if sig.spec.max_resubmits is not None}

    def catalogue(self, run_id: int, run_name: str, entries: Sequence[Mapping[str, Any]]) -> Catalogue:
        """The built-in catalogue merged with the run's own `signatures:` (compiled once per run)."""
        key = json.dumps(list(entries), sort_keys=True)
        cached = self._catalogues.get(run_id)
        if cached is None or cached[0] != key:
            cached = (key, Catalogue.load(list(entries) or None, source=f"run {run_name} signatures"))
            self._catalogues[run_id] = cached
        return cached[1]

    def read(self, catalogue: Catalogue, cursor: LogCursor, kind_progress: Callable[[str], Progress | None]) -> Seen:
        """Read what the log gained since ``cursor`` (at most MAX_BYTES_PER_TICK) and scan it.

        ``kind_progress`` is the stage kind's own progress parser (e.g. rsync's progress2 line).
        """
        if not cursor.path or "%j" in cursor.path:
            return Seen()
        state = TailState.from_dict(cursor.tail) if cursor.tail else TailState(Path(cursor.path))
        matches: list[LogMatch] = []
        progress: Progress | None = None
        loss: float | None = None
        read = 0
        start = state
        while read < MAX_BYTES_PER_TICK:
            new_state, data = read_new(state, max_bytes=CHUNK)
            if not data:
                state = new_state
                break
            result = catalogue.scan_chunk(data, state.next_line)
            matches.extend(result.matches)
            progress = kind_progress(data.decode(errors="replace")) or result.progress or progress
            if (latest := last_loss(data)) is not None:
                loss = latest
            read += len(data)
            state = new_state
        if state == start:
            return Seen()
        tail = {"log_tail": state.to_dict(), "hang_hint": _hang_hint(matches, state.line_no, cursor.hang_hint)}
        return Seen(tail=tail, matches=verdict.read(matches).matches, progress=progress, new_output=read > 0,
                    loss=loss)

    def grown(self, cursors: Iterable[LogCursor]) -> bool:
        """Whether any of these logs changed since it was last read: bigger than the stored offset (or
        smaller: truncated), or another file at the path. Only ``stat``: cheap enough for every few seconds."""
        announced: dict[str, int] = {}
        changed = False
        for cursor in cursors:
            if not cursor.path or "%j" in cursor.path:
                continue
            try:
                st = Path(cursor.path).stat()
            except OSError:
                continue  # not created yet, or its filesystem is away: the poll's pass reports that
            state = TailState.from_dict(cursor.tail) if cursor.tail else TailState(Path(cursor.path))
            if st.st_size == state.offset and st.st_ino == (state.inode or st.st_ino):
                continue
            announced[cursor.path] = st.st_size
            if self._announced.get(cursor.path) != st.st_size:
                changed = True
        self._announced = announced  # logs no longer live are forgotten
        return changed

    # ---- inotify wake-ups --------------------------------------------------------------------------

    def start(self, wake: Callable[[], None]) -> None:
        from supervisor.logs.inotify import LogDirWatcher

        self._watcher = LogDirWatcher(lambda _path: wake())
        self._watcher.start()

    def watch(self, dirs: Iterable[Path]) -> None:
        if self._watcher is not None:
            self._watcher.set_dirs(set(dirs))

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

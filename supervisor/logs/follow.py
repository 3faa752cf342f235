"""Following the logs of live attempts: read what is new since the stored offset, scan it, report.

The offset lives in the attempt row (``log_tail``) and is written in the same transaction as the
reaction to what was read, so a restarted supervisor continues where it stopped and never reacts to
an old line twice. inotify (``watchdog``) only wakes the daemon early; every tick also reads, because
NFS and Lustre do not deliver inotify events for writes made on other nodes. For those the daemon asks
:meth:`LogWatcher.grown` every ``--log-poll``: one ``stat`` per live log, no read, no database write.

A wake-up does not step every run whose log grew: :meth:`LogWatcher.peek` reads the lines added since it
last looked (without moving the stored offset) and scans them, and only a run whose new lines hold a match
the core acts on (:func:`worth_a_pass`) is stepped at once. Lines that only move a progress bar or print a
loss are recorded by the interval pass, so the progress, loss and last output that ``status`` shows, and the
stage kinds' own checks (a final checkpoint, the last one saved), are as fresh as ``--poll``; a reaction to a
failure line or a finish comes as quickly as before.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.domain import verdict
from supervisor.domain.types import LogMatch, Progress, SignatureAction
from supervisor.logs.progress import last_loss
from supervisor.logs.scanner import Catalogue
from supervisor.logs.tailer import TailState, give_back_memory, read_new

# Bound the work one tick spends on one log; the rest is read on the next tick.
MAX_BYTES_PER_TICK = 64 * 1024 * 1024
# 1 MiB reads measured faster than 8 MiB (cache-friendly) in bench/scan_bench.py.
CHUNK = 1024 * 1024
# Runs usually share one catalogue (the built-in one, or a team's signatures file): one compiled Hyperscan
# database per distinct `signatures:` value, the least recently used dropped beyond this many.
CATALOGUE_CACHE_SIZE = 32
# A wake-up leaves unread lines that need no reaction to the interval pass, but no more than this many
# bytes of them: a chatty log still has its stored offset moved (and no pass reads much of it twice).
PEEK_LIMIT = CHUNK


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


def worth_a_pass(matches: Sequence[LogMatch], unread: int, names_nodes: Collection[str] = ()) -> bool:
    """Whether a log's new lines call for stepping its run now rather than at the interval pass: they hold a
    match the core acts on (a finish, or a line that decides a reaction), or more than PEEK_LIMIT bytes of
    the log are unread. Hang hints and ``ignore`` matches wait: a hint only matters once the log has stopped.

    A line that would exclude a node but names none waits too when its signature has a line that names the
    node (``names_nodes``): slurmstepd's ``*** JOB n ON host CANCELLED ... DUE TO NODE FAILURE ***`` names
    the batch host, and srun's ``Node failure on NODE`` (the dead node) may be written a moment later.
    SLURM is ending the job already; the next peek that finds srun's line, or the interval pass, reads both."""
    if unread > PEEK_LIMIT:
        return True
    reading = verdict.read(matches)
    cause = reading.cause
    waits = cause is not None and cause.action is SignatureAction.RESUBMIT_EXCLUDE_NODE and cause.node is None \
        and cause.signature in names_nodes
    return bool(reading.finishes) or (cause is not None and not waits)


@dataclass(frozen=True)
class _Peeked:
    """How far :meth:`LogWatcher.peek` has read a log past its stored offset (finding nothing worth a pass)."""

    stored: dict[str, Any] | None  # the stored TailState this reading continues from
    state: TailState  # where the peek stopped
    unread: int  # bytes read past the stored offset


def _changed(state: TailState) -> bool:
    """Whether the file at the state's path differs from where the state stopped (one ``stat``)."""
    try:
        st = state.path.stat()
    except OSError:
        return False  # not created yet, or its filesystem is away: the interval pass reports that
    return st.st_size != state.offset or st.st_ino != (state.inode or st.st_ino)


class LogWatcher:
    def __init__(self, *, catalogues: int = CATALOGUE_CACHE_SIZE) -> None:
        self._catalogues: OrderedDict[str, Catalogue] = OrderedDict()
        self._catalogue_limit = catalogues
        self._peeked: dict[str, _Peeked] = {}
        self._watcher: Any = None
        # What inotify reported since the last wake-up pass took it (touched()), from its reader thread.
        self._touch_lock = threading.Lock()
        self._touched: set[str] = set()
        self._everything = True
        # Per log, the size that last made grown() say yes: a partial last line stays unread (the stored
        # offset stays before it), and must not call for a pass every --log-poll until it is completed.
        self._announced: dict[str, int] = {}

    def resubmit_limits(self, run_name: str, entries: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Signatures that may cause only so many resubmissions before the stage fails (e.g. ECC, NCCL)."""
        catalogue = self.catalogue(run_name, entries)
        return {sig.name: sig.spec.max_resubmits for sig in catalogue.signatures
                if sig.spec.max_resubmits is not None}

    def catalogue(self, run_name: str, entries: Sequence[Mapping[str, Any]]) -> Catalogue:
        """The built-in catalogue merged with a run's own `signatures:`, compiled once per distinct value.

        A value that does not load raises (naming ``run_name``) and is not remembered."""
        key = json.dumps(list(entries), sort_keys=True)
        found = self._catalogues.get(key)
        if found is not None:
            self._catalogues.move_to_end(key)
            return found
        found = Catalogue.load(list(entries) or None, source=f"run {run_name} signatures")
        # The Hyperscan compile frees far more than it keeps, and the daemon's heap keeps what is freed
        # (keep_chunk_memory): hand it back now, or it stays in the RSS for good.
        give_back_memory()
        self._catalogues[key] = found
        while len(self._catalogues) > self._catalogue_limit:
            self._catalogues.popitem(last=False)
        return found

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

    def peek(self, cursor: LogCursor, catalogue: Callable[[], Catalogue]) -> bool:
        """Whether the lines the log gained since the last peek are :func:`worth_a_pass`. Reads on from where
        the last peek stopped while the stored offset is the one it started from; stores nothing. A log that
        did not change costs one ``stat`` (and ``catalogue`` is not asked for).

        A log found worth a pass is forgotten: the pass moves its stored offset, and should the pass fail,
        the next peek starts over from the stored offset and finds the same lines again."""
        if not cursor.path or "%j" in cursor.path:
            return False
        earlier = self._peeked.get(cursor.path)
        if earlier is None or earlier.stored != cursor.tail:
            stored = TailState.from_dict(cursor.tail) if cursor.tail else TailState(Path(cursor.path))
            earlier = _Peeked(stored=cursor.tail, state=stored, unread=0)
        if not _changed(earlier.state):
            self._peeked[cursor.path] = earlier
            return False
        state, unread = earlier.state, earlier.unread
        scanner = catalogue()
        matches: list[LogMatch] = []
        while unread <= PEEK_LIMIT:
            new_state, data = read_new(state, max_bytes=CHUNK)
            if not data:
                state = new_state
                break
            matches.extend(scanner.scan_chunk(data, state.next_line).matches)
            unread += len(data)
            state = new_state
            if not _changed(state):
                break  # at the end: one stat instead of opening the file again to find nothing
        if worth_a_pass(matches, unread, scanner.names_nodes):
            self._peeked.pop(cursor.path, None)
            return True
        self._peeked[cursor.path] = _Peeked(stored=cursor.tail, state=state, unread=unread)
        return False

    def forget_peeks(self, live: Iterable[str]) -> None:
        """Drop what was peeked of logs that are no longer live."""
        keep = set(live)
        self._peeked = {path: p for path, p in self._peeked.items() if path in keep}

    def grown(self, cursors: Iterable[LogCursor]) -> bool:
        """Whether any of these logs changed since it was last read: bigger than the stored offset (or
        smaller: truncated), or another file at the path. Only ``stat``: cheap enough for every few seconds."""
        announced: dict[str, int] = {}
        changed = False
        for cursor in cursors:
            if not cursor.path or "%j" in cursor.path:
                continue
            try:
                st = os.stat(cursor.path)  # noqa: PTH116 - no Path object per log per check
            except OSError:
                continue  # not created yet, or its filesystem is away: the poll's pass reports that
            # The stored TailState's two fields, read from its dict: a hundred logs every --log-poll.
            offset, inode = (cursor.tail.get("offset", 0), cursor.tail.get("inode")) if cursor.tail else (0, None)
            if st.st_size == offset and st.st_ino == (inode or st.st_ino):
                continue
            announced[cursor.path] = st.st_size
            if self._announced.get(cursor.path) != st.st_size:
                changed = True
        self._announced = announced  # logs no longer live are forgotten
        return changed

    # ---- inotify wake-ups --------------------------------------------------------------------------

    def touched(self) -> frozenset[str] | None:
        """The file names inotify reported since the last call: the logs a wake-up pass need peek at. None
        (peek at all of them) without inotify, at the first call, after an inotify queue overflow, and after
        :meth:`peek_all_next` (the daemon's ``--log-poll`` cadence: a log on a network filesystem, or outside
        the watched directories, changes without an event). A name, not a path: a symlinked work directory's
        events name the resolved directory; another run's log of the same name only costs one more peek."""
        with self._touch_lock:
            names, self._touched = self._touched, set()
            everything, self._everything = self._everything, False
        return None if everything or self._watcher is None else frozenset(names)

    def peek_all_next(self) -> None:
        with self._touch_lock:
            self._everything = True

    def _touch(self, path: Path | None) -> None:
        with self._touch_lock:
            if path is None:
                self._everything = True
            else:
                self._touched.add(path.name)

    def start(self, wake: Callable[[], None]) -> None:
        from supervisor.logs.inotify import LogDirWatcher

        def changed(path: Path | None) -> None:
            self._touch(path)
            wake()

        self._watcher = LogDirWatcher(changed)
        self._watcher.start()

    def watch(self, dirs: Iterable[Path]) -> None:
        if self._watcher is not None:
            self._watcher.set_dirs(set(dirs))

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

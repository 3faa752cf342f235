"""Following the logs of live attempts: read what is new since the stored offset, scan it, report.

The offset lives in the attempt row (``log_tail``) and is written in the same transaction as the
reaction to what was read, so a restarted supervisor continues where it stopped and never reacts to
an old line twice. inotify (``watchdog``) only wakes the daemon early; every tick also reads, because
NFS and Lustre do not deliver inotify events for writes made on other nodes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.domain.types import LogMatch, Progress, SignatureAction
from supervisor.logs.scanner import Catalogue
from supervisor.logs.tailer import TailState, read_new
from supervisor.stages.rsync import last_progress
from supervisor.store.models import Attempt, Run

# Bound the work one tick spends on one log; the rest is read on the next tick.
MAX_BYTES_PER_TICK = 64 * 1024 * 1024
# 1 MiB reads measured faster than 8 MiB (cache-friendly) in bench/scan_bench.py.
CHUNK = 1024 * 1024


# A hang hint explains a stall only while the log stopped right after it (a few lines at most).
HINT_WITHIN_LINES = 10


@dataclass(frozen=True)
class Seen:
    tail: dict[str, Any] = field(default_factory=dict)  # attempt columns to store with the reaction
    matches: tuple[LogMatch, ...] = ()
    progress: Progress | None = None
    new_output: bool = False

    @property
    def hang_hint(self) -> dict[str, Any] | None:
        return self.tail.get("hang_hint")


def actionable(matches: Sequence[LogMatch], catalogue: Catalogue) -> tuple[LogMatch, ...]:
    """What the core acts on: every `finish` match, then the one match that decides the reaction.

    The deciding match is the earliest root cause that is not itself a `finish` (so "Training completed!"
    followed by an NCCL watchdog timeout reports both, and the core turns the timeout into a finish).
    Wrappers such as ChildFailedError decide only when no root cause was printed; hang hints never do
    (they explain a stall, they are not one).
    """
    ordered = sorted(matches, key=lambda m: m.line)
    finishes = [m for m in ordered if m.action is SignatureAction.FINISH]
    rest = [m for m in ordered if m.action is not SignatureAction.FINISH]
    causes: list[LogMatch] = []
    wrappers: list[LogMatch] = []
    for match in rest:
        spec = catalogue.spec(match.signature)
        if match.action is SignatureAction.IGNORE or (spec is not None and spec.hang_hint):
            continue
        (wrappers if spec is not None and spec.wrapper else causes).append(match)
    deciding = (causes or wrappers)[:1]
    return tuple(finishes + deciding)


def _hang_hint(
    catalogue: Catalogue, matches: Sequence[LogMatch], last_line: int, attempt: Attempt
) -> dict[str, Any] | None:
    """The hang hint the log now ends on, if any: new in this read, or an earlier one still near the end."""
    if matches:
        hint = catalogue.hang_cause(matches, last_line, HINT_WITHIN_LINES)
        return {"signature": hint.signature, "text": hint.text, "line": hint.line} if hint is not None else None
    earlier = attempt.hang_hint
    if earlier is not None and last_line - int(earlier.get("line", 0)) <= HINT_WITHIN_LINES:
        return earlier
    return None


class LogWatcher:
    def __init__(self) -> None:
        self._catalogues: dict[int, tuple[str, Catalogue]] = {}
        self._watcher: Any = None

    def resubmit_limits(self, run: Run) -> dict[str, int]:
        """Signatures that may cause only so many resubmissions before the stage fails (e.g. ECC, NCCL)."""
        catalogue = self.catalogue(run)
        return {sig.name: sig.spec.max_resubmits for sig in catalogue.signatures
                if sig.spec.max_resubmits is not None}

    def catalogue(self, run: Run) -> Catalogue:
        """The built-in catalogue merged with the run's own `signatures:` (compiled once per run)."""
        entries = run.spec.get("signatures") or []
        key = json.dumps(entries, sort_keys=True)
        cached = self._catalogues.get(run.id)
        if cached is None or cached[0] != key:
            cached = (key, Catalogue.load(entries or None, source=f"run {run.name} signatures"))
            self._catalogues[run.id] = cached
        return cached[1]

    def read(self, run: Run, attempt: Attempt) -> Seen:
        if not attempt.log_path or "%j" in attempt.log_path:
            return Seen()
        state = TailState.from_dict(attempt.log_tail) if attempt.log_tail else TailState(Path(attempt.log_path))
        catalogue = self.catalogue(run)
        matches: list[LogMatch] = []
        progress: Progress | None = None
        read = 0
        start = state
        while read < MAX_BYTES_PER_TICK:
            new_state, data = read_new(state, max_bytes=CHUNK)
            if not data:
                state = new_state
                break
            result = catalogue.scan_chunk(data, state.next_line)
            matches.extend(result.matches)
            progress = result.progress or progress
            if attempt.stage.kind == "transfer":
                # rsync --info=progress2 redraws one line with \r: percent done of the whole transfer.
                rsync = last_progress(data.decode(errors="replace"))
                if rsync is not None:
                    progress = Progress(step=rsync.percent, total=100)
            read += len(data)
            state = new_state
        if state == start:
            return Seen()
        tail = {"log_tail": state.to_dict(), "hang_hint": _hang_hint(catalogue, matches, state.line_no, attempt)}
        return Seen(tail=tail, matches=actionable(matches, catalogue), progress=progress, new_output=read > 0)

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

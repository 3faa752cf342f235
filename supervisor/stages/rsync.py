"""Copying the merged model home with rsync: resumable, retried with backoff, verified by checksum.

Runs on the supervisor's host (the login node), not in a batch job: compute nodes usually cannot
reach the destination. Building argv and parsing rsync's output are pure functions; ``_run`` is the
one place that starts a process. ``python -m supervisor.stages.rsync SRC DEST`` is the command the
``transfer`` kind (:mod:`supervisor.stages.transfer`) runs.
"""

from __future__ import annotations

import argparse
import codecs
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from supervisor.domain.errors import TransferError
from supervisor.domain.policy import Backoff

VERIFIED_MARKER = "Transfer verified:"

# rsync(1) EXIT VALUES worth another try: socket/protocol I/O (5, 10, 12), file I/O (11, a full or
# flaky remote disk), partial transfers (23, 24), timeouts (30, 35) and ssh failures (255).
# The rest (syntax, missing source, killed by a signal) will fail the same way again.
RETRYABLE_EXIT_CODES = frozenset({5, 10, 11, 12, 23, 24, 30, 35, 255})

_PROGRESS_RE = re.compile(
    r"^\s*(?P<bytes>[\d,.]+)(?P<unit>[KMGTP]?)\s+(?P<percent>\d+)%\s+(?P<rate>\S+/s)\s+"
    r"(?P<eta>\d+:\d{2}:\d{2})"
    r"(?:\s+\(xfr#(?P<xfr>\d+),\s+(?P<chk_kind>ir|to)-chk=(?P<left>\d+)/(?P<total>\d+)\))?\s*$"
)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


@dataclass(frozen=True)
class TransferProgress:
    bytes_done: int
    percent: int  # of the whole transfer, as rsync estimates it
    rate: str
    eta: str
    files_transferred: int | None = None
    files_left: int | None = None  # still to check
    files_total: int | None = None
    scan_complete: bool = True  # False while rsync is still listing files (ir-chk): the percent is low


def _source_arg(source: Path) -> str:
    # The trailing slash copies the directory's contents, not the directory itself.
    return str(source).rstrip("/") + "/"


def rsync_argv(source: Path, destination: str, *, rsync: str = "rsync", extra: Sequence[str] = ()) -> list[str]:
    return [
        rsync,
        "-a",
        "--partial",
        "--compress",
        "--info=progress2",
        *extra,
        _source_arg(source),
        destination,
    ]


def is_local(destination: str) -> bool:
    """Whether rsync reads ``destination`` as a local path (not ``host:path`` nor ``rsync://...``)."""
    return not (destination.startswith("rsync://") or ":" in destination.split("/", 1)[0])


def verify_argv(source: Path, destination: str, *, rsync: str = "rsync") -> list[str]:
    return [rsync, "-a", "--checksum", "--dry-run", "--itemize-changes", _source_arg(source), destination]


def parse_progress_line(line: str) -> TransferProgress | None:
    match = _PROGRESS_RE.match(line)
    if not match:
        return None
    number = match.group("bytes").replace(",", "")
    try:
        bytes_done = int(float(number) * _UNITS[match.group("unit")])
    except ValueError:
        return None
    xfr, left, total = match.group("xfr", "left", "total")
    return TransferProgress(
        bytes_done=bytes_done,
        percent=int(match.group("percent")),
        rate=match.group("rate"),
        eta=match.group("eta"),
        files_transferred=int(xfr) if xfr else None,
        files_left=int(left) if left else None,
        files_total=int(total) if total else None,
        scan_complete=match.group("chk_kind") != "ir",
    )


def split_lines(text: str) -> list[str]:
    """rsync redraws its progress line with ``\\r``: every redraw is a line of its own."""
    return [part for part in re.split(r"[\r\n]", text) if part.strip()]


def last_progress(text: str) -> TransferProgress | None:
    found = None
    for line in split_lines(text):
        progress = parse_progress_line(line)
        if progress is not None:
            found = progress
    return found


def pending_changes(itemized: str) -> list[str]:
    """Itemized lines of a ``--dry-run --itemize-changes`` run that mean data still to send.

    Update types ``<``/``>`` (a file's content), ``c`` (an item to create) and ``h`` (a hard link)
    count; ``.`` lines are attribute-only differences (e.g. a directory's mtime), not missing data.
    """
    changes = []
    for line in itemized.splitlines():
        if len(line) > 12 and line[11] == " " and line[0] in "<>ch":
            changes.append(line)
    return changes


def backoff_delays(attempts: int, base: float, cap: float) -> list[float]:
    """Seconds to wait before attempt 2, 3, ...: doubling from ``base``, capped."""
    return Backoff(base=base, cap=cap).delays(attempts)


def _run(argv: Sequence[str], on_line: Callable[[str], None] | None) -> tuple[int, str]:
    """Run ``argv``, streaming its output (``\\r``-split) to ``on_line``; return (exit code, output)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    chunks: list[str] = []
    pending = ""
    # Unbuffered, so each progress redraw arrives as soon as rsync writes it.
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0) as proc:
        if proc.stdout is None:  # stdout=PIPE always gives one; this only narrows the type
            raise RuntimeError(f"{argv[0]}: started without an output pipe")
        while data := proc.stdout.read(65536):
            text = decoder.decode(data)
            chunks.append(text)
            *complete, pending = re.split(r"[\r\n]", pending + text)
            if on_line is not None:
                for line in complete:
                    if line.strip():
                        on_line(line)
        if pending.strip() and on_line is not None:
            on_line(pending)
        rc = proc.wait()
    return rc, "".join(chunks)


@dataclass(frozen=True)
class TransferResult:
    attempts: int
    progress: TransferProgress | None


def transfer(
    source: Path,
    destination: str,
    *,
    attempts: int = 5,
    backoff: float = 30.0,
    max_backoff: float = 600.0,
    rsync: str = "rsync",
    extra: Sequence[str] = (),
    sleep: Callable[[float], None] = time.sleep,
    on_progress: Callable[[TransferProgress], None] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> TransferResult:
    """rsync ``source`` into ``destination`` until it succeeds, retrying transient failures.

    ``--partial`` keeps partly sent files, so each retry continues instead of starting over.
    Raises TransferError (``permanent`` when retrying cannot help or the attempts are spent).
    """
    if not source.is_dir():
        raise TransferError(f"{source}: not a directory", permanent=True)
    if is_local(destination):
        # rsync creates the last path component only: a missing parent fails every retry with code 11.
        try:
            Path(destination).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransferError(f"cannot create the destination's parent: {exc}", permanent=True) from None
    argv = rsync_argv(source, destination, rsync=rsync, extra=extra)
    delays = backoff_delays(attempts, backoff, max_backoff)

    def handle(line: str) -> None:
        if on_line is not None:
            on_line(line)
        progress = parse_progress_line(line)
        if progress is not None and on_progress is not None:
            on_progress(progress)

    for attempt in range(1, attempts + 1):
        rc, output = _run(argv, handle)
        if rc == 0:
            return TransferResult(attempts=attempt, progress=last_progress(output))
        tail = " | ".join(split_lines(output)[-3:])
        if rc not in RETRYABLE_EXIT_CODES:
            raise TransferError(f"rsync exited {rc}: {tail}", permanent=True, exit_code=rc)
        if attempt == attempts:
            raise TransferError(f"rsync exited {rc} after {attempts} attempts: {tail}", permanent=True, exit_code=rc)
        sleep(delays[attempt - 1])
    raise AssertionError("unreachable")


def verify(source: Path, destination: str, *, rsync: str = "rsync") -> list[str]:
    """Compare by checksum; return the itemized changes still to send (empty: identical)."""
    rc, output = _run(verify_argv(source, destination, rsync=rsync), None)
    if rc != 0:
        raise TransferError(
            f"verification rsync exited {rc}: {output.strip()[-500:]}",
            permanent=rc not in RETRYABLE_EXIT_CODES,
            exit_code=rc,
        )
    return pending_changes(output)


def transfer_and_verify(
    source: Path,
    destination: str,
    *,
    attempts: int = 5,
    backoff: float = 30.0,
    rsync: str = "rsync",
    sleep: Callable[[float], None] = time.sleep,
    on_progress: Callable[[TransferProgress], None] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> TransferResult:
    """Transfer, then verify; a mismatch found by verification gets one more transfer round."""
    result = transfer(
        source, destination, attempts=attempts, backoff=backoff, rsync=rsync, sleep=sleep,
        on_progress=on_progress, on_line=on_line,
    )  # fmt: skip
    if not verify(source, destination, rsync=rsync):
        return result
    # A file changed in place at the destination keeps size and mtime, so only --checksum sees it.
    transfer(
        source, destination, attempts=attempts, backoff=backoff, rsync=rsync, extra=("--checksum",),
        sleep=sleep, on_progress=on_progress, on_line=on_line,
    )  # fmt: skip
    left = verify(source, destination, rsync=rsync)
    if left:
        raise TransferError(f"destination differs after re-transfer: {left[:5]}", permanent=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``transfer`` stage; its output is the stage's log."""
    parser = argparse.ArgumentParser(prog="python -m supervisor.stages.rsync")
    parser.add_argument("source", type=Path)
    parser.add_argument("destination")
    parser.add_argument("--attempts", type=int, default=5)
    parser.add_argument("--backoff", type=float, default=30.0)
    parser.add_argument("--rsync", default="rsync")
    args = parser.parse_args(argv)

    def emit(line: str) -> None:
        sys.stdout.write(line.rstrip() + "\n")
        sys.stdout.flush()

    try:
        result = transfer_and_verify(
            args.source, args.destination, attempts=args.attempts, backoff=args.backoff,
            rsync=args.rsync, on_line=emit,
        )  # fmt: skip
    except TransferError as exc:
        emit(f"Transfer failed: {exc}")
        return 1
    emit(f"{VERIFIED_MARKER} {args.source} -> {args.destination} ({result.attempts} attempt(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())

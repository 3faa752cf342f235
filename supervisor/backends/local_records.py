"""The local backend's job records: written by the wrapper, read by the supervisor, private to the user.

A record is ``<state_dir>/local-jobs/<id>.json``, always replaced by atomic rename. The end record is
written into a file reserved at the job's start (``.<id>.json.end``), so a full disk cannot lose it.
A record names its process by pid, start time and boot id, so a recycled pid is never taken for the job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from supervisor.domain.types import JobInfo, JobPhase

PRIVATE_DIR = 0o700


PRIVATE_FILE = 0o600


# Room left in the reserved end record beyond the start record's size: the fields the end adds.
END_RESERVE_BYTES = 4096


def job_info_from_record(record: Mapping[str, Any], *, alive: bool) -> JobInfo:
    """How a record reads; ``alive`` says whether its wrapper still runs."""
    ended = record.get("end_time") is not None
    exit_code: int | None = record.get("exit_code")
    reason: str | None = None
    if ended:
        if record.get("cancelled"):
            phase, raw = JobPhase.CANCELLED, "CANCELLED"
        elif exit_code == 0:
            phase, raw = JobPhase.COMPLETED, "COMPLETED"
        else:
            phase, raw = JobPhase.FAILED, "FAILED"
    elif alive:
        phase, raw = JobPhase.RUNNING, "RUNNING"
    else:
        # The wrapper died without writing an end (killed, or the machine rebooted): the job's
        # outcome is unknowable, and waiting longer will not change that.
        phase, raw, reason = JobPhase.FAILED, "LOST", "wrapper ended without recording an exit code"
    excluded = record.get("excluded") or ()
    return JobInfo(
        job_id=str(record["id"]),
        name=str(record.get("tag", "")),
        phase=phase,
        raw_state=raw,
        exit_code=exit_code if ended else None,
        nodes=record.get("host"),
        reason=reason,
        submit_time=parse_iso(record.get("submit_time")),
        start_time=parse_iso(record.get("start_time")),
        end_time=parse_iso(record.get("end_time")),
        excluded_nodes=",".join(excluded) or None,
    )


def parse_iso(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def proc_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_matches(pid: object, start_ticks: object, boot: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if Path("/proc/self/stat").exists():
        return boot == boot_id() and start_ticks is not None and proc_start_ticks(pid) == start_ticks
    try:  # no /proc: the best available answer
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by somebody else
    return True


def open_private(path: Path, flags: int) -> int:
    return os.open(path, flags | os.O_CREAT, PRIVATE_FILE)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def end_path(record_path: Path) -> Path:
    return record_path.with_name(f".{record_path.name}.end")


def reserve_end(record_path: Path, record: Mapping[str, Any]) -> None:
    """Write the file the end record will overwrite, as long as that end record can ever be."""
    size = len(json.dumps(record, indent=1, sort_keys=True).encode()) + END_RESERVE_BYTES
    with open(open_private(end_path(record_path), os.O_WRONLY | os.O_TRUNC), "wb") as fh:
        fh.write(b" " * size)  # blanks: JSON allows any amount of trailing whitespace
        fh.flush()
        os.fsync(fh.fileno())


def write_end(record_path: Path, record: Mapping[str, Any]) -> None:
    """Replace the record with its end, into the reserved file when there is one (a full disk has room
    for bytes it already holds), else the usual way."""
    reserved = end_path(record_path)
    text = json.dumps(record, indent=1, sort_keys=True).encode()
    try:
        fd = os.open(reserved, os.O_WRONLY)
    except FileNotFoundError:
        write_json(record_path, record)
        return
    with open(fd, "wb") as fh:  # an open descriptor: "wb" does not truncate it
        size = os.fstat(fd).st_size
        if len(text) > size:
            fh.write(text)  # longer than reserved: needs new blocks, which a disk with room has
        else:
            fh.write(text + b" " * (size - len(text)))
        fh.flush()
        os.fsync(fh.fileno())
    reserved.replace(record_path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

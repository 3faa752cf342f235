"""Pure parsers of the SLURM clients' output (golden-tested against output captured from slurm-wlm 22.05).

Each turns the text of one client into JobInfo (or node facts); what a state means is
:mod:`supervisor.backends.slurm_cli.states`, shared with the pyslurm backend.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, tzinfo

from supervisor.backends.slurm_cli.states import exit_status, job_info
from supervisor.domain.accounting import SchedulerUsage
from supervisor.domain.errors import ClusterError
from supervisor.domain.types import JobInfo

# Name last: it is the only field a user controls, so it may contain the separator.
SQUEUE_FORMAT = "%i|%T|%r|%N|%x|%V|%S|%e|%j"
_SQUEUE_FIELDS = SQUEUE_FORMAT.count("|") + 1

# Name last, for the same reason. ElapsedRaw (seconds) and NNodes are the scheduler's own measure of what
# a job used: node-hours are counted from them.
SACCT_FORMAT = "JobID,State,ExitCode,NodeList,Submit,Start,End,ElapsedRaw,NNodes,JobName"
_SACCT_FIELDS = SACCT_FORMAT.count(",") + 1

_NULLS = frozenset({"", "(null)", "N/A", "None", "Unknown"})

# scontrol -o separates fields by single spaces, but some values (Reason, Comment) may hold spaces:
# a field starts only where a space is followed by a key and "=".
_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Za-z][\w/:.]*)=")


def parse_sbatch_output(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` ("123" or "123;cluster")."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if lines:
        job_id = lines[-1].split(";", 1)[0]
        if re.fullmatch(r"\d+(_\d+)?", job_id):
            return job_id
    # The job may well exist: say "retry" so the caller reconciles by tag instead of failing the stage.
    raise ClusterError(f"sbatch printed no job id: {stdout.strip()!r}", permanent=False)


def parse_exit_code(value: str | None) -> int | None:
    """``ExitCode=N:S`` -> N, or 128+S when a signal ended the job (the shell's convention)."""
    if not value:
        return None
    code, _, signal = value.partition(":")
    try:
        sig = int(signal) if signal else 0
        return exit_status(None if sig else int(code), sig)
    except ValueError:
        return None


def parse_time(value: str | None, tz: tzinfo | None = None) -> datetime | None:
    """A SLURM timestamp (controller local time, no zone) as an aware UTC datetime.

    ``tz`` is the zone SLURM printed in; None means this machine's local zone.
    """
    if value is None or value in _NULLS:
        return None
    try:
        naive = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    local = naive.astimezone() if tz is None else naive.replace(tzinfo=tz)
    return local.astimezone(UTC)


def _nullable(value: str | None) -> str | None:
    return None if value is None or value in _NULLS else value


def _records(text: str, count: int, tool: str) -> Iterator[list[str]]:
    """The ``|``-separated records of a client's output; the last field (the job name) may hold ``|``."""
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", count - 1)
        if len(fields) != count:
            raise ClusterError(f"unexpected {tool} line: {line!r}", permanent=True)
        yield fields


def parse_squeue(text: str, tz: tzinfo | None = None) -> list[JobInfo]:
    """Lines printed by ``squeue --noheader --format=SQUEUE_FORMAT``; squeue knows no exit codes."""
    jobs: list[JobInfo] = []
    for fields in _records(text, _SQUEUE_FIELDS, "squeue"):
        job_id, state, reason, nodes, excluded, submit, start, end, name = fields
        jobs.append(
            job_info(
                job_id.strip(),
                name,
                state,
                reason=_nullable(reason),
                nodes=_nullable(nodes),
                submit_time=parse_time(submit, tz),
                start_time=parse_time(start, tz),
                end_time=parse_time(end, tz),
                excluded_nodes=_nullable(excluded),
            )
        )
    return jobs


def parse_sacct(text: str, tz: tzinfo | None = None) -> list[JobInfo]:
    """Lines of ``sacct --parsable2 --format=SACCT_FORMAT`` (one per job allocation)."""
    jobs: list[JobInfo] = []
    for fields in _records(text, _SACCT_FIELDS, "sacct"):
        job_id, state, exit_code, nodes, submit, start, end, _elapsed, _count, name = fields
        jobs.append(
            job_info(
                job_id.strip(),
                name,
                state,  # "CANCELLED by 1000" reduces to CANCELLED
                exit_code=parse_exit_code(exit_code),
                nodes=None if nodes == "None assigned" else _nullable(nodes),
                submit_time=parse_time(submit, tz),
                start_time=parse_time(start, tz),
                end_time=parse_time(end, tz),
            )
        )
    return jobs


def parse_sacct_usage(text: str) -> dict[str, SchedulerUsage]:
    """Per job id, the scheduler's elapsed seconds and node count from the same sacct lines; a job that
    never got nodes ("None assigned", NNodes 0 or blank) used nothing."""
    usage: dict[str, SchedulerUsage] = {}
    for fields in _records(text, _SACCT_FIELDS, "sacct"):
        job_id, elapsed, count = fields[0].strip(), fields[7].strip(), fields[8].strip()
        if elapsed.isdigit() and count.isdigit():
            usage[job_id] = SchedulerUsage(int(elapsed), int(count))
    return usage


def parse_scontrol_record(line: str) -> dict[str, str]:
    """One ``scontrol show job -o`` line as a key -> value mapping."""
    matches = list(_SCONTROL_KEY.finditer(line))
    record: dict[str, str] = {}
    for i, match in enumerate(matches):
        stop = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        record.setdefault(match.group(1), line[match.end() : stop].strip())
    return record


def job_info_from_scontrol(record: Mapping[str, str], tz: tzinfo | None = None) -> JobInfo:
    return job_info(
        record["JobId"],
        record.get("JobName", ""),
        record.get("JobState", ""),
        reason=_nullable(record.get("Reason")),
        exit_code=parse_exit_code(record.get("ExitCode")),
        nodes=_nullable(record.get("NodeList")),
        submit_time=parse_time(record.get("SubmitTime"), tz),
        start_time=parse_time(record.get("StartTime"), tz),
        end_time=parse_time(record.get("EndTime"), tz),
        excluded_nodes=_nullable(record.get("ExcNodeList")),
    )


def parse_scontrol_jobs(text: str, tz: tzinfo | None = None) -> list[JobInfo]:
    """Output of ``scontrol show job -o``; "No jobs in the system" parses to an empty list."""
    return [
        job_info_from_scontrol(parse_scontrol_record(line), tz)
        for line in text.splitlines()
        if line.startswith("JobId=")
    ]


def parse_scontrol_nodes(text: str) -> dict[str, tuple[str, ...]]:
    """Output of ``scontrol show node -o``: per NodeName, the NodeAddr and NodeHostName it answers to
    (each once, in that order; a name equal to the node's own is kept: it is an address too)."""
    nodes: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if not line.startswith("NodeName="):
            continue
        record = parse_scontrol_record(line)
        names = (_nullable(record.get("NodeAddr")), _nullable(record.get("NodeHostName")))
        nodes[record["NodeName"]] = tuple(dict.fromkeys(n for n in names if n is not None))
    return nodes


def parse_scontrol_node_states(text: str) -> dict[str, str]:
    """Output of ``scontrol show node -o``: per NodeName, its State ("IDLE", "DOWN+NOT_RESPONDING", ...)."""
    return {record["NodeName"]: record.get("State", "")
            for record in (parse_scontrol_record(line) for line in text.splitlines() if line.startswith("NodeName="))}

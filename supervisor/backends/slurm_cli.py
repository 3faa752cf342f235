"""SLURM through its command-line clients (sbatch, squeue, scontrol, scancel).

Commands are built and their output parsed by pure functions (golden-tested against output captured
from slurm-wlm 22.05); :func:`run_command` is the only place a process is started.

Why these commands: ``squeue --format`` lists queued and running jobs cheaply in one call but forgets
a job soon after it ends and never shows exit codes; ``scontrol show job -o`` still knows ended jobs
for ``MinJobAge`` (300 s by default) and has ``ExitCode``. ``sacct`` would know more but needs
slurmdbd, which many clusters do not expose to users. ``squeue --jobs`` is avoided because it fails
outright ("Invalid job id specified") when every listed id has been purged.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path

from supervisor.backends import job_environment
from supervisor.domain import hostlist
from supervisor.domain.accounting import SchedulerUsage
from supervisor.domain.errors import ClusterError
from supervisor.domain.ports import CommandResult, CommandRunner
from supervisor.domain.types import JobInfo, JobPhase, SubmitRequest

# Name last: it is the only field a user controls, so it may contain the separator.
SQUEUE_FORMAT = "%i|%T|%r|%N|%x|%V|%S|%e|%j"
_SQUEUE_FIELDS = SQUEUE_FORMAT.count("|") + 1

SCONTROL_SHOW_JOBS = ("scontrol", "show", "job", "--oneliner")

DEFAULT_TIMEOUT_S = 60.0  # clients give up on an unreachable controller after ~MessageTimeout

_HOLD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})

_PHASES: Mapping[str, JobPhase] = {
    "PENDING": JobPhase.PENDING,
    "CONFIGURING": JobPhase.PENDING,
    "REQUEUED": JobPhase.PENDING,
    "REQUEUE_FED": JobPhase.PENDING,
    "REQUEUE_HOLD": JobPhase.HELD,
    "SPECIAL_EXIT": JobPhase.HELD,  # requeued and held after an exit code the site marked special
    "RESV_DEL_HOLD": JobPhase.HELD,
    "RUNNING": JobPhase.RUNNING,
    "COMPLETING": JobPhase.RUNNING,  # still holds its nodes; its exit code is not final yet
    "SUSPENDED": JobPhase.RUNNING,
    "STOPPED": JobPhase.RUNNING,
    "SIGNALING": JobPhase.RUNNING,
    "STAGE_OUT": JobPhase.RUNNING,
    "RESIZING": JobPhase.RUNNING,
    "COMPLETED": JobPhase.COMPLETED,
    "CANCELLED": JobPhase.CANCELLED,
    "FAILED": JobPhase.FAILED,
    "TIMEOUT": JobPhase.FAILED,
    "NODE_FAIL": JobPhase.FAILED,
    "PREEMPTED": JobPhase.FAILED,
    "OUT_OF_MEMORY": JobPhase.FAILED,
    "BOOT_FAIL": JobPhase.FAILED,
    "DEADLINE": JobPhase.FAILED,
    "REVOKED": JobPhase.FAILED,
}

# Client messages that mean "the controller could not be reached or is busy": retrying later helps.
_TRANSIENT_MARKERS = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "Zero Bytes were transmitted or received",
    "Communication connection failure",
    "Connection refused",
    "Transport endpoint is not connected",
    "temporarily unable to accept job",
    "Resource temporarily unavailable",
    "Protocol authentication error",  # munged down or restarting
    "backup controller in standby mode",
    "MaxSubmitJob",  # QOS/association submit limits: wait until some jobs end
)

# sbatch's refusals of a node selection no node set can satisfy (slurm/src/common/slurm_errno.c:
# ESLURM_REQUESTED_NODE_CONFIG_UNAVAILABLE, ESLURM_REQUESTED_PART_CONFIG_UNAVAILABLE, ESLURM_INVALID_NODE_COUNT,
# ESLURM_INVALID_NODE_NAME). sbatch 22.05 prints them as "sbatch: error: Batch job submission failed: <text>".
NODE_SELECTION_REFUSALS = (
    "Requested node configuration is not available",
    "Requested partition configuration not available now",
    "Node count specification invalid",
    "Invalid node name specified",
)

# scancel on a job that already ended (or was purged) is what idempotent cancel expects.
_ALREADY_GONE_MARKERS = ("Invalid job id specified", "Job/step already completing or completed")

_NULLS = frozenset({"", "(null)", "N/A", "None", "Unknown"})

# scontrol -o separates fields by single spaces, but some values (Reason, Comment) may hold spaces:
# a field starts only where a space is followed by a key and "=".
_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Za-z][\w/:.]*)=")


# --- pure: rendering ---------------------------------------------------------------------------


def render_sbatch_argv(request: SubmitRequest) -> list[str]:
    """The sbatch command line for ``request``; its environment comes from :func:`job_environment`."""
    if request.script is None:
        raise ClusterError(
            f"job {request.tag}: the slurm backend runs sbatch scripts; a plain command runs on the "
            "supervisor's host through the local backend",
            permanent=True,
        )
    argv = [
        "sbatch",
        "--parsable",
        # On a node failure SLURM would requeue the job under the same id by itself; the supervisor
        # owns retries (a new attempt, the failed node excluded), so one attempt runs at most once.
        "--no-requeue",
        f"--job-name={request.tag}",
        f"--output={request.log_pattern}",
        f"--error={request.log_pattern}",
    ]
    if request.exclude:
        # Only plain node names: anything else would make sbatch refuse the job or exclude other nodes.
        names = [n for n in request.exclude if hostlist.is_node_name(n)]
        if names:
            argv.append(f"--exclude={hostlist.join(names)}")
    argv.extend(request.sbatch_args)
    argv.append(str(request.script))
    return argv


def squeue_argv(names: Collection[str] = ()) -> list[str]:
    """All of this user's queued and running jobs (``--all``: hidden partitions too)."""
    argv = ["squeue", "--noheader", "--all", "--me", f"--format={SQUEUE_FORMAT}"]
    if names:
        argv.append(f"--name={','.join(sorted(names))}")
    return argv


def scancel_argv(job_id: str) -> list[str]:
    return ["scancel", job_id]


def scontrol_show_nodes_argv(nodes: Collection[str]) -> list[str]:
    return ["scontrol", "show", "node", "--oneliner", hostlist.join(nodes)]


# --- pure: parsing -----------------------------------------------------------------------------


def parse_sbatch_output(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` ("123" or "123;cluster")."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if lines:
        job_id = lines[-1].split(";", 1)[0]
        if re.fullmatch(r"\d+(_\d+)?", job_id):
            return job_id
    # The job may well exist: say "retry" so the caller reconciles by tag instead of failing the stage.
    raise ClusterError(f"sbatch printed no job id: {stdout.strip()!r}", permanent=False)


def phase_of(state: str, reason: str | None = None) -> JobPhase:
    """Reduce a SLURM job state (as squeue %T or scontrol JobState print it) to a JobPhase."""
    base = state.strip().split(" ", 1)[0].rstrip("+").upper()
    # An unrecognised state is not a verdict: "not finished" keeps the supervisor watching.
    phase = _PHASES.get(base, JobPhase.PENDING)
    if phase is JobPhase.PENDING and reason in _HOLD_REASONS:
        return JobPhase.HELD
    return phase


def parse_exit_code(value: str | None) -> int | None:
    """``ExitCode=N:S`` -> N, or 128+S when a signal ended the job (the shell's convention)."""
    if not value:
        return None
    code, _, signal = value.partition(":")
    try:
        sig = int(signal) if signal else 0
        return 128 + sig if sig else int(code)
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
    """Lines printed by ``squeue --noheader --format=SQUEUE_FORMAT``."""
    jobs: list[JobInfo] = []
    for fields in _records(text, _SQUEUE_FIELDS, "squeue"):
        job_id, state, reason, nodes, excluded, submit, start, end, name = fields
        reason_ = _nullable(reason)
        phase = phase_of(state, reason_)
        nodes_ = _nullable(nodes)
        jobs.append(
            JobInfo(
                job_id=job_id.strip(),
                name=name,
                phase=phase,
                raw_state=state,
                exit_code=None,  # squeue does not know it; scontrol does once the job ended
                nodes=nodes_,
                reason=reason_,
                submit_time=parse_time(submit, tz),
                # For pending jobs %S/%e are the scheduler's forecast, for running ones %e is the
                # time limit: neither is a fact yet.
                start_time=parse_time(start, tz) if nodes_ is not None else None,
                end_time=parse_time(end, tz) if phase.finished else None,
                excluded_nodes=_nullable(excluded),
            )
        )
    return jobs


# Name last: it is the one field users control, so it may hold the separator. ElapsedRaw (seconds) and
# NNodes are the scheduler's own measure of what a job used: node-hours are counted from them.
SACCT_FORMAT = "JobID,State,ExitCode,NodeList,Submit,Start,End,ElapsedRaw,NNodes,JobName"
_SACCT_FIELDS = SACCT_FORMAT.count(",") + 1
# sacct's answer where the cluster keeps no accounting (no slurmdbd): scontrol is all there is.
_NO_ACCOUNTING_MARKERS = ("accounting storage is disabled", "No such file or directory")


def sacct_argv(job_ids: Collection[str]) -> list[str]:
    return [
        "sacct",
        "--noheader",
        "--parsable2",
        "--allocations",
        f"--format={SACCT_FORMAT}",
        f"--jobs={','.join(sorted(job_ids, key=_id_key))}",
    ]


def parse_sacct(text: str, tz: tzinfo | None = None) -> list[JobInfo]:
    """Lines of ``sacct --parsable2 --format=SACCT_FORMAT`` (one per job allocation)."""
    jobs: list[JobInfo] = []
    for fields in _records(text, _SACCT_FIELDS, "sacct"):
        job_id, state, exit_code, nodes, submit, start, end, _elapsed, _count, name = fields
        phase = phase_of(state)  # "CANCELLED by 1000" reduces to CANCELLED
        nodes_ = None if nodes == "None assigned" else _nullable(nodes)
        jobs.append(
            JobInfo(
                job_id=job_id.strip(),
                name=name,
                phase=phase,
                raw_state=state,
                exit_code=parse_exit_code(exit_code) if phase.finished else None,
                nodes=nodes_,
                submit_time=parse_time(submit, tz),
                start_time=parse_time(start, tz) if nodes_ is not None else None,
                end_time=parse_time(end, tz) if phase.finished else None,
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
    state = record.get("JobState", "")
    reason = _nullable(record.get("Reason"))
    phase = phase_of(state, reason)
    nodes = _nullable(record.get("NodeList"))
    return JobInfo(
        job_id=record["JobId"],
        name=record.get("JobName", ""),
        phase=phase,
        raw_state=state,
        # Pending and running jobs carry a placeholder 0:0.
        exit_code=parse_exit_code(record.get("ExitCode")) if phase.finished else None,
        nodes=nodes,
        reason=reason,
        submit_time=parse_time(record.get("SubmitTime"), tz),
        # A job cancelled while pending gets StartTime = EndTime = the cancel time; it never ran.
        start_time=parse_time(record.get("StartTime"), tz) if nodes is not None else None,
        end_time=parse_time(record.get("EndTime"), tz) if phase.finished else None,
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


def is_down(state: str) -> bool:
    """Whether a node State says the node is lost to jobs: DOWN or FAIL, or not responding (SchedMD/slurm
    src/common/slurm_protocol_defs.c node_state_string: base state, then "+"-joined flags)."""
    base, *flags = state.upper().split("+")
    return base.rstrip("*") in ("DOWN", "FAIL", "FAILING") or "NOT_RESPONDING" in flags or base.endswith("*")


def error_for(argv: Sequence[str], returncode: int, stderr: str) -> ClusterError:
    """The ClusterError a failed client call means; ``permanent`` is False when a retry can help."""
    message = stderr.strip() or f"exit status {returncode}"
    transient = any(marker in stderr for marker in _TRANSIENT_MARKERS)
    return ClusterError(f"{argv[0]}: {message}", permanent=not transient)


def refuses_node_selection(message: str) -> bool:
    """Whether sbatch refused a job because no set of nodes can satisfy what it asked for."""
    return any(marker in message for marker in NODE_SELECTION_REFUSALS)


def newest(jobs: Iterable[JobInfo]) -> dict[str, JobInfo]:
    """Per job name, the most recently submitted job (a resubmitted tag shows up more than once)."""
    by_name: dict[str, JobInfo] = {}
    for job in jobs:
        seen = by_name.get(job.name)
        if seen is None or _id_key(job.job_id) > _id_key(seen.job_id):
            by_name[job.name] = job
    return by_name


def _id_key(job_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", job_id))


# --- the one place that runs processes ---------------------------------------------------------


def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> CommandResult:
    """Run one SLURM client; a hang or an unreachable controller becomes a retryable ClusterError."""
    try:
        done = subprocess.run(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{argv[0]} did not answer within {timeout:g} s", permanent=False) from exc
    except FileNotFoundError as exc:
        # Either the client is not installed or the job's workdir does not exist: neither heals.
        raise ClusterError(f"{argv[0]}: {exc}", permanent=True) from exc
    except OSError as exc:
        raise ClusterError(f"{argv[0]}: {exc}", permanent=False) from exc
    result = CommandResult(done.returncode, done.stdout, done.stderr)
    if any(marker in done.stderr for marker in _TRANSIENT_MARKERS) and done.returncode != 0:
        raise error_for(argv, done.returncode, done.stderr)
    return result


def resolve_addresses(name: str) -> tuple[str, ...]:
    """The IP addresses a node's address or host name stands for (none when it does not resolve)."""
    try:
        found = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return ()
    return tuple(dict.fromkeys(str(info[4][0]) for info in found))


# --- the adapter -------------------------------------------------------------------------------


class SlurmCliCluster:
    """The Cluster protocol over the SLURM CLI of the machine the supervisor runs on."""

    kind = "slurm"

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        runner: CommandRunner = run_command,
        base_env: Mapping[str, str] | None = None,
        tz: tzinfo | None = None,
        resolver: Callable[[str], tuple[str, ...]] = resolve_addresses,
    ) -> None:
        self._timeout = timeout
        self._run = runner
        self._resolve = resolver
        self._base_env = base_env
        self._tz = tz
        self._accounting = True  # until sacct says the cluster keeps none

    def submit(self, request: SubmitRequest) -> str:
        argv = render_sbatch_argv(request)
        # sbatch exports its own environment to the job (--export=ALL unless told otherwise), and an
        # --export list takes its values from there too: what is not in `env` cannot reach the job.
        env = job_environment(request, os.environ if self._base_env is None else self._base_env)
        result = self._run(argv, env=env, cwd=request.workdir, timeout=self._timeout)
        if result.returncode != 0:
            raise error_for(argv, result.returncode, result.stderr)
        return parse_sbatch_output(result.stdout)

    def poll(self, job_ids: Collection[str]) -> dict[str, JobInfo]:
        wanted = set(job_ids)
        if not wanted:
            return {}
        found = {job.job_id: job for job in self._queued() if job.job_id in wanted}
        missing = wanted - found.keys()
        if missing:
            found.update({job.job_id: job for job in self._known() if job.job_id in missing})
        missing = wanted - found.keys()
        if missing:
            # Gone from slurmctld's memory too (MinJobAge): the accounting database remembers, if there is one.
            found.update({job.job_id: job for job in self._accounted(missing) if job.job_id in missing})
        return found

    def find_by_tag(self, tags: Collection[str]) -> dict[str, JobInfo]:
        wanted = set(tags)
        if not wanted:
            return {}
        queued = [job for job in self._queued(wanted) if job.name in wanted]
        found = newest(queued)
        if wanted - found.keys():
            ended = [job for job in self._known() if job.name in wanted]
            found = newest([*queued, *ended])
        return found

    def cancel(self, job_id: str) -> None:
        argv = scancel_argv(job_id)
        result = self._run(argv, timeout=self._timeout)
        if result.returncode != 0 and not any(m in result.stderr for m in _ALREADY_GONE_MARKERS):
            raise error_for(argv, result.returncode, result.stderr)

    def node_addresses(self, nodes: Collection[str]) -> dict[str, tuple[str, ...]]:
        names = [n for n in nodes if hostlist.is_node_name(n)]
        if not names:
            return {}
        argv = scontrol_show_nodes_argv(names)
        result = self._run(argv, timeout=self._timeout)
        known = parse_scontrol_nodes(result.stdout)
        # scontrol exits 1 when one of the nodes is unknown and still prints the others.
        if result.returncode != 0 and not known:
            raise error_for(argv, result.returncode, result.stderr)
        addresses: dict[str, tuple[str, ...]] = {}
        for node, aliases in known.items():
            ips = [ip for alias in aliases for ip in self._resolve(alias)]
            addresses[node] = tuple(dict.fromkeys([*aliases, *ips]))
        return addresses

    def down_nodes(self, nodes: Collection[str]) -> frozenset[str]:
        names = [n for n in nodes if hostlist.is_node_name(n)]
        if not names:
            return frozenset()
        argv = scontrol_show_nodes_argv(names)
        result = self._run(argv, timeout=self._timeout)
        states = parse_scontrol_node_states(result.stdout)
        if result.returncode != 0 and not states:
            raise error_for(argv, result.returncode, result.stderr)
        return frozenset(node for node, state in states.items() if is_down(state))

    def _queued(self, names: Collection[str] = ()) -> list[JobInfo]:
        argv = squeue_argv(names)
        result = self._run(argv, timeout=self._timeout)
        if result.returncode != 0:
            raise error_for(argv, result.returncode, result.stderr)
        return parse_squeue(result.stdout, self._tz)

    def usage(self, job_ids: Collection[str]) -> dict[str, SchedulerUsage]:
        """The scheduler's own elapsed time and node count of ended jobs, in one sacct call; empty where
        the cluster keeps no accounting (the caller then counts from the attempts' recorded times)."""
        text = self._sacct(job_ids) if job_ids else None
        return parse_sacct_usage(text) if text is not None else {}

    def _accounted(self, job_ids: Collection[str]) -> list[JobInfo]:
        text = self._sacct(job_ids)
        return parse_sacct(text, self._tz) if text is not None else []

    def _sacct(self, job_ids: Collection[str]) -> str | None:
        """sacct's answer for these jobs; None where there is no accounting or it did not answer."""
        if not self._accounting:
            return None
        argv = sacct_argv(job_ids)
        try:
            result = self._run(argv, timeout=self._timeout)
        except ClusterError as exc:
            if exc.permanent:
                self._accounting = False  # no sacct on this machine
            return None
        if result.returncode != 0 or any(m in result.stderr for m in _NO_ACCOUNTING_MARKERS):
            if any(m in result.stderr + result.stdout for m in _NO_ACCOUNTING_MARKERS):
                self._accounting = False
            return None  # unknown is what the caller gets for these jobs anyway
        return result.stdout

    def _known(self) -> list[JobInfo]:
        argv = list(SCONTROL_SHOW_JOBS)
        result = self._run(argv, timeout=self._timeout)
        if result.returncode != 0:
            raise error_for(argv, result.returncode, result.stderr)
        return parse_scontrol_jobs(result.stdout, self._tz)

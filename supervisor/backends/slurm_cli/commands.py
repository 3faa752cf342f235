"""The SLURM clients' command lines, the one function that runs them, and what their failures mean.

The argv builders are pure (golden-tested); :func:`run_command` is the only place a process is started.
"""

from __future__ import annotations

import subprocess
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from supervisor.backends.slurm_cli.parse import SACCT_FORMAT, SQUEUE_FORMAT
from supervisor.backends.slurm_cli.states import job_id_key
from supervisor.domain import hostlist
from supervisor.domain.errors import ClusterError
from supervisor.domain.ports import CommandResult
from supervisor.domain.types import SubmitRequest

SCONTROL_SHOW_JOBS = ("scontrol", "show", "job", "--oneliner")

DEFAULT_TIMEOUT_S = 60.0  # clients give up on an unreachable controller after ~MessageTimeout

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

# Cancelling a job that already ended (or was purged) is what idempotent cancel expects; the controller
# words it the same for scancel and for pyslurm's RPCError.
ALREADY_GONE_MARKERS = ("Invalid job id specified", "Job/step already completing or completed")

# sacct's answer where the cluster keeps no accounting (no slurmdbd): scontrol is all there is.
NO_ACCOUNTING_MARKERS = ("accounting storage is disabled", "No such file or directory")


# --- pure: the command lines -------------------------------------------------------------------


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


def sacct_argv(job_ids: Collection[str]) -> list[str]:
    return [
        "sacct",
        "--noheader",
        "--parsable2",
        "--allocations",
        f"--format={SACCT_FORMAT}",
        f"--jobs={','.join(sorted(job_ids, key=job_id_key))}",
    ]


# --- pure: what a failure means ----------------------------------------------------------------


def error_for(argv: Sequence[str], returncode: int, stderr: str) -> ClusterError:
    """The ClusterError a failed client call means; ``permanent`` is False when a retry can help."""
    message = stderr.strip() or f"exit status {returncode}"
    transient = any(marker in stderr for marker in _TRANSIENT_MARKERS)
    return ClusterError(f"{argv[0]}: {message}", permanent=not transient)


def refuses_node_selection(message: str) -> bool:
    """Whether sbatch refused a job because no set of nodes can satisfy what it asked for."""
    return any(marker in message for marker in NODE_SELECTION_REFUSALS)


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

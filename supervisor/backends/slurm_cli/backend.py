"""The Cluster protocol over the SLURM command-line clients (sbatch, squeue, scontrol, sacct, scancel).

Why these commands: ``squeue --format`` lists queued and running jobs cheaply in one call but forgets
a job soon after it ends and never shows exit codes; ``scontrol show job -o`` still knows ended jobs
for ``MinJobAge`` (300 s by default) and has ``ExitCode``. ``sacct`` would know more but needs
slurmdbd, which many clusters do not expose to users. ``squeue --jobs`` is avoided because it fails
outright ("Invalid job id specified") when every listed id has been purged.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Collection, Mapping
from datetime import tzinfo

from supervisor.backends import job_environment
from supervisor.backends.slurm_cli.commands import (
    ALREADY_GONE_MARKERS,
    DEFAULT_TIMEOUT_S,
    NO_ACCOUNTING_MARKERS,
    SCONTROL_SHOW_JOBS,
    error_for,
    render_sbatch_argv,
    run_command,
    sacct_argv,
    scancel_argv,
    scontrol_show_nodes_argv,
    squeue_argv,
)
from supervisor.backends.slurm_cli.parse import (
    parse_sacct,
    parse_sacct_usage,
    parse_sbatch_output,
    parse_scontrol_jobs,
    parse_scontrol_node_states,
    parse_scontrol_nodes,
    parse_squeue,
)
from supervisor.backends.slurm_cli.states import is_down, newest
from supervisor.domain import hostlist
from supervisor.domain.accounting import SchedulerUsage
from supervisor.domain.errors import ClusterError
from supervisor.domain.ports import CommandRunner
from supervisor.domain.types import JobInfo, SubmitRequest


def resolve_addresses(name: str) -> tuple[str, ...]:
    """The IP addresses a node's address or host name stands for (none when it does not resolve)."""
    try:
        found = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return ()
    return tuple(dict.fromkeys(str(info[4][0]) for info in found))


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
        if result.returncode != 0 and not any(m in result.stderr for m in ALREADY_GONE_MARKERS):
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
        if result.returncode != 0 or any(m in result.stderr for m in NO_ACCOUNTING_MARKERS):
            if any(m in result.stderr + result.stdout for m in NO_ACCOUNTING_MARKERS):
                self._accounting = False
            return None  # unknown is what the caller gets for these jobs anyway
        return result.stdout

    def _known(self) -> list[JobInfo]:
        argv = list(SCONTROL_SHOW_JOBS)
        result = self._run(argv, timeout=self._timeout)
        if result.returncode != 0:
            raise error_for(argv, result.returncode, result.stderr)
        return parse_scontrol_jobs(result.stdout, self._tz)

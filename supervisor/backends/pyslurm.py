"""SLURM through pyslurm's API (``pip install 'slurm-llm-supervisor[pyslurm]'``): the Cluster protocol
without a process per query.

Written against pyslurm 25.11 (the only series on PyPI; it builds only against Slurm 25.11):
``pyslurm.JobSubmitDescription(...).submit()``, ``pyslurm.Jobs.load()`` (every job slurmctld still
knows, like ``scontrol show job``), ``pyslurm.Job(id).cancel()``, and ``pyslurm.db.Jobs.load(
pyslurm.db.JobFilter(ids=...))`` for jobs slurmctld has forgotten (like ``sacct``, where slurmdbd
exists). The records are read into JobInfo by pure functions over their attributes, so the mapping is
tested where pyslurm cannot be installed; state names and exit codes mean what they mean for the CLI
backend (:mod:`supervisor.backends.slurm_cli.states`).

``import pyslurm`` happens when the adapter is built, never at import time: where pyslurm cannot load
(:func:`load`), ``make_cluster`` falls back to the CLI backend with a warning.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from supervisor.backends import job_environment
from supervisor.backends.slurm_cli.commands import ALREADY_GONE_MARKERS, error_for
from supervisor.backends.slurm_cli.states import exit_status, job_info, newest
from supervisor.domain.accounting import SchedulerUsage
from supervisor.domain.errors import ClusterError
from supervisor.domain.types import JobInfo, SubmitRequest


def load() -> ModuleType:
    """pyslurm itself; ImportError (or OSError, for a libslurm of another release) where it cannot load."""
    return importlib.import_module("pyslurm")


# --- pure: pyslurm records -> JobInfo --------------------------------------------------------------


def _time(value: Any) -> datetime | None:
    """pyslurm gives times as epoch seconds (0 or None when unset)."""
    if value in (None, 0):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(int(value), UTC)


def _text(value: Any) -> str | None:
    return None if value in (None, "", "None assigned", "(null)") else str(value)


def _exit_code(job: Any) -> int | None:
    """As for ExitCode=N:S: the code, or 128+S when a signal ended the job."""
    signal = getattr(job, "exit_code_signal", None) or 0
    code = getattr(job, "exit_code", None)
    return exit_status(None if code is None else int(code), int(signal))


def job_info_from_controller(job: Any) -> JobInfo:
    """A ``pyslurm.Job`` (slurmctld's record) as JobInfo."""
    reason = _text(job.state_reason)
    return job_info(
        str(job.id), str(job.name or ""), str(job.state), reason=None if reason == "None" else reason,
        exit_code=_exit_code(job), nodes=_text(getattr(job, "allocated_nodes", None)),
        submit_time=_time(job.submit_time), start_time=_time(job.start_time), end_time=_time(job.end_time),
        excluded_nodes=_text(getattr(job, "excluded_nodes", None)),
    )


def job_info_from_database(job: Any) -> JobInfo:
    """A ``pyslurm.db.Job`` (slurmdbd's record) as JobInfo."""
    return job_info(
        str(job.id), str(job.name or ""), str(job.state), exit_code=_exit_code(job),
        nodes=_text(getattr(job, "nodelist", None)), submit_time=_time(job.submit_time),
        start_time=_time(job.start_time), end_time=_time(job.end_time),
    )


def usage_from_database(job: Any) -> SchedulerUsage | None:
    """``elapsed_time`` x ``num_nodes``, the figures sacct prints as ElapsedRaw and NNodes."""
    elapsed, count = getattr(job, "elapsed_time", None), getattr(job, "num_nodes", None)
    if elapsed is None or count is None:
        return None
    return SchedulerUsage(int(elapsed), int(count))


def submit_description(request: SubmitRequest, env: Mapping[str, str]) -> dict[str, Any]:
    """The JobSubmitDescription attributes of a request: what sbatch's command line sets for the CLI
    backend (``render_sbatch_argv``); the script's own #SBATCH lines fill in the rest."""
    if request.script is None:
        raise ClusterError(
            f"job {request.tag}: the pyslurm backend runs sbatch scripts; a plain command runs on the "
            "supervisor's host through the local backend",
            permanent=True,
        )
    description: dict[str, Any] = {
        "name": request.tag,
        "script": str(request.script),
        "working_directory": str(request.workdir),
        "standard_output": request.log_pattern,
        "standard_error": request.log_pattern,
        "environment": dict(env),
    }
    if request.exclude:
        description["excluded_nodes"] = list(request.exclude)
    return description


# --- the adapter ------------------------------------------------------------------------------------


class PyslurmCluster:
    """The Cluster protocol over pyslurm; every call is one RPC to slurmctld or slurmdbd."""

    kind = "pyslurm"

    def __init__(self, module: ModuleType | None = None, *, base_env: Mapping[str, str] | None = None) -> None:
        self._pyslurm = module if module is not None else load()
        self._base_env = base_env
        self._accounting = True  # until slurmdbd turns out not to be there

    def submit(self, request: SubmitRequest) -> str:
        env = job_environment(request, os.environ if self._base_env is None else self._base_env)
        try:
            description = self._pyslurm.JobSubmitDescription(**submit_description(request, env))
            # Our own settings win over the script's #SBATCH lines, as sbatch's command line does.
            description.load_sbatch_options(overwrite=False)
            self._apply_sbatch_args(description, request.sbatch_args)
            return str(description.submit())
        except ClusterError:
            raise
        except Exception as exc:  # pyslurm.RPCError, or ValueError for an option it refuses
            raise self._error("submit", exc) from exc

    def poll(self, job_ids: Collection[str]) -> dict[str, JobInfo]:
        wanted = set(job_ids)
        if not wanted:
            return {}
        found = {job.job_id: job for job in self._known() if job.job_id in wanted}
        missing = wanted - found.keys()
        if missing:
            found.update({job.job_id: job for job in self._accounted(missing) if job.job_id in missing})
        return found

    def find_by_tag(self, tags: Collection[str]) -> dict[str, JobInfo]:
        wanted = set(tags)
        if not wanted:
            return {}
        return newest(job for job in self._known() if job.name in wanted)

    def cancel(self, job_id: str) -> None:
        try:
            self._pyslurm.Job(int(job_id.split("_", 1)[0])).cancel()
        except Exception as exc:
            if any(marker in str(exc) for marker in ALREADY_GONE_MARKERS):
                return
            raise self._error("cancel", exc) from exc

    def usage(self, job_ids: Collection[str]) -> dict[str, SchedulerUsage]:
        """The scheduler's elapsed time and node count of ended jobs (slurmdbd); empty without accounting."""
        found: dict[str, SchedulerUsage] = {}
        for job in self._database_jobs(job_ids):
            figures = usage_from_database(job)
            if figures is not None:
                found[str(job.id)] = figures
        return found

    def _known(self) -> list[JobInfo]:
        try:
            jobs = self._pyslurm.Jobs.load()
        except Exception as exc:
            raise self._error("load jobs", exc) from exc
        return [job_info_from_controller(job) for job in jobs.values()]

    def _accounted(self, job_ids: Collection[str]) -> list[JobInfo]:
        return [job_info_from_database(job) for job in self._database_jobs(job_ids)]

    def _database_jobs(self, job_ids: Collection[str]) -> Iterable[Any]:
        ids = [int(j) for j in job_ids if j.isdigit()]
        if not ids or not self._accounting:
            return []
        try:
            db = self._pyslurm.db
            return list(db.Jobs.load(db.JobFilter(ids=ids)).values())
        except Exception:
            # No slurmdbd here (or it does not answer): unknown, as the CLI backend reads a failed sacct.
            self._accounting = False
            return []

    def _apply_sbatch_args(self, description: Any, args: Iterable[str]) -> None:
        """The stage's extra sbatch options, through pyslurm's own table of #SBATCH options."""
        if not args:
            return
        from pyslurm.core.job.sbatch_opts import _find_opt, _parse_line

        for arg in args:
            flag, value = _parse_line(f"#SBATCH {arg}")
            option = _find_opt(flag)
            if option.our_attr_name is None:
                # pyslurm ignores options it has no attribute for; a job without them would be another job.
                raise ClusterError(f"pyslurm submit: cannot set sbatch option {arg!r} (use backend: slurm)",
                                   permanent=True)
            option.set(value, description, True)

    @staticmethod
    def _error(what: str, exc: BaseException) -> ClusterError:
        return error_for([f"pyslurm {what}"], 1, str(exc) or type(exc).__name__)

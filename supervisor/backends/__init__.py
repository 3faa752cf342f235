"""Cluster backends: SLURM through its command-line clients or through pyslurm, or local processes on this host.

The adapters are imported lazily so that importing this package runs no work and needs neither
SLURM nor a writable state directory.
"""

from __future__ import annotations

import fnmatch
import shutil
from collections.abc import Mapping
from pathlib import Path

from supervisor.domain.ports import Cluster
from supervisor.domain.types import SubmitRequest

BACKENDS = ("slurm", "pyslurm", "local")


def make_cluster(kind: str, state_dir: Path) -> Cluster:
    """The backend called ``kind``; ``state_dir`` is where a backend may keep its own records.

    ``pyslurm`` where pyslurm cannot load (not installed, or built for another Slurm release) is the CLI
    backend, with a warning: the same cluster, reached another way.
    """
    if kind == "slurm":
        from supervisor.backends.slurm_cli import SlurmCliCluster

        return SlurmCliCluster()
    if kind == "pyslurm":
        from supervisor.backends.pyslurm import PyslurmCluster

        try:
            return PyslurmCluster()
        except (ImportError, OSError) as exc:
            import structlog

            from supervisor.backends.slurm_cli import SlurmCliCluster

            structlog.get_logger(__name__).warning(
                "backend.pyslurm_unavailable", error=str(exc), fallback="slurm",
                hint="pip install 'slurm-llm-supervisor[pyslurm]' built against this cluster's Slurm")
            return SlurmCliCluster()
    if kind == "local":
        from supervisor.backends.local import LocalCluster

        return LocalCluster(state_dir)
    raise ValueError(f"unknown cluster backend {kind!r}; expected one of: {', '.join(BACKENDS)}")


def default_backend() -> str:
    """``slurm`` where the SLURM clients are installed, else the embedded ``local`` backend."""
    return "slurm" if shutil.which("sbatch") is not None else "local"


# Names of credentials a job never inherits from the supervisor (matched against the upper-cased name):
# the supervisor's own notification secrets and whatever else the shell that started it happened to hold.
# A job that needs one (HF_TOKEN for a gated model, WANDB_API_KEY) gets it back through JOB_ENV_ALLOW.
SECRET_ENV_PATTERNS: tuple[str, ...] = (
    "*TOKEN",
    "*SECRET",
    "*PASSWORD",
    "*PASSWD",
    "*_API_KEY",
    "*_APIKEY",
    "*_ACCESS_KEY",
    "*_SECRET_KEY",
    "*_PRIVATE_KEY",
    "*_CREDENTIALS",
    "*WEBHOOK*",
    "SLACK_*",
    "MATRIX_*",
)
# Set in the supervisor's environment: names (space- or comma-separated) let through the patterns above.
JOB_ENV_ALLOW = "SUPERVISOR_JOB_ENV_ALLOW"


def is_secret_env_name(name: str) -> bool:
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pattern) for pattern in SECRET_ENV_PATTERNS)


def job_environment(request: SubmitRequest, base: Mapping[str, str]) -> dict[str, str]:
    """The environment a job starts with, the same for every backend.

    ``base`` is the supervisor's own environment: on SLURM, sbatch exports it to the job by default,
    and the local backend behaves the same way so a stage behaves alike on both. Left out of it: the
    names in ``request.unset_env`` always, and names matching :data:`SECRET_ENV_PATTERNS` unless
    :data:`JOB_ENV_ALLOW` lists them. ``request.env`` (set by the run spec or the stage) is applied last.
    """
    allowed = set(base.get(JOB_ENV_ALLOW, "").replace(",", " ").split())
    unset = set(request.unset_env)
    env = {
        name: value
        for name, value in base.items()
        if name not in unset and (name in allowed or not is_secret_env_name(name))
    }
    env["SUPERVISOR_TAG"] = request.tag
    env["SUPERVISOR_WORKDIR"] = str(request.workdir)
    env["SUPERVISOR_LOG_PATTERN"] = request.log_pattern
    env.update(request.env)
    return env

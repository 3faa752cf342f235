"""Secrets in the supervisor's environment never reach a job: real local and SLURM jobs run printenv."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.backends import JOB_ENV_ALLOW, job_environment
from supervisor.backends.local import LocalCluster
from supervisor.backends.slurm_cli import SlurmCliCluster
from supervisor.domain.types import JobPhase, SubmitRequest
from supervisor.notify.config import secret_env_names

from slurm_fixtures import require_slurm, wait_phase, wait_until, write_script

FINISHED = {JobPhase.COMPLETED, JobPhase.FAILED, JobPhase.CANCELLED}

# Channels whose variable names no deny-list pattern catches: only unset_env keeps them from the job.
NOTIFY: list[dict[str, Any]] = [
    {"slack": {"webhook_url_env": "OPS_CHAT_URL"}},
    {"matrix": {"homeserver": "https://m.example.org", "room_id": "!r", "access_token_env": "OPS_MX"}},
    {"webhook": {"url_env": "OPS_HOOK_URL", "secret_env": "OPS_HOOK_SIG"}, "on": ["failed"]},
]
# Names the deny-list catches, as an operator's shell would hold them.
DENIED = ("SLACK_WEBHOOK_URL", "MATRIX_TOKEN", "HOOK_SECRET", "PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN")


def secret_values() -> dict[str, str]:
    return {name: f"secret-{name.lower()}-{uuid.uuid4().hex}" for name in (*secret_env_names(NOTIFY), *DENIED)}


def request(workdir: Path, tag: str, **kw: object) -> SubmitRequest:
    script = write_script(workdir, f"{tag}.sh", "#SBATCH --time=5\nprintenv\n")
    return SubmitRequest(
        tag=tag,
        workdir=workdir,
        log_pattern=str(workdir / "job-%j.log"),
        script=script,
        unset_env=secret_env_names(NOTIFY),
        **kw,  # type: ignore[arg-type]
    )


def everything_written(*roots: Path) -> str:
    return "".join(p.read_text(errors="replace") for root in roots for p in root.rglob("*") if p.is_file())


# --- pure --------------------------------------------------------------------------------------


def test_secret_env_names_lists_every_variable_the_channels_read() -> None:
    assert secret_env_names(NOTIFY) == ("OPS_CHAT_URL", "OPS_MX", "OPS_HOOK_URL", "OPS_HOOK_SIG")
    assert secret_env_names([{"webhook": {"url": "https://h.example.org/x"}}]) == ()


def test_job_environment_drops_unset_names_and_denied_patterns_unless_allowed() -> None:
    base = {"PATH": "/bin", "OPS_MX": "t", "GITHUB_TOKEN": "g", "my_api_key": "k", "HF_TOKEN": "h",
            "SLURM_CONF": "/etc/slurm.conf", JOB_ENV_ALLOW: "HF_TOKEN, OPS_MX"}
    req = SubmitRequest(tag="t", workdir=Path("/w"), log_pattern="/w/l", unset_env=("OPS_MX",),
                        env={"EXTRA_TOKEN": "from-the-spec"})

    env = job_environment(req, base)

    # unset_env wins over the allow-list; the spec's own env is the spec's choice and stays.
    assert {k: v for k, v in env.items() if not k.startswith("SUPERVISOR_")} == {
        "PATH": "/bin", "HF_TOKEN": "h", "SLURM_CONF": "/etc/slurm.conf", "EXTRA_TOKEN": "from-the-spec"}


# --- real jobs ---------------------------------------------------------------------------------


@pytest.fixture
def local_state(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    for record_path in (state / "local-jobs").glob("L*.json"):
        record = json.loads(record_path.read_text())
        if record.get("end_time") is None and isinstance(record.get("pgid"), int):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record["pgid"], signal.SIGKILL)


def test_no_secret_reaches_a_local_job(local_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = secret_values()
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PLAIN_SETTING", "plain-value")
    workdir = tmp_path / "work"
    workdir.mkdir()
    cluster = LocalCluster(local_state)  # the supervisor's real os.environ, as in production

    job_id = cluster.submit(request(workdir, "env-local"))

    def finished() -> JobPhase | None:
        info = cluster.poll([job_id]).get(job_id)
        return info.phase if info is not None and info.phase.finished else None

    assert wait_until(finished, f"job {job_id}", 60) is JobPhase.COMPLETED
    log = (workdir / f"job-{job_id}.log").read_text()
    assert "PLAIN_SETTING=plain-value" in log  # printenv did print the environment
    written = everything_written(workdir, local_state)
    assert [name for name, value in secrets.items() if value in written] == []


@pytest.mark.slurm
def test_no_secret_reaches_a_slurm_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_slurm()
    secrets = secret_values()
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PLAIN_SETTING", "plain-value")
    cluster = SlurmCliCluster()

    job_id = cluster.submit(request(tmp_path, f"env-{uuid.uuid4().hex[:10]}"))
    try:
        info = wait_phase(cluster, job_id, FINISHED)
    finally:
        cluster.cancel(job_id)

    assert info.phase is JobPhase.COMPLETED
    log = (tmp_path / f"job-{job_id}.log").read_text()
    assert "PLAIN_SETTING=plain-value" in log
    assert f"SLURM_JOB_ID={job_id}" in log  # it ran under slurmd, with sbatch's exported environment
    assert [name for name, value in secrets.items() if value in everything_written(tmp_path)] == []

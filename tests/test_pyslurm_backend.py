"""The pyslurm backend: its record mapping (pure, runs everywhere) and the fallback to the CLI backend.

The mapping is tested over plain objects with the attributes pyslurm 25.11 documents for ``pyslurm.Job``
and ``pyslurm.db.Job`` (pyslurm itself cannot be installed where Slurm 25.11 is not); the adapter against
a real cluster runs the CLI backend's contract tests (tests/test_pyslurm_cluster.py).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from supervisor.backends import make_cluster
from supervisor.backends.pyslurm import (
    job_info_from_controller,
    job_info_from_database,
    submit_description,
    usage_from_database,
)
from supervisor.backends.slurm_cli import SlurmCliCluster
from supervisor.domain.accounting import SchedulerUsage
from supervisor.domain.errors import ClusterError
from supervisor.domain.spec import RunSpec
from supervisor.domain.types import JobPhase, SubmitRequest

EPOCH = int(datetime(2024, 12, 28, 10, 0, tzinfo=UTC).timestamp())


def controller_job(**kw: object) -> SimpleNamespace:
    base: dict[str, object] = dict(id=41, name="llama.train.2.ab12", state="RUNNING", state_reason="None",
                                   exit_code=0, exit_code_signal=0, allocated_nodes="lrdn[0101-0104]",
                                   submit_time=EPOCH, start_time=EPOCH + 60, end_time=EPOCH + 3660,
                                   excluded_nodes=None)
    return SimpleNamespace(**{**base, **kw})


def test_a_running_job_reads_as_the_cli_backend_reads_it() -> None:
    info = job_info_from_controller(controller_job())
    assert (info.job_id, info.phase, info.nodes, info.reason, info.exit_code, info.end_time) == (
        "41", JobPhase.RUNNING, "lrdn[0101-0104]", None, None, None)
    assert info.start_time == datetime(2024, 12, 28, 10, 1, tzinfo=UTC)


def test_ended_held_and_pending_jobs() -> None:
    failed = job_info_from_controller(controller_job(state="FAILED", exit_code=3))
    signalled = job_info_from_controller(controller_job(state="CANCELLED", exit_code=0, exit_code_signal=15))
    held = job_info_from_controller(controller_job(state="PENDING", state_reason="JobHeldUser", allocated_nodes=None,
                                                   start_time=0))
    assert (failed.phase, failed.exit_code, failed.end_time) == (
        JobPhase.FAILED, 3, datetime(2024, 12, 28, 11, 1, tzinfo=UTC))
    assert signalled.exit_code == 143
    assert (held.phase, held.nodes, held.start_time, held.reason) == (JobPhase.HELD, None, None, "JobHeldUser")


def test_database_records_and_the_schedulers_figures() -> None:
    record = SimpleNamespace(id=7001, name="a|b", state="TIMEOUT", exit_code=0, exit_code_signal=0,
                             nodelist="lrdn[0101-0102]", submit_time=EPOCH, start_time=EPOCH, end_time=EPOCH + 7230,
                             elapsed_time=7230, num_nodes=2)
    info = job_info_from_database(record)
    assert (info.phase, info.raw_state, info.nodes, info.name) == (JobPhase.FAILED, "TIMEOUT", "lrdn[0101-0102]", "a|b")
    assert usage_from_database(record) == SchedulerUsage(7230, 2)
    assert usage_from_database(SimpleNamespace(elapsed_time=None, num_nodes=1)) is None


def test_the_submit_description_sets_what_sbatchs_command_line_sets(tmp_path: Path) -> None:
    request = SubmitRequest(tag="r.train.1.ab", workdir=tmp_path, log_pattern=str(tmp_path / "%j.log"),
                            script=tmp_path / "train.sbatch", exclude=("n1", "n2"))
    description = submit_description(request, {"PATH": "/bin"})
    assert description == {"name": "r.train.1.ab", "script": str(tmp_path / "train.sbatch"),
                           "working_directory": str(tmp_path), "standard_output": str(tmp_path / "%j.log"),
                           "standard_error": str(tmp_path / "%j.log"), "environment": {"PATH": "/bin"},
                           "excluded_nodes": ["n1", "n2"]}
    with pytest.raises(ClusterError) as err:
        submit_description(SubmitRequest(tag="t", workdir=tmp_path, log_pattern="x", command=("true",)), {})
    assert err.value.permanent


def test_pyslurm_that_cannot_load_falls_back_to_the_cli_backend_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import pyslurm` raise ImportError, installed or not.
    monkeypatch.setitem(sys.modules, "pyslurm", None)
    with capture_logs() as logs:
        cluster = make_cluster("pyslurm", tmp_path)
    assert isinstance(cluster, SlurmCliCluster)
    assert [(e["event"], e["log_level"], e["fallback"]) for e in logs] == [
        ("backend.pyslurm_unavailable", "warning", "slurm")]


def test_a_spec_may_ask_for_the_pyslurm_backend() -> None:
    spec = RunSpec.model_validate({"name": "x", "backend": "pyslurm", "workdir": "w",
                                   "stages": [{"name": "s", "script": "s.sh"}]})
    assert spec.backend == "pyslurm"

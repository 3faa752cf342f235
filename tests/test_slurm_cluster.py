"""SlurmCliCluster against the real one-machine cluster (deploy/slurm-cluster.sh start)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.backends.slurm_cli import SlurmCliCluster
from supervisor.domain.errors import ClusterError
from supervisor.domain.types import JobPhase, SubmitRequest

from slurm_fixtures import (
    TrackingCluster,
    compute_nodes,
    controller_stopped,
    queued_ids,
    require_slurm,
    wait_phase,
    wait_until,
    write_script,
)

pytestmark = pytest.mark.slurm

RUNNING = {JobPhase.RUNNING}
FINISHED = {JobPhase.COMPLETED, JobPhase.FAILED, JobPhase.CANCELLED}


@pytest.fixture
def cluster() -> Iterator[SlurmCliCluster]:
    require_slurm()
    c = TrackingCluster()
    yield c
    c.cancel_all()


def request(tmp_path: Path, body: str, **kw: object) -> SubmitRequest:
    tag = f"test-{uuid.uuid4().hex[:10]}"
    script = write_script(tmp_path, f"{tag}.sh", "#SBATCH --time=5\n" + body)
    return SubmitRequest(
        tag=tag,
        workdir=tmp_path,
        log_pattern=str(tmp_path / "slurm-%j.log"),
        script=script,
        **kw,  # type: ignore[arg-type]
    )


def test_submit_runs_script_with_env_and_log(cluster: SlurmCliCluster, tmp_path: Path) -> None:
    req = request(
        tmp_path,
        'echo "tag=$SUPERVISOR_TAG extra=$EXTRA cwd=$(pwd) job=$SLURM_JOB_ID"\n',
        env={"EXTRA": "from-request"},
    )
    job_id = cluster.submit(req)

    info = wait_phase(cluster, job_id, FINISHED)

    assert info.phase is JobPhase.COMPLETED
    assert info.exit_code == 0
    assert info.name == req.tag
    # A one-node job on whichever node the cluster has (this host on the one-node cluster, node01.. else).
    assert info.nodes in compute_nodes()
    assert info.start_time is not None and info.end_time is not None
    log = (tmp_path / f"slurm-{job_id}.log").read_text()
    assert f"tag={req.tag} extra=from-request cwd={tmp_path} job={job_id}" in log


def test_failed_job_reports_exit_code(cluster: SlurmCliCluster, tmp_path: Path) -> None:
    job_id = cluster.submit(request(tmp_path, "exit 3\n"))

    info = wait_phase(cluster, job_id, FINISHED)

    assert (info.phase, info.exit_code, info.raw_state) == (JobPhase.FAILED, 3, "FAILED")


def test_find_by_tag_sees_queued_and_ended_jobs(cluster: SlurmCliCluster, tmp_path: Path) -> None:
    sleeper = request(tmp_path, "sleep 300\n")
    quick = request(tmp_path, "true\n")
    sleeper_id = cluster.submit(sleeper)
    quick_id = cluster.submit(quick)
    wait_phase(cluster, sleeper_id, RUNNING)
    wait_phase(cluster, quick_id, FINISHED)

    found = cluster.find_by_tag([sleeper.tag, quick.tag, "test-never-submitted"])

    assert set(found) == {sleeper.tag, quick.tag}
    assert (found[sleeper.tag].job_id, found[sleeper.tag].phase) == (sleeper_id, JobPhase.RUNNING)
    assert (found[quick.tag].job_id, found[quick.tag].phase) == (quick_id, JobPhase.COMPLETED)


def test_cancel_removes_job_from_queue_and_is_idempotent(cluster: SlurmCliCluster, tmp_path: Path) -> None:
    job_id = cluster.submit(request(tmp_path, "sleep 300\n"))
    wait_phase(cluster, job_id, RUNNING)

    cluster.cancel(job_id)

    wait_until(lambda: True if job_id not in queued_ids() else None, f"job {job_id} to leave squeue")
    info = cluster.poll([job_id])[job_id]
    assert info.phase is JobPhase.CANCELLED
    cluster.cancel(job_id)  # already ended: no error
    cluster.cancel("99999999")  # never existed: no error


def test_excluded_node_shows_in_job_and_hold_reads_as_held(cluster: SlurmCliCluster, tmp_path: Path) -> None:
    job_id = cluster.submit(request(tmp_path, "true\n", exclude=("fake01", "fake02"), sbatch_args=("--hold",)))

    info = cluster.poll([job_id])[job_id]

    assert info.phase is JobPhase.HELD
    assert info.reason == "JobHeldUser"
    assert info.excluded_nodes == "fake[01-02]"


def test_excluding_an_undeclared_node_is_a_permanent_error(cluster: SlurmCliCluster, tmp_path: Path) -> None:
    with pytest.raises(ClusterError) as err:
        cluster.submit(request(tmp_path, "true\n", exclude=("no-such-node",)))

    assert err.value.permanent
    assert "Invalid node name specified" in str(err.value)


def test_poll_of_unknown_job_leaves_it_out(cluster: SlurmCliCluster) -> None:
    assert cluster.poll(["99999999"]) == {}


def test_poll_without_controller_is_unknown_not_failed(cluster: SlurmCliCluster, tmp_path: Path) -> None:
    job_id = cluster.submit(request(tmp_path, "sleep 300\n"))
    wait_phase(cluster, job_id, RUNNING)

    with controller_stopped(), pytest.raises(ClusterError) as err:
        cluster.poll([job_id])

    assert not err.value.permanent
    assert "Unable to contact slurm controller" in str(err.value)
    # The restarted controller recovered the job from its saved state (wait_phase fails the test otherwise).
    wait_phase(cluster, job_id, RUNNING)

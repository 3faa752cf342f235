"""The CLI backend's contract tests (tests/test_slurm_cluster.py), run against the pyslurm backend.

The same test functions, collected here with a `cluster` fixture that builds a PyslurmCluster: where
``import pyslurm`` fails (PyPI's pyslurm 25.11 builds only against Slurm 25.11) they are skipped, saying why.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_slurm_cluster import (  # noqa: F401 (collected here, with this module's `cluster`)
    test_cancel_removes_job_from_queue_and_is_idempotent,
    test_excluded_node_shows_in_job_and_hold_reads_as_held,
    test_excluding_an_undeclared_node_is_a_permanent_error,
    test_failed_job_reports_exit_code,
    test_find_by_tag_sees_queued_and_ended_jobs,
    test_poll_of_unknown_job_leaves_it_out,
    test_poll_without_controller_is_unknown_not_failed,
    test_submit_runs_script_with_env_and_log,
)

from supervisor.backends.pyslurm import PyslurmCluster, load
from supervisor.domain.types import SubmitRequest

from slurm_fixtures import require_slurm

pytestmark = pytest.mark.slurm


class TrackingPyslurmCluster(PyslurmCluster):
    def __init__(self) -> None:
        super().__init__()
        self.submitted: list[str] = []

    def submit(self, request: SubmitRequest) -> str:
        job_id = super().submit(request)
        self.submitted.append(job_id)
        return job_id


@pytest.fixture
def cluster() -> Iterator[PyslurmCluster]:
    try:
        load()
    except (ImportError, OSError) as exc:
        pytest.skip(f"pyslurm cannot load here ({exc}); pyslurm 25.11 needs Slurm 25.11")
    require_slurm()
    c = TrackingPyslurmCluster()
    yield c
    for job_id in c.submitted:
        c.cancel(job_id)

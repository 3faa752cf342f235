"""sacct's own measure of a job (ElapsedRaw x NNodes): the argv, the parser, the adapter's one call.

tests/fixtures/slurm/sacct_allocations.txt is in the form ``sacct --noheader --parsable2 --allocations
--format=SACCT_FORMAT`` prints on a cluster with slurmdbd (the one-node cluster here keeps no accounting:
its answer is sacct_no_accounting.stderr, captured).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_slurm_cli import CannedRunner, captured_runner, fixture, ok

from supervisor.backends.slurm_cli import (
    SACCT_FORMAT,
    SlurmCliCluster,
    parse_sacct,
    parse_sacct_usage,
    run_command,
    sacct_argv,
)
from supervisor.domain.accounting import SchedulerUsage
from supervisor.domain.ports import CommandResult
from supervisor.domain.types import JobPhase

from slurm_fixtures import require_slurm

ALLOCATIONS = (Path(__file__).parent / "fixtures" / "slurm" / "sacct_allocations.txt").read_text()


def test_the_format_asks_for_elapsed_seconds_and_node_count_before_the_name() -> None:
    fields = SACCT_FORMAT.split(",")
    assert fields[-1] == "JobName" and {"ElapsedRaw", "NNodes"} <= set(fields)
    assert f"--format={SACCT_FORMAT}" in sacct_argv(["2", "10"])


def test_usage_is_elapsed_raw_and_nnodes_as_sacct_printed_them() -> None:
    assert parse_sacct_usage(ALLOCATIONS) == {
        "7101": SchedulerUsage(14282, 4),
        "7102": SchedulerUsage(7230, 3),
        "7103": SchedulerUsage(120, 1),
        "7104": SchedulerUsage(0, 4),  # pending jobs show the nodes they asked for, and no time
        "7105": SchedulerUsage(3540, 32),
        "7106_3": SchedulerUsage(100, 1),
    }


def test_the_jobs_of_the_same_lines_parse_as_before() -> None:
    jobs = {job.job_id: job for job in parse_sacct(ALLOCATIONS, UTC)}
    assert (jobs["7102"].phase, jobs["7102"].nodes, jobs["7102"].name) == (
        JobPhase.FAILED, "lrdn[0101-0102,0200]", "llama.train.1.ab12")
    assert jobs["7103"].name == "a|b|c"  # the name is last: a "|" in it stays in it
    assert (jobs["7104"].nodes, jobs["7104"].start_time) == (None, None)
    assert (jobs["7105"].phase, jobs["7105"].end_time) == (JobPhase.RUNNING, None)
    assert jobs["7101"].end_time == datetime(2024, 12, 28, 14, 3, 2, tzinfo=UTC)


def test_the_cluster_asks_sacct_once_for_every_job() -> None:
    runner = captured_runner()
    runner.answers = {**runner.answers, "sacct": ok(ALLOCATIONS)}
    found = SlurmCliCluster(runner=runner, tz=UTC).usage(["7102", "7101"])
    assert [argv for argv, _, _ in runner.calls] == [sacct_argv(["7101", "7102"])]
    assert found["7101"] == SchedulerUsage(14282, 4)


def test_without_accounting_there_are_no_figures_and_sacct_is_not_asked_again() -> None:
    runner = captured_runner()  # its sacct answers as the one-node cluster's does: no accounting storage
    cluster = SlurmCliCluster(runner=runner, tz=UTC)
    assert cluster.usage(["7101"]) == {}
    assert cluster.usage(["7101"]) == {}
    assert runner.programs() == ["sacct"]


def test_no_jobs_no_call() -> None:
    runner = CannedRunner({"sacct": CommandResult(0, fixture("sacct_no_accounting.stderr"), "")})
    assert SlurmCliCluster(runner=runner).usage([]) == {}
    assert runner.calls == []


@pytest.mark.slurm
def test_the_one_node_cluster_keeps_no_accounting_so_there_are_no_figures() -> None:
    require_slurm()
    probe = subprocess.run(["sacct", "--noheader", "--jobs=1"], capture_output=True, text=True, timeout=60)
    if probe.returncode == 0:
        pytest.skip("this cluster keeps accounting: the no-accounting answer exists only on the one-node cluster")
    asked: list[str] = []

    def recording(argv: Sequence[str], **kw: Any) -> CommandResult:
        asked.append(argv[0])
        return run_command(argv, **kw)

    cluster = SlurmCliCluster(runner=recording)
    assert cluster.usage(["1"]) == {}
    assert cluster.usage(["1"]) == {}
    assert asked == ["sacct"]  # the real sacct said once that there is no accounting; not asked again

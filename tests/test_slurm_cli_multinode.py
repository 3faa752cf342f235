"""The SLURM CLI parsers on output of the 4-node dev cluster with accounting (no cluster needed here).

The mn_* inputs under tests/fixtures/slurm/ come from `capture.sh multinode`: host lists such as
node[01-04], a node killed under a running job (NODE_FAIL), pending reasons with commas in them,
and sacct's view of jobs slurmctld had already forgotten.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from supervisor.backends.slurm_cli import (
    SACCT_FORMAT,
    newest,
    parse_sacct,
    parse_sacct_usage,
    parse_scontrol_jobs,
    parse_squeue,
)
from supervisor.domain.hostlist import count_hosts
from supervisor.domain.types import JobInfo, JobPhase

from slurm_fixtures import FIXTURES


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def by_name(jobs: list[JobInfo]) -> dict[str, JobInfo]:
    return newest(jobs)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_sacct_format_matches_the_captured_one() -> None:
    assert fixture("mn_sacct.format").strip() == SACCT_FORMAT


def test_squeue_host_lists_and_pending_reasons() -> None:
    jobs = by_name(parse_squeue(fixture("mn_squeue.txt"), tz=UTC))

    wide = jobs["mn-wide"]
    assert (wide.phase, wide.nodes, wide.excluded_nodes) == (JobPhase.RUNNING, "node[01-04]", None)
    assert wide.start_time == utc("2026-12-02T06:49:54") and wide.end_time is None
    pair = jobs["mn-pair"]
    assert (pair.phase, pair.nodes, pair.excluded_nodes) == (JobPhase.RUNNING, "node[02-03]", "node01")
    # Two nodes asked of the one-node-per-job partition: pending for good, not an error at submit.
    serial = jobs["mn-serial-too-wide"]
    assert (serial.phase, serial.reason, serial.nodes, serial.start_time) == (
        JobPhase.PENDING, "PartitionNodeLimit", None, None)
    assert (jobs["mn-held"].phase, jobs["mn-held"].reason) == (JobPhase.HELD, "JobHeldUser")
    assert (jobs["mn-resources"].phase, jobs["mn-resources"].reason) == (JobPhase.PENDING, "Resources")


def test_squeue_after_a_node_died() -> None:
    jobs = by_name(parse_squeue(fixture("mn_squeue_node_down.txt"), tz=UTC))

    assert "mn-wide" not in jobs  # NODE_FAIL: squeue forgets it at once, scontrol and sacct remember
    waiting = jobs["mn-wants-dead-node"]
    # The reason holds a comma and a space; the name stays the last field.
    assert (waiting.phase, waiting.reason, waiting.nodes) == (
        JobPhase.PENDING, "ReqNodeNotAvail, UnavailableNodes:node04", None)
    resources = jobs["mn-resources"]
    assert (resources.phase, resources.nodes) == (JobPhase.RUNNING, "node[01-03]")


def test_squeue_reasons_are_what_users_see_in_parentheses() -> None:
    """squeue's default display (what people paste into tickets) against the %r the supervisor reads."""
    parsed = {job.job_id: job for job in parse_squeue(fixture("mn_squeue_node_down.txt"), tz=UTC)}
    lines = fixture("mn_squeue_default.txt").splitlines()[1:]
    shown: dict[str, str] = {}
    for line in lines:
        job_id, _partition, _name, _user, _state, _time, _nodes, rest = line.split(None, 7)
        shown[job_id] = rest
    assert shown.keys() == parsed.keys()
    for job_id, where in shown.items():
        job = parsed[job_id]
        assert where == (job.nodes if job.phase is JobPhase.RUNNING else f"({job.reason})"), job_id


def test_scontrol_node_failure_and_null_fields() -> None:
    jobs = by_name(parse_scontrol_jobs(fixture("mn_scontrol_show_job.txt"), tz=UTC))

    expected = {
        # name: (phase, raw_state, exit_code, nodes, excluded_nodes, reason)
        # SIGTERM (15) to the batch step on the node failure: exit 128+15.
        "mn-wide": (JobPhase.FAILED, "NODE_FAIL", 143, "node[01-04]", None, "NodeDown"),
        "mn-pair": (JobPhase.RUNNING, "RUNNING", None, "node[02-03]", "node01", None),
        "mn-serial-too-wide": (JobPhase.PENDING, "PENDING", None, None, None, "PartitionNodeLimit"),
        "mn-held": (JobPhase.HELD, "PENDING", None, None, None, "JobHeldUser"),
        "mn-resources": (JobPhase.RUNNING, "RUNNING", None, "node[01-03]", None, None),
        # scontrol writes the reason's space as "_".
        "mn-wants-dead-node": (JobPhase.PENDING, "PENDING", None, None, None,
                               "ReqNodeNotAvail,_UnavailableNodes:node04"),
    }
    assert set(jobs) == set(expected)  # the ended jobs were already past MinJobAge (30 s)
    for name, want in expected.items():
        job = jobs[name]
        got = (job.phase, job.raw_state, job.exit_code, job.nodes, job.excluded_nodes, job.reason)
        assert got == want, name
    wide = jobs["mn-wide"]
    assert (wide.start_time, wide.end_time) == (utc("2026-12-02T06:49:54"), utc("2026-12-02T06:50:23"))


def test_sacct_knows_what_slurmctld_forgot() -> None:
    jobs = by_name(parse_sacct(fixture("mn_sacct.txt"), tz=UTC))

    expected = {
        # name: (phase, raw_state, exit_code, nodes)
        "mn-completed": (JobPhase.COMPLETED, "COMPLETED", 0, "node[01-03]"),
        "mn-failed": (JobPhase.FAILED, "FAILED", 3, "node[01-02]"),
        # The same job scontrol reports with ExitCode=0:15: accounting keeps 0:0 for a node failure.
        "mn-wide": (JobPhase.FAILED, "NODE_FAIL", 0, "node[01-04]"),
        "mn-pair": (JobPhase.CANCELLED, "CANCELLED by 0", 0, "node[02-03]"),
        "mn-serial-too-wide": (JobPhase.CANCELLED, "CANCELLED by 0", 0, None),
        "mn-held": (JobPhase.CANCELLED, "CANCELLED by 0", 0, None),
        "mn-resources": (JobPhase.CANCELLED, "CANCELLED by 0", 0, "node[01-03]"),
        "mn-cancelled-pending": (JobPhase.CANCELLED, "CANCELLED by 0", 0, None),
        "mn-wants-dead-node": (JobPhase.CANCELLED, "CANCELLED by 0", 0, None),
    }
    assert set(jobs) == set(expected)
    for name, want in expected.items():
        job = jobs[name]
        assert (job.phase, job.raw_state, job.exit_code, job.nodes) == want, name
    # "None assigned" nodes and a "None" start: the job never ran.
    assert jobs["mn-held"].start_time is None
    assert jobs["mn-cancelled-pending"].start_time is None
    wide = jobs["mn-wide"]
    assert (wide.start_time, wide.end_time) == (utc("2026-12-02T08:42:13"), utc("2026-12-02T08:42:44"))


def test_sacct_figures_of_the_captured_jobs_are_elapsed_times_node_count() -> None:
    """Node-hours come from the scheduler's own ElapsedRaw and NNodes, as the real sacct printed them."""
    usage = parse_sacct_usage(fixture("mn_sacct.txt"))
    ids = {job.name: job.job_id for job in parse_sacct(fixture("mn_sacct.txt"), tz=UTC)}
    wide, pair = usage[ids["mn-wide"]], usage[ids["mn-pair"]]
    assert (wide.elapsed_s, wide.node_count) == (31, 4)  # 4 nodes from 08:42:13 to the node failure at 08:42:44
    assert (pair.elapsed_s, pair.node_count) == (46, 2)
    assert usage[ids["mn-held"]].elapsed_s == 0  # never ran: uses nothing


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [("node[01-04]", 4), ("node[02-03]", 2), ("node[01,03-04]", 3), ("node04", 1), ("node[01-03],fake01", 4)],
)
def test_node_hours_count_the_hosts_of_captured_host_lists(hostlist: str, hosts: int) -> None:
    assert count_hosts(hostlist) == hosts

"""Pure parts of the SLURM CLI backend, against output captured from slurm-wlm 22.05.

The inputs under tests/fixtures/slurm/ come from tests/fixtures/slurm/capture.sh run on the
one-machine cluster; no cluster is needed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from supervisor.backends import job_environment
from supervisor.backends.slurm_cli import (
    DEFAULT_TIMEOUT_S,
    SCONTROL_SHOW_JOBS,
    SQUEUE_FORMAT,
    SlurmCliCluster,
    error_for,
    newest,
    parse_exit_code,
    parse_sbatch_output,
    parse_scontrol_jobs,
    parse_scontrol_record,
    parse_squeue,
    phase_of,
    render_sbatch_argv,
    run_command,
    sacct_argv,
    squeue_argv,
)
from supervisor.domain.errors import ClusterError
from supervisor.domain.ports import CommandResult
from supervisor.domain.types import JobInfo, JobPhase, SubmitRequest

from slurm_fixtures import FIXTURES


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def by_name(jobs: list[JobInfo]) -> dict[str, JobInfo]:
    return newest(jobs)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- rendering ---------------------------------------------------------------------------------


def test_sbatch_argv_golden() -> None:
    req = SubmitRequest(
        tag="run7-train-a2",
        workdir=Path("/work/run7"),
        log_pattern="/work/run7/logs/train-%j.log",
        script=Path("/work/run7/train.sbatch"),
        sbatch_args=("--nodes=4", "--partition=boost_usr_prod"),
        exclude=("lrdn0123", "lrdn0456"),
    )

    assert render_sbatch_argv(req) == [
        "sbatch",
        "--parsable",
        "--no-requeue",
        "--job-name=run7-train-a2",
        "--output=/work/run7/logs/train-%j.log",
        "--error=/work/run7/logs/train-%j.log",
        "--exclude=lrdn0123,lrdn0456",
        "--nodes=4",
        "--partition=boost_usr_prod",
        "/work/run7/train.sbatch",
    ]


def test_sbatch_argv_without_exclude_has_no_empty_flag() -> None:
    req = SubmitRequest(tag="t", workdir=Path("/w"), log_pattern="/w/%j.log", script=Path("/w/s.sh"))

    assert render_sbatch_argv(req) == [
        "sbatch",
        "--parsable",
        "--no-requeue",
        "--job-name=t",
        "--output=/w/%j.log",
        "--error=/w/%j.log",
        "/w/s.sh",
    ]


def test_command_request_is_refused_permanently() -> None:
    req = SubmitRequest(tag="t", workdir=Path("/w"), log_pattern="/w/%j.log", command=("rsync", "-a", "x", "y"))

    with pytest.raises(ClusterError) as err:
        render_sbatch_argv(req)
    assert err.value.permanent


def test_job_environment_adds_supervisor_vars_and_request_env_wins() -> None:
    req = SubmitRequest(
        tag="t1", workdir=Path("/w"), log_pattern="/w/%j.log", script=Path("/w/s.sh"), env={"HOME": "/job-home"}
    )

    env = job_environment(req, {"HOME": "/root", "PATH": "/bin"})

    assert env == {
        "HOME": "/job-home",
        "PATH": "/bin",
        "SUPERVISOR_TAG": "t1",
        "SUPERVISOR_WORKDIR": "/w",
        "SUPERVISOR_LOG_PATTERN": "/w/%j.log",
    }


def test_squeue_format_matches_the_captured_one() -> None:
    assert fixture("squeue.format").strip() == SQUEUE_FORMAT
    assert squeue_argv(["b", "a"]) == [
        "squeue",
        "--noheader",
        "--all",
        "--me",
        f"--format={SQUEUE_FORMAT}",
        "--name=a,b",
    ]


# --- parsing -----------------------------------------------------------------------------------


def test_parse_sbatch_output() -> None:
    assert parse_sbatch_output(fixture("sbatch_parsable.stdout")) == fixture("sbatch_parsable.stdout").strip()
    assert parse_sbatch_output("123;cluster2\n") == "123"
    with pytest.raises(ClusterError) as err:
        parse_sbatch_output("")
    assert not err.value.permanent  # the job may exist: reconcile by tag rather than give up


def test_parse_squeue_golden() -> None:
    jobs = by_name(parse_squeue(fixture("squeue.txt"), tz=UTC))

    running = jobs["fx-running"]
    assert running.phase is JobPhase.RUNNING
    assert running.raw_state == "RUNNING"
    assert running.nodes == "vm"
    assert running.excluded_nodes == "fake[01-02]"
    assert running.reason is None
    assert running.exit_code is None
    assert running.submit_time == utc("2026-11-28T01:14:53")
    assert running.start_time == utc("2026-11-28T01:14:56")
    assert running.end_time is None  # %e of a running job is its time limit, not an end

    held = jobs["fx-held"]
    assert (held.phase, held.raw_state, held.reason) == (JobPhase.HELD, "PENDING", "JobHeldUser")

    pending = jobs["fx-pending"]
    assert (pending.phase, pending.reason, pending.nodes) == (JobPhase.PENDING, "Priority", None)
    assert pending.start_time is None
    assert jobs["fx-timeout"].reason == "Resources"


def test_parse_squeue_keeps_a_separator_inside_the_name() -> None:
    (job,) = parse_squeue("7|RUNNING|None|vm||2026-11-28T01:14:53|2026-11-28T01:14:56|N/A|a|b\n", tz=UTC)

    assert (job.job_id, job.name) == ("7", "a|b")


def test_parse_squeue_rejects_a_foreign_format() -> None:
    with pytest.raises(ClusterError):
        parse_squeue("JOBID PARTITION NAME\n")


def test_parse_scontrol_golden() -> None:
    jobs = by_name(parse_scontrol_jobs(fixture("scontrol_show_job.txt"), tz=UTC))

    expected = {
        # name: (phase, raw_state, exit_code, nodes, excluded_nodes, reason)
        "fx-completed": (JobPhase.COMPLETED, "COMPLETED", 0, "vm", "fake01", None),
        "fx-failed": (JobPhase.FAILED, "FAILED", 3, "vm", None, "NonZeroExitCode"),
        "fx-running": (JobPhase.RUNNING, "RUNNING", None, "vm", "fake[01-02]", None),
        "fx-cancelled-running": (JobPhase.CANCELLED, "CANCELLED", 143, "vm", None, None),
        "fx-timeout": (JobPhase.FAILED, "TIMEOUT", 143, "vm", None, "TimeLimit"),
        "fx-held": (JobPhase.HELD, "PENDING", None, None, None, "JobHeldUser"),
        "fx-pending": (JobPhase.PENDING, "PENDING", None, None, None, "Resources"),
        "fx-cancelled-pending": (JobPhase.CANCELLED, "CANCELLED", 0, None, None, "Priority"),
        # sbatch said "Requested node configuration is not available", yet the job exists, FAILED.
        "fx-exclude-all": (JobPhase.FAILED, "FAILED", 129, None, "vm", "BadConstraints"),
    }
    for name, want in expected.items():
        job = jobs[name]
        got = (job.phase, job.raw_state, job.exit_code, job.nodes, job.excluded_nodes, job.reason)
        assert got == want, name


def test_parse_scontrol_times() -> None:
    jobs = by_name(parse_scontrol_jobs(fixture("scontrol_show_job.txt"), tz=UTC))

    timeout = jobs["fx-timeout"]
    assert timeout.submit_time == utc("2026-11-28T01:14:53")
    assert timeout.start_time == utc("2026-11-28T01:14:59")
    assert timeout.end_time == utc("2026-11-28T01:16:18")
    # Cancelled while pending: SLURM sets StartTime to the cancel time, but the job never ran.
    assert jobs["fx-cancelled-pending"].start_time is None
    assert jobs["fx-held"].start_time is None
    assert jobs["fx-running"].end_time is None


def test_parse_scontrol_record_keeps_values_with_spaces_and_equals() -> None:
    line = "JobId=5 JobName=x Reason=Some reason, with spaces TRES=cpu=1,node=1 CPUs/Task=1 Power= "

    record = parse_scontrol_record(line)

    assert record["Reason"] == "Some reason, with spaces"
    assert record["TRES"] == "cpu=1,node=1"
    assert record["CPUs/Task"] == "1"
    assert record["Power"] == ""


def test_parse_scontrol_without_jobs() -> None:
    assert parse_scontrol_jobs("No jobs in the system\n") == []


def test_local_time_is_converted_to_utc() -> None:
    (job,) = parse_squeue("7|PENDING|Priority|||2026-11-28T01:14:53|N/A|N/A|x\n")

    assert job.submit_time is not None
    assert job.submit_time.tzinfo is UTC
    assert job.submit_time == datetime(2026, 11, 28, 1, 14, 53).astimezone(UTC)


@pytest.mark.parametrize(
    ("state", "reason", "phase"),
    [
        ("PENDING", "Resources", JobPhase.PENDING),
        ("CONFIGURING", None, JobPhase.PENDING),
        ("PENDING", "JobHeldUser", JobPhase.HELD),
        ("PENDING", "JobHeldAdmin", JobPhase.HELD),
        ("CANCELLED", "JobHeldUser", JobPhase.CANCELLED),
        ("RUNNING", None, JobPhase.RUNNING),
        ("COMPLETING", None, JobPhase.RUNNING),
        ("COMPLETED", None, JobPhase.COMPLETED),
        ("CANCELLED", None, JobPhase.CANCELLED),
        ("CANCELLED+", None, JobPhase.CANCELLED),
        ("FAILED", "NonZeroExitCode", JobPhase.FAILED),
        ("TIMEOUT", "TimeLimit", JobPhase.FAILED),
        ("NODE_FAIL", None, JobPhase.FAILED),
        ("PREEMPTED", None, JobPhase.FAILED),
        ("OUT_OF_MEMORY", None, JobPhase.FAILED),
        ("BOOT_FAIL", None, JobPhase.FAILED),
        ("DEADLINE", None, JobPhase.FAILED),
        ("SOMETHING_NEW", None, JobPhase.PENDING),
    ],
)
def test_phase_of(state: str, reason: str | None, phase: JobPhase) -> None:
    assert phase_of(state, reason) is phase


@pytest.mark.parametrize(
    ("text", "code"), [("0:0", 0), ("3:0", 3), ("0:15", 143), ("0:9", 137), ("", None), ("x:y", None)]
)
def test_parse_exit_code(text: str, code: int | None) -> None:
    assert parse_exit_code(text) == code


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv0", "stderr_file", "permanent"),
    [
        ("squeue", "ctld_down_squeue.stderr", False),
        ("scontrol", "ctld_down_scontrol.stderr", False),
        ("sbatch", "sbatch_invalid_node.stderr", True),
        ("sbatch", "sbatch_exclude_all.stderr", True),
    ],
)
def test_error_classification_of_captured_messages(argv0: str, stderr_file: str, permanent: bool) -> None:
    stderr = fixture(stderr_file)

    err = error_for([argv0], 1, stderr)

    assert err.permanent is permanent
    assert stderr.strip() in str(err)


def test_run_command_timeout_is_retryable() -> None:
    with pytest.raises(ClusterError) as err:
        run_command(["sleep", "30"], timeout=0.2)
    assert not err.value.permanent


def test_run_command_missing_client_is_permanent() -> None:
    with pytest.raises(ClusterError) as err:
        run_command(["no-such-slurm-client-xyz"])
    assert err.value.permanent


# --- the adapter's calls, with canned answers ---------------------------------------------------


class CannedRunner:
    """Answers each client with a captured output and records every call."""

    def __init__(self, answers: Mapping[str, CommandResult]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], Mapping[str, str] | None, Path | None]] = []

    def __call__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> CommandResult:
        self.calls.append((list(argv), env, cwd))
        return self.answers[argv[0]]

    def programs(self) -> list[str]:
        return [argv[0] for argv, _, _ in self.calls]


def ok(stdout: str) -> CommandResult:
    return CommandResult(0, stdout, "")


def captured_runner() -> CannedRunner:
    return CannedRunner(
        {
            "squeue": ok(fixture("squeue.txt")),
            "scontrol": ok(fixture("scontrol_show_job.txt")),
            "sbatch": ok(fixture("sbatch_parsable.stdout")),
            "scancel": ok(""),
            # This cluster keeps no accounting (no slurmdbd): what its sacct answers, captured.
            "sacct": CommandResult(1, "", fixture("sacct_no_accounting.stderr")),
        }
    )


def test_poll_batches_one_squeue_and_one_scontrol() -> None:
    runner = captured_runner()
    cluster = SlurmCliCluster(runner=runner, tz=UTC)

    # 41 is queued, 40 ended (only scontrol knows it), 999 is unknown to both.
    result = cluster.poll(["41", "40", "999"])

    assert runner.programs() == ["squeue", "scontrol", "sacct"]
    assert runner.calls[1][0] == list(SCONTROL_SHOW_JOBS)
    assert sorted(result) == ["40", "41"]
    assert result["41"].phase is JobPhase.RUNNING
    assert (result["40"].phase, result["40"].exit_code) == (JobPhase.FAILED, 3)


def test_sacct_is_asked_once_then_left_alone_without_accounting() -> None:
    runner = captured_runner()
    cluster = SlurmCliCluster(runner=runner, tz=UTC)
    cluster.poll(["999"])
    cluster.poll(["999"])
    assert runner.programs() == ["squeue", "scontrol", "sacct", "squeue", "scontrol"]


# sacct --noheader --parsable2 --allocations --format=SACCT_FORMAT, as a cluster with slurmdbd prints it.
SACCT_OUTPUT = """\
7001|COMPLETED|0:0|lrdn[0101-0104]|2024-12-28T10:00:00|2024-12-28T10:05:00|2024-12-28T14:03:02|14282|4|llama.train.2.ab12
7002|CANCELLED by 1000|0:15|lrdn0200|2024-12-28T10:00:00|2024-12-28T10:06:00|2024-12-28T10:07:00|60|1|a|b|c
7003|FAILED|3:0|lrdn0201|2024-12-28T10:00:00|2024-12-28T10:06:00|2024-12-28T10:08:00|120|1|x
7004|CANCELLED by 1000|0:0|None assigned|2024-12-28T10:00:00|2024-12-28T10:09:00|2024-12-28T10:09:00|0|0|y
"""


def test_jobs_gone_from_slurmctld_are_read_from_accounting() -> None:
    runner = captured_runner()
    runner.answers = {**runner.answers, "sacct": ok(SACCT_OUTPUT)}
    found = SlurmCliCluster(runner=runner, tz=UTC).poll(["7001", "7002", "7003", "7004", "41"])
    assert runner.calls[-1][0] == sacct_argv(["7001", "7002", "7003", "7004"])
    assert "--jobs=7001,7002,7003,7004" in runner.calls[-1][0]
    done, cancelled, failed, never_ran = found["7001"], found["7002"], found["7003"], found["7004"]
    assert (done.phase, done.exit_code, done.nodes, done.name) == (
        JobPhase.COMPLETED,
        0,
        "lrdn[0101-0104]",
        "llama.train.2.ab12",
    )
    assert done.end_time == datetime(2024, 12, 28, 14, 3, 2, tzinfo=UTC)
    assert (cancelled.phase, cancelled.exit_code, cancelled.name) == (JobPhase.CANCELLED, 143, "a|b|c")
    assert (failed.phase, failed.exit_code) == (JobPhase.FAILED, 3)
    assert (never_ran.nodes, never_ran.start_time) == (None, None)
    assert found["41"].phase is JobPhase.RUNNING  # squeue's answer, not accounting's


def test_poll_skips_scontrol_when_squeue_knew_every_job() -> None:
    runner = captured_runner()

    SlurmCliCluster(runner=runner).poll(["41", "44"])

    assert runner.programs() == ["squeue"]


def test_poll_with_controller_down_raises_retryable_error() -> None:
    runner = CannedRunner({"squeue": CommandResult(1, "", fixture("ctld_down_squeue.stderr"))})

    with pytest.raises(ClusterError) as err:
        SlurmCliCluster(runner=runner).poll(["41"])
    assert not err.value.permanent


def test_find_by_tag_prefers_newest_and_falls_back_to_scontrol() -> None:
    runner = captured_runner()
    runner.answers = {**runner.answers, "squeue": ok(fixture("squeue_by_name.txt"))}

    found = SlurmCliCluster(runner=runner, tz=UTC).find_by_tag(["fx-running", "fx-held", "fx-timeout", "nope"])

    assert runner.calls[0][0][-1] == "--name=fx-held,fx-running,fx-timeout,nope"
    assert runner.programs() == ["squeue", "scontrol"]
    assert sorted(found) == ["fx-held", "fx-running", "fx-timeout"]
    assert (found["fx-running"].job_id, found["fx-running"].phase) == ("41", JobPhase.RUNNING)
    assert found["fx-held"].phase is JobPhase.HELD
    # Only scontrol still knows fx-timeout, twice (ids 23 and 43): the newest wins.
    assert (found["fx-timeout"].job_id, found["fx-timeout"].raw_state) == ("43", "TIMEOUT")


def test_submit_passes_env_and_workdir(tmp_path: Path) -> None:
    runner = captured_runner()
    req = SubmitRequest(
        tag="t", workdir=tmp_path, log_pattern=str(tmp_path / "%j.log"), script=tmp_path / "s.sh", env={"A": "1"}
    )

    job_id = SlurmCliCluster(runner=runner, base_env={"PATH": "/usr/bin"}).submit(req)

    assert job_id == fixture("sbatch_parsable.stdout").strip()
    argv, env, cwd = runner.calls[0]
    assert argv == render_sbatch_argv(req)
    assert env is not None and (env["A"], env["SUPERVISOR_TAG"], env["PATH"]) == ("1", "t", "/usr/bin")
    assert cwd == tmp_path


def test_submit_refused_is_permanent() -> None:
    runner = CannedRunner({"sbatch": CommandResult(1, "", fixture("sbatch_invalid_node.stderr"))})
    req = SubmitRequest(tag="t", workdir=Path("/w"), log_pattern="/w/%j.log", script=Path("/w/s.sh"))

    with pytest.raises(ClusterError) as err:
        SlurmCliCluster(runner=runner).submit(req)
    assert err.value.permanent


def test_cancel_of_a_purged_job_is_not_an_error() -> None:
    gone = CommandResult(1, "", "scancel: error: Kill job error on job id 5: Invalid job id specified\n")
    SlurmCliCluster(runner=CannedRunner({"scancel": gone})).cancel("5")

    refused = CommandResult(1, "", "scancel: error: Kill job error on job id 5: Access/permission denied\n")
    with pytest.raises(ClusterError):
        SlurmCliCluster(runner=CannedRunner({"scancel": refused})).cancel("5")

"""LocalCluster with real processes: submit, exit codes that survive a restart, cancel, env, logs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from supervisor.backends import default_backend, make_cluster
from supervisor.backends.local import LocalCluster, expand_log_pattern
from supervisor.backends.local_records import job_info_from_record
from supervisor.domain.errors import ClusterError
from supervisor.domain.types import JobInfo, JobPhase, SubmitRequest

from slurm_fixtures import wait_until as shared_wait_until

T = TypeVar("T")
WAIT_S = 60.0  # bounds a hang; not a claim about speed


def wait_until(check: Callable[[], T | None], what: str, timeout: float = WAIT_S) -> T:
    return shared_wait_until(check, what, timeout, interval=0.05)


def wait_finished(cluster: LocalCluster, job_id: str) -> JobInfo:
    def check() -> JobInfo | None:
        info = cluster.poll([job_id]).get(job_id)
        return info if info is not None and info.phase.finished else None

    return wait_until(check, f"job {job_id} to finish")


def alive(pid: int) -> bool:
    """A zombie counts as dead: it runs nothing, it only waits for a parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    # Kill whatever a failed test left running.
    for record_path in (state / "local-jobs").glob("L*.json"):
        record = json.loads(record_path.read_text())
        if record.get("end_time") is None and isinstance(record.get("pgid"), int):
            for pgid in (record["pgid"], record["wrapper_pid"]):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def script_request(workdir: Path, body: str, tag: str = "run1-prep-a1", **kw: object) -> SubmitRequest:
    script = workdir / f"{tag}.sh"
    script.write_text("#!/bin/bash\n#SBATCH --nodes=1\n#SBATCH --time=10\n" + body)
    return SubmitRequest(
        tag=tag,
        workdir=workdir,
        log_pattern=str(workdir / "logs" / "%x-%j.log"),
        script=script,
        **kw,  # type: ignore[arg-type]
    )


def test_submit_runs_script_in_workdir_with_env_and_log(state_dir: Path, workdir: Path) -> None:
    cluster = LocalCluster(state_dir)
    req = script_request(
        workdir, 'echo "tag=$SUPERVISOR_TAG extra=$EXTRA cwd=$(pwd)"\necho to-stderr >&2\n', env={"EXTRA": "x1"}
    )

    job_id = cluster.submit(req)
    info = wait_finished(cluster, job_id)

    assert (info.phase, info.exit_code, info.raw_state, info.name) == (JobPhase.COMPLETED, 0, "COMPLETED", req.tag)
    assert info.start_time is not None and info.end_time is not None and info.submit_time is not None
    log = (workdir / "logs" / f"{req.tag}-{job_id}.log").read_text()
    assert f"tag={req.tag} extra=x1 cwd={workdir}\n" in log
    assert "to-stderr" in log


def test_nonzero_exit_is_failed_with_its_code(state_dir: Path, workdir: Path) -> None:
    cluster = LocalCluster(state_dir)

    info = wait_finished(cluster, cluster.submit(script_request(workdir, "exit 7\n")))

    assert (info.phase, info.exit_code) == (JobPhase.FAILED, 7)


def test_command_argv_runs_without_a_shell(state_dir: Path, workdir: Path) -> None:
    cluster = LocalCluster(state_dir)
    req = SubmitRequest(
        tag="cmd",
        workdir=workdir,
        log_pattern=str(workdir / "%j.log"),
        command=(sys.executable, "-c", "import os, sys; print(os.environ['SUPERVISOR_TAG'], sys.argv[1:])", "a b"),
    )

    job_id = cluster.submit(req)

    assert wait_finished(cluster, job_id).phase is JobPhase.COMPLETED
    assert (workdir / f"{job_id}.log").read_text() == "cmd ['a b']\n"


def test_missing_program_fails_the_job_with_127(state_dir: Path, workdir: Path) -> None:
    cluster = LocalCluster(state_dir)
    req = SubmitRequest(tag="t", workdir=workdir, log_pattern=str(workdir / "%j.log"), command=("no-such-prog-xyz",))

    job_id = cluster.submit(req)
    info = wait_finished(cluster, job_id)

    assert (info.phase, info.exit_code) == (JobPhase.FAILED, 127)
    assert "no-such-prog-xyz" in (workdir / f"{job_id}.log").read_text()


def test_missing_workdir_is_a_permanent_error(state_dir: Path, tmp_path: Path) -> None:
    req = SubmitRequest(tag="t", workdir=tmp_path / "absent", log_pattern=str(tmp_path / "%j.log"), command=("true",))

    with pytest.raises(ClusterError) as err:
        LocalCluster(state_dir).submit(req)
    assert err.value.permanent


SUBMIT_AND_EXIT = """
import sys
from pathlib import Path
from supervisor.backends.local import LocalCluster
from supervisor.domain.types import SubmitRequest
state, work = Path(sys.argv[1]), Path(sys.argv[2])
req = SubmitRequest(tag="run1-train-a1", workdir=work, log_pattern=str(work / "%j.log"), script=work / "job.sh")
print(LocalCluster(state).submit(req))
"""


def test_exit_code_of_a_job_that_ended_while_no_supervisor_ran(state_dir: Path, workdir: Path) -> None:
    go = workdir / "go"
    (workdir / "job.sh").write_text(f"while [ ! -e {go} ]; do sleep 0.05; done\nexit 5\n")
    # The submitting "supervisor" is a separate process that exits right after sbatch-like submit.
    submitter = subprocess.run(
        [sys.executable, "-c", SUBMIT_AND_EXIT, str(state_dir), str(workdir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    job_id = submitter.stdout.strip()
    record_path = state_dir / "local-jobs" / f"{job_id}.json"
    assert json.loads(record_path.read_text())["end_time"] is None

    go.touch()  # the job ends now, with nobody watching
    wait_until(lambda: True if json.loads(record_path.read_text())["end_time"] else None, "the exit record")

    restarted = LocalCluster(state_dir)
    info = restarted.poll([job_id])[job_id]
    assert (info.phase, info.exit_code) == (JobPhase.FAILED, 5)
    assert restarted.find_by_tag(["run1-train-a1", "other"]) == {"run1-train-a1": info}


def test_ids_never_repeat_across_restarts(state_dir: Path, workdir: Path) -> None:
    first = LocalCluster(state_dir)
    a = first.submit(script_request(workdir, "true\n", tag="a"))
    b = LocalCluster(state_dir).submit(script_request(workdir, "true\n", tag="b"))
    (state_dir / "local-jobs" / "counter").unlink()  # even a lost counter must not reuse an id
    c = LocalCluster(state_dir).submit(script_request(workdir, "true\n", tag="c"))

    assert len({a, b, c}) == 3
    assert all(job_id.startswith("L") for job_id in (a, b, c))


def pids_of(pid_file: Path, count: int) -> list[int]:
    def check() -> list[int] | None:
        pids = pid_file.read_text().split() if pid_file.exists() else []
        return [int(p) for p in pids] if len(pids) >= count else None

    return wait_until(check, f"{count} pids in {pid_file}")


def test_cancel_kills_the_whole_process_group(state_dir: Path, workdir: Path) -> None:
    cluster = LocalCluster(state_dir)
    pid_file = workdir / "pids"
    body = f"sleep 300 & echo $! >> {pid_file}\nsleep 300 & echo $! >> {pid_file}\necho $$ >> {pid_file}\nwait\n"
    job_id = cluster.submit(script_request(workdir, body))
    pids = pids_of(pid_file, 3)
    assert all(alive(pid) for pid in pids)
    assert cluster.poll([job_id])[job_id].phase is JobPhase.RUNNING

    cluster.cancel(job_id)
    info = wait_finished(cluster, job_id)

    assert info.phase is JobPhase.CANCELLED
    wait_until(lambda: True if not any(alive(pid) for pid in pids) else None, "every process of the job to die")
    cluster.cancel(job_id)  # already ended: no error
    cluster.cancel("L999999")  # never existed: no error


def test_cancel_escalates_to_sigkill_when_sigterm_is_ignored(state_dir: Path, workdir: Path) -> None:
    cluster = LocalCluster(state_dir, kill_grace=0.5)
    pid_file = workdir / "pids"
    body = f"trap '' TERM\necho $$ >> {pid_file}\nwhile true; do sleep 0.1; done\n"
    job_id = cluster.submit(script_request(workdir, body))
    (pid,) = pids_of(pid_file, 1)

    cluster.cancel(job_id)
    info = wait_finished(cluster, job_id)

    assert (info.phase, info.exit_code) == (JobPhase.CANCELLED, 128 + signal.SIGKILL)
    assert not alive(pid)


def test_cancel_right_after_submit_before_the_wrapper_recorded_a_start(state_dir: Path, workdir: Path) -> None:
    cluster = LocalCluster(state_dir, start_timeout=0)  # submit returns without waiting for the record
    job_id = cluster.submit(script_request(workdir, "sleep 300\n"))

    cluster.cancel(job_id)

    assert wait_finished(cluster, job_id).phase is JobPhase.CANCELLED


def test_cancel_of_an_id_not_yet_handed_out_leaves_no_trace(state_dir: Path, workdir: Path) -> None:
    cluster = LocalCluster(state_dir)
    wait_finished(cluster, cluster.submit(script_request(workdir, "true\n")))

    cluster.cancel("L2")

    job_id = cluster.submit(script_request(workdir, "true\n"))
    assert job_id == "L2"
    assert wait_finished(cluster, job_id).phase is JobPhase.COMPLETED


def test_leftover_background_processes_die_with_the_job(state_dir: Path, workdir: Path) -> None:
    cluster = LocalCluster(state_dir)
    pid_file = workdir / "pids"
    job_id = cluster.submit(script_request(workdir, f"sleep 300 & echo $! >> {pid_file}\nexit 0\n"))
    (pid,) = pids_of(pid_file, 1)

    assert wait_finished(cluster, job_id).phase is JobPhase.COMPLETED
    wait_until(lambda: True if not alive(pid) else None, "the background sleep to die")


def test_a_killed_wrapper_reads_as_lost_not_running(state_dir: Path, workdir: Path) -> None:
    cluster = LocalCluster(state_dir)
    job_id = cluster.submit(script_request(workdir, "sleep 300\n"))
    record = json.loads((state_dir / "local-jobs" / f"{job_id}.json").read_text())

    os.kill(record["wrapper_pid"], signal.SIGKILL)
    wait_until(lambda: True if not alive(record["wrapper_pid"]) else None, "the wrapper to die")
    cluster.poll([])  # reaps the wrapper this object started
    info = cluster.poll([job_id])[job_id]

    assert (info.phase, info.raw_state, info.exit_code) == (JobPhase.FAILED, "LOST", None)
    cluster.cancel(job_id)  # nobody left to escalate: kills the job's group outright
    wait_until(lambda: True if not alive(record["pid"]) else None, "the orphaned job to die")


def test_unknown_ids_are_absent(state_dir: Path) -> None:
    assert LocalCluster(state_dir).poll(["L424242"]) == {}
    assert LocalCluster(state_dir).find_by_tag(["nothing"]) == {}


def test_expand_log_pattern() -> None:
    assert expand_log_pattern("/l/%x-%j.log", "L3", "run-a1") == "/l/run-a1-L3.log"
    assert expand_log_pattern("/l/100%%-%j-%u.log", "L3", "t") == "/l/100%-L3-%u.log"


def test_record_without_end_and_dead_wrapper_is_lost() -> None:
    record = {"id": "L1", "tag": "t", "end_time": None, "host": "h", "excluded": ["n1", "n2"]}

    info = job_info_from_record(record, alive=False)

    assert (info.phase, info.raw_state, info.excluded_nodes) == (JobPhase.FAILED, "LOST", "n1,n2")
    assert job_info_from_record(record, alive=True).phase is JobPhase.RUNNING


def test_make_cluster(tmp_path: Path) -> None:
    assert make_cluster("local", tmp_path).kind == "local"
    assert make_cluster("slurm", tmp_path).kind == "slurm"
    assert default_backend() in ("slurm", "local")
    with pytest.raises(ValueError, match="unknown cluster backend"):
        make_cluster("pbs", tmp_path)

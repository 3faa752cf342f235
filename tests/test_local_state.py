"""The local backend's own records: private to the user, and an end that a full disk cannot lose."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.backends.local import LocalCluster
from supervisor.domain.types import JobInfo, JobPhase, SubmitRequest

from slurm_fixtures import wait_until

WAIT_S = 60.0  # bounds a hang; not a claim about speed


def kill_leftovers(state: Path) -> None:
    for record_path in (state / "local-jobs").glob("L*.json"):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(record_path.read_text())
            for pgid in (record.get("pgid"), record.get("wrapper_pid")):
                if isinstance(pgid, int) and record.get("end_time") is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pgid, signal.SIGKILL)


def submit(cluster: LocalCluster, workdir: Path, body: str) -> tuple[str, SubmitRequest]:
    script = workdir / "job.sh"
    script.write_text("#!/bin/bash\n" + body)
    req = SubmitRequest(tag=f"t-{uuid.uuid4().hex[:8]}", workdir=workdir, log_pattern=str(workdir / "job-%j.log"),
                        script=script)
    return cluster.submit(req), req


def finished(cluster: LocalCluster, job_id: str) -> JobInfo:
    def check() -> JobInfo | None:
        info = cluster.poll([job_id]).get(job_id)
        return info if info is not None and info.phase.finished else None

    return wait_until(check, f"job {job_id} to finish", WAIT_S, interval=0.05)


def test_records_are_private_to_the_user(tmp_path: Path) -> None:
    state, workdir = tmp_path / "state", tmp_path / "work"
    workdir.mkdir()
    (state / "local-jobs").mkdir(parents=True, mode=0o755)  # as an older version left it
    (state / "local-jobs").chmod(0o755)
    cluster = LocalCluster(state)
    try:
        job_id, _ = submit(cluster, workdir, "sleep 30\n")
        cluster.cancel(job_id)  # leaves a .cancel file too
        assert finished(cluster, job_id).phase is JobPhase.CANCELLED
    finally:
        kill_leftovers(state)

    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (state / "local-jobs").iterdir()}
    assert {f"{job_id}.json", f"{job_id}.cancel", f"{job_id}.wrapper.log", "counter", "counter.lock"} <= set(modes)
    assert stat.S_IMODE((state / "local-jobs").stat().st_mode) == 0o700
    assert {name: oct(mode) for name, mode in modes.items() if mode != 0o600} == {}


# --- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: the job fills it, as a checkpoint fills a real disk."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        kill_leftovers(mount_point / "state")
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


# Prints its last line, then takes every free byte of the disk the supervisor's records are on too, and
# exits 99 if the disk still had room when it ended.
FILL_DISK = (
    'echo "training done"\n'
    'cat /dev/zero > "$SUPERVISOR_WORKDIR/filler" 2>/dev/null\n'
    'echo probe > "$SUPERVISOR_WORKDIR/probe" 2>/dev/null && exit 99\n'
)


def test_a_job_that_finished_on_a_full_disk_reads_as_completed_even_after_a_restart(small_disk: Path) -> None:
    state, workdir = small_disk / "state", small_disk / "work"
    workdir.mkdir()
    cluster = LocalCluster(state)
    job_id, _ = submit(cluster, workdir, FILL_DISK + "exit 0\n")

    info = finished(cluster, job_id)
    restarted = finished(LocalCluster(state), job_id)  # knows only what is on the disk

    assert (workdir / f"job-{job_id}.log").read_text().startswith("training done")
    for seen in (info, restarted):
        assert (seen.phase, seen.exit_code, seen.raw_state) == (JobPhase.COMPLETED, 0, "COMPLETED")


def test_without_room_for_any_record_the_wrapper_exit_status_tells(small_disk: Path) -> None:
    state, workdir = small_disk / "state", small_disk / "work"
    workdir.mkdir()
    cluster = LocalCluster(state)
    # The job also takes the room reserved for its end record, so nothing at all can be written.
    reserved = f'"{state}/local-jobs/".*.end'
    take_reserve = f"until ls {reserved} >/dev/null 2>&1; do sleep 0.01; done\nrm -f {reserved}\n"
    job_id, _ = submit(cluster, workdir, take_reserve + FILL_DISK + "exit 3\n")

    info = finished(cluster, job_id)

    assert (info.phase, info.exit_code) == (JobPhase.FAILED, 3)  # the job's own code, not "LOST"
    assert info.raw_state == "FAILED" and "exit status from the wrapper" in (info.reason or "")

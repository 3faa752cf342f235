"""The generated scrontab entry, run through the one-machine SLURM cluster.

Debian's slurm-client 22.05 ships no `scrontab`, so the entry is proven piece by piece: its `#SCRON` options
and command are submitted with sbatch as the batch job scrontab would create (the script scrontab writes,
no environment of the submitter's; src/scrontab/scrontab.c `_entry_to_job`). The cron line is checked in
test_deploy.py. Where a real `scrontab` exists, `--install` puts the entry in for real.
"""

from __future__ import annotations

import secrets
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from supervisor.app import deploy
from supervisor.store.db import DB_NAME
from supervisor.store.statedir import read_holder

from harness import Harness
from slurm_fixtures import require_slurm, wait_until

pytestmark = pytest.mark.slurm


def scrontab_job(block: str, host: str) -> tuple[list[str], str]:
    """sbatch argv + script for the job scrontab would submit for ``block``, as if on host ``host``."""
    options, schedule, command = deploy.parse_entry(block)
    script = "".join(["#!/bin/sh\n# This job was submitted through scrontab\n",
                      *(f"{line}\n" for line in block.splitlines() if line.startswith("#SCRON")),
                      f"# crontab time request was: '{schedule}'\n{command}\n"])
    # scrontab passes no environment of the submitter's and starts in $HOME: the command must stand alone.
    return ["sbatch", "--parsable", *options, f"--export=SUPERVISOR_HOSTNAME={host}", f"--chdir={Path.home()}"], script


def submit_tick(block: str, host: str) -> str:
    argv, script = scrontab_job(block, host)
    done = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def job_fields(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def wait_ended(job_id: str) -> dict[str, str]:
    def ended() -> dict[str, str] | None:
        fields = job_fields(job_id)
        return fields if fields["JobState"] not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING") else None
    return wait_until(ended, f"tick job {job_id} to end")


def test_the_entry_runs_a_tick_as_scrontab_would_and_defers_to_a_daemon_elsewhere(tmp_path: Path) -> None:
    require_slurm()
    login = Harness(tmp_path, extra_env={"SUPERVISOR_HOSTNAME": "login1"})
    name = f"scron{secrets.token_hex(3)}"
    try:
        login.submit({"name": name, "backend": "slurm", "workdir": str(tmp_path / "w"),
                      "stages": [{"name": "a", "command": ["sleep", "60"]}]})
        block = login.cli("scrontab", "--partition", "lrd_all_serial", "--time", "5m", "--every", "5m").out

        first = submit_tick(block, host="node017")
        fields = wait_ended(first)
        assert (fields["JobState"], fields["Partition"], fields["TimeLimit"]) == ("COMPLETED", "lrd_all_serial",
                                                                                 "00:05:00")
        output = login.home / f"scron-{first}.log"
        assert fields["StdOut"] == str(output) and output.is_file()
        attempts = login.attempts(name, "a")
        assert [a["job_id"] is not None for a in attempts] == [True], (attempts, output.read_text())

        login.start_daemon(poll="1h")
        assert login.daemon is not None
        wait_until(lambda: read_holder(login.home), "the daemon's lock record")
        holder = read_holder(login.home)
        assert holder is not None and holder.host == "login1"

        second = submit_tick(block, host="node017")
        assert wait_ended(second)["JobState"] == "COMPLETED"
        said = (login.home / f"scron-{second}.log").read_text().strip().splitlines()
        assert said == [f"the supervisor daemon of this state directory runs on host login1 (pid {holder.pid}),"
                        " not on this host (node017); nothing to do here"]
        assert [a["job_id"] for a in login.attempts(name, "a")] == [attempts[0]["job_id"]], "no second submission"
        now = read_holder(login.home)
        assert now is not None and (now.pid, now.host) == (holder.pid, holder.host), "the daemon's record stays"
        with sqlite3.connect(login.home / DB_NAME) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        login.cli("cancel", name, check=False)
        login.stop_daemon()
        login.close()


@pytest.mark.skipif(shutil.which("scrontab") is None,
                    reason="no scrontab on this host (Debian's slurm-client 22.05 ships none)")
def test_install_puts_the_entry_in_the_real_scrontab_and_it_ticks(tmp_path: Path) -> None:
    require_slurm()
    h = Harness(tmp_path)
    before = subprocess.run(["scrontab", "-l"], capture_output=True, text=True, timeout=30)
    try:
        installed = h.cli("scrontab", "--every", "1m", "--time", "2m", "--install")
        assert f"+# BEGIN supervisor --home {h.home}" in installed.out
        assert installed.out.strip().endswith(f"installed the scrontab entry for {h.home}")
        assert h.cli("scrontab", "--every", "1m", "--time", "2m", "--install").out.strip() == (
            f"the scrontab entry for {h.home} is already installed")
        wait_until(lambda: next(h.home.glob("scron-*.log"), None), "the first scrontab tick's output", timeout=180)
    finally:
        removed = h.cli("scrontab", "--uninstall", check=False)
        after = subprocess.run(["scrontab", "-l"], capture_output=True, text=True, timeout=30)
        assert (after.returncode, after.stdout) == (before.returncode, before.stdout), removed

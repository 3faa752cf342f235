"""Driving the real `supervisor` executable from tests: specs, CLI calls, a daemon subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SUPERVISOR = [sys.executable, "-m", "supervisor"]
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Result:
    code: int
    out: str
    err: str


class Harness:
    """One state directory, its CLI and (optionally) a daemon subprocess."""

    def __init__(self, root: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.home = root / "home"
        self.env = {**os.environ, "SUPERVISOR_HOME": str(self.home), **(extra_env or {})}
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_log = root / "daemon.log"

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> Result:
        proc = subprocess.run([*SUPERVISOR, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"supervisor {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def write_spec(self, data: Mapping[str, Any], name: str = "spec.yaml") -> Path:
        path = self.root / name
        path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
        return path

    def script(self, name: str, body: str) -> Path:
        path = self.root / name
        path.write_text("#!/bin/bash\n" + body.lstrip())
        path.chmod(0o755)
        return path

    def submit(self, data: Mapping[str, Any]) -> str:
        return self.cli("submit", str(self.write_spec(data))).out.strip()

    def show(self, name: str) -> dict[str, Any]:
        return json.loads(self.cli("show", name, "--json").out)  # type: ignore[no-any-return]

    def status(self) -> list[dict[str, Any]]:
        return json.loads(self.cli("status", "--json").out)  # type: ignore[no-any-return]

    def start_daemon(self, poll: str = "1s") -> subprocess.Popen[bytes]:
        log = self.daemon_log.open("ab")
        self.daemon = subprocess.Popen([*SUPERVISOR, "daemon", "--poll", poll], env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT)
        return self.daemon

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.daemon is None:
            return None
        if self.daemon.poll() is None:
            self.daemon.send_signal(sig)
        code = self.daemon.wait(timeout=timeout)
        self.daemon = None
        return code

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.daemon is not None and self.daemon.poll() is not None:
                raise AssertionError(f"daemon exited ({self.daemon.returncode}) while waiting for {what}:\n"
                                     + self.daemon_log.read_text()[-3000:])
            time.sleep(0.3)
        tail = self.daemon_log.read_text()[-3000:] if self.daemon_log.exists() else ""
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")

    def wait_state(self, name: str, states: Sequence[str] | str, timeout: float = 120) -> dict[str, Any]:
        wanted = {states} if isinstance(states, str) else set(states)
        self.wait_for(lambda: self.show(name)["state"] in wanted, timeout, f"run {name} in {wanted}")
        return self.show(name)

    def attempts(self, name: str, stage: str) -> list[dict[str, Any]]:
        data = self.show(name)
        return next(s for s in data["stages"] if s["name"] == stage)["attempts"]  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()


def slurm_jobs_by_name() -> dict[str, list[str]]:
    """Every job slurmctld still knows (queued or ended within MinJobAge), grouped by job name."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%j"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    jobs: dict[str, list[str]] = {}
    for line in out.splitlines():
        job_id, _, name = line.partition("|")
        jobs.setdefault(name.strip(), []).append(job_id.strip())
    return jobs


def slurm_available() -> bool:
    return shutil.which("sbatch") is not None and subprocess.run(
        ["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0

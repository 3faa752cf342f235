"""Many `supervisor` processes on one state directory at once: real processes, real SQLite.

A daemon started in tmux and a `submit` typed right after it both find a new state directory and both
migrate it; `status` in a loop while the daemon is busy must never see "database is locked".
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor.store.db import DB_NAME, JOURNAL_ENV

from harness import SUPERVISOR, Harness

ROUNDS = 3  # the race was seen once in five tries by hand; a scripted start of many processes hits it more


def spec(name: str, workdir: Path, command: list[str]) -> dict[str, Any]:
    return {"name": name, "backend": "local", "workdir": str(workdir), "stages": [{"name": "a", "command": command}]}


def start(h: Harness, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*SUPERVISOR, *args], env=h.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen[str], what: str, timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and "Traceback" not in err, f"{what} exited {proc.returncode}:\n{err[-3000:]}"
    return out


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_daemon_submit_and_status_started_together_on_a_new_home(tmp_path: Path, round_: int) -> None:
    h = Harness(tmp_path)
    names = [f"r{i}" for i in range(3)]
    specs = [h.write_spec(spec(n, tmp_path / n, ["true"]), f"{n}.yaml") for n in names]
    try:
        # Everything at once, as a script (or a fast typist after `tmux new -d supervisor daemon`) does it.
        h.start_daemon(poll="1s")
        procs = [(f"submit {s.name}", start(h, "submit", str(s))) for s in specs]
        procs += [(f"status {i}", start(h, "status", "--json")) for i in range(2)]
        for what, proc in procs:
            finish(proc, what)
        assert h.daemon is not None and h.daemon.poll() is None, h.daemon_log.read_text()[-3000:]
        assert sorted(row["name"] for row in h.status()) == names
        for n in names:
            assert h.wait_state(n, ("succeeded", "failed"), timeout=120)["state"] == "succeeded"
        assert h.stop_daemon() == 0
    finally:
        h.close()


def test_processes_opening_a_new_database_at_the_same_instant(tmp_path: Path) -> None:
    """Each child imports first, then reads its stdin, one pipe for all: closing it starts them at once."""
    code = ("import sys\nfrom pathlib import Path\nfrom sqlalchemy import text\n"
            "from supervisor.store.db import open_database\nsys.stdin.read()\n"
            "with open_database(Path(sys.argv[1]))() as s:\n"
            "    print(s.execute(text('SELECT count(*) FROM runs')).scalar())\n")
    for round_ in range(ROUNDS):
        home = tmp_path / f"home{round_}"
        gate, opener = os.pipe()
        children = [subprocess.Popen([sys.executable, "-c", code, str(home)], stdin=gate, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True) for _ in range(6)]
        os.close(gate)
        os.close(opener)
        for i, child in enumerate(children):
            assert finish(child, f"opener {i}").strip() == "0"


# "delete": the rollback journal used on network filesystems, where a commit keeps readers out for a moment.
@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_status_and_show_while_the_daemon_is_busy(tmp_path: Path, journal: str) -> None:
    """A daemon woken by logs that never stop, writers beside it, and readers in bursts: no reader fails."""
    h = Harness(tmp_path, {JOURNAL_ENV: journal})
    chatty = [sys.executable, "-c",
              "import sys, time\nfor i in range(100000):\n    print('step', i, flush=True)\n    time.sleep(0.01)\n"]
    busy = [f"busy{i}" for i in range(4)]
    try:
        for n in busy:
            h.submit(spec(n, tmp_path / n, chatty))
        h.start_daemon(poll="0.5s")
        h.wait_for(lambda: all(r["state"] == "running" and r["job_id"] for r in h.status()), 120, "busy runs")
        for burst in range(3):
            writers = [(f"submit w{burst}-{i}", start(h, "submit", str(h.write_spec(
                spec(f"w{burst}-{i}", tmp_path / f"w{burst}-{i}", ["true"]), f"w{burst}-{i}.yaml"))))
                for i in range(2)]
            writers += [(f"pause {n}", start(h, "pause", n)) for n in busy[:2]]
            readers = [(f"status {i}", start(h, "status", "--json")) for i in range(6)]
            readers += [(f"show {n}", start(h, "show", n, "--json")) for n in busy]
            for what, proc in readers:
                out = finish(proc, what)
                assert json.loads(out), what
            for what, proc in writers:
                finish(proc, what)
            for n in busy[:2]:
                h.cli("resume", n)
        assert h.daemon is not None and h.daemon.poll() is None, h.daemon_log.read_text()[-3000:]
        for n in busy:
            h.cli("cancel", n)
        assert h.stop_daemon() == 0
        assert "database is locked" not in h.daemon_log.read_text()
        with sqlite3.connect(h.home / DB_NAME) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == journal
    finally:
        h.close()

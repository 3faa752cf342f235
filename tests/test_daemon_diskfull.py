"""The daemon on a full disk: the failed pass is reported as the CLI reports it, naming the state directory."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, cast

from structlog.testing import capture_logs

from supervisor.app.daemon import Daemon
from supervisor.app.service import TickReport


class FullDatabase:
    """A supervisor whose every pass writes into a database that has no room left (SQLITE_FULL)."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def tick(self, poll: bool = True) -> TickReport:
        conn = sqlite3.connect(self.home / "supervisor.db")
        try:
            conn.execute("PRAGMA max_page_count = 2")
            conn.execute("CREATE TABLE IF NOT EXISTS filler (data BLOB)")
            conn.execute("INSERT INTO filler VALUES (?)", (b"x" * 100_000,))
        finally:
            conn.close()
        return TickReport(runs=0, actions=0)


class Broken:
    def __init__(self, home: Path) -> None:
        self.home = home

    def tick(self, poll: bool = True) -> TickReport:
        raise sqlite3.OperationalError("no such table: runs")


def test_a_pass_that_finds_the_disk_full_names_the_state_directory(tmp_path: Path) -> None:
    daemon = Daemon(cast(Any, FullDatabase(tmp_path)), poll=3600)
    with capture_logs() as logs:
        daemon._tick(poll=True)
        daemon._failing_until = 0.0  # the backoff's pause over
        daemon._tick(poll=True)
    failed = [e for e in logs if e["event"].startswith("tick_failed")]
    assert [e["event"] for e in failed] == ["tick_failed", "tick_failed_again"]
    assert failed[0]["error"].startswith(f"disk full at {tmp_path} (OperationalError: database or disk is full")
    assert failed[1]["failures"] == 2


def test_any_other_failure_is_reported_in_its_own_words(tmp_path: Path) -> None:
    daemon = Daemon(cast(Any, Broken(tmp_path)), poll=3600)
    with capture_logs() as logs:
        daemon._tick(poll=True)
    (failed,) = [e for e in logs if e["event"] == "tick_failed"]
    assert failed["error"] == "OperationalError: no such table: runs"

"""The CLI's way in: the database file read with the standard library's ``sqlite3``, read-only."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from supervisor.domain.types import StageState
from supervisor.store.readmodels.reports import (
    REPORT_RUNS_SQL,
    SPEC_SQL,
    CheckpointTimes,
    SchedulerFigures,
    report_from,
)
from supervisor.store.readmodels.rows import (
    ACTIVE_STAGES_SQL,
    ALL_ATTEMPTS_SQL,
    BUSY_TIMEOUT_S,
    CAMPAIGN_OF_SQL,
    CAMPAIGNS_SQL,
    DB_FILE,
    EVENTS_SQL,
    EXCLUDED_SQL,
    OUTBOX_SQL,
    RUN_SQL,
    SETTLED_SQL,
    STAGE_DURATIONS_SQL,
    STAGES_SQL,
    STATUS_SQL,
    no_run,
)
from supervisor.store.readmodels.views import show_from, status_from

if TYPE_CHECKING:

    pass



class FileReader:
    """`status`, `show` and a run's signatures read from the database file with ``sqlite3``, read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def open(cls, home: Path) -> FileReader | None:
        """A reader of ``home``'s database; None when this cannot read it as it is (a schema older than
        these queries, a file SQLite cannot open read-only): the caller then opens it the full way."""
        reader = cls(home / DB_FILE)
        if not reader.path.exists():
            return reader
        try:
            with reader._connect() as conn:
                conn.execute(STATUS_SQL + " LIMIT 0", (StageState.SUCCEEDED.value,)).fetchall()
                for sql in (RUN_SQL.format("id"), STAGES_SQL, EVENTS_SQL, EXCLUDED_SQL, OUTBOX_SQL,
                            REPORT_RUNS_SQL, SPEC_SQL, ALL_ATTEMPTS_SQL, SETTLED_SQL, CAMPAIGNS_SQL,
                            CAMPAIGN_OF_SQL, STAGE_DURATIONS_SQL, ACTIVE_STAGES_SQL):
                    conn.execute(f"SELECT * FROM ({sql}) LIMIT 0", (0,) * sql.count("?")).fetchall()
        except sqlite3.Error:
            return None
        return reader

    def status(self, now: datetime | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self._connect() as conn:
            return status_from(conn.execute, now)

    def show(self, name: str, now: datetime | None = None) -> dict[str, Any]:
        if not self.path.exists():
            raise no_run(name)
        with self._connect() as conn:
            return show_from(conn.execute, name, now)

    def report(self, *, since: datetime | None = None, now: datetime | None = None,
               checkpoints: CheckpointTimes | None = None, figures: SchedulerFigures | None = None) -> dict[str, Any]:
        if not self.path.exists():
            return report_from(lambda sql, params: [], since=since, now=now)
        with self._connect() as conn:
            return report_from(conn.execute, since=since, now=now, checkpoints=checkpoints, figures=figures)

    def run_signatures(self, name: str) -> list[dict[str, Any]]:
        row = None
        if self.path.exists():
            with self._connect() as conn:
                row = conn.execute("SELECT spec FROM runs WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise no_run(name)
        return list(json.loads(row[0]).get("signatures") or [])

    def _connect(self) -> _Closing:
        # mode=ro: a read never creates, migrates or changes the file, whoever else has it open.
        conn = sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        return _Closing(conn)


class _Closing:
    """``with``: the connection, closed after (sqlite3's own context manager only ends the transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

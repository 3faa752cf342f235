"""Registering runs: one run spec's run, or a campaign and all its runs in one transaction (all or none).

Written with plain SQL on a ``sqlite3`` connection, so that `submit` imports neither SQLAlchemy nor the ORM
models (a third of a second of its start). The rows are the ones the ORM would write: the columns of
:mod:`supervisor.store.models`, times in SQLAlchemy's SQLite format (naive UTC, microseconds), JSON as
``json.dumps`` writes it; tests/test_registration.py reads them back through the ORM.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from supervisor.domain.errors import UserError
from supervisor.domain.spec import RunSpec
from supervisor.domain.types import EventKind, RunState, StageState
from supervisor.notify.entries import EventFacts, entries_for

# prepare stage -> (share key, resolved dataset_prepared_path): see stages/datasets.py `share_key`.
Shares = Mapping[str, tuple[str, str]]


def register_run(conn: sqlite3.Connection, now: datetime, spec: RunSpec, spec_path: Path, backend: str,
                 shares: Shares | None = None) -> None:
    with _transaction(conn):
        _register(conn, now, spec, spec_path, backend, shares or {}, None)


def register_campaign(conn: sqlite3.Connection, now: datetime, name: str, settings: Mapping[str, Any],
                      specs: Sequence[RunSpec], spec_path: Path, backend_of: Mapping[str, str],
                      shares: Mapping[str, Shares]) -> None:
    with _transaction(conn):
        if conn.execute("SELECT 1 FROM campaigns WHERE name = ?", (name,)).fetchone() is not None:
            raise UserError(f"{spec_path}: campaign: a campaign named {name!r} already exists")
        conn.execute("INSERT INTO campaigns (name, spec_path, spec, created_at) VALUES (?, ?, ?, ?)",
                     (name, str(Path(spec_path).resolve()), json.dumps(dict(settings)), _stamp(now)))
        for spec in specs:
            _register(conn, now, spec, spec_path, backend_of[spec.name], shares.get(spec.name, {}), name)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE: the name checks and the inserts see no other writer in between."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def _stamp(at: datetime) -> str:
    """How SQLAlchemy's SQLite DateTime stores a time (store.models.UTCDateTime keeps it naive UTC)."""
    if at.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _insert(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    """The new row's id."""
    row_id = conn.execute(sql, params).lastrowid
    if row_id is None:
        raise sqlite3.DatabaseError(f"no row id after {sql.split('(')[0].strip()}")
    return row_id


def _register(conn: sqlite3.Connection, now: datetime, spec: RunSpec, spec_path: Path, backend: str, shares: Shares,
              campaign: str | None) -> None:
    if conn.execute("SELECT 1 FROM runs WHERE name = ?", (spec.name,)).fetchone() is not None:
        field = "name" if campaign is None else f"runs: {spec.name}"
        raise UserError(f"{spec_path}: {field}: a run named {spec.name!r} already exists")
    stamp = _stamp(now)
    stored = spec.model_dump(mode="json")
    # uid: random per registration, part of every job name, so two supervisors never claim each other's jobs.
    run_id = _insert(
        conn, "INSERT INTO runs (name, uid, state, backend, spec_path, spec, workdir, reason, campaign, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
        (spec.name, secrets.token_hex(4), RunState.PENDING.value, backend, str(Path(spec_path).resolve()),
         json.dumps(stored), str(spec.workdir), campaign, stamp, stamp))
    for position, stage in enumerate(spec.stages):
        key, prepared = shares.get(stage.name, (None, None))
        conn.execute(
            "INSERT INTO stages (run_id, position, name, kind, state, budget_start, share_key, prepared_path,"
            " updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)",
            (run_id, position, stage.name, stage.kind.value, StageState.PENDING.value, key, prepared, stamp))
    where = f" (campaign {campaign})" if campaign else ""
    message = f"run {spec.name} registered from {spec_path}{where}"
    kind = EventKind.REGISTERED.value
    event_id = _insert(
        conn, "INSERT INTO events (run_id, at, kind, stage, attempt, message, data) VALUES (?, ?, ?, NULL, NULL, ?, ?)",
        (run_id, stamp, kind, message, json.dumps({})))
    # In the same transaction as the run: a notification of the registration is never lost nor sent alone.
    facts = EventFacts(id=event_id, at=now, kind=kind, stage=None, attempt=None, message=message, data={})
    for entry in entries_for(spec.name, facts, stored.get("notify") or []):
        conn.execute(
            "INSERT INTO outbox (run_id, channel, event_id, kind, payload, state, tries, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'pending', 0, ?)",
            (run_id, entry.channel, event_id, kind, json.dumps(entry.payload), stamp))

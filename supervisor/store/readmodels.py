"""What `status`, `show` and the notifications read: plain, JSON-ready dictionaries built from the rows.

`status` and `show` are plain SQL over a DB-API connection: the daemon's Session hands its own, and the
CLI opens the file with the standard library's ``sqlite3`` (``FileReader``), so the command typed most
never imports SQLAlchemy (a third of a second of CPU, ten times what the answer costs). One query gives
every run of `status` with its current stage and attempt; `show` is one indexed query per table.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from supervisor.domain import accounting
from supervisor.domain.errors import UserError
from supervisor.domain.hostlist import count_hosts
from supervisor.domain.types import AttemptState, EventKind, StageKind, StageState

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from supervisor.store.models import Attempt, Run, Stage

# store.db.DB_NAME: importing that module would import SQLAlchemy (a test keeps the two equal).
DB_FILE = "supervisor.db"
# A reader waits this long for a writer's commit, as every other connection does (store.db.BUSY_TIMEOUT_MS).
BUSY_TIMEOUT_S = 30.0

Query = Callable[[str, Sequence[Any]], Iterable[Sequence[Any]]]


@dataclass(frozen=True)
class AttemptRow:
    """The columns of an attempt that `status` and `show` report, read with plain SQL."""

    number: int
    job_id: str | None
    state: str
    backend: str
    submitted_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    exit_code: int | None
    nodes: str | None
    reason: str | None
    reason_since: datetime | None
    cause: str | None
    outcome: str | None
    log_path: str | None
    progress_step: int | None
    progress_total: int | None
    saved_mark: str | None
    start_mark: str | None
    work_done: bool | None
    first_step_at: datetime | None
    last_output_at: datetime | None


_ATTEMPT_COLUMNS = tuple(AttemptRow.__dataclass_fields__)
_ATTEMPT_TIMES = frozenset({"submitted_at", "started_at", "ended_at", "reason_since", "first_step_at",
                            "last_output_at"})
_A = ", ".join(f"a.{c}" for c in _ATTEMPT_COLUMNS)

# The current stage is the first one not yet succeeded, else the last; its attempt is the newest. The
# correlated subqueries walk the (run_id, position) and (stage_id, number) unique indexes.
STATUS_SQL = f"""
SELECT r.name, r.state, r.updated_at, r.backend, r.reason, s.name, {_A}
FROM runs AS r
LEFT JOIN stages AS s ON s.id = COALESCE(
    (SELECT id FROM stages WHERE run_id = r.id AND state != ? ORDER BY position LIMIT 1),
    (SELECT id FROM stages WHERE run_id = r.id ORDER BY position DESC LIMIT 1))
LEFT JOIN attempts AS a ON a.id = (SELECT id FROM attempts WHERE stage_id = s.id ORDER BY number DESC LIMIT 1)
ORDER BY r.id
"""
_RUN_SQL = "SELECT id, name, state, reason, backend, workdir, created_at, updated_at FROM runs WHERE {} = ?"
_STAGES_SQL = f"""
SELECT s.name, s.kind, s.state, s.budget_start, {_A}
FROM stages AS s LEFT JOIN attempts AS a ON a.stage_id = s.id
WHERE s.run_id = ? ORDER BY s.position, a.number
"""
_EVENTS_SQL = "SELECT at, kind, stage, attempt, message FROM events WHERE run_id = ? ORDER BY id"
_EXCLUDED_SQL = "SELECT node, reason, evidence, line, until FROM excluded_nodes WHERE run_id = ? ORDER BY id"
# notify.queue.undelivered, as plain SQL (that module imports the notifier stack).
_OUTBOX_SQL = """
SELECT id, channel, kind, state, tries, last_error, next_try_at, payload FROM outbox
WHERE run_id = ? AND state != 'delivered' ORDER BY id
"""
_OUTBOX_META = "_outbox"  # notify.queue._META


def status_rows(session: Session, now: datetime | None = None) -> list[dict[str, Any]]:
    return status_from(_session_query(session), now)


def show(session: Session, run: Run, now: datetime | None = None) -> dict[str, Any]:
    return show_from(_session_query(session), run.id, now)


def report(session: Session, **options: Any) -> dict[str, Any]:
    """:func:`report_from` through the Session's own connection."""
    return report_from(_session_query(session), **options)


def status_from(query: Query, now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or datetime.now(UTC)
    rows = []
    for name, state, updated_at, backend, reason, stage, *columns in query(STATUS_SQL, (StageState.SUCCEEDED.value,)):
        attempt = _attempt(columns)
        rows.append({
            "name": name,
            "state": state,
            "stage": stage,
            "attempt": attempt.number if attempt else None,
            "job_id": attempt.job_id if attempt else None,
            "updated_at": _time(updated_at).isoformat(),
            "backend": backend,
            "progress": _progress(attempt),
            "reason": reason,
            "pending_reason": _pending_reason(attempt),
            "queued_for_s": _queued_for_s(attempt, now),
        })
    return rows


def show_from(query: Query, run: int | str, now: datetime | None = None) -> dict[str, Any]:
    """`show` of the run with this id, or this name (UserError when there is none)."""
    now = now or datetime.now(UTC)
    found = list(query(_RUN_SQL.format("id" if isinstance(run, int) else "name"), (run,)))
    if not found:
        raise _no_run(str(run))
    run_id, run_name, state, reason, backend, workdir, created_at, updated_at = found[0]
    stages: list[dict[str, Any]] = []
    rows: list[tuple[dict[str, Any], str, str, AttemptRow]] = []
    for stage_name, kind, stage_state, budget_start, *columns in query(_STAGES_SQL, (run_id,)):
        if not stages or stages[-1]["name"] != stage_name:
            stages.append({"name": stage_name, "kind": kind, "state": stage_state, "attempts": []})
        if (attempt := _attempt(columns)) is not None:  # None: a stage with no attempt yet (LEFT JOIN)
            stages[-1]["attempts"].append({**attempt_json(attempt, now), **_budget(attempt, budget_start)})
            rows.append((stages[-1]["attempts"][-1], stage_name, kind, attempt))
    event_rows = list(query(_EVENTS_SQL, (run_id,)))
    events = [
        {"at": _time(at).isoformat(), "kind": kind, "stage": stage, "attempt": attempt, "message": message}
        for at, kind, stage, attempt, message in event_rows
    ]
    hangs = {(stage, attempt) for _, kind, stage, attempt, _ in event_rows if kind == EventKind.STALLED.value}
    for shown, stage_name, kind, attempt in rows:
        c = accounting.cost(accounting_facts(attempt, kind, hung=(stage_name, attempt.number) in hangs), now)
        shown.update(node_hours=accounting.hours(c.node_seconds), wasted_node_hours=accounting.hours(c.wasted),
                     waste_cause=c.cause)
    excluded = [
        # The evidence is the log line the exclusion rests on (None for a row recorded before it was kept).
        {"node": node, "reason": why, "evidence": evidence, "line": line, "until": _time(until).isoformat()}
        for node, why, evidence, line, until in query(_EXCLUDED_SQL, (run_id,))
    ]
    return {"name": run_name, "state": state, "reason": reason, "backend": backend,
            "workdir": workdir, "created_at": _time(created_at).isoformat(),
            "updated_at": _time(updated_at).isoformat(), "stages": stages, "events": events,
            "excluded_nodes": excluded, "notifications": _undelivered(query, run_id)}


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
                for sql in (_RUN_SQL.format("id"), _STAGES_SQL, _EVENTS_SQL, _EXCLUDED_SQL, _OUTBOX_SQL,
                            _REPORT_RUNS_SQL, _SPEC_SQL):
                    conn.execute(f"SELECT * FROM ({sql}) LIMIT 0", (0,)).fetchall()
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
            raise _no_run(name)
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
            raise _no_run(name)
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


def attempt_facts(row: Attempt, now: datetime) -> dict[str, Any]:
    """What a notification about this attempt can say: job id, progress, ETA, node-hours spent."""
    facts: dict[str, Any] = {}
    if row.job_id:
        facts["job_id"] = row.job_id
    if row.started_at is not None:
        elapsed = ((row.ended_at or now) - row.started_at).total_seconds()
        facts["node_hours"] = round(count_hosts(row.nodes or "") * max(elapsed, 0.0) / 3600, 2)
        if row.progress_step and row.progress_total and row.progress_step < row.progress_total:
            facts["eta_s"] = round(elapsed * (row.progress_total - row.progress_step) / row.progress_step)
    if row.progress_step is not None:
        facts["progress_step"] = row.progress_step
        facts["progress_total"] = row.progress_total
    return facts


def attempts_of(session: Session, stage: Stage) -> list[Attempt]:
    from sqlalchemy import select

    from supervisor.store.models import Attempt

    return list(session.scalars(select(Attempt).where(Attempt.stage_id == stage.id).order_by(Attempt.number)))


def attempt_json(a: AttemptRow, now: datetime | None = None) -> dict[str, Any]:
    return {
        "number": a.number, "job_id": a.job_id, "state": a.state, "backend": a.backend,
        "submitted_at": _iso(a.submitted_at), "started_at": _iso(a.started_at), "ended_at": _iso(a.ended_at),
        "exit_code": a.exit_code, "nodes": a.nodes, "reason": a.reason, "cause": a.cause,
        "outcome": a.outcome, "log": a.log_path, "progress": _progress(a),
        "pending_reason": _pending_reason(a), "pending_since": _iso(a.reason_since) if _pending_reason(a) else None,
        "queued_for_s": _queued_for_s(a, now or datetime.now(UTC)),
    }


def _budget(a: AttemptRow, budget_start: int | None) -> dict[str, Any]:
    """Whether the attempt used up one of the stage's max_attempts, and why: the core's own rule."""
    # Imported here: the decision core costs `status` ~18 ms of imports it never needs.
    from supervisor.domain.core.actions import Outcome
    from supervisor.domain.core.views import AttemptView, budget_use

    view = AttemptView(number=a.number, state=AttemptState(a.state), outcome=Outcome(a.outcome) if a.outcome else None,
                       cause=a.cause, reason=a.reason, saved_mark=a.saved_mark, start_mark=a.start_mark)
    counted, why = budget_use(view, budget_start if budget_start is not None else 1)
    return {"counted": counted, "counted_why": why}


def accounting_facts(
    a: AttemptRow, kind: str, *, hung: bool, checkpoint_at: datetime | None = None,
    usage: accounting.SchedulerUsage | None = None,
) -> accounting.AttemptFacts:
    """What the accounting is told of one attempt: its row, whether a hang was detected in it (a STALLED
    event), and where the caller knows them, its last complete checkpoint and the scheduler's own figures."""
    return accounting.AttemptFacts(
        state=a.state, started_at=a.started_at, ended_at=a.ended_at, nodes=a.nodes, usage=usage, cause=a.cause,
        exit_code=a.exit_code, work_done=bool(a.work_done), steps_expected=kind == StageKind.TRAIN.value,
        first_step_at=a.first_step_at, last_output_at=a.last_output_at, checkpoint_at=checkpoint_at, hung=hung,
    )


def _pending_reason(attempt: AttemptRow | None) -> str | None:
    """Why the cluster has not started the job yet (Slurm's reason, e.g. "Priority"); None once it started."""
    if attempt is None or attempt.state != AttemptState.QUEUED.value:
        return None
    return attempt.reason


def _queued_for_s(attempt: AttemptRow | None, now: datetime) -> int | None:
    """Seconds the job waited in the queue: so far while queued, until it started (or ended unstarted) after."""
    if attempt is None or attempt.submitted_at is None or attempt.state == AttemptState.SUBMITTING.value:
        return None
    queued = attempt.state == AttemptState.QUEUED.value
    until = now if queued else attempt.started_at or attempt.ended_at or now
    return max(0, round((until - attempt.submitted_at).total_seconds()))


def _session_query(session: Session) -> Query:
    """The same plain SQL through the Session's own connection (its transaction, its view of the data)."""
    def query(sql: str, params: Sequence[Any]) -> Iterable[Sequence[Any]]:
        return session.connection().exec_driver_sql(sql, tuple(params))

    return query


def _attempt(columns: Sequence[Any]) -> AttemptRow | None:
    """The attempt in ``columns`` (in ``_ATTEMPT_COLUMNS`` order); None for a LEFT JOIN that found none."""
    values = dict(zip(_ATTEMPT_COLUMNS, columns, strict=True))
    if values["number"] is None:
        return None
    for name in _ATTEMPT_TIMES:
        values[name] = _time(values[name]) if values[name] is not None else None
    return AttemptRow(**values)


def _no_run(name: str) -> UserError:
    return UserError(f"no run named {name!r} (see `supervisor status`)")  # as Repository.run_named says


def _undelivered(query: Query, run_id: int) -> list[dict[str, Any]]:
    rows = []
    for entry_id, channel, kind, state, tries, last_error, next_try_at, payload in query(_OUTBOX_SQL, (run_id,)):
        meta = json.loads(payload).get(_OUTBOX_META) if payload else None
        rows.append({
            "id": entry_id, "channel": channel, "kind": kind, "state": state, "tries": tries,
            "last_error": last_error, "next_try_at": _iso(_time(next_try_at) if next_try_at else None),
            "merged_into": meta.get("merged_into") if isinstance(meta, dict) else None,
        })
    return rows


def _time(value: str | datetime) -> datetime:
    """A UTCDateTime column as SQLite holds it (naive UTC text, "2026-12-02 07:10:00.000000"), made aware."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _progress(attempt: AttemptRow | None) -> dict[str, int | None] | None:
    if attempt is None or attempt.progress_step is None:
        return None
    return {"step": attempt.progress_step, "total": attempt.progress_total}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- report: node-hours used and wasted, per attempt, stage, run and cause ---------------------------

_REPORT_RUNS_SQL = """
SELECT id, name, state, backend, workdir, spec_path, created_at, updated_at FROM runs
WHERE updated_at >= ? ORDER BY id
"""
_STALLS_SQL = "SELECT stage, attempt FROM events WHERE run_id = ? AND kind = ?"
_SPEC_SQL = "SELECT spec FROM runs WHERE id = ?"


@dataclass(frozen=True)
class RunPlace:
    """Where a run's files are, for a caller that looks at them (its checkpoints, its logs)."""

    name: str
    workdir: str
    spec_path: str
    spec: dict[str, Any]


# (run, stage) -> the save times of the stage's complete checkpoints; (backend, job ids) -> sacct's figures.
CheckpointTimes = Callable[[RunPlace, str], Sequence[datetime]]
SchedulerFigures = Callable[[str, Sequence[str]], dict[str, accounting.SchedulerUsage]]


def report_from(
    query: Query, *, since: datetime | None = None, now: datetime | None = None,
    checkpoints: CheckpointTimes | None = None, figures: SchedulerFigures | None = None,
) -> dict[str, Any]:
    """Node-hours used and wasted per run, stage and attempt, waste by cause, failures by signature, wall
    time per stage and the time lost to detecting hangs, for the runs active since ``since``.

    ``figures`` gives the scheduler's own elapsed time and node count of ended jobs (sacct) where it keeps
    accounting; ``checkpoints`` the save times of a stage's complete checkpoints. Without them the recorded
    times count, and waste runs from an attempt's first step.
    """
    now = now or datetime.now(UTC)
    floor = (since or datetime.min.replace(tzinfo=UTC)).astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
    runs = []
    for run_id, name, state, backend, workdir, spec_path, created_at, updated_at in list(
            query(_REPORT_RUNS_SQL, (floor,))):
        hangs = {(stage, number) for stage, number in query(_STALLS_SQL, (run_id, EventKind.STALLED.value))}
        stages: list[dict[str, Any]] = []
        for stage_name, kind, stage_state, _budget_start, *columns in query(_STAGES_SQL, (run_id,)):
            if not stages or stages[-1]["name"] != stage_name:
                stages.append({"name": stage_name, "kind": kind, "state": stage_state, "rows": []})
            if (attempt := _attempt(columns)) is not None:
                stages[-1]["rows"].append((attempt, (stage_name, attempt.number) in hangs))
        runs.append({"id": run_id, "name": name, "state": state, "backend": backend, "workdir": workdir,
                     "spec_path": spec_path, "created_at": _time(created_at), "updated_at": _time(updated_at),
                     "stages": stages})
    usage = _scheduler_usage(runs, figures)
    return _report(query, runs, usage, checkpoints, since, now)


def _scheduler_usage(runs: list[dict[str, Any]], figures: SchedulerFigures | None) -> dict[tuple[str, str], Any]:
    """One call per backend for every ended job of the report."""
    if figures is None:
        return {}
    wanted: dict[str, set[str]] = {}
    for run in runs:
        for stage in run["stages"]:
            for attempt, _ in stage["rows"]:
                if attempt.job_id and attempt.ended_at is not None and attempt.started_at is not None:
                    wanted.setdefault(attempt.backend, set()).add(attempt.job_id)
    found: dict[tuple[str, str], Any] = {}
    for backend, ids in wanted.items():
        for job_id, usage in figures(backend, sorted(ids)).items():
            found[(backend, job_id)] = usage
    return found


def _report(
    query: Query, runs: list[dict[str, Any]], usage: dict[tuple[str, str], Any],
    checkpoints: CheckpointTimes | None, since: datetime | None, now: datetime,
) -> dict[str, Any]:
    every: list[accounting.AttemptCost] = []
    failures: dict[str, dict[str, Any]] = {}
    out_runs = []
    for run in runs:
        place = _place(query, run) if checkpoints is not None else None
        run_costs: list[accounting.AttemptCost] = []
        out_stages = []
        for stage in run["stages"]:
            saved = _saved_times(checkpoints, place, stage) if place is not None else ()
            stage_costs, out_attempts = [], []
            for attempt, hung in stage["rows"]:
                scheduler = usage.get((attempt.backend, attempt.job_id or ""))
                facts = accounting_facts(attempt, stage["kind"], hung=hung, usage=scheduler,
                                         checkpoint_at=_last_within(saved, attempt, now))
                c = accounting.cost(facts, now)
                stage_costs.append(c)
                out_attempts.append({**_attempt_times(attempt), **_cost_json(c),
                                     "measured_by": "scheduler" if scheduler is not None else "recorded"})
                if attempt.state in (AttemptState.FAILED.value, AttemptState.CANCELLED.value) and c.wasted:
                    key = attempt.cause or c.cause or attempt.state
                    entry = failures.setdefault(key, {"signature": key, "attempts": 0, "runs": [], "node_seconds": 0})
                    entry["attempts"] += 1
                    entry["node_seconds"] += c.wasted
                    if run["name"] not in entry["runs"]:
                        entry["runs"].append(run["name"])
            run_costs.extend(stage_costs)
            out_stages.append({"name": stage["name"], "kind": stage["kind"], "state": stage["state"],
                               **_wall(stage["rows"], now), **_totals_json(accounting.total(stage_costs)),
                               "attempts": out_attempts})
        every.extend(run_costs)
        out_runs.append({"name": run["name"], "state": run["state"], "backend": run["backend"],
                         "workdir": run["workdir"], "created_at": run["created_at"].isoformat(),
                         **_totals_json(accounting.total(run_costs)), "stages": out_stages})
    overall = accounting.total(every)
    ranked = sorted(failures.values(), key=lambda f: (-f["attempts"], f["signature"]))
    return {
        "generated_at": now.isoformat(), "since": _iso(since),
        **_totals_json(overall),
        "failures_by_signature": [{**f, "wasted_node_hours": accounting.hours(f.pop("node_seconds"))} for f in ranked],
        "detection": {"hung_node_hours": accounting.hours(overall.hung), "hung_node_seconds": overall.hung,
                      "hangs": sum(1 for c in every if c.hung)},
        "runs": out_runs,
    }


def _place(query: Query, run: dict[str, Any]) -> RunPlace:
    spec = next(iter(query(_SPEC_SQL, (run["id"],))))[0]
    return RunPlace(run["name"], run["workdir"], run["spec_path"], json.loads(spec) if isinstance(spec, str) else spec)


def _saved_times(checkpoints: CheckpointTimes | None, place: RunPlace, stage: dict[str, Any]) -> Sequence[datetime]:
    if checkpoints is None or stage["kind"] != StageKind.TRAIN.value:
        return ()
    return checkpoints(place, stage["name"])


def _last_within(saved: Sequence[datetime], a: AttemptRow, now: datetime) -> datetime | None:
    """The newest checkpoint saved while the attempt ran (an older one was another attempt's)."""
    if a.started_at is None:
        return None
    end = a.ended_at or now
    inside = [t for t in saved if a.started_at <= t <= end]
    return max(inside) if inside else None


def _wall(rows: list[tuple[AttemptRow, bool]], now: datetime) -> dict[str, int]:
    """From the stage's first submission to its last attempt's end; and the time its jobs ran."""
    submitted = [a.submitted_at for a, _ in rows if a.submitted_at is not None]
    ends = [a.ended_at or now for a, _ in rows if a.submitted_at is not None]
    ran = sum(max(0.0, ((a.ended_at or now) - a.started_at).total_seconds()) for a, _ in rows if a.started_at)
    wall = round((max(ends) - min(submitted)).total_seconds()) if submitted else 0
    return {"wall_s": max(0, wall), "run_s": round(ran)}


def _attempt_times(a: AttemptRow) -> dict[str, Any]:
    return {"number": a.number, "job_id": a.job_id, "state": a.state, "backend": a.backend,
            "submitted_at": _iso(a.submitted_at), "started_at": _iso(a.started_at), "ended_at": _iso(a.ended_at),
            "first_step_at": _iso(a.first_step_at), "nodes": a.nodes, "exit_code": a.exit_code, "cause": a.cause,
            "outcome": a.outcome, "log": a.log_path}


def _cost_json(c: accounting.AttemptCost) -> dict[str, Any]:
    return {"node_hours": accounting.hours(c.node_seconds), "used_node_hours": accounting.hours(c.used),
            "wasted_node_hours": accounting.hours(c.wasted), "waste_cause": c.cause,
            "hung_node_hours": accounting.hours(c.hung), "node_seconds": c.node_seconds,
            "used_node_seconds": c.used, "wasted_node_seconds": c.wasted}


def _totals_json(t: accounting.Totals) -> dict[str, Any]:
    # Seconds are the exact figures (used + wasted == node_seconds); hours are those rounded for reading.
    return {"node_hours": accounting.hours(t.node_seconds), "used_node_hours": accounting.hours(t.used),
            "wasted_node_hours": accounting.hours(t.wasted), "hung_node_hours": accounting.hours(t.hung),
            "node_seconds": t.node_seconds, "used_node_seconds": t.used, "wasted_node_seconds": t.wasted,
            "waste_by_cause": [{"cause": cause, "node_seconds": amount, "node_hours": accounting.hours(amount)}
                               for cause, amount in t.by_cause]}

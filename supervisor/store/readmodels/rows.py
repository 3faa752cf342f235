"""The rows the read models share: the attempt columns, the SQL, and the small conversions of one row."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from supervisor.domain import accounting
from supervisor.domain.errors import UserError
from supervisor.domain.eta import eta, step_rate
from supervisor.domain.hostlist import count_hosts
from supervisor.domain.types import AttemptState, StageKind
from supervisor.store.sqlitefile import BUSY_TIMEOUT_MS, DB_NAME

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from supervisor.store.models import Attempt, Stage



# Looked up once: an Enum member's .value is a descriptor call, and `status` asks for these once per attempt.
_TRAIN, _QUEUED, _SUBMITTING = StageKind.TRAIN.value, AttemptState.QUEUED.value, AttemptState.SUBMITTING.value


DB_FILE = DB_NAME
# A reader waits for a writer's commit as long as every other connection does.
BUSY_TIMEOUT_S = BUSY_TIMEOUT_MS / 1000


Query = Callable[[str, Sequence[Any]], Iterable[Sequence[Any]]]


class AttemptRow(NamedTuple):
    """The columns of an attempt that `status` and `show` report, read with plain SQL.

    A NamedTuple, not a frozen dataclass: `status` makes one per run, and a frozen dataclass of 24 fields
    takes 14 times as long to build (24 ``object.__setattr__`` calls)."""

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
    first_step: int | None
    progress_at: datetime | None
    loss: float | None


class CostRow(NamedTuple):
    """What the accounting reads of an attempt (:func:`accounting_facts`), for the node-hours of every run
    that `status` shows: a third of an AttemptRow's columns, read and converted for every attempt."""

    number: int
    state: str
    started_at: datetime | None
    ended_at: datetime | None
    nodes: str | None
    cause: str | None
    exit_code: int | None
    work_done: bool | None
    first_step_at: datetime | None
    last_output_at: datetime | None


ATTEMPT_COLUMNS = AttemptRow._fields


ATTEMPT_TIMES = frozenset({"submitted_at", "started_at", "ended_at", "reason_since", "first_step_at",
                            "last_output_at", "progress_at"})


ATTEMPT_SELECT = ", ".join(f"a.{c}" for c in ATTEMPT_COLUMNS)


# The current stage is the first one not yet succeeded, else the last; its attempt is the newest. The
# correlated subqueries walk the (run_id, position) and (stage_id, number) unique indexes.
STATUS_SQL = f"""
SELECT r.id, r.name, r.state, r.updated_at, r.backend, r.reason, r.campaign, json_extract(r.spec, '$.budget'),
       s.name, {ATTEMPT_SELECT}
FROM runs AS r
LEFT JOIN stages AS s ON s.id = COALESCE(
    (SELECT id FROM stages WHERE run_id = r.id AND state != ? ORDER BY position LIMIT 1),
    (SELECT id FROM stages WHERE run_id = r.id ORDER BY position DESC LIMIT 1))
LEFT JOIN attempts AS a ON a.id = (SELECT id FROM attempts WHERE stage_id = s.id ORDER BY number DESC LIMIT 1)
ORDER BY r.id
"""


RUN_SQL = "SELECT id, name, state, reason, backend, workdir, created_at, updated_at FROM runs WHERE {} = ?"
CAMPAIGNS_SQL = "SELECT name, spec FROM campaigns"
# How long each kind of stage took when it succeeded (submission to end, the queue included), and the
# stages of the runs still going: `status`'s `run_eta`.
STAGE_DURATIONS_SQL = """
SELECT s.kind, (julianday(a.ended_at) - julianday(a.submitted_at)) * 86400.0
FROM attempts AS a JOIN stages AS s ON s.id = a.stage_id
WHERE a.state = ? AND a.submitted_at IS NOT NULL AND a.ended_at IS NOT NULL
"""
ACTIVE_STAGES_SQL = """
SELECT s.run_id, s.kind, s.state,
       (SELECT submitted_at FROM attempts WHERE stage_id = s.id AND ended_at IS NULL ORDER BY number DESC LIMIT 1)
FROM stages AS s JOIN runs AS r ON r.id = s.run_id
WHERE r.state IN (?, ?, ?) ORDER BY s.run_id, s.position
"""
CAMPAIGN_OF_SQL = "SELECT campaign FROM runs WHERE id = ?"


# Every attempt that ran, of every run, for the node-hours column of `status`: one pass over the attempts,
# each joined to its stage by primary key; and the attempts a hang ended (a pass over the events: no index
# holds their kind, 10 ms for 200,000 events).
# The attempts whose cost is computed here (live ones, and any not settled: store/settlement.py); the others'
# settled node-seconds are summed by SQLite.
ALL_ATTEMPTS_SQL = f"""
SELECT s.run_id, s.name, s.kind, {", ".join(f"a.{c}" for c in CostRow._fields)}
FROM attempts AS a JOIN stages AS s ON s.id = a.stage_id
WHERE a.started_at IS NOT NULL AND (a.settled_used_s IS NULL OR a.settled_wasted_s IS NULL)
"""
SETTLED_SQL = """
SELECT s.run_id, SUM(a.settled_used_s), SUM(a.settled_wasted_s)
FROM attempts AS a JOIN stages AS s ON s.id = a.stage_id
WHERE a.settled_used_s IS NOT NULL AND a.settled_wasted_s IS NOT NULL
GROUP BY s.run_id
"""
STALLED_SQL = "SELECT run_id, stage, attempt FROM events WHERE kind = ?"

STAGES_SQL = f"""
SELECT s.name, s.kind, s.state, s.budget_start, {ATTEMPT_SELECT}
FROM stages AS s LEFT JOIN attempts AS a ON a.stage_id = s.id
WHERE s.run_id = ? ORDER BY s.position, a.number
"""


EVENTS_SQL = "SELECT at, kind, stage, attempt, message FROM events WHERE run_id = ? ORDER BY id"


EXCLUDED_SQL = "SELECT node, reason, evidence, line, until FROM excluded_nodes WHERE run_id = ? ORDER BY id"


# notify.queue.undelivered, as plain SQL (that module imports the notifier stack).
OUTBOX_SQL = """
SELECT id, channel, kind, state, tries, last_error, next_try_at, payload FROM outbox
WHERE run_id = ? AND state != 'delivered' ORDER BY id
"""


OUTBOX_META = "_outbox"  # notify.queue._META


def attempt_facts(row: Attempt, now: datetime) -> dict[str, Any]:
    """What a notification about this attempt can say: job id, progress, ETA, node-hours spent."""
    facts: dict[str, Any] = {}
    if row.job_id:
        facts["job_id"] = row.job_id
    if row.started_at is not None:
        elapsed = ((row.ended_at or now) - row.started_at).total_seconds()
        facts["node_hours"] = round(count_hosts(row.nodes or "") * max(elapsed, 0.0) / 3600, 2)
    rate = step_rate(row.first_step, row.first_step_at, row.progress_step, row.progress_at)
    finish = eta(row.progress_step, row.progress_total, rate, row.progress_at)
    if finish is not None and row.ended_at is None:
        facts["eta_s"] = max(0, round((finish - now).total_seconds()))
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
        "submitted_at": iso(a.submitted_at), "started_at": iso(a.started_at), "ended_at": iso(a.ended_at),
        "exit_code": a.exit_code, "nodes": a.nodes, "reason": a.reason, "cause": a.cause,
        "outcome": a.outcome, "log": a.log_path, "progress": progress_of(a),
        "pending_reason": pending_reason(a), "pending_since": iso(a.reason_since) if pending_reason(a) else None,
        "queued_for_s": queued_for_s(a, now or datetime.now(UTC)),
        "progress_summary": progress_summary(a),
    }


def budget_of(a: AttemptRow, budget_start: int | None) -> dict[str, Any]:
    """Whether the attempt used up one of the stage's max_attempts, and why: the core's own rule."""
    # Imported here: the decision core costs `status` ~18 ms of imports it never needs.
    from supervisor.domain.core.actions import Outcome
    from supervisor.domain.core.views import AttemptView, budget_use

    view = AttemptView(number=a.number, state=AttemptState(a.state), outcome=Outcome(a.outcome) if a.outcome else None,
                       cause=a.cause, reason=a.reason, saved_mark=a.saved_mark, start_mark=a.start_mark)
    counted, why = budget_use(view, budget_start if budget_start is not None else 1)
    return {"counted": counted, "counted_why": why}


def accounting_facts(
    a: AttemptRow | CostRow, kind: str, *, hung: bool, checkpoint_at: datetime | None = None,
    usage: accounting.SchedulerUsage | None = None,
) -> accounting.AttemptFacts:
    """What the accounting is told of one attempt: its row, whether a hang was detected in it (a STALLED
    event), and where the caller knows them, its last complete checkpoint and the scheduler's own figures."""
    return accounting.AttemptFacts(
        state=a.state, started_at=a.started_at, ended_at=a.ended_at, nodes=a.nodes, usage=usage, cause=a.cause,
        exit_code=a.exit_code, work_done=bool(a.work_done), steps_expected=kind == _TRAIN,
        first_step_at=a.first_step_at, last_output_at=a.last_output_at, checkpoint_at=checkpoint_at, hung=hung,
    )


def pending_reason(attempt: AttemptRow | None) -> str | None:
    """Why the cluster has not started the job yet (Slurm's reason, e.g. "Priority"); None once it started."""
    if attempt is None or attempt.state != _QUEUED:
        return None
    return attempt.reason


def queued_for_s(attempt: AttemptRow | None, now: datetime) -> int | None:
    """Seconds the job waited in the queue: so far while queued, until it started (or ended unstarted) after."""
    if attempt is None or attempt.submitted_at is None or attempt.state == _SUBMITTING:
        return None
    queued = attempt.state == _QUEUED
    until = now if queued else attempt.started_at or attempt.ended_at or now
    return max(0, round((until - attempt.submitted_at).total_seconds()))


def json_object(value: Any) -> dict[str, Any]:
    """A JSON column's mapping: sqlite3 hands back text, SQLAlchemy's JSON type a dict; anything else is {}."""
    loaded = json.loads(value) if isinstance(value, str) else value
    return loaded if isinstance(loaded, dict) else {}


def campaign_settings(query: Query, name: str | None = None) -> dict[str, dict[str, Any]]:
    """Each campaign's (or the one named) max_live_jobs, budget and allocation_node_hours, by name."""
    if name is None:
        return {campaign: json_object(spec) for campaign, spec in query(CAMPAIGNS_SQL, ())}
    return {campaign: json_object(spec) for campaign, spec in query(CAMPAIGNS_SQL + " WHERE name = ?", (name,))}


def session_query(session: Session) -> Query:
    """The same plain SQL through the Session's own connection (its transaction, its view of the data)."""
    def query(sql: str, params: Sequence[Any]) -> Iterable[Sequence[Any]]:
        return session.connection().exec_driver_sql(sql, tuple(params))

    return query


_ATTEMPT_TIME_AT = tuple(i for i, name in enumerate(ATTEMPT_COLUMNS) if name in ATTEMPT_TIMES)
_COST_TIME_AT = tuple(i for i, name in enumerate(CostRow._fields) if name in ATTEMPT_TIMES)


def attempt_row(columns: Sequence[Any]) -> AttemptRow | None:
    """The attempt in ``columns`` (in ``ATTEMPT_COLUMNS`` order); None for a LEFT JOIN that found none."""
    if len(columns) != len(ATTEMPT_COLUMNS):
        raise ValueError(f"{len(columns)} columns for the {len(ATTEMPT_COLUMNS)} of an attempt")
    if columns[0] is None:  # number
        return None
    return AttemptRow._make(_with_times(columns, _ATTEMPT_TIME_AT))


def cost_row(columns: Sequence[Any]) -> CostRow:
    """The attempt in ``columns`` (in ``CostRow`` order)."""
    if len(columns) != len(CostRow._fields):
        raise ValueError(f"{len(columns)} columns for the {len(CostRow._fields)} of an attempt's cost")
    return CostRow._make(_with_times(columns, _COST_TIME_AT))


def _with_times(columns: Sequence[Any], at: tuple[int, ...]) -> list[Any]:
    values = list(columns)
    for i in at:
        if values[i] is not None:
            values[i] = as_time(values[i])
    return values


def no_run(name: str) -> UserError:
    return UserError(f"no run named {name!r} (see `supervisor status`)")  # as Repository.run_named says


def undelivered(query: Query, run_id: int) -> list[dict[str, Any]]:
    rows = []
    for entry_id, channel, kind, state, tries, last_error, next_try_at, payload in query(OUTBOX_SQL, (run_id,)):
        meta = json.loads(payload).get(OUTBOX_META) if payload else None
        rows.append({
            "id": entry_id, "channel": channel, "kind": kind, "state": state, "tries": tries,
            "last_error": last_error, "next_try_at": iso(as_time(next_try_at) if next_try_at else None),
            "merged_into": meta.get("merged_into") if isinstance(meta, dict) else None,
        })
    return rows


def as_time(value: str | datetime) -> datetime:
    """A UTCDateTime column as SQLite holds it (naive UTC text, "2026-12-02 07:10:00.000000"), made aware."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        # The zone parsed with the text: a fifth of the time of .replace(tzinfo=...), for every time `status` reads.
        return datetime.fromisoformat(value + "+00:00")
    except ValueError:  # text that carries its own offset
        return datetime.fromisoformat(value).replace(tzinfo=UTC)


def progress_of(attempt: AttemptRow | None) -> dict[str, Any] | None:
    """{step, total, fraction}: the bar the attempt follows; fraction is None without a total."""
    if attempt is None or attempt.progress_step is None:
        return None
    total = attempt.progress_total
    fraction = min(1.0, max(0.0, attempt.progress_step / total)) if total else None
    return {"step": attempt.progress_step, "total": total,
            "fraction": round(fraction, 4) if fraction is not None else None}


def rate_of(attempt: AttemptRow) -> float | None:
    """The attempt's own step rate (supervisor.domain.eta)."""
    return step_rate(attempt.first_step, attempt.first_step_at, attempt.progress_step, attempt.progress_at)


def eta_of(attempt: AttemptRow | None) -> datetime | None:
    """When a live attempt reaches its last step at its own rate; None while unknown, or once it ended."""
    if attempt is None or attempt.ended_at is not None:
        return None
    return eta(attempt.progress_step, attempt.progress_total, rate_of(attempt), attempt.progress_at)


def progress_summary(attempt: AttemptRow) -> dict[str, Any] | None:
    """`show`'s progress of one attempt: where it started and got to, its last loss, its rate."""
    if attempt.progress_step is None:
        return None
    rate = rate_of(attempt)
    return {"first_step": attempt.first_step, "step": attempt.progress_step, "total": attempt.progress_total,
            "loss": attempt.loss, "steps_per_s": round(rate, 6) if rate is not None else None,
            "first_step_at": iso(attempt.first_step_at), "progress_at": iso(attempt.progress_at),
            "eta": iso(eta_of(attempt))}


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None

"""What `status`, `show` and the notifications read: plain, JSON-ready dictionaries built from the rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from supervisor.domain.hostlist import count_hosts
from supervisor.domain.types import StageState
from supervisor.notify import undelivered
from supervisor.store.models import Attempt, Event, ExcludedNode, Run, Stage


def status_rows(session: Session) -> list[dict[str, Any]]:
    rows = []
    for run in session.scalars(select(Run).order_by(Run.id).options(selectinload(Run.stages))):
        stage, attempt = _current(session, run)
        rows.append({
            "name": run.name,
            "state": run.state,
            "stage": stage.name if stage else None,
            "attempt": attempt.number if attempt else None,
            "job_id": attempt.job_id if attempt else None,
            "updated_at": run.updated_at.isoformat(),
            "backend": run.backend,
            "progress": _progress(attempt),
            "reason": run.reason,
        })
    return rows


def show(session: Session, run: Run) -> dict[str, Any]:
    stages = [
        {"name": stage.name, "kind": stage.kind, "state": stage.state,
         "attempts": [attempt_json(a) for a in attempts_of(session, stage)]}
        for stage in run.stages
    ]
    events = [
        {"at": e.at.isoformat(), "kind": e.kind, "stage": e.stage, "attempt": e.attempt, "message": e.message}
        for e in session.scalars(select(Event).where(Event.run_id == run.id).order_by(Event.id))
    ]
    excluded = [
        {"node": x.node, "reason": x.reason, "until": x.until.isoformat()}
        for x in session.scalars(select(ExcludedNode).where(ExcludedNode.run_id == run.id))
    ]
    return {"name": run.name, "state": run.state, "reason": run.reason, "backend": run.backend,
            "workdir": run.workdir, "created_at": run.created_at.isoformat(),
            "updated_at": run.updated_at.isoformat(), "stages": stages, "events": events,
            "excluded_nodes": excluded, "notifications": undelivered(session, run.id)}


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
    return list(session.scalars(select(Attempt).where(Attempt.stage_id == stage.id).order_by(Attempt.number)))


def attempt_json(a: Attempt) -> dict[str, Any]:
    return {
        "number": a.number, "job_id": a.job_id, "state": a.state, "backend": a.backend,
        "submitted_at": _iso(a.submitted_at), "started_at": _iso(a.started_at), "ended_at": _iso(a.ended_at),
        "exit_code": a.exit_code, "nodes": a.nodes, "reason": a.reason, "cause": a.cause,
        "outcome": a.outcome, "log": a.log_path, "progress": _progress(a),
    }


def _current(session: Session, run: Run) -> tuple[Stage | None, Attempt | None]:
    stage = next((s for s in run.stages if s.state != StageState.SUCCEEDED.value), None)
    if stage is None and run.stages:
        stage = run.stages[-1]
    if stage is None:
        return None, None
    attempt = session.scalar(select(Attempt).where(Attempt.stage_id == stage.id)
                             .order_by(Attempt.number.desc()).limit(1))
    return stage, attempt


def _progress(attempt: Attempt | None) -> dict[str, int | None] | None:
    if attempt is None or attempt.progress_step is None:
        return None
    return {"step": attempt.progress_step, "total": attempt.progress_total}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None

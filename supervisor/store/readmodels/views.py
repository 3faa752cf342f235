"""`status` and `show`: plain, JSON-ready dictionaries, one query for every run, one indexed query per table."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from supervisor.domain import accounting, eta
from supervisor.domain.types import AttemptState, EventKind, RunState, StageState
from supervisor.store.readmodels.rows import (
    ACTIVE_STAGES_SQL,
    ALL_ATTEMPTS_SQL,
    CAMPAIGN_OF_SQL,
    EVENTS_SQL,
    EXCLUDED_SQL,
    RUN_SQL,
    SETTLED_SQL,
    STAGE_DURATIONS_SQL,
    STAGES_SQL,
    STALLED_SQL,
    STATUS_SQL,
    AttemptRow,
    Query,
    accounting_facts,
    as_time,
    attempt_json,
    attempt_row,
    budget_of,
    campaign_settings,
    cost_row,
    eta_of,
    iso,
    no_run,
    pending_reason,
    progress_of,
    queued_for_s,
    session_query,
    undelivered,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from supervisor.store.models import Run



def status_rows(session: Session, now: datetime | None = None) -> list[dict[str, Any]]:
    return status_from(session_query(session), now)


def show(session: Session, run: Run, now: datetime | None = None) -> dict[str, Any]:
    return show_from(session_query(session), run.id, now)


def status_from(query: Query, now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or datetime.now(UTC)
    rows = []
    spent = node_hours_by_run(query, now)
    finish = run_finishes(query, now)
    budgets: dict[str, Any] = {}
    for run_id, name, state, updated_at, backend, reason, campaign, budget, stage, *columns in query(
            STATUS_SQL, (StageState.SUCCEEDED.value,)):
        attempt = attempt_row(columns)
        budgets[name] = json.loads(budget) if isinstance(budget, str) else None
        rows.append({
            "name": name,
            "state": state,
            "stage": stage,
            "attempt": attempt.number if attempt else None,
            "job_id": attempt.job_id if attempt else None,
            "updated_at": as_time(updated_at).isoformat(),
            "backend": backend,
            "progress": progress_of(attempt),
            "reason": reason,
            "pending_reason": pending_reason(attempt),
            "queued_for_s": queued_for_s(attempt, now),
            "eta": iso(eta_of(attempt)),
            "run_eta": iso(finish(run_id, eta_of(attempt))),
            "loss": attempt.loss if attempt else None,
            "node_hours": spent.get(run_id, {"used": 0.0, "wasted": 0.0}),
            "campaign": campaign,
        })
    return with_budgets(rows, budgets, campaign_settings(query))


def run_finishes(query: Query, now: datetime) -> Callable[[int, datetime | None], datetime | None]:
    """For a run still going, when all of it will be done (supervisor.domain.eta.run_finish): the durations
    are those of every stage of the same kind that succeeded before, in any run."""
    stages: dict[int, list[tuple[str, str, Any]]] = {}
    active = (RunState.PENDING.value, RunState.RUNNING.value, RunState.PAUSED.value)
    for run_id, kind, state, live_since in query(ACTIVE_STAGES_SQL, active):
        stages.setdefault(run_id, []).append((kind, state, live_since))
    durations: dict[str, list[float]] = {}
    # Seconds computed by SQLite: parsing 2 x 26,000 times here cost `status` on a large home 0.1 s.
    for kind, seconds in query(STAGE_DURATIONS_SQL, (AttemptState.SUCCEEDED.value,)) if stages else ():
        if seconds is not None:
            durations.setdefault(kind, []).append(max(float(seconds), 0.0))
    expected = {kind: t for kind, values in durations.items() if (t := eta.typical(values)) is not None}

    def finish(run_id: int, stage_eta: datetime | None) -> datetime | None:
        left = [s for s in stages.get(run_id, ()) if s[1] != StageState.SUCCEEDED.value]
        if not left:
            return None
        kind, state, live_since = left[0]
        running = (kind, as_time(live_since)) if state == StageState.RUNNING.value and live_since else None
        to_come = [k for k, _, _ in (left[1:] if running else left)]
        return eta.run_finish(now, stage_eta=stage_eta if running else None, running=running, to_come=to_come,
                              expected=expected)

    return finish


def _show_prepares(query: Query, run_id: int, campaign: str | None, stages: list[dict[str, Any]]) -> None:
    """A prepare stage's ``prepare``: its directory, and the other run whose prepare it follows (``sharing``
    live/succeeded/failed) or waits for because it writes another dataset into that directory (busy). As the
    database has it: a finished dataset deleted since still shows as succeeded (the daemon looks on disk)."""
    from supervisor.store import gates

    for stage, (prepared, shared) in gates.prepares_of(query, run_id, campaign, lambda _: True).items():
        entry = next(s for s in stages if s["name"] == stage)
        entry["prepare"] = {"dataset_prepared_path": prepared,
                            "shared_with": shared.run if shared else None,
                            "sharing": shared.state.value if shared else None}


def with_budgets(rows: list[dict[str, Any]], own: dict[str, Any],
                 campaigns: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's ``budget``: the run's own (spent by the run), else its campaign's (spent by all its runs),
    else None. ``{"scope", "node_hours", "wasted_node_hours", "used", "wasted"}``, the limits null when unset."""
    by_campaign: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["campaign"] is not None:
            total = by_campaign.setdefault(row["campaign"], {"used": 0.0, "wasted": 0.0})
            total["used"] += row["node_hours"]["used"]
            total["wasted"] += row["node_hours"]["wasted"]
    for row in rows:
        limits, scope, spent = own.get(row["name"]), "run", row["node_hours"]
        if not isinstance(limits, dict) and row["campaign"] is not None:
            limits = campaigns.get(row["campaign"], {}).get("budget")
            scope, spent = "campaign", by_campaign[row["campaign"]]
        row["budget"] = None if not isinstance(limits, dict) else {
            "scope": scope, "node_hours": limits.get("node_hours"),
            "wasted_node_hours": limits.get("wasted_node_hours"),
            "used": round(spent["used"], 2), "wasted": round(spent["wasted"], 2)}
    return rows


def node_hours_by_run(query: Query, now: datetime) -> dict[int, dict[str, float]]:
    """Per run, the node-hours its attempts used and wasted so far (supervisor.domain.accounting), from the
    recorded times: `status` asks no scheduler. Ended attempts' settled figures are summed by SQLite; the
    accounting runs only for the others."""
    seconds: dict[int, list[int]] = {run_id: [int(used), int(wasted)]
                                     for run_id, used, wasted in query(SETTLED_SQL, ())}
    open_rows = list(query(ALL_ATTEMPTS_SQL, ()))
    if open_rows:
        hung = {(run_id, stage, number)
                for run_id, stage, number in query(STALLED_SQL, (EventKind.STALLED.value,))}
        for run_id, stage, kind, *columns in open_rows:
            attempt = cost_row(columns)
            c = accounting.cost(accounting_facts(attempt, kind, hung=(run_id, stage, attempt.number) in hung), now)
            total = seconds.setdefault(run_id, [0, 0])
            total[0] += c.used
            total[1] += c.wasted
    return {run_id: {"used": accounting.hours(used), "wasted": accounting.hours(wasted)}
            for run_id, (used, wasted) in seconds.items()}


def show_from(query: Query, run: int | str, now: datetime | None = None) -> dict[str, Any]:
    """`show` of the run with this id, or this name (UserError when there is none)."""
    now = now or datetime.now(UTC)
    found = list(query(RUN_SQL.format("id" if isinstance(run, int) else "name"), (run,)))
    if not found:
        raise no_run(str(run))
    run_id, run_name, state, reason, backend, workdir, created_at, updated_at = found[0]
    stages: list[dict[str, Any]] = []
    rows: list[tuple[dict[str, Any], str, str, AttemptRow]] = []
    for stage_name, kind, stage_state, budget_start, *columns in query(STAGES_SQL, (run_id,)):
        if not stages or stages[-1]["name"] != stage_name:
            stages.append({"name": stage_name, "kind": kind, "state": stage_state, "attempts": []})
        if (attempt := attempt_row(columns)) is not None:  # None: a stage with no attempt yet (LEFT JOIN)
            stages[-1]["attempts"].append({**attempt_json(attempt, now), **budget_of(attempt, budget_start)})
            rows.append((stages[-1]["attempts"][-1], stage_name, kind, attempt))
    event_rows = list(query(EVENTS_SQL, (run_id,)))
    events = [
        {"at": as_time(at).isoformat(), "kind": kind, "stage": stage, "attempt": attempt, "message": message}
        for at, kind, stage, attempt, message in event_rows
    ]
    hangs = {(stage, attempt) for _, kind, stage, attempt, _ in event_rows if kind == EventKind.STALLED.value}
    for shown, stage_name, kind, attempt in rows:
        c = accounting.cost(accounting_facts(attempt, kind, hung=(stage_name, attempt.number) in hangs), now)
        shown.update(node_hours=accounting.hours(c.node_seconds), wasted_node_hours=accounting.hours(c.wasted),
                     waste_cause=c.cause)
    excluded = [
        # The evidence is the log line the exclusion rests on (None for a row recorded before it was kept).
        {"node": node, "reason": why, "evidence": evidence, "line": line, "until": as_time(until).isoformat()}
        for node, why, evidence, line, until in query(EXCLUDED_SQL, (run_id,))
    ]
    campaign = next(iter(query(CAMPAIGN_OF_SQL, (run_id,))))[0]
    _show_prepares(query, run_id, campaign, stages)
    return {"name": run_name, "state": state, "reason": reason, "backend": backend, "campaign": campaign,
            "workdir": workdir, "created_at": as_time(created_at).isoformat(),
            "updated_at": as_time(updated_at).isoformat(), "stages": stages, "events": events,
            "excluded_nodes": excluded, "notifications": undelivered(query, run_id)}

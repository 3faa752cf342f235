"""`report`: node-hours used and wasted, per attempt, stage, run and cause."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from supervisor.domain import accounting
from supervisor.domain.types import AttemptState, EventKind, StageKind
from supervisor.store.readmodels.rows import (
    STAGES_SQL,
    AttemptRow,
    Query,
    accounting_facts,
    as_time,
    attempt_row,
    campaign_settings,
    iso,
    session_query,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session




def report(session: Session, **options: Any) -> dict[str, Any]:
    """:func:`report_from` through the Session's own connection."""
    return report_from(session_query(session), **options)


REPORT_RUNS_SQL = """
SELECT id, name, state, backend, workdir, spec_path, created_at, updated_at FROM runs
WHERE updated_at >= ? ORDER BY id
"""


RUN_CAMPAIGNS_SQL = "SELECT name, campaign FROM runs WHERE campaign IS NOT NULL"


_STALLS_SQL = "SELECT stage, attempt FROM events WHERE run_id = ? AND kind = ?"


SPEC_SQL = "SELECT spec FROM runs WHERE id = ?"


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
            query(REPORT_RUNS_SQL, (floor,))):
        hangs = {(stage, number) for stage, number in query(_STALLS_SQL, (run_id, EventKind.STALLED.value))}
        stages: list[dict[str, Any]] = []
        for stage_name, kind, stage_state, _budget_start, *columns in query(STAGES_SQL, (run_id,)):
            if not stages or stages[-1]["name"] != stage_name:
                stages.append({"name": stage_name, "kind": kind, "state": stage_state, "rows": []})
            if (attempt := attempt_row(columns)) is not None:
                stages[-1]["rows"].append((attempt, (stage_name, attempt.number) in hangs))
        runs.append({"id": run_id, "name": name, "state": state, "backend": backend, "workdir": workdir,
                     "spec_path": spec_path, "created_at": as_time(created_at), "updated_at": as_time(updated_at),
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
    campaign_of: dict[str, str] = {name: campaign for name, campaign in query(RUN_CAMPAIGNS_SQL, ())}
    by_campaign: dict[str, list[accounting.AttemptCost]] = {}
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
        if (campaign := campaign_of.get(run["name"])) is not None:
            by_campaign.setdefault(campaign, []).extend(run_costs)
        out_runs.append({"name": run["name"], "state": run["state"], "backend": run["backend"],
                         "workdir": run["workdir"], "created_at": run["created_at"].isoformat(),
                         **_totals_json(accounting.total(run_costs)), "stages": out_stages})
    overall = accounting.total(every)
    ranked = sorted(failures.values(), key=lambda f: (-f["attempts"], f["signature"]))
    return {
        "generated_at": now.isoformat(), "since": iso(since),
        **_totals_json(overall),
        "failures_by_signature": [{**f, "wasted_node_hours": accounting.hours(f.pop("node_seconds"))} for f in ranked],
        "detection": {"hung_node_hours": accounting.hours(overall.hung), "hung_node_seconds": overall.hung,
                      "hangs": sum(1 for c in every if c.hung)},
        "runs": out_runs,
        "campaigns": _campaigns(query, by_campaign),
    }


def _campaigns(query: Query, costs: dict[str, list[accounting.AttemptCost]]) -> list[dict[str, Any]]:
    """Each campaign's node-hours (of its runs in the report) and, where it declares its allocation, the share
    of it they are: the team's "4.5 % -> 5.2 %" of a quota, printed by the supervisor."""
    settings = campaign_settings(query)
    out = []
    for name in sorted(costs):
        totals = accounting.total(costs[name])
        allocation = settings.get(name, {}).get("allocation_node_hours")
        share = None
        if isinstance(allocation, int | float) and allocation > 0:
            share = round(100 * totals.node_seconds / 3600 / allocation, 2)
        out.append({"name": name, **_totals_json(totals), "allocation_node_hours": allocation,
                    "allocation_used_percent": share, "budget": settings.get(name, {}).get("budget")})
    return out


def _place(query: Query, run: dict[str, Any]) -> RunPlace:
    spec = next(iter(query(SPEC_SQL, (run["id"],))))[0]
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
            "submitted_at": iso(a.submitted_at), "started_at": iso(a.started_at), "ended_at": iso(a.ended_at),
            "first_step_at": iso(a.first_step_at), "nodes": a.nodes, "exit_code": a.exit_code, "cause": a.cause,
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

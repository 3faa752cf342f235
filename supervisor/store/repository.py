"""Every write the supervisor makes, and the reads that feed its decisions.

State changes are conditional (``UPDATE ... WHERE state = :old``) and the intent of a side effect is
committed before the side effect: an attempt row in SUBMITTING before sbatch, ``cancel_requested``
before scancel. An event and its notifications are written in the transaction of the change they report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from supervisor.domain import core
from supervisor.domain.core.pending import reason_code
from supervisor.domain.defaults import MAX_EXCLUDED_NODES
from supervisor.domain.errors import UserError
from supervisor.domain.ports import Clock
from supervisor.domain.spec import RunSpec, StageSpec
from supervisor.domain.types import AttemptState, EventKind, JobInfo, RunState, StageState
from supervisor.notify.queue import enqueue
from supervisor.store import exclusions, settlement
from supervisor.store.models import Attempt, Event, Run, Stage
from supervisor.store.readmodels import attempt_facts, attempts_of

log = structlog.get_logger("supervisor")

LIVE = (AttemptState.SUBMITTING, AttemptState.QUEUED, AttemptState.RUNNING)
POLLED = (AttemptState.QUEUED, AttemptState.RUNNING)
ACTIVE = (RunState.PENDING, RunState.RUNNING, RunState.PAUSED)


@dataclass(frozen=True)
class Effect:
    """A side effect to carry out once the transaction that decided it has committed."""

    kind: str  # "submit" | "cancel"
    attempt_id: int


def tag_for(run: Run, stage: str, number: int) -> str:
    """The job name of one attempt: unique, and findable again after a crash."""
    return f"{run.name}.{stage}.{number}.{run.uid}"


def _values(states: Sequence[RunState | AttemptState]) -> list[str]:
    return [s.value for s in states]


class Repository:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock) -> None:
        self.sessions = sessions
        self.clock = clock

    # ---- reads -----------------------------------------------------------------------------------

    @staticmethod
    def run_named(session: Session, name: str) -> Run:
        run = session.scalar(select(Run).where(Run.name == name).options(selectinload(Run.stages)))
        if run is None:
            raise UserError(f"no run named {name!r} (see `supervisor status`)")
        return run

    def active_run_ids(self) -> list[int]:
        with self.sessions() as session:
            return list(session.scalars(select(Run.id).where(Run.state.in_(_values(ACTIVE))).order_by(Run.id)))

    def live_workdirs(self) -> set[Path]:
        with self.sessions() as session:
            return {Path(w) for w in session.scalars(select(Run.workdir).where(Run.state.in_(_values(ACTIVE))))}

    def submitting(self) -> list[tuple[int, str, str]]:
        """(attempt id, tag, backend) of attempts whose submission may not have happened."""
        with self.sessions() as session:
            return [(i, t, b) for i, t, b in session.execute(
                select(Attempt.id, Attempt.tag, Attempt.backend)
                .where(Attempt.state == AttemptState.SUBMITTING.value))]

    def polled_jobs(self) -> dict[str, list[str]]:
        """Job ids to ask each backend about: every queued or running attempt's."""
        wanted: dict[str, list[str]] = {}
        with self.sessions() as session:
            for backend, job_id in session.execute(
                    select(Attempt.backend, Attempt.job_id)
                    .where(Attempt.state.in_(_values(POLLED)), Attempt.job_id.is_not(None))):
                if job_id is not None:
                    wanted.setdefault(backend, []).append(job_id)
        return wanted

    def view(self, session: Session, run: Run, limits: Mapping[str, int] | None = None,
             excluded: tuple[str, ...] | None = None) -> core.RunView:
        """What the core decides on; ``excluded``: the run's exclusions in force, when read already.

        The attempts are ``stage.attempts``: loaded for many runs at once when the caller asked for them
        (supervisor.app.observe.Observer.snapshots), else one query per stage."""
        # The numbers the core needs are read from the stored spec as it is, not re-validated: a spec that a
        # later version refuses (a run registered before a check existed) can still be seen and cancelled.
        stage_specs = {s.get("name"): s for s in run.spec.get("stages", []) if isinstance(s, dict)}
        stages = []
        for stage in run.stages:
            s = _stage_numbers(stage_specs.get(stage.name, {}))
            attempts = tuple(attempt_view(a) for a in stage.attempts)
            stages.append(core.StageView(
                name=stage.name, state=StageState(stage.state), budget_start=stage.budget_start, attempts=attempts,
                **s,
            ))
        cap = run.spec.get("max_excluded_nodes", RunSpec.model_fields["max_excluded_nodes"].default)
        if excluded is None:
            excluded = exclusions.in_force(session, run.id, self.clock.now())
        return core.RunView(name=run.name, state=RunState(run.state), stages=tuple(stages),
                            resubmit_limits=dict(limits or {}), excluded_nodes=excluded,
                            max_excluded_nodes=cap if isinstance(cap, int) else MAX_EXCLUDED_NODES)

    # ---- writes ----------------------------------------------------------------------------------

    def event(
        self, session: Session, run: Run, kind: EventKind, message: str, stage: str | None = None,
        attempt: int | None = None, data: Mapping[str, Any] | None = None,
    ) -> Event:
        details = dict(data or {})
        if stage is not None and attempt is not None:
            row = session.scalar(select(Attempt).join(Stage).where(
                Stage.run_id == run.id, Stage.name == stage, Attempt.number == attempt))
            if row is not None:
                details = {**attempt_facts(row, self.clock.now()), **details}
        if "text" in details and "log_line" not in details:
            details["log_line"] = details["text"]
        event = Event(run_id=run.id, at=self.clock.now(), kind=kind.value, stage=stage, attempt=attempt,
                      message=message, data=details)
        session.add(event)
        session.flush()
        # Same transaction as the state change: a notification is never lost nor sent for a rolled-back change.
        enqueue(session, run, event, run.spec.get("notify") or [])
        log.info(kind.value, run=run.name, stage=stage, attempt=attempt, message=message)
        return event

    def apply(
        self, run_id: int, decided_in: RunState, actions: Sequence[core.Action],
        tails: Mapping[int, Mapping[str, Any]] | None = None, backend_of: Mapping[str, str] | None = None,
    ) -> list[Effect] | None:
        """Record every state change in one transaction; return the side effects to carry out, in order.

        Conditional on the run still being in ``decided_in``: when a `cancel`, `pause` or `retry` moved it
        meanwhile, nothing is written (log offsets included) and None is returned.
        ``backend_of`` maps a stage to the backend its new attempts use.
        """
        effects: list[Effect] = []
        now = self.clock.now()
        with self.sessions.begin() as session:
            # First statement of the transaction: takes SQLite's write lock, so the check holds to the commit.
            moved = session.execute(
                update(Run).where(Run.id == run_id, Run.state == decided_in.value).values(updated_at=now))
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                log.info("run_changed_meanwhile", run_id=run_id, decided_in=decided_in.value)
                return None
            run = session.get(Run, run_id)
            assert run is not None
            stages = {s.name: s for s in run.stages}
            attempts = {(s.name, a.number): a for s in run.stages for a in attempts_of(session, s)}
            for attempt_id, tail in (tails or {}).items():
                session.execute(update(Attempt).where(Attempt.id == attempt_id).values(**tail))
            for action in actions:
                effect = self._record(session, run, stages, attempts, action, now, backend_of or {})
                if effect is not None:
                    effects.append(effect)
            for attempt in attempts.values():
                if not settlement.settled(attempt):
                    session.flush()  # the STALLED event of this same decision counts
                    settlement.settle(session, attempt)
        return effects

    def _record(
        self, session: Session, run: Run, stages: Mapping[str, Stage], attempts: Mapping[tuple[str, int], Attempt],
        action: core.Action, now: datetime, backend_of: Mapping[str, str],
    ) -> Effect | None:
        match action:
            case core.UpdateAttempt(stage=stage, number=number, changes=changes):
                _set_columns(attempts[(stage, number)], changes, now)
            case core.SetStage(stage=stage, state=state):
                stages[stage].state, stages[stage].updated_at = state.value, now
            case core.ResetBudget(stage=stage, start=start):
                stages[stage].budget_start, stages[stage].updated_at = start, now
            case core.SetRun(state=state, reason=reason):
                run.state, run.reason, run.updated_at = state.value, reason, now
            case core.Emit(kind=kind, message=message, stage=stage, attempt=number, data=data):
                self.event(session, run, kind, message, stage, number, data)
            case core.ExcludeNode():
                exclusions.record(self, session, run, action, now)
            case core.Cancel(stage=stage, number=number, outcome=outcome, cause=cause):
                attempt = attempts[(stage, number)]
                attempt.cancel_requested, attempt.outcome, attempt.cause = True, outcome.value, cause
                return Effect("cancel", attempt.id)
            case core.Submit(stage=stage, number=number):
                attempt = self._new_attempt(session, run, stages[stage], number, backend_of.get(stage, run.backend))
                return Effect("submit", attempt.id)
        return None

    def _new_attempt(self, session: Session, run: Run, stage: Stage, number: int, backend: str) -> Attempt:
        log_pattern = str(Path(run.workdir) / "logs" / f"{stage.name}-{number}-%j.log")
        attempt = Attempt(stage_id=stage.id, number=number, tag=tag_for(run, stage.name, number),
                          state=AttemptState.SUBMITTING.value, backend=backend, log_path=log_pattern,
                          submitted_at=self.clock.now())
        session.add(attempt)
        session.flush()
        return attempt

    def adopt(self, attempt_id: int, info: JobInfo) -> None:
        """A job found on the cluster after a crash between its submission and the record of it."""
        with self.sessions.begin() as session:
            attempt = session.get(Attempt, attempt_id)
            if attempt is None or attempt.state != AttemptState.SUBMITTING.value:
                return
            attempt.job_id = info.job_id
            attempt.state = AttemptState.QUEUED.value
            attempt.log_path = (attempt.log_path or "").replace("%j", info.job_id)
            log.info("adopted", tag=attempt.tag, job_id=info.job_id)
            # The crash came between submission and its record: the event was never written.
            self.event(session, attempt.stage.run, EventKind.SUBMITTED,
                       f"{attempt.stage.name} attempt {attempt.number}: job {info.job_id} ({attempt.backend}),"
                       " found on the cluster after a restart",
                       attempt.stage.name, attempt.number, {"job_id": info.job_id, "tag": attempt.tag, "adopted": True})

    def prepared(self, attempt_id: int, message: str, notes: Mapping[str, Any], saved_mark: str | None) -> None:
        with self.sessions.begin() as session:
            attempt = session.get(Attempt, attempt_id)
            assert attempt is not None
            attempt.saved_mark = saved_mark
            attempt.start_mark = saved_mark
            if notes:
                self.event(session, attempt.stage.run, EventKind.PREPARED, message, attempt.stage.name,
                           attempt.number, notes)

    def submitted(self, attempt_id: int, job_id: str, log_path: str) -> bool:
        """Record the job id of a submission; True when the attempt was cancelled meanwhile."""
        with self.sessions.begin() as session:
            done = session.execute(
                update(Attempt)
                .where(Attempt.id == attempt_id, Attempt.state == AttemptState.SUBMITTING.value)
                .values(job_id=job_id, state=AttemptState.QUEUED.value, log_path=log_path))
            attempt = session.get(Attempt, attempt_id)
            assert attempt is not None
            if done.rowcount == 1:  # type: ignore[attr-defined]
                self.event(session, attempt.stage.run, EventKind.SUBMITTED,
                           f"{attempt.stage.name} attempt {attempt.number}: job {job_id} ({attempt.backend})",
                           attempt.stage.name, attempt.number, {"job_id": job_id, "tag": attempt.tag})
            return attempt.cancel_requested

    def refused(self, attempt_id: int, message: str, *, permanent: bool) -> None:
        """The attempt could not be submitted; ``permanent`` (bad config, sbatch refused) fails the stage."""
        with self.sessions.begin() as session:
            attempt = session.get(Attempt, attempt_id)
            assert attempt is not None
            attempt.state = AttemptState.FAILED.value
            attempt.outcome = core.Outcome.FAIL.value if permanent else None
            attempt.cause = "submit_rejected"
            attempt.reason = message[:500]
            attempt.ended_at = self.clock.now()
            self.event(session, attempt.stage.run, EventKind.CRASHED, message, attempt.stage.name, attempt.number)

    def cancelled(self, attempt_id: int) -> None:
        with self.sessions.begin() as session:
            session.execute(update(Attempt).where(Attempt.id == attempt_id, Attempt.state.in_(_values(LIVE)))
                            .values(state=AttemptState.CANCELLED.value, ended_at=self.clock.now(),
                                    settled_used_s=None, settled_wasted_s=None))

    def needs_attention(self, run_id: int, reason: str) -> bool:
        """Take a run out of supervision until a person acts; False if it was no longer active."""
        with self.sessions.begin() as session:
            moved = session.execute(
                update(Run).where(Run.id == run_id, Run.state.in_(_values(ACTIVE)))
                .values(state=RunState.NEEDS_ATTENTION.value, reason=reason[:500], updated_at=self.clock.now()))
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                return False
            run = session.get(Run, run_id)
            assert run is not None
            self.event(session, run, EventKind.NEEDS_ATTENTION, f"needs attention: {reason}", data={"reason": reason})
            return True


_STAGE_NUMBERS = ("max_attempts", "stall_timeout", "startup_timeout", "retry_backoff", "pending_grace",
                  "finish_grace")


def _stage_numbers(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's limits from its stored spec, with the spec's defaults for keys an older version did not store."""
    fields = StageSpec.model_fields
    return {name: raw.get(name, fields[name].default) for name in _STAGE_NUMBERS}


def attempt_view(a: Attempt) -> core.AttemptView:
    return core.AttemptView(
        number=a.number, state=AttemptState(a.state), job_id=a.job_id, cancel_requested=a.cancel_requested,
        outcome=core.Outcome(a.outcome) if a.outcome else None, cause=a.cause, work_done=a.work_done,
        submitted_at=a.submitted_at, started_at=a.started_at, ended_at=a.ended_at,
        last_output_at=a.last_output_at, first_step_at=a.first_step_at, progress_total=a.progress_total, nodes=a.nodes,
        saved_mark=a.saved_mark,
        reason=a.reason, reason_since=a.reason_since, start_mark=a.start_mark,
    )


def _set_columns(attempt: Attempt, changes: core.AttemptChanges, now: datetime) -> None:
    values = changes.items()
    reason = values.get("reason")
    # A pending reason's clock starts when its code first shows up: "ReqNodeNotAvail, UnavailableNodes:..."
    # naming other nodes is the same reason.
    if isinstance(reason, str) and (attempt.reason_since is None or reason_code(reason) != reason_code(attempt.reason)):
        attempt.reason_since = now
    for column, value in values.items():
        setattr(attempt, column, value.value if isinstance(value, AttemptState | core.Outcome) else value)
    if values:
        settlement.unsettle(attempt)  # settled again at the end of the transaction, from the new values

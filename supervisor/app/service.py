"""The supervisor: the database, the clusters and the logs around the pure core in :mod:`supervisor.core`.

One :meth:`Supervisor.tick` = reconcile interrupted submissions -> poll the clusters (one batched query
per backend) -> read the logs of live attempts -> decide -> act -> flush the notification outbox.
Every state change is conditional on the state it was decided from, and the intent of a side effect
(an attempt row in SUBMITTING, ``cancel_requested``) is committed before the side effect happens.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from supervisor.backends import make_cluster
from supervisor.domain import core
from supervisor.domain.errors import AxolotlConfigError, ClusterError, StageError, UserError
from supervisor.domain.ports import Clock, Cluster, SystemClock
from supervisor.domain.spec import RunSpec, StageSpec, load_spec
from supervisor.domain.types import (
    AttemptState,
    JobInfo,
    JobPhase,
    RunState,
    SignatureAction,
    StageState,
    SubmitRequest,
)
from supervisor.logs.follow import LogWatcher
from supervisor.notify import RunChannels, deliver, enqueue, send_test, undelivered
from supervisor.stages import pipeline
from supervisor.stages.checkpoints import list_checkpoints
from supervisor.stages.remedies import clear_extension_locks
from supervisor.store.db import open_database
from supervisor.store.models import Attempt, Event, ExcludedNode, Run, Stage

log = structlog.get_logger("supervisor")

# Enough of a log's end for the kinds' success lines (axolotl's and the transfer's).
LOG_TAIL_BYTES = 64 * 1024
LIVE = (AttemptState.SUBMITTING, AttemptState.QUEUED, AttemptState.RUNNING)
ACTIVE = (RunState.PENDING, RunState.RUNNING, RunState.PAUSED)
EXCLUDE_FOR = timedelta(hours=24)
# A job missing from both squeue and scontrol for this many successful polls in a row is gone for good.
VANISHED_AFTER = 3


@dataclass(frozen=True)
class TickReport:
    runs: int
    actions: int


def tag_for(run: Run, stage: str, number: int) -> str:
    return f"{run.name}.{stage}.{number}.{run.uid}"


class Supervisor:
    def __init__(
        self,
        home: Path,
        *,
        clock: Clock | None = None,
        clusters: Mapping[str, Cluster] | None = None,
        sessions: sessionmaker[Session] | None = None,
    ) -> None:
        self.home = home
        self.clock: Clock = clock or SystemClock()
        self.sessions = sessions or open_database(home)
        self._clusters: dict[str, Cluster] = dict(clusters or {})
        self._missing: dict[str, int] = {}
        self._poll_failures: dict[str, int] = {}
        self._poll_not_before: dict[str, datetime] = {}
        self.logs = LogWatcher()
        self.channels = RunChannels(self.sessions)

    # ---- plumbing --------------------------------------------------------------------------------

    def cluster(self, kind: str) -> Cluster:
        if kind not in self._clusters:
            self._clusters[kind] = make_cluster(kind, self.home)
        return self._clusters[kind]

    def now(self) -> datetime:
        return self.clock.now()

    def _run(self, session: Session, name: str) -> Run:
        run = session.scalar(select(Run).where(Run.name == name).options(selectinload(Run.stages)))
        if run is None:
            raise UserError(f"no run named {name!r} (see `supervisor status`)")
        return run

    def _event(
        self,
        session: Session,
        run: Run,
        kind: str,
        message: str,
        stage: str | None = None,
        attempt: int | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Event:
        details = dict(data or {})
        if stage is not None and attempt is not None:
            details = {**self._attempt_facts(session, run, stage, attempt), **details}
        if "text" in details and "log_line" not in details:
            details["log_line"] = details["text"]
        event = Event(run_id=run.id, at=self.now(), kind=kind, stage=stage, attempt=attempt,
                      message=message, data=details)
        session.add(event)
        session.flush()
        # Same transaction as the state change: a notification is never lost nor sent for a rolled-back change.
        enqueue(session, run, event, run.spec.get("notify") or [])
        log.info(kind, run=run.name, stage=stage, attempt=attempt, message=message)
        return event

    def _attempt_facts(self, session: Session, run: Run, stage: str, number: int) -> dict[str, Any]:
        """What a notification about this attempt can say: job id, progress, ETA, node-hours spent."""
        row = session.scalar(
            select(Attempt).join(Stage).where(Stage.run_id == run.id, Stage.name == stage, Attempt.number == number))
        if row is None:
            return {}
        facts: dict[str, Any] = {}
        if row.job_id:
            facts["job_id"] = row.job_id
        if row.started_at is not None:
            elapsed = ((row.ended_at or self.now()) - row.started_at).total_seconds()
            facts["node_hours"] = round(count_hosts(row.nodes or "") * max(elapsed, 0.0) / 3600, 2)
            if row.progress_step and row.progress_total and row.progress_step < row.progress_total:
                facts["eta_s"] = round(elapsed * (row.progress_total - row.progress_step) / row.progress_step)
        if row.progress_step is not None:
            facts["progress_step"] = row.progress_step
            facts["progress_total"] = row.progress_total
        return facts

    def _set_run_state(self, session: Session, run: Run, old: Iterable[RunState], new: RunState) -> bool:
        result = session.execute(
            update(Run)
            .where(Run.id == run.id, Run.state.in_([s.value for s in old]))
            .values(state=new.value, updated_at=self.now())
            .execution_options(synchronize_session="fetch")
        )
        return result.rowcount == 1  # type: ignore[attr-defined, no-any-return]

    @staticmethod
    def context(run: Run, stage: str, kind: str, number: int) -> pipeline.StageContext:
        spec = RunSpec.model_validate(run.spec)
        options = next(s for s in spec.stages if s.name == stage).model_dump(mode="json", exclude_none=True)
        return pipeline.StageContext(
            run=run.name, stage=stage, kind=kind, attempt=number, workdir=Path(run.workdir), options=options,
            axolotl_config=spec.axolotl_config, venv=spec.venv, merged_dir=spec.merged_dir,
            base_dir=Path(run.spec_path).parent,
        )

    @staticmethod
    def stage_spec(run: Run, stage: str) -> StageSpec:
        spec = RunSpec.model_validate(run.spec)
        return next(s for s in spec.stages if s.name == stage)

    # ---- commands (CLI) --------------------------------------------------------------------------

    def register(self, spec_path: Path, backend_default: str) -> str:
        spec = load_spec(spec_path)
        now = self.now()
        with self.sessions.begin() as session:
            if session.scalar(select(Run.id).where(Run.name == spec.name)) is not None:
                raise UserError(f"{spec_path}: name: a run named {spec.name!r} already exists")
            run = Run(name=spec.name, uid=secrets.token_hex(4), state=RunState.PENDING.value,
                      backend=spec.backend or backend_default, spec_path=str(Path(spec_path).resolve()),
                      spec=spec.model_dump(mode="json"), workdir=str(spec.workdir),
                      created_at=now, updated_at=now)
            for position, stage in enumerate(spec.stages):
                run.stages.append(Stage(position=position, name=stage.name, kind=stage.kind,
                                        state=StageState.PENDING.value, budget_start=1, updated_at=now))
            session.add(run)
            session.flush()
            self._event(session, run, "registered", f"run {spec.name} registered from {spec_path}")
        return spec.name

    def pause(self, name: str) -> None:
        with self.sessions.begin() as session:
            run = self._run(session, name)
            if not self._set_run_state(session, run, (RunState.PENDING, RunState.RUNNING), RunState.PAUSED):
                raise UserError(f"run {name!r} is {run.state}: only a pending or running run can be paused")
            self._event(session, run, "paused", "paused: no new submissions until `supervisor resume`")

    def resume(self, name: str) -> None:
        with self.sessions.begin() as session:
            run = self._run(session, name)
            started = any(s.state != StageState.PENDING.value for s in run.stages)
            target = RunState.RUNNING if started else RunState.PENDING
            if not self._set_run_state(session, run, (RunState.PAUSED,), target):
                raise UserError(f"run {name!r} is {run.state}: only a paused run can be resumed")
            self._event(session, run, "resumed", "resumed")

    def retry(self, name: str) -> None:
        """Run the failed (or cancelled) stage again with a fresh attempt budget."""
        with self.sessions.begin() as session:
            run = self._run(session, name)
            stage = next((s for s in run.stages
                          if s.state in (StageState.FAILED.value, StageState.CANCELLED.value)), None)
            if stage is None or run.state not in (RunState.FAILED.value, RunState.CANCELLED.value):
                raise UserError(f"run {name!r} is {run.state}: only a failed or cancelled run can be retried")
            if not self._set_run_state(session, run, (RunState.FAILED, RunState.CANCELLED), RunState.RUNNING):
                raise UserError(f"run {name!r} changed state meanwhile; try again")
            last = max((a.number for a in self._attempts(session, stage)), default=0)
            stage.budget_start = last + 1
            stage.state = StageState.RUNNING.value
            stage.updated_at = self.now()
            for later in run.stages:
                if later.position > stage.position and later.state == StageState.CANCELLED.value:
                    later.state = StageState.PENDING.value
            self._event(session, run, "retried", f"stage {stage.name} retried with a fresh budget", stage.name)

    def cancel_run(self, name: str) -> list[str]:
        """Cancel a run and its live jobs. Returns the job ids cancelled."""
        with self.sessions.begin() as session:
            run = self._run(session, name)
            if not self._set_run_state(session, run, ACTIVE, RunState.CANCELLED):
                raise UserError(f"run {name!r} is already {run.state}")
            live: list[tuple[str, str | None, int]] = []
            for stage in run.stages:
                for attempt in self._attempts(session, stage):
                    if attempt.state in LIVE:
                        attempt.cancel_requested = True
                        attempt.outcome = core.Outcome.CANCEL.value
                        attempt.cause = "cancelled"
                        live.append((attempt.backend, attempt.job_id, attempt.id))
                if stage.state in (StageState.PENDING.value, StageState.RUNNING.value):
                    stage.state = StageState.CANCELLED.value
            self._event(session, run, "cancelled", "run cancelled by `supervisor cancel`")
        cancelled = []
        for backend, job_id, attempt_id in live:
            if job_id is None:
                continue  # never reached the cluster; reconciliation cancels it if it did
            self.cluster(backend).cancel(job_id)
            cancelled.append(job_id)
            with self.sessions.begin() as session:
                session.execute(update(Attempt).where(Attempt.id == attempt_id, Attempt.state.in_(LIVE))
                                .values(state=AttemptState.CANCELLED.value, ended_at=self.now()))
        return cancelled

    # ---- queries (CLI) ---------------------------------------------------------------------------

    @staticmethod
    def _attempts(session: Session, stage: Stage) -> list[Attempt]:
        return list(session.scalars(select(Attempt).where(Attempt.stage_id == stage.id).order_by(Attempt.number)))

    def status(self) -> list[dict[str, Any]]:
        rows = []
        with self.sessions() as session:
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
                })
        return rows

    def show(self, name: str) -> dict[str, Any]:
        with self.sessions() as session:
            run = self._run(session, name)
            stages = []
            for stage in run.stages:
                stages.append({
                    "name": stage.name,
                    "kind": stage.kind,
                    "state": stage.state,
                    "attempts": [_attempt_json(a) for a in self._attempts(session, stage)],
                })
            events = [
                {"at": e.at.isoformat(), "kind": e.kind, "stage": e.stage, "attempt": e.attempt,
                 "message": e.message}
                for e in session.scalars(select(Event).where(Event.run_id == run.id).order_by(Event.id))
            ]
            excluded = [
                {"node": x.node, "reason": x.reason, "until": x.until.isoformat()}
                for x in session.scalars(select(ExcludedNode).where(ExcludedNode.run_id == run.id))
            ]
            return {"name": run.name, "state": run.state, "backend": run.backend, "workdir": run.workdir,
                    "created_at": run.created_at.isoformat(), "updated_at": run.updated_at.isoformat(),
                    "stages": stages, "events": events, "excluded_nodes": excluded,
                    "notifications": undelivered(session, run.id)}

    # ---- the tick --------------------------------------------------------------------------------

    def tick(self, *, poll: bool = True) -> TickReport:
        """One pass over every active run. ``poll=False`` (a log changed) reads logs but asks no cluster."""
        infos: dict[str, dict[str, JobInfo] | None] = {}
        if poll:
            self.reconcile_submitting()
            infos = self.poll()
        count = 0
        with self.sessions() as session:
            run_ids = list(session.scalars(select(Run.id).where(Run.state.in_([s.value for s in ACTIVE]))))
        for run_id in run_ids:
            count += self.step_run(run_id, infos)
        return TickReport(runs=len(run_ids), actions=count)

    def flush_outbox(self) -> None:
        try:
            deliver(self.sessions, self.channels, self.clock)
        except Exception:
            # Notifications must never stop the supervision itself; the outbox keeps what was not sent.
            log.exception("outbox_flush_failed")

    def run_signatures(self, name: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            return list(self._run(session, name).spec.get("signatures") or [])

    def notify_test(self, name: str) -> dict[str, str | None]:
        with self.sessions() as session:
            run = self._run(session, name)
            run_id = run.id
        return send_test(name, self.channels(run_id), self.clock)

    def live_log_dirs(self) -> set[Path]:
        with self.sessions() as session:
            dirs = {Path(w) / "logs" for w in session.scalars(
                select(Run.workdir).where(Run.state.in_([s.value for s in ACTIVE])))}
        return dirs

    def reconcile_submitting(self) -> None:
        """Attempts left in SUBMITTING by a crash: adopt the job if it exists, else submit it now."""
        with self.sessions() as session:
            rows = list(session.execute(
                select(Attempt.id, Attempt.tag, Attempt.backend)
                .where(Attempt.state == AttemptState.SUBMITTING.value)))
        by_backend: dict[str, list[tuple[int, str]]] = {}
        for attempt_id, tag, backend in rows:
            by_backend.setdefault(backend, []).append((attempt_id, tag))
        now = self.now()
        for backend, items in by_backend.items():
            if self._backing_off(backend, now):
                continue  # the cluster is not answering: the lookup waits out the same backoff as polls
            # Look for launchers before asking the cluster: one that exits during the query may have
            # created its job too late for the answer, and must not be mistaken for one that never did.
            launching = {tag for _, tag in items if _process_with_tag_alive(tag)}
            try:
                found = self.cluster(backend).find_by_tag([tag for _, tag in items])
            except ClusterError as exc:
                n = self._unreachable(backend, now)
                log.warning("reconcile_unknown", backend=backend, error=str(exc), failures=n)
                continue
            self._reachable(backend)
            for attempt_id, tag in items:
                info = found.get(tag)
                if info is not None:
                    self._adopt(attempt_id, info)
                elif tag not in launching:
                    # Not in the queue and no submitting process left: sbatch never ran (or failed).
                    self._submit_attempt(attempt_id)

    def _backing_off(self, backend: str, now: datetime) -> bool:
        return self._poll_not_before.get(backend, now) > now

    def _reachable(self, backend: str) -> None:
        self._poll_failures.pop(backend, None)
        self._poll_not_before.pop(backend, None)

    def _unreachable(self, backend: str, now: datetime) -> int:
        """Count one more failed query of ``backend`` and push its next one back (exponentially)."""
        n = self._poll_failures.get(backend, 0) + 1
        self._poll_failures[backend] = n
        self._poll_not_before[backend] = now + timedelta(seconds=min(5 * 2 ** (n - 1), 300))
        return n

    def _adopt(self, attempt_id: int, info: JobInfo) -> None:
        with self.sessions.begin() as session:
            attempt = session.get(Attempt, attempt_id)
            if attempt is None or attempt.state != AttemptState.SUBMITTING.value:
                return
            attempt.job_id = info.job_id
            attempt.state = AttemptState.QUEUED.value
            attempt.log_path = (attempt.log_path or "").replace("%j", info.job_id)
            log.info("adopted", tag=attempt.tag, job_id=info.job_id)
            # The crash came between submission and its record: the event was never written.
            self._event(session, attempt.stage.run, "submitted",
                        f"{attempt.stage.name} attempt {attempt.number}: job {info.job_id} ({attempt.backend}),"
                        " found on the cluster after a restart",
                        attempt.stage.name, attempt.number,
                        {"job_id": info.job_id, "tag": attempt.tag, "adopted": True})

    def poll(self) -> dict[str, dict[str, JobInfo] | None]:
        """One batched query per backend for all live jobs. None for a backend that did not answer."""
        now = self.now()
        with self.sessions() as session:
            rows = list(session.execute(
                select(Attempt.backend, Attempt.job_id)
                .where(Attempt.state.in_([AttemptState.QUEUED.value, AttemptState.RUNNING.value]),
                       Attempt.job_id.is_not(None))))
        wanted: dict[str, list[str]] = {}
        for backend, job_id in rows:
            if job_id is not None:
                wanted.setdefault(backend, []).append(job_id)
        result: dict[str, dict[str, JobInfo] | None] = {}
        for backend, ids in wanted.items():
            if self._backing_off(backend, now):
                result[backend] = None
                continue
            try:
                infos = self.cluster(backend).poll(ids)
            except ClusterError as exc:
                # Unknown, not failed. Back off so a struggling slurmctld is not hammered.
                n = self._unreachable(backend, now)
                log.warning("poll_failed", backend=backend, error=str(exc), failures=n)
                result[backend] = None
                continue
            self._reachable(backend)
            for job_id in ids:
                if job_id in infos:
                    self._missing.pop(job_id, None)
                else:
                    self._missing[job_id] = self._missing.get(job_id, 0) + 1
                    if self._missing[job_id] >= VANISHED_AFTER:
                        infos[job_id] = JobInfo(job_id=job_id, name="", phase=JobPhase.FAILED,
                                                raw_state="VANISHED",
                                                reason="job left the queue with no final state on record")
            result[backend] = infos
        return result

    def _poll_one(self, backend: str, job_id: str | None) -> JobInfo | None:
        if job_id is None:
            return None
        try:
            return self.cluster(backend).poll([job_id]).get(job_id)
        except ClusterError as exc:
            log.warning("poll_failed", backend=backend, error=str(exc), job_id=job_id)
            return None

    def step_run(self, run_id: int, infos: Mapping[str, Mapping[str, JobInfo] | None]) -> int:
        now = self.now()
        with self.sessions() as session:
            run = session.get(Run, run_id)
            if run is None:
                return 0
            view = _view(session, run, self.logs.resubmit_limits(run))
            live = [a for s in run.stages for a in self._attempts(session, s)
                    if a.state in (AttemptState.QUEUED.value, AttemptState.RUNNING.value)]
            observations: dict[tuple[str, int], core.Observation] = {}
            tails: dict[int, dict[str, Any]] = {}
            for attempt in live:
                backend_infos = infos.get(attempt.backend)
                job = backend_infos.get(attempt.job_id or "") if backend_infos is not None else None
                seen = self.logs.read(run, attempt)
                if (job is None and attempt.backend not in infos and not attempt.nodes
                        and any(m.action is SignatureAction.RESUBMIT_EXCLUDE_NODE and m.node is None
                                for m in seen.matches)):
                    # A log wake-up saw a fault on "the job's nodes" before any poll learnt them.
                    job = self._poll_one(attempt.backend, attempt.job_id)
                if seen.tail:
                    tails[attempt.id] = seen.tail
                stage = next(s for s in run.stages if s.id == attempt.stage_id)
                finished, succeeded, saved_at = self._kind_checks(run, stage, attempt, job)
                # A checkpoint written since the last sign of life counts as one: saving can be silent.
                last_sign = attempt.last_output_at or attempt.started_at
                saving = saved_at is not None and (last_sign is None or saved_at > last_sign)
                hint = seen.hang_hint if seen.tail else attempt.hang_hint
                observations[(stage.name, attempt.number)] = core.Observation(
                    job=job, matches=seen.matches, progress=seen.progress, new_output=seen.new_output or saving,
                    work_finished=finished, succeeded=succeeded,
                    hang_hint=str(hint["signature"]) if hint else None)
        actions = core.observe(view, observations, now)
        if not self.apply(run_id, view.state, actions, tails):
            return 0
        total = len(actions)
        for _ in range(len(view.stages) + 2):
            with self.sessions() as session:
                run = session.get(Run, run_id)
                assert run is not None
                view = _view(session, run)
            actions = core.advance(view, now)
            if not actions or not self.apply(run_id, view.state, actions, {}):
                break
            total += len(actions)
        return total

    def _kind_checks(
        self, run: Run, stage: Stage, attempt: Attempt, job: JobInfo | None
    ) -> tuple[bool, bool | None, datetime | None]:
        """The pipeline kinds' file checks: is training's final checkpoint complete, did the stage succeed,
        and when was the newest checkpoint written."""
        if stage.kind == "script":
            return False, None, None
        ctx = self.context(run, stage.name, stage.kind, attempt.number)
        saved_at = None
        try:
            finished = stage.kind == "train" and pipeline.training_finished(ctx)
            if stage.kind == "train":
                found = list_checkpoints(pipeline.load_axolotl_config(ctx).output_dir)
                if found:
                    saved_at = datetime.fromtimestamp(found[-1].path.stat().st_mtime, UTC)
            succeeded = None
            if job is not None and job.phase.finished:
                succeeded = pipeline.check_success(ctx, job.exit_code, _log_tail(attempt.log_path))
        except (StageError, AxolotlConfigError, OSError) as exc:
            log.warning("kind_check_failed", run=run.name, stage=stage.name, error=str(exc))
            return False, None, None
        return finished, succeeded, saved_at

    # ---- acting ----------------------------------------------------------------------------------

    def apply(
        self,
        run_id: int,
        decided_in: RunState,
        actions: Sequence[core.Action],
        tails: Mapping[int, Mapping[str, Any]],
    ) -> bool:
        """Record every state change in one transaction, then carry out the side effects in order.

        Conditional on the run still being in ``decided_in``: when a `cancel`, `pause` or `retry` moved it
        meanwhile, nothing is written (log offsets included) and the next pass decides afresh.
        """
        if not actions and not tails:
            return True
        effects: list[tuple[str, int]] = []
        with self.sessions.begin() as session:
            # First statement of the transaction: takes SQLite's write lock, so the check holds to the commit.
            moved = session.execute(
                update(Run).where(Run.id == run_id, Run.state == decided_in.value).values(updated_at=self.now())
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                log.info("run_changed_meanwhile", run_id=run_id, decided_in=decided_in.value)
                return False
            run = session.get(Run, run_id)
            assert run is not None
            attempts = {(a.stage.name, a.number): a for s in run.stages for a in self._attempts(session, s)}
            for attempt_id, tail in tails.items():
                session.execute(update(Attempt).where(Attempt.id == attempt_id).values(**tail))
            for action in actions:
                if isinstance(action, core.UpdateAttempt):
                    attempt = attempts[(action.stage, action.number)]
                    for key, value in action.changes.items():
                        setattr(attempt, key, value.value if isinstance(value, AttemptState | core.Outcome)
                                else value)
                elif isinstance(action, core.SetStage):
                    stage = next(s for s in run.stages if s.name == action.stage)
                    stage.state = action.state.value
                    stage.updated_at = self.now()
                elif isinstance(action, core.SetRun):
                    run.state = action.state.value
                    run.updated_at = self.now()
                elif isinstance(action, core.Emit):
                    self._event(session, run, action.kind, action.message, action.stage, action.attempt,
                                action.data)
                elif isinstance(action, core.ExcludeNode):
                    self._exclude(session, run, action)
                elif isinstance(action, core.Cancel):
                    attempt = attempts[(action.stage, action.number)]
                    attempt.cancel_requested = True
                    attempt.outcome = action.outcome.value
                    attempt.cause = action.cause
                    effects.append(("cancel", attempt.id))
                elif isinstance(action, core.Submit):
                    stage = next(s for s in run.stages if s.name == action.stage)
                    attempt = self._new_attempt(session, run, stage, action.number)
                    effects.append(("submit", attempt.id))
        for effect, attempt_id in effects:
            if effect == "cancel":
                self._cancel_attempt(attempt_id)
            else:
                self._submit_attempt(attempt_id)
        return True

    def _exclude(self, session: Session, run: Run, action: core.ExcludeNode) -> None:
        until = self.now() + EXCLUDE_FOR
        row = session.scalar(select(ExcludedNode).where(ExcludedNode.run_id == run.id,
                                                        ExcludedNode.node == action.node))
        if row is None:
            session.add(ExcludedNode(run_id=run.id, node=action.node, reason=action.reason, until=until))
        else:
            row.until, row.reason = until, action.reason
        self._event(session, run, "excluded_node", f"node {action.node} excluded until {until:%Y-%m-%d %H:%M}Z",
                    data={"node": action.node})

    def _new_attempt(self, session: Session, run: Run, stage: Stage, number: int) -> Attempt:
        spec = self.stage_spec(run, stage.name)
        backend = "local" if spec.command is not None or spec.kind == "transfer" else run.backend
        log_pattern = str(Path(run.workdir) / "logs" / f"{stage.name}-{number}-%j.log")
        attempt = Attempt(stage_id=stage.id, number=number, tag=tag_for(run, stage.name, number),
                          state=AttemptState.SUBMITTING.value, backend=backend, log_path=log_pattern,
                          submitted_at=self.now())
        session.add(attempt)
        session.flush()
        return attempt

    def _submit_attempt(self, attempt_id: int) -> None:
        with self.sessions() as session:
            attempt = session.get(Attempt, attempt_id)
            if attempt is None or attempt.state != AttemptState.SUBMITTING.value:
                return
            stage = attempt.stage
            run = stage.run
            backend, tag = attempt.backend, attempt.tag
            try:
                request, notes = self._request(session, run, stage, attempt)
            except (StageError, AxolotlConfigError, OSError) as exc:
                # OSError (writing the rendered job, cleaning prepared data) may pass: let the budget decide.
                # Uncaught, it would fail every tick and leave the attempt SUBMITTING with nobody told.
                permanent = getattr(exc, "permanent", not isinstance(exc, OSError))
                request, notes = None, {"error": str(exc), "permanent": permanent}
        if request is None:
            self._refuse(attempt_id, str(notes["error"]), permanent=bool(notes["permanent"]))
            return
        if notes:
            with self.sessions.begin() as session:
                attempt = session.get(Attempt, attempt_id)
                assert attempt is not None
                self._event(session, attempt.stage.run, "prepared", _describe(notes), attempt.stage.name,
                            attempt.number, notes)
        bound = log.bind(run=run.name, stage=stage.name, attempt=attempt.number)
        Path(request.log_pattern).parent.mkdir(parents=True, exist_ok=True)
        try:
            job_id = self.cluster(backend).submit(request)
        except ClusterError as exc:
            if not exc.permanent:
                # Unknown whether the job exists: stay SUBMITTING; reconciliation looks the tag up.
                bound.warning("submit_unknown", error=str(exc))
                return
            self._refuse(attempt_id, f"submission rejected: {exc}", permanent=True)
            return
        with self.sessions.begin() as session:
            done = session.execute(
                update(Attempt)
                .where(Attempt.id == attempt_id, Attempt.state == AttemptState.SUBMITTING.value)
                .values(job_id=job_id, state=AttemptState.QUEUED.value,
                        log_path=request.log_pattern.replace("%j", job_id))
            )
            attempt = session.get(Attempt, attempt_id)
            assert attempt is not None
            if done.rowcount == 1:  # type: ignore[attr-defined]
                self._event(session, attempt.stage.run, "submitted",
                            f"{attempt.stage.name} attempt {attempt.number}: job {job_id} ({backend})",
                            attempt.stage.name, attempt.number, {"job_id": job_id, "tag": tag})
            cancel_now = attempt.cancel_requested
        bound.info("job_submitted", job_id=job_id)
        if cancel_now:
            self._cancel_attempt(attempt_id)

    def _refuse(self, attempt_id: int, message: str, *, permanent: bool) -> None:
        """The attempt could not be submitted. Permanent (bad config, sbatch refused) fails the stage."""
        with self.sessions.begin() as session:
            attempt = session.get(Attempt, attempt_id)
            assert attempt is not None
            attempt.state = AttemptState.FAILED.value
            attempt.outcome = core.Outcome.FAIL.value if permanent else None
            attempt.cause = "submit_rejected"
            attempt.reason = message[:500]
            attempt.ended_at = self.now()
            self._event(session, attempt.stage.run, "crashed", message, attempt.stage.name, attempt.number)

    def _request(
        self, session: Session, run: Run, stage: Stage, attempt: Attempt
    ) -> tuple[SubmitRequest, dict[str, Any]]:
        spec = self.stage_spec(run, stage.name)
        script, command = spec.script, tuple(spec.command) if spec.command else None
        sbatch_args, extra_env = tuple(spec.sbatch_args), dict(spec.env)
        notes: dict[str, Any] = {}
        if stage.kind != "script":
            sub = pipeline.prepare_submission(self.context(run, stage.name, stage.kind, attempt.number))
            script, command = sub.script, sub.command
            sbatch_args += sub.sbatch_args
            extra_env = {**sub.env, **extra_env}
            if sub.resume_from is not None:
                notes["resume_from"] = str(sub.resume_from)
            if sub.moved_aside:
                notes["moved_aside"] = [str(p) for p in sub.moved_aside]
            if sub.cleaned:
                notes["cleaned"] = [str(p) for p in sub.cleaned]
        now = self.now()
        excluded = tuple(sorted(session.scalars(
            select(ExcludedNode.node).where(ExcludedNode.run_id == run.id, ExcludedNode.until > now))))
        env = {"SUPERVISOR_RUN": run.name, "SUPERVISOR_STAGE": stage.name,
               "SUPERVISOR_ATTEMPT": str(attempt.number), **extra_env}
        workdir = Path(run.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        request = SubmitRequest(
            tag=attempt.tag, workdir=workdir, log_pattern=attempt.log_path or "", script=script, command=command,
            sbatch_args=sbatch_args, exclude=excluded if attempt.backend != "local" else (), env=env,
        )
        return request, notes

    def _cancel_attempt(self, attempt_id: int) -> None:
        with self.sessions() as session:
            attempt = session.get(Attempt, attempt_id)
            if attempt is None or attempt.job_id is None or attempt.state not in LIVE:
                return
            backend, job_id = attempt.backend, attempt.job_id
        try:
            self.cluster(backend).cancel(job_id)
        except ClusterError as exc:
            log.warning("cancel_failed", job_id=job_id, error=str(exc))
            return  # cancel_requested stays set: the next tick asks again
        with self.sessions.begin() as session:
            session.execute(update(Attempt).where(Attempt.id == attempt_id, Attempt.state.in_(LIVE))
                            .values(state=AttemptState.CANCELLED.value, ended_at=self.now()))
        log.info("job_cancelled", job_id=job_id)
        self._remedy(attempt_id)

    def _remedy(self, attempt_id: int) -> None:
        """What a human does before resubmitting after some hangs: e.g. remove stale extension-build locks."""
        with self.sessions.begin() as session:
            attempt = session.get(Attempt, attempt_id)
            if attempt is None or attempt.cause != "extension_build_hang" or not attempt.hang_hint:
                return
            removed = clear_extension_locks(str(attempt.hang_hint.get("text", "")))
            if removed:
                self._event(session, attempt.stage.run, "lock_cleared",
                            f"removed stale PyTorch extension build locks: {', '.join(map(str, removed))}",
                            attempt.stage.name, attempt.number, {"removed": [str(p) for p in removed]})


def count_hosts(hostlist: str) -> int:
    """Hosts in a SLURM hostlist such as ``lrdn[0101-0104,0200],gpu7`` (0 for an empty one)."""
    count, depth, item = 0, 0, ""
    for char in hostlist + ",":
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            if item:
                count += _count_item(item)
            item = ""
        else:
            item += char
    return count


def _count_item(item: str) -> int:
    if "[" not in item:
        return 1
    total = 0
    for part in item[item.index("[") + 1 : item.rindex("]")].split(","):
        low, _, high = part.partition("-")
        total += (int(high) - int(low) + 1) if high and low.isdigit() and high.isdigit() else 1
    return total


def _describe(notes: Mapping[str, Any]) -> str:
    parts = []
    if "resume_from" in notes:
        parts.append(f"resuming from {notes['resume_from']}")
    if "moved_aside" in notes:
        parts.append(f"moved incomplete checkpoints aside: {', '.join(notes['moved_aside'])}")
    if "cleaned" in notes:
        parts.append(f"emptied the half-written prepared dataset: removed {', '.join(notes['cleaned'])}")
    return "; ".join(parts)


def _log_tail(path: str | None) -> str:
    if not path or "%j" in path:
        return ""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - LOG_TAIL_BYTES))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _process_with_tag_alive(tag: str) -> bool:
    """Whether a process (an sbatch or local launcher we started before a crash) still carries the tag."""
    needle = tag.encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                if needle in fh.read():
                    return True
        except OSError:
            continue
    return False


def _view(session: Session, run: Run, limits: Mapping[str, int] | None = None) -> core.RunView:
    spec = RunSpec.model_validate(run.spec)
    stage_specs = {s.name: s for s in spec.stages}
    stages = []
    for stage in run.stages:
        s = stage_specs[stage.name]
        attempts = tuple(
            core.AttemptView(
                number=a.number, state=AttemptState(a.state), job_id=a.job_id,
                cancel_requested=a.cancel_requested,
                outcome=core.Outcome(a.outcome) if a.outcome else None, cause=a.cause,
                work_done=a.work_done, submitted_at=a.submitted_at, started_at=a.started_at,
                ended_at=a.ended_at, last_output_at=a.last_output_at, first_step_at=a.first_step_at,
                nodes=a.nodes,
            )
            for a in session.scalars(select(Attempt).where(Attempt.stage_id == stage.id).order_by(Attempt.number))
        )
        stages.append(core.StageView(
            name=stage.name, kind=stage.kind, state=StageState(stage.state), max_attempts=s.max_attempts,
            budget_start=stage.budget_start, stall_timeout=s.stall_timeout, startup_timeout=s.startup_timeout,
            retry_backoff=s.retry_backoff, attempts=attempts,
        ))
    return core.RunView(name=run.name, state=RunState(run.state), stages=tuple(stages),
                        resubmit_limits=dict(limits or {}))


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


def _attempt_json(a: Attempt) -> dict[str, Any]:
    return {
        "number": a.number, "job_id": a.job_id, "state": a.state, "backend": a.backend,
        "submitted_at": _iso(a.submitted_at), "started_at": _iso(a.started_at), "ended_at": _iso(a.ended_at),
        "exit_code": a.exit_code, "nodes": a.nodes, "reason": a.reason, "cause": a.cause,
        "outcome": a.outcome, "log": a.log_path, "progress": _progress(a),
    }

"""The supervisor as the CLI and the daemon see it: a thin façade over the tick's steps and the commands.

One :meth:`Supervisor.tick` = reconcile interrupted submissions -> poll the clusters (one batched query
per backend) -> for each active run: observe (logs + stage-kind checks) -> decide (the pure core) ->
act. The outbox is flushed by the daemon on its own schedule, so a slow endpoint never delays a reaction.
Each run is handled inside its own error boundary: an unexpected error becomes that run's
``needs_attention`` state and an event, never a tick that fails for everyone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from supervisor.app.clusters import Clusters
from supervisor.app.commands import Commands
from supervisor.app.contexts import context_for
from supervisor.app.observe import NO_POLL, Observer, PollResult, Snapshot
from supervisor.app.poll import Poller
from supervisor.app.reconcile import reconcile_submitting
from supervisor.app.submit import Submitter
from supervisor.app.wakeups import WakeUps
from supervisor.domain import core
from supervisor.domain.ports import Clock, Cluster, SystemClock
from supervisor.domain.types import RunState
from supervisor.logs.follow import LogWatcher
from supervisor.notify.outbox import RunChannels, deliver
from supervisor.notify.queue import pending_count
from supervisor.stages.datasets import prepared_dataset_present
from supervisor.store import gates, readmodels, settlement
from supervisor.store.db import open_database
from supervisor.store.models import Run
from supervisor.store.readmodels.rows import session_query
from supervisor.store.repository import ACTIVE, POLLED, Effect, Repository

log = structlog.get_logger("supervisor")
_ACTIVE = [s.value for s in ACTIVE]
_POLLED = [s.value for s in POLLED]
# Runs read together at the start of their turn in a pass (Observer.snapshots): a few queries per batch
# instead of five per run, while the ORM rows held at once, and how long a snapshot waits for its run's
# step, stay those of a few runs.
SNAPSHOT_BATCH = 20


@dataclass(frozen=True)
class TickReport:
    runs: int
    actions: int


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
        self.repo = Repository(self.sessions, self.clock)
        self.clusters = Clusters(home, self.clock, clusters)
        self.logs = LogWatcher()
        self.channels = RunChannels(self.sessions)
        self.submitter = Submitter(self.repo, self.clusters)
        self.poller = Poller(self.repo, self.clusters)
        self.observer = Observer(self.repo, self.clusters, self.logs)
        self.commands = Commands(self)
        # Runs whose handling raised and that could not even be set aside: skipped until this tick number.
        self._quarantine: dict[int, tuple[int, int]] = {}
        self.wakeups = WakeUps(self.sessions, self.logs)
        self._ticks = 0

    def now(self) -> datetime:
        return self.clock.now()

    def cluster(self, backend: str) -> Cluster:
        return self.clusters(backend)

    # ---- the tick --------------------------------------------------------------------------------

    def tick(self, *, poll: bool = True) -> TickReport:
        """One pass over every active run. ``poll=False`` (a log changed) asks no cluster, and steps only the
        runs that ``WakeUps.news`` names (app/wakeups.py): the others' new lines are read by the next interval pass."""
        self._ticks += 1
        polled = NO_POLL
        if poll:
            self.reconcile_submitting()
            polled = self.poll()
        run_ids = self.repo.active_run_ids() if poll else self.wakeups.news()
        run_ids = [r for r in run_ids if self._quarantine.get(r, (0, 0))[0] <= self._ticks]
        count = 0
        for start in range(0, len(run_ids), SNAPSHOT_BATCH):
            batch = run_ids[start:start + SNAPSHOT_BATCH]
            snapshots = self.observer.snapshots(batch)
            for run_id in batch:
                count += self._guarded(run_id, polled, snapshots.pop(run_id, None))
        if poll:
            self.settle_costs()
        return TickReport(runs=len(run_ids), actions=count)

    def settle_costs(self) -> None:
        """Settle the cost of attempts that ended without it (a database from before settling): a few hundred
        per pass, so `status` sums them in SQL (store/settlement.py). Never fails the tick."""
        try:
            settlement.settle_costs(self.sessions)
        except Exception:
            log.exception("settle_costs_failed")

    def reconcile_submitting(self) -> None:
        """Attempts left in SUBMITTING by a crash: adopt the job if it exists, else submit it now."""
        reconcile_submitting(self.repo, self.clusters, self.submitter)

    def poll(self) -> PollResult:
        """One batched query per backend for all live jobs."""
        return self.poller.poll()

    def step_run(self, run_id: int, polled: PollResult, snapshot: Snapshot | None = None) -> int:
        """Observe, decide and act for one run; returns how many actions were applied. ``snapshot``: the run as
        this pass read it with the others (Observer.snapshots), else it is read now."""
        seen = self.observer.observe(run_id, polled, snapshot)
        if seen is None:
            return 0
        actions = core.observe(seen.view, seen.observations, self.clock.now())
        if not self.apply(run_id, seen.view.state, actions, seen.tails):
            return 0
        total = len(actions)
        # Closing a stage can start the next one: advance until nothing more is due (bounded by the stages).
        # Nothing recorded yet, or only log offsets and progress (core.moves_the_run): the run is as observed
        # for `advance`, and reading it again would be most of the pass of a run whose log only grew.
        view = seen.view
        changed = core.moves_the_run(actions)
        for _ in range(len(seen.view.stages) + 2):
            if changed:
                view = self._view(run_id)
            actions = core.advance(view, self.clock.now())
            if any(isinstance(a, core.Submit) for a in actions):
                # About to submit: what the campaign and the runs sharing its data say can change that.
                view = self._gated(view, run_id)
                actions = core.advance(view, self.clock.now())
            if not actions or not self.apply(run_id, view.state, actions):
                break
            total += len(actions)
            changed = True
        return total

    def apply(
        self, run_id: int, decided_in: RunState, actions: Sequence[core.Action],
        tails: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> bool:
        """Record the decision (conditional on ``decided_in``), then carry out its side effects in order."""
        if not actions and not tails:
            return True
        effects = self.repo.apply(run_id, decided_in, actions, tails, self._backends(run_id, actions))
        if effects is None:
            return False
        self.carry_out(effects)
        return True

    def carry_out(self, effects: Sequence[Effect]) -> list[str]:
        cancelled = []
        for effect in effects:
            if effect.kind == "cancel":
                job_id = self.submitter.cancel(effect.attempt_id)
                if job_id is not None:
                    cancelled.append(job_id)
            else:
                self.submitter.submit(effect.attempt_id)
        return cancelled

    def _guarded(self, run_id: int, polled: PollResult, snapshot: Snapshot | None) -> int:
        """One run's error boundary: its failure is its own, logged once, and never spins."""
        try:
            count = self.step_run(run_id, polled, snapshot)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("run_failed_in_tick", run_id=run_id, error=reason)
            try:
                self.repo.needs_attention(run_id, f"the supervisor failed while handling this run ({reason})")
            except Exception:
                # Not even that could be written (disk full, database locked): leave the run alone for a
                # while, doubling the pause each time, instead of failing on every pass.
                failures = self._quarantine.get(run_id, (0, 0))[1] + 1
                self._quarantine[run_id] = (self._ticks + min(2**failures, 64), failures)
                log.warning("run_quarantined", run_id=run_id, ticks=min(2**failures, 64))
            return 0
        self._quarantine.pop(run_id, None)
        return count

    def _view(self, run_id: int) -> core.RunView:
        with self.sessions() as session:
            run = session.get(Run, run_id)
            assert run is not None
            return self.repo.view(session, run)

    def _gated(self, view: core.RunView, run_id: int) -> core.RunView:
        """The view with the gate its campaign and the runs sharing its data set (store/gates.py): read only
        when `advance` is about to submit, the one decision it can change."""
        with self.sessions() as session:
            run = session.get(Run, run_id)
            assert run is not None
            gate = gates.gate_for(session_query(session), run.id, run.campaign, run.spec.get("budget"),
                                  self.clock.now(), present=prepared_dataset_present)
        return dataclasses.replace(view, gate=gate)

    def _backends(self, run_id: int, actions: Sequence[core.Action]) -> dict[str, str]:
        """The backend each newly submitted stage uses: its kind may run on the supervisor's own host."""
        submits = [a.stage for a in actions if isinstance(a, core.Submit)]
        if not submits:
            return {}
        with self.sessions() as session:
            run = session.get(Run, run_id)
            assert run is not None
            backends = {}
            for stage in submits:
                kind, ctx = context_for(run, stage, 1)
                backends[stage] = "local" if kind.runs_locally(ctx.spec) else run.backend
            return backends

    def flush_outbox(self) -> None:
        try:
            deliver(self.sessions, self.channels, self.clock)
        except Exception as exc:
            # Notifications must never stop the supervision itself; the outbox keeps what was not sent.
            from supervisor.app.diskfull import disk_full_at

            where = disk_full_at(exc, self.home)
            if where is None:
                log.exception("outbox_flush_failed")
            else:  # every few seconds until there is room: one line each, not a traceback
                log.warning("outbox_flush_failed", error=f"disk full at {where}")

    def pending_notifications(self) -> int:
        """Outbox entries that are neither delivered nor given up on."""
        with self.sessions() as session:
            return pending_count(session)

    def logs_grew(self) -> bool:
        return self.wakeups.logs_grew()

    def live_log_dirs(self) -> set[Path]:
        return {w / "logs" for w in self.repo.live_workdirs()}

    # ---- commands (CLI) --------------------------------------------------------------------------

    def register(self, spec_path: Path, backend_default: str) -> str:
        return self.commands.register(spec_path, backend_default)

    def submit(self, spec_path: Path, backend_default: str) -> list[str]:
        return self.commands.submit(spec_path, backend_default)

    # ---- queries (CLI) ---------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        with self.sessions() as session:
            return readmodels.status_rows(session, self.clock.now())

    def show(self, name: str) -> dict[str, Any]:
        with self.sessions() as session:
            return readmodels.show(session, self.repo.run_named(session, name), self.clock.now())

    def run_signatures(self, name: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            return list(self.repo.run_named(session, name).spec.get("signatures") or [])

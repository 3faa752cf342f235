"""The user's commands on runs (submit, pause, resume, retry, cancel) for the CLI, through the façade's ``apply``.

Each decision is the core's (supervisor.domain.core.commands), applied conditionally on the run's state as
the daemon's own decisions are; a run moved meanwhile is one clear error, never a half-applied command.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from supervisor.app import campaigns
from supervisor.domain import core
from supervisor.domain.errors import UserError
from supervisor.domain.spec import load_spec
from supervisor.domain.types import RunState
from supervisor.notify.outbox import send_test
from supervisor.store import registration
from supervisor.store.db import plain_connection
from supervisor.store.models import Campaign, Run
from supervisor.store.repository import ACTIVE

if TYPE_CHECKING:
    from supervisor.app.service import Supervisor

_ACTIVE = [s.value for s in ACTIVE]


class Commands:
    def __init__(self, sv: Supervisor) -> None:
        self.sv = sv

    def register(self, spec_path: Path, backend_default: str) -> str:
        spec = load_spec(spec_path)
        with plain_connection(self.sv.repo.sessions) as conn:
            registration.register_run(conn, self.sv.repo.clock.now(), spec, spec_path,
                                      spec.backend or backend_default, campaigns.shares_of(spec, spec_path))
        campaigns.log_registered([spec.name], spec_path)
        return spec.name

    def submit(self, spec_path: Path, backend_default: str) -> list[str]:
        """Register a run spec's run or a campaign spec's runs (all or none); their names."""
        submitted = campaigns.read(spec_path, backend_default)
        with plain_connection(self.sv.repo.sessions) as conn:
            names = campaigns.register(conn, self.sv.repo.clock.now(), submitted)
        campaigns.log_registered(names, spec_path)
        return names

    def runs_of(self, name: str) -> tuple[str | None, list[str]]:
        """``(None, [name])`` for a run; ``(name, its runs still active)`` for a campaign of that name (a run's
        name wins where both exist). UserError when neither exists."""
        with self.sv.sessions() as session:
            if session.scalar(select(Run.id).where(Run.name == name)) is not None:
                return None, [name]
            if session.scalar(select(Campaign.id).where(Campaign.name == name)) is None:
                raise UserError(f"no run named {name!r}, nor a campaign (see `supervisor status`)")
            return name, list(session.scalars(select(Run.name).where(
                Run.campaign == name, Run.state.in_([*_ACTIVE, RunState.NEEDS_ATTENTION.value])).order_by(Run.id)))

    def pause(self, name: str) -> bool:
        """True if the run was paused now, False if it already was."""
        return self._command(name, core.pause)

    def resume(self, name: str) -> bool:
        """True if the run was resumed now, False if it was not paused."""
        return self._command(name, core.resume)

    def retry(self, name: str) -> None:
        self._command(name, core.retry)

    def cancel_run(self, name: str) -> list[str]:
        """Cancel a run and its live jobs. Returns the job ids cancelled."""
        run_id, view = self._named(name)
        actions = _decide(core.cancel, view)
        effects = self.sv.repo.apply(run_id, view.state, actions)
        if effects is None:
            raise UserError(f"run {name!r} changed state meanwhile; try again")
        return self.sv.carry_out(effects)

    def _command(self, name: str, decide: Callable[[core.RunView], list[core.Action]]) -> bool:
        run_id, view = self._named(name)
        actions = _decide(decide, view)
        if not actions:
            return False
        if not self.sv.apply(run_id, view.state, actions):
            raise UserError(f"run {name!r} changed state meanwhile; try again")
        return True

    def _named(self, name: str) -> tuple[int, core.RunView]:
        with self.sv.sessions() as session:
            run = self.sv.repo.run_named(session, name)
            return run.id, self.sv.repo.view(session, run)

    def notify_test(self, name: str) -> dict[str, str | None]:
        """Send a test message to every notification channel of the run."""
        with self.sv.sessions() as session:
            run_id = self.sv.repo.run_named(session, name).id
        return send_test(name, self.sv.channels(run_id), self.sv.clock)


def _decide(decide: Callable[[core.RunView], list[core.Action]], view: core.RunView) -> list[core.Action]:
    try:
        return decide(view)
    except core.Refused as exc:
        raise UserError(str(exc)) from None

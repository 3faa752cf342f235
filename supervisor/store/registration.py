"""Registering runs: one run spec's run, or a campaign and all its runs in one transaction (all or none)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from supervisor.domain.errors import UserError
from supervisor.domain.spec import RunSpec
from supervisor.domain.types import EventKind, RunState, StageState
from supervisor.store.models import Campaign, Run, Stage

if TYPE_CHECKING:
    from supervisor.store.repository import Repository

# prepare stage -> (share key, resolved dataset_prepared_path): see stages/datasets.py `share_key`.
Shares = Mapping[str, tuple[str, str]]


def register_run(repo: Repository, spec: RunSpec, spec_path: Path, backend: str, shares: Shares | None = None) -> None:
    with repo.sessions.begin() as session:
        _register(repo, session, spec, spec_path, backend, shares or {}, None)


def register_campaign(repo: Repository, name: str, settings: Mapping[str, Any], specs: Sequence[RunSpec],
                      spec_path: Path, backend_of: Mapping[str, str], shares: Mapping[str, Shares]) -> None:
    with repo.sessions.begin() as session:
        if session.scalar(select(Campaign.id).where(Campaign.name == name)) is not None:
            raise UserError(f"{spec_path}: campaign: a campaign named {name!r} already exists")
        session.add(Campaign(name=name, spec_path=str(Path(spec_path).resolve()), spec=dict(settings),
                             created_at=repo.clock.now()))
        for spec in specs:
            _register(repo, session, spec, spec_path, backend_of[spec.name], shares.get(spec.name, {}), name)


def _register(repo: Repository, session: Session, spec: RunSpec, spec_path: Path, backend: str, shares: Shares,
              campaign: str | None) -> None:
    now = repo.clock.now()
    if session.scalar(select(Run.id).where(Run.name == spec.name)) is not None:
        field = "name" if campaign is None else f"runs: {spec.name}"
        raise UserError(f"{spec_path}: {field}: a run named {spec.name!r} already exists")
    # uid: random per registration, part of every job name, so two supervisors never claim each other's jobs.
    run = Run(name=spec.name, uid=secrets.token_hex(4), state=RunState.PENDING.value, backend=backend,
              spec_path=str(Path(spec_path).resolve()), spec=spec.model_dump(mode="json"),
              workdir=str(spec.workdir), campaign=campaign, created_at=now, updated_at=now)
    for position, stage in enumerate(spec.stages):
        key, prepared = shares.get(stage.name, (None, None))
        run.stages.append(Stage(position=position, name=stage.name, kind=stage.kind.value,
                                state=StageState.PENDING.value, budget_start=1, updated_at=now,
                                share_key=key, prepared_path=prepared))
    session.add(run)
    session.flush()
    where = f" (campaign {campaign})" if campaign else ""
    repo.event(session, run, EventKind.REGISTERED, f"run {spec.name} registered from {spec_path}{where}")

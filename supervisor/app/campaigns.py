"""Registering what `submit` is given (a run spec or a campaign spec), and the prepare stages runs share.

A prepare stage's share key and resolved ``dataset_prepared_path`` are taken at registration from the
axolotl config as it is then (stages/datasets.py ``share_key``): runs whose keys are equal prepare once.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.domain.spec import RunSpec, is_campaign, read_mapping, run_spec
from supervisor.domain.types import StageKind
from supervisor.stages import axolotl, datasets
from supervisor.store import registration

if TYPE_CHECKING:
    from supervisor.domain.campaign import CampaignSpec


def shares_of(spec: RunSpec, spec_path: Path) -> dict[str, tuple[str, str]]:
    """Prepare stage -> (share key, resolved dataset_prepared_path) for the run's prepare stages."""
    prepares = [s.name for s in spec.stages if s.kind is StageKind.PREPARE]
    if not prepares or spec.axolotl_config is None:
        return {}
    base_dir = Path(spec_path).resolve().parent
    config = axolotl.load_config(spec.axolotl_config, base_dir=base_dir)
    key = datasets.share_key(config.raw, config.dataset_prepared_path, base_dir)
    return {name: (key, str(config.dataset_prepared_path)) for name in prepares}


@dataclass(frozen=True)
class Submitted:
    """A validated spec file: its run, or its campaign's runs, with their backends and shared prepares."""

    path: Path
    specs: list[RunSpec]
    backends: dict[str, str]
    shares: dict[str, dict[str, tuple[str, str]]]
    campaign: CampaignSpec | None = None

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]


def read(spec_path: Path, backend_default: str) -> Submitted:
    """Validate a run spec or a campaign spec (SpecError names the file and the field); writes nothing."""
    spec_path = Path(spec_path)
    data = read_mapping(spec_path, "a YAML mapping: a run (`name`, `stages`) or a campaign (`campaign`, `runs`)")
    campaign = None
    if is_campaign(data):
        from supervisor.domain.campaign import load_campaign  # its models are built only for a campaign

        campaign, specs = load_campaign(spec_path, data)
    else:
        specs = [run_spec(spec_path, data)]
    return Submitted(spec_path, specs, {s.name: s.backend or backend_default for s in specs},
                     {s.name: shares_of(s, spec_path) for s in specs}, campaign)


def register(conn: sqlite3.Connection, now: datetime, submitted: Submitted) -> list[str]:
    """Register the run, or every run of the campaign (all or none); the names registered, in order."""
    if submitted.campaign is None:
        (spec,) = submitted.specs
        registration.register_run(conn, now, spec, submitted.path, submitted.backends[spec.name],
                                  submitted.shares[spec.name])
    else:
        campaign = submitted.campaign
        registration.register_campaign(conn, now, campaign.campaign, campaign.settings(), submitted.specs,
                                       submitted.path, backend_of=submitted.backends, shares=submitted.shares)
    return submitted.names


def log_registered(names: list[str], spec_path: Path) -> None:
    """The `registered` log lines the ORM's event writer used to print (the plain registration logs nothing:
    `submit` imports structlog only when the log level asks for them)."""
    import structlog

    log = structlog.get_logger("supervisor")
    for name in names:
        log.info("registered", run=name, message=f"run {name} registered from {spec_path}")

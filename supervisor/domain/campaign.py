"""The campaign spec: several runs submitted as one, with a cap on their live jobs and a node-hour budget.

    campaign: latxa-instruct-hparams
    defaults: {venv: ..., stages: [...]}      # what every run gets; a run's own keys win
    runs:                                     # or `matrix: {axolotl_config: [a.yaml, b.yaml]}`
      - {name: llama-8b-1m-1ep, axolotl_config: configs/llama-3.1-8B_1M_1epoch.yaml}
    max_live_jobs: 2
    budget: {node_hours: 5000, wasted_node_hours: 300}
    allocation_node_hours: 100000

Each run is validated as a run spec of its own (errors name ``runs[i].<field>``), relative paths resolve
against the campaign file, and its workdir defaults to ``runs/<name>`` next to it as for a plain run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from supervisor.domain.errors import SpecError
from supervisor.domain.spec import (
    NAME_RE,
    Budget,
    Count,
    RunSpec,
    _first_error,
    _Strict,
    read_mapping,
    run_spec,
)


class Matrix(_Strict):
    """One run per axolotl config, named ``<campaign>-<config file stem>``."""

    axolotl_config: list[Path] = Field(min_length=1)


class CampaignSpec(_Strict):
    campaign: str = Field(pattern=NAME_RE.pattern)
    defaults: dict[str, Any] = Field(default_factory=dict)
    runs: list[dict[str, Any]] = Field(default_factory=list)
    matrix: Matrix | None = None
    # Jobs of the campaign's runs queued or running at once; a run whose next job would pass it waits.
    max_live_jobs: Count | None = Field(default=None, ge=1)
    budget: Budget | None = None
    # The project's allocation, for `report`: the campaign's node-hours as a share of it.
    allocation_node_hours: float | None = Field(default=None, gt=0, strict=True)

    @model_validator(mode="after")
    def _which_runs(self) -> CampaignSpec:
        if bool(self.runs) == (self.matrix is not None):
            raise ValueError("a campaign needs exactly one of `runs` (a list) or `matrix`")
        if "name" in self.defaults:
            raise ValueError("`defaults` cannot give a `name`: each run has its own")
        return self

    def entries(self) -> list[dict[str, Any]]:
        """Every run's spec as written: the defaults with the run's own keys on top."""
        if self.matrix is not None:
            own = [{"name": _matrix_name(self.campaign, c), "axolotl_config": str(c)}
                   for c in self.matrix.axolotl_config]
        else:
            own = self.runs
        return [{**self.defaults, **entry} for entry in own]

    def settings(self) -> dict[str, Any]:
        """What the supervisor keeps of the campaign itself (the runs keep their own specs)."""
        return self.model_dump(mode="json", include={"max_live_jobs", "budget", "allocation_node_hours"})


def _matrix_name(campaign: str, config: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", config.stem).strip("-.") or "run"
    return f"{campaign}-{stem}"[:64]


def load_campaign(path: Path, data: dict[str, Any] | None = None) -> tuple[CampaignSpec, list[RunSpec]]:
    """Read and validate a campaign spec and every run in it; SpecError names the file and the field."""
    path = Path(path)
    if data is None:
        data = read_mapping(path, "a YAML mapping with `campaign` and `runs`")
    try:
        campaign = CampaignSpec.model_validate(data)
    except ValidationError as exc:
        raise _first_error(path, exc) from None
    where = "matrix.axolotl_config" if campaign.matrix is not None else "runs"
    runs: list[RunSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(campaign.entries()):
        spec = run_spec(path, entry, f"{where}[{i}]")
        if spec.name in seen:
            raise SpecError(path, f"{where}[{i}].name", f"a second run named {spec.name!r} in this campaign")
        seen.add(spec.name)
        runs.append(spec)
    return campaign, runs

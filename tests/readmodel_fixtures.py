"""Rows written straight into a supervisor home, for the tests of what `status`, `show` and `report` read."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from supervisor.store.models import Attempt, Stage


def two_stage_spec(root: Path, name: str) -> Path:
    """A local run spec with the script stages `prep` and `train`, scripts included."""
    for stage in ("prep", "train"):
        (root / f"{stage}.sh").write_text("#!/bin/bash\ntrue\n")
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "backend": "local", "workdir": "work", "stages": [
        {"name": "prep", "script": "prep.sh"}, {"name": "train", "script": "train.sh"}]}))
    return path


def attempt_row(stage: Stage, number: int, state: str, *, submitted_at: datetime, job_prefix: str = "",
                **extra: Any) -> Attempt:
    """An attempt of ``stage`` on the local backend, with a tag and a job id of its own."""
    return Attempt(stage_id=stage.id, number=number, tag=f"{stage.name}-{stage.run_id}-{number}", state=state,
                   backend="local", job_id=f"{job_prefix}{stage.run_id}{number}", submitted_at=submitted_at, **extra)

"""From a run's row to what its stage kind is given: the typed spec, never a dict of options."""

from __future__ import annotations

from pathlib import Path

from supervisor.domain.spec import RunSpec, StageSpec
from supervisor.stages import Kind, StageContext, kind_for
from supervisor.store.models import Run


def stage_spec(run: Run, stage: str) -> StageSpec:
    spec = RunSpec.model_validate(run.spec)
    return next(s for s in spec.stages if s.name == stage)


def context_for(run: Run, stage: str, number: int) -> tuple[Kind, StageContext]:
    spec = RunSpec.model_validate(run.spec)
    stage_spec = next(s for s in spec.stages if s.name == stage)
    ctx = StageContext(run=run.name, spec=stage_spec, attempt=number, workdir=Path(run.workdir),
                       axolotl_config=spec.axolotl_config, venv=spec.venv, merged_dir=spec.merged_dir,
                       base_dir=Path(run.spec_path).parent)
    return kind_for(stage_spec.kind), ctx

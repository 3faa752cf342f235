"""Stage kinds: what prepare, train, merge, transfer and script do around one attempt.

:data:`REGISTRY` maps each :class:`~supervisor.domain.types.StageKind` to its implementation of
:class:`~supervisor.stages.base.Kind`; :func:`kind_for` is the only way the rest of the supervisor
reaches a kind.
"""

from __future__ import annotations

from datetime import UTC, datetime

from supervisor.domain.spec import StageSpec
from supervisor.domain.types import Progress, StageKind
from supervisor.stages import pipeline
from supervisor.stages.base import Kind, StageContext, Submission
from supervisor.stages.checkpoints import list_checkpoints
from supervisor.stages.rsync import last_progress

__all__ = ["REGISTRY", "Kind", "StageContext", "Submission", "kind_for"]


class _PipelineKind:
    """Transitional adapter over :mod:`supervisor.stages.pipeline` until each kind has its own module."""

    def __init__(self, kind: StageKind) -> None:
        self.kind = kind

    @staticmethod
    def _legacy(ctx: StageContext) -> pipeline.StageContext:
        return pipeline.StageContext(
            run=ctx.run, stage=ctx.stage, kind=ctx.kind.value, attempt=ctx.attempt, workdir=ctx.workdir,
            options=ctx.spec.model_dump(mode="json", exclude_none=True), axolotl_config=ctx.axolotl_config,
            venv=ctx.venv, merged_dir=ctx.merged_dir, base_dir=ctx.base_dir,
        )

    def runs_locally(self, spec: StageSpec) -> bool:
        return spec.command is not None or self.kind is StageKind.TRANSFER

    def prepare(self, ctx: StageContext) -> Submission:
        if self.kind is StageKind.SCRIPT:
            return Submission(script=ctx.spec.script, command=tuple(ctx.spec.command) if ctx.spec.command else None)
        sub = pipeline.prepare_submission(self._legacy(ctx))
        return Submission(script=sub.script, command=sub.command, sbatch_args=sub.sbatch_args, env=sub.env,
                          derived_config=sub.derived_config, resume_from=sub.resume_from,
                          moved_aside=sub.moved_aside, cleaned=sub.cleaned)

    def work_finished(self, ctx: StageContext) -> bool:
        return self.kind is StageKind.TRAIN and pipeline.training_finished(self._legacy(ctx))

    def last_saved(self, ctx: StageContext) -> datetime | None:
        if self.kind is not StageKind.TRAIN:
            return None
        found = list_checkpoints(pipeline.load_axolotl_config(self._legacy(ctx)).output_dir)
        return datetime.fromtimestamp(found[-1].path.stat().st_mtime, UTC) if found else None

    def succeeded(self, ctx: StageContext, exit_code: int | None, log_tail: str) -> bool:
        return pipeline.check_success(self._legacy(ctx), exit_code, log_tail)

    def progress(self, text: str) -> Progress | None:
        if self.kind is not StageKind.TRANSFER:
            return None
        rsync = last_progress(text)
        return Progress(step=rsync.percent, total=100) if rsync is not None else None


REGISTRY: dict[StageKind, Kind] = {kind: _PipelineKind(kind) for kind in StageKind}


def kind_for(kind: StageKind) -> Kind:
    return REGISTRY[kind]

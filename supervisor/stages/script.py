"""The ``script`` kind: the user's own sbatch script, or a command on the supervisor's host, judged by its exit code."""

from __future__ import annotations

from supervisor.domain.spec import StageSpec
from supervisor.domain.types import Progress, StageKind
from supervisor.stages.base import StageContext, Submission


class ScriptKind:
    kind: StageKind = StageKind.SCRIPT

    def runs_locally(self, spec: StageSpec) -> bool:
        return spec.command is not None

    def prepare(self, ctx: StageContext) -> Submission:
        # The spec validator guarantees exactly one of the two; the sbatch_args and env in the spec
        # are the service's to add, as for every kind.
        command = tuple(ctx.spec.command) if ctx.spec.command is not None else None
        return Submission(script=ctx.spec.script, command=command)

    def work_finished(self, ctx: StageContext) -> bool:
        return False

    def last_saved(self, ctx: StageContext) -> str | None:
        return None

    def succeeded(self, ctx: StageContext, exit_code: int | None, log_tail: str) -> bool:
        return exit_code == 0

    def progress(self, text: str) -> Progress | None:
        return None

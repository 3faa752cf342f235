"""The ``transfer`` kind: rsync the merged model home from the supervisor's own host.

Compute nodes usually cannot reach the destination, so this kind runs ``python -m
supervisor.stages.rsync`` (see that module) on the local backend instead of submitting a job.
"""

from __future__ import annotations

import sys
from pathlib import Path

import supervisor
from supervisor.domain.errors import StageError
from supervisor.domain.spec import StageSpec
from supervisor.domain.types import Progress, StageKind
from supervisor.stages import context
from supervisor.stages.base import StageContext, Submission


def transfer_command(source: Path, destination: str, *, attempts: int = 5, backoff: float = 30.0) -> tuple[str, ...]:
    return (
        sys.executable, "-m", "supervisor.stages.rsync", str(source), destination,
        "--attempts", str(attempts), "--backoff", str(backoff),
    )  # fmt: skip


class TransferKind:
    kind: StageKind = StageKind.TRANSFER

    def runs_locally(self, spec: StageSpec) -> bool:
        return True

    def prepare(self, ctx: StageContext) -> Submission:
        config = context.load_axolotl_config(ctx)
        destination = ctx.spec.destination
        if not destination:  # the spec validator refuses this; a spec built without it must not rsync to ""
            raise StageError(f"stage {ctx.stage}: kind transfer needs `destination`")
        command = transfer_command(context.merged_dir(ctx, config), destination)
        # The command runs `-m supervisor.stages.rsync` from the run's workdir: make the package findable.
        package_root = str(Path(supervisor.__file__).resolve().parents[1])
        return Submission(command=command, env={"PYTHONPATH": package_root})

    def work_finished(self, ctx: StageContext) -> bool:
        return False

    def last_saved(self, ctx: StageContext) -> str | None:
        return None

    def succeeded(self, ctx: StageContext, exit_code: int | None, log_tail: str) -> bool:
        from supervisor.stages.rsync import VERIFIED_MARKER  # see progress()

        return exit_code == 0 and VERIFIED_MARKER in log_tail

    def progress(self, text: str) -> Progress | None:
        # Imported here, not at the top: the registry imports this module with the package, and
        # `python -m supervisor.stages.rsync` (the transfer command) warns when its module is loaded first.
        from supervisor.stages.rsync import last_progress

        # rsync --info=progress2 redraws one line with \r: percent done of the whole transfer.
        rsync = last_progress(text)
        return Progress(step=rsync.percent, total=100) if rsync is not None else None

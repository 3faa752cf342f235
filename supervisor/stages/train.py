"""The ``train`` kind: axolotl under torchrun on N nodes, resuming from the newest complete checkpoint."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from supervisor.domain.spec import StageSpec
from supervisor.domain.types import Progress, StageKind
from supervisor.stages import axolotl, context
from supervisor.stages.base import StageContext, Submission
from supervisor.stages.checkpoints import (
    final_reached,
    incomplete_after_newest,
    list_checkpoints,
    move_aside_incomplete,
    newest_complete,
)
from supervisor.stages.render import common_values, read_template, render, sbatch_directives

DEFAULT_MASTER_PORT = 29500


def rdzv_id(ctx: StageContext) -> str:
    """Unique per attempt and identical on every node of it."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{ctx.run}-{ctx.stage}-{ctx.attempt}")


def render_train(ctx: StageContext, *, venv: Path, base_dir: Path, config: Path, resume_from: Path | None) -> str:
    nodes = ctx.spec.nodes or 1
    gpus = ctx.spec.gpus_per_node or 0
    values = common_values(
        ctx, sbatch_directives(ctx.spec, nodes=nodes, gpus_per_node=gpus), venv=venv, base_dir=base_dir
    )
    values.update(
        config=shlex.quote(str(config)),
        nodes=str(nodes),
        # gpus_per_node 0 is a CPU-only launch: one process per node.
        nproc_per_node=str(gpus if gpus > 0 else 1),
        rdzv_id=rdzv_id(ctx),
        master_port=str(ctx.spec.master_port or DEFAULT_MASTER_PORT),
        resume_from=shlex.quote(str(resume_from)) if resume_from else "scratch",
    )
    return render(read_template("train"), values)


def resume_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint the next training attempt resumes from (no side effects)."""
    newest = newest_complete(output_dir)
    return newest.path if newest else None


class TrainKind:
    kind: StageKind = StageKind.TRAIN

    def runs_locally(self, spec: StageSpec) -> bool:
        return False

    def prepare(self, ctx: StageContext) -> Submission:
        config = context.load_axolotl_config(ctx)
        venv = context.venv(ctx)
        base_dir = context.base_dir(ctx)
        # Before picking the resume point: a checkpoint whose save was cut off must not be it.
        if ctx.dry_run:  # what would be moved aside, where it is now
            moved = [c.path for c in incomplete_after_newest(config.output_dir)]
        else:
            moved = move_aside_incomplete(config.output_dir)
        resume = resume_checkpoint(config.output_dir)
        derived = axolotl.write_derived(config, axolotl.train_overrides(config, resume), context.attempt_dir(ctx))
        text = render_train(ctx, venv=venv, base_dir=base_dir, config=derived, resume_from=resume)
        return Submission(
            script=context.write_script(ctx, text),
            derived_config=derived,
            resume_from=resume,
            moved_aside=tuple(moved),
        )

    def work_finished(self, ctx: StageContext) -> bool:
        """Final checkpoint complete with global_step >= max_steps."""
        config = context.load_axolotl_config(ctx)
        return final_reached(config.output_dir, config.max_steps)

    def last_saved(self, ctx: StageContext) -> str | None:
        found = list_checkpoints(context.load_axolotl_config(ctx).output_dir)
        return found[-1].path.name if found else None

    def succeeded(self, ctx: StageContext, exit_code: int | None, log_tail: str) -> bool:
        # Whatever the exit code: the hang in the final merge ends in an NCCL abort after the last
        # checkpoint was already complete.
        return self.work_finished(ctx)

    def progress(self, text: str) -> Progress | None:
        return None

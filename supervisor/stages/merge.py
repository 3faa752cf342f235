"""The ``merge`` kind: the final sharded checkpoint -> one safetensors model, on a big-memory node.

The success rule reads the filesystem, never torch: whatever needs torch runs inside the job
(``jobs/lib/verify_merge.py``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from supervisor.domain.errors import CheckpointError, StageError
from supervisor.domain.spec import StageSpec
from supervisor.domain.types import Progress, StageKind
from supervisor.stages import axolotl, context
from supervisor.stages.base import StageContext, Submission
from supervisor.stages.checkpoints import (
    SHARDED_MODEL_DIR,
    check_shard_index,
    final_reached,
    newest_complete,
    read_model_headers,
    unsharded_model_files,
)
from supervisor.stages.render import VERIFY_MERGE_SCRIPT, common_values, read_template, render, sbatch_directives

MERGE_READY = "supervisor: merged model ready in"

# Copied next to the merged weights: accelerate writes weights only, and a model without its config
# and tokenizer cannot be loaded at the destination.
MODEL_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass(frozen=True)
class MergePlan:
    mode: Literal["merge", "copy"]  # merge: accelerate merge-weights on a sharded checkpoint; copy: unsharded files
    checkpoint: Path | None  # merge: the final checkpoint-N
    model_files: tuple[str, ...] = ()  # copy: file names in output_dir


def plan_merge(config: axolotl.AxolotlConfig) -> MergePlan:
    """Copy an unsharded final model when output_dir holds a whole one (every shard its index lists,
    each the size its header says); else merge the final sharded checkpoint. Raises StageError when
    training has not produced either."""
    files = unsharded_model_files(config.output_dir)
    unusable = ""
    if files:
        try:
            listed = check_shard_index(config.output_dir)
            if listed:  # the shards of the save the index describes; one left from an older save is not shipped
                files = [f for f in files if f.suffix != ".safetensors" or f.name in listed]
            headers = read_model_headers(files)
        except CheckpointError as exc:
            # Half-written by a save that hung or was killed: fall back to the sharded checkpoint.
            unusable = f" (its unsharded model is not whole: {exc})"
        else:
            if headers or not any(f.suffix == ".safetensors" for f in files):
                return MergePlan(mode="copy", checkpoint=None, model_files=tuple(f.name for f in files))
    final = newest_complete(config.output_dir) if final_reached(config.output_dir, config.max_steps) else None
    if final is None:
        raise StageError(f"{config.output_dir}: no complete final checkpoint to merge{unusable}", permanent=False)
    if not (final.path / SHARDED_MODEL_DIR).is_dir():
        raise StageError(f"{final.path}: no {SHARDED_MODEL_DIR} to merge (not a sharded checkpoint)")
    return MergePlan(mode="merge", checkpoint=final.path)


def render_merge(
    ctx: StageContext,
    *,
    venv: Path,
    base_dir: Path,
    output_dir: Path,
    merged: Path,
    plan: MergePlan,
    verify_script: Path = VERIFY_MERGE_SCRIPT,
) -> str:
    values = common_values(ctx, sbatch_directives(ctx.spec), venv=venv, base_dir=base_dir)
    values.update(
        mode=plan.mode,
        output_dir=shlex.quote(str(output_dir)),
        checkpoint=shlex.quote(str(plan.checkpoint) if plan.checkpoint else ""),
        merged_dir=shlex.quote(str(merged)),
        model_files=" ".join(shlex.quote(name) for name in plan.model_files),
        extra_files=" ".join(MODEL_SIDE_FILES),
        verify_script=shlex.quote(str(verify_script)),
    )
    return render(read_template("merge"), values)


def merged_model_ok(directory: Path) -> bool:
    """Supervisor-side check of a merged model before the transfer stage ships it: config present,
    safetensors headers consistent, and every shard its index lists there."""
    files = unsharded_model_files(directory)
    if not files or not (directory / "config.json").is_file():
        return False
    try:
        check_shard_index(directory)
        headers = read_model_headers(files)
    except CheckpointError:
        return False
    return bool(headers) or not any(f.suffix == ".safetensors" for f in files)


class MergeKind:
    kind: StageKind = StageKind.MERGE

    def runs_locally(self, spec: StageSpec) -> bool:
        return False

    def prepare(self, ctx: StageContext) -> Submission:
        config = context.load_axolotl_config(ctx)
        venv = context.venv(ctx)
        base_dir = context.base_dir(ctx)
        try:
            plan = plan_merge(config)
        except StageError as exc:
            if not ctx.dry_run or exc.permanent:
                raise
            # `plan` before training: the merge of the final checkpoint training is to write.
            final = f"checkpoint-{config.max_steps}" if config.max_steps else "checkpoint-<final step>"
            plan = MergePlan(mode="merge", checkpoint=config.output_dir / final)
        text = render_merge(
            ctx,
            venv=venv,
            base_dir=base_dir,
            output_dir=config.output_dir,
            merged=context.merged_dir(ctx, config),
            plan=plan,
        )
        return Submission(script=context.write_script(ctx, text))

    def work_finished(self, ctx: StageContext) -> bool:
        return False

    def last_saved(self, ctx: StageContext) -> str | None:
        return None

    def succeeded(self, ctx: StageContext, exit_code: int | None, log_tail: str) -> bool:
        config = context.load_axolotl_config(ctx)
        return MERGE_READY in context.plain_text(log_tail) and merged_model_ok(context.merged_dir(ctx, config))

    def progress(self, text: str) -> Progress | None:
        return None

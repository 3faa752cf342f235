"""The ``prepare`` kind: ``axolotl preprocess`` on one CPU node, cleaning up after a failed attempt first.

Each attempt first writes down what ``dataset_prepared_path`` holds (``prepared-before.json`` in its attempt
directory); a retry removes only the entries that were not there before the failed attempt, so a dataset
another run prepared into the same directory survives (stages/datasets.py).
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from supervisor.domain.spec import StageSpec
from supervisor.domain.types import Progress, StageKind
from supervisor.stages import axolotl, context, datasets
from supervisor.stages.base import StageContext, Submission
from supervisor.stages.datasets import prepared_dataset_present
from supervisor.stages.render import common_values, read_template, render, sbatch_directives

PREPROCESS_SUCCESS = "Success! Preprocessed data path"


def render_prepare(ctx: StageContext, *, venv: Path, base_dir: Path, config: Path, dataset_prepared_path: Path) -> str:
    values = common_values(ctx, sbatch_directives(ctx.spec), venv=venv, base_dir=base_dir)
    values["config"] = shlex.quote(str(config))
    values["dataset_prepared_path"] = shlex.quote(str(dataset_prepared_path))
    return render(read_template("prepare"), values)


class PrepareKind:
    kind: StageKind = StageKind.PREPARE

    def runs_locally(self, spec: StageSpec) -> bool:
        return False

    def prepare(self, ctx: StageContext) -> Submission:
        config = context.load_axolotl_config(ctx)
        venv = context.venv(ctx)
        base_dir = context.base_dir(ctx)
        cleaned: list[Path] = []
        if ctx.attempt > 1 and not ctx.dry_run:
            # A killed preprocess leaves half a dataset that axolotl would load as if it were whole.
            failed = context.attempt_dir(dataclasses.replace(ctx, attempt=ctx.attempt - 1))
            cleaned = datasets.clean_after_failed_attempt(
                config.dataset_prepared_path, datasets.read_snapshot(failed),
                protect=(base_dir, config.output_dir, ctx.workdir, config.path),
            )
        datasets.write_snapshot(config.dataset_prepared_path, context.attempt_dir(ctx))
        derived = axolotl.write_derived(config, axolotl.prepare_overrides(config), context.attempt_dir(ctx))
        text = render_prepare(
            ctx, venv=venv, base_dir=base_dir, config=derived, dataset_prepared_path=config.dataset_prepared_path
        )
        return Submission(script=context.write_script(ctx, text), derived_config=derived, cleaned=tuple(cleaned))

    def work_finished(self, ctx: StageContext) -> bool:
        return False

    def last_saved(self, ctx: StageContext) -> str | None:
        return None

    def succeeded(self, ctx: StageContext, exit_code: int | None, log_tail: str) -> bool:
        config = context.load_axolotl_config(ctx)
        return PREPROCESS_SUCCESS in context.plain_text(log_tail) and prepared_dataset_present(
            config.dataset_prepared_path
        )

    def progress(self, text: str) -> Progress | None:
        return None

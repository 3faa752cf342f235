"""Where one attempt's files go and which config, venv and directories it uses.

Shared by the kinds that render their own job (prepare, train, merge) and by transfer; every
function reads a :class:`~supervisor.stages.base.StageContext` and, except :func:`write_script`,
writes nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

from supervisor.domain.errors import StageError
from supervisor.stages import axolotl
from supervisor.stages.base import StageContext

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def attempt_dir(ctx: StageContext) -> Path:
    return ctx.workdir / "stages" / ctx.stage / f"attempt-{ctx.attempt}"


def axolotl_config_path(ctx: StageContext) -> Path:
    if ctx.axolotl_config is None:
        raise StageError(f"stage {ctx.stage} ({ctx.kind}) needs axolotl_config in the run spec")
    return ctx.axolotl_config


def base_dir(ctx: StageContext) -> Path:
    if ctx.base_dir is not None:
        return ctx.base_dir.absolute()
    return axolotl_config_path(ctx).absolute().parent


def load_axolotl_config(ctx: StageContext) -> axolotl.AxolotlConfig:
    return axolotl.load_config(axolotl_config_path(ctx), base_dir=base_dir(ctx))


def venv(ctx: StageContext) -> Path:
    found = ctx.spec.venv or ctx.venv
    if not found:
        raise StageError(f"stage {ctx.stage} ({ctx.kind}) needs a venv (run spec `venv`)")
    return found.absolute()


def merged_dir(ctx: StageContext, config: axolotl.AxolotlConfig) -> Path:
    if ctx.merged_dir is not None:
        return ctx.merged_dir if ctx.merged_dir.is_absolute() else base_dir(ctx) / ctx.merged_dir
    return config.output_dir / "merged"


def write_script(ctx: StageContext, text: str) -> Path:
    """Write the attempt's sbatch script; the rename means a crash never leaves half a script behind."""
    directory = attempt_dir(ctx)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{ctx.stage}.sbatch"
    tmp = directory / f".{ctx.stage}.sbatch.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o755)
    tmp.replace(path)
    return path


def plain_text(log_tail: str) -> str:
    """The log tail without colour codes: axolotl colours the lines the success rules look for."""
    return _ANSI.sub("", log_tail)

"""Rendering sbatch scripts from ``jobs/templates``: the template engine and the ``#SBATCH`` lines.

Pure functions, golden-tested (tests/golden/*.sbatch); the kinds that render a job call them from
their own ``render_*`` function and write the result with :func:`supervisor.stages.context.write_script`.
"""

from __future__ import annotations

import re
import shlex
import string
from collections.abc import Mapping
from datetime import timedelta
from importlib import resources
from pathlib import Path

from supervisor.domain.errors import StageError
from supervisor.domain.spec import StageSpec
from supervisor.stages.base import StageContext

REPO_ROOT = Path(__file__).resolve().parents[2]


def _jobs_dir() -> Path:
    """jobs/ of a source checkout, else the copy installed inside the package (supervisor._jobs)."""
    checkout = REPO_ROOT / "jobs"
    if (checkout / "templates").is_dir():
        return checkout
    return Path(str(resources.files("supervisor") / "_jobs"))


JOBS_DIR = _jobs_dir()
TEMPLATES_DIR = JOBS_DIR / "templates"
VERIFY_MERGE_SCRIPT = JOBS_DIR / "lib" / "verify_merge.py"

# Values that end up on an `#SBATCH` line or in a rendezvous id: no spaces, quotes or newlines.
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_.,:@%+=/\[\]-]+")


class _SbatchTemplate(string.Template):
    """``{{name}}`` placeholders: bash owns ``$``, so shell variables pass through untouched.

    A ``{{`` not followed by a known ``name}}`` is an error rather than silently left in place.
    """

    delimiter = "{{"
    # A str here is what Template.__init_subclass__ expects and compiles; typeshed only knows the result.
    pattern = r"""
    \{\{(?:
      (?P<escaped>(?!))|
      (?P<named>[a-z][a-z0-9_]*)\}\}|
      (?P<braced>(?!))|
      (?P<invalid>)
    )
    """  # type: ignore[assignment]


def render(template: str, values: Mapping[str, str]) -> str:
    return _SbatchTemplate(template).substitute(values)


def read_template(name: str) -> str:
    return (TEMPLATES_DIR / f"{name}.sbatch").read_text(encoding="utf-8")


def token(name: str, value: object) -> str:
    """``value`` as it may appear on an ``#SBATCH`` line; StageError naming ``name`` otherwise."""
    text = str(value)
    if not _SAFE_TOKEN.fullmatch(text):
        raise StageError(f"{name}: {text!r} is not a valid SLURM value")
    return text


def format_time(value: str | int | timedelta) -> str:
    """A SLURM ``--time`` value from a string ("24:00:00"), minutes (int) or a timedelta."""
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
        days, rest = divmod(seconds, 86400)
        hours, rest = divmod(rest, 3600)
        minutes, secs = divmod(rest, 60)
        clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
        return f"{days}-{clock}" if days else clock
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return token("time", value)
    raise StageError(f"time: expected HH:MM:SS, minutes or a duration, got {value!r}")


def sbatch_directives(spec: StageSpec, *, nodes: int = 1, gpus_per_node: int = 0) -> list[str]:
    """``#SBATCH`` lines for one stage; unset options produce no line.

    ``nodes`` and ``gpus_per_node`` are the kind's to decide (only train spans nodes and asks for GPUs),
    so they are arguments rather than read from ``spec``.
    """
    lines = [f"--nodes={nodes}", "--ntasks-per-node=1"]
    if gpus_per_node > 0:
        lines.append(f"--gpus-per-node={gpus_per_node}")
    for key, flag, value in (
        ("cpus_per_task", "cpus-per-task", spec.cpus_per_task),
        ("mem", "mem", spec.mem),
        ("partition", "partition", spec.partition),
        ("account", "account", spec.account),
        ("qos", "qos", spec.qos),
    ):
        if value is not None and value != "":
            lines.append(f"--{flag}={token(key, value)}")
    if spec.time is not None:
        lines.append(f"--time={format_time(spec.time)}")
    if spec.exclusive:
        lines.append("--exclusive")
    return [f"#SBATCH {line}" for line in lines]


def common_values(ctx: StageContext, directives: list[str], *, venv: Path, base_dir: Path) -> dict[str, str]:
    """The placeholders every template has."""
    return {
        "sbatch_directives": "\n".join(directives),
        "run": ctx.run,
        "stage": ctx.stage,
        "attempt": str(ctx.attempt),
        "venv": shlex.quote(str(venv)),
        "base_dir": shlex.quote(str(base_dir)),
    }

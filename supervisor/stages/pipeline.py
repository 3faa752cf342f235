"""What each stage kind does: the hooks the daemon calls around one attempt of one stage.

Kinds: ``prepare`` (axolotl preprocess on one CPU node), ``train`` (axolotl + torchrun on N nodes),
``merge`` (sharded checkpoint -> one safetensors model, on a big-memory node), ``transfer`` (rsync
from the supervisor's own host) and ``script`` (a user's sbatch script, judged by its exit code).

``prepare_submission`` is the only hook with side effects (derived config, rendered script,
pre-retry cleanup, moving incomplete checkpoints aside); the ``render_*`` functions it calls are pure
and golden-tested. The success rules read the filesystem, never torch: whatever needs torch runs
inside the job (``jobs/lib/verify_merge.py``).
"""

from __future__ import annotations

import re
import shlex
import shutil
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import supervisor
from supervisor.domain.errors import CheckpointError, StageError
from supervisor.stages import axolotl
from supervisor.stages.checkpoints import (
    SHARDED_MODEL_DIR,
    move_aside_incomplete,
    newest_complete,
    read_model_headers,
    unsharded_model_files,
)
from supervisor.stages.checkpoints import final_reached as _final_reached
from supervisor.stages.rsync import VERIFIED_MARKER

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

SBATCH_KINDS = ("prepare", "train", "merge")
KINDS = (*SBATCH_KINDS, "transfer", "script")

DEFAULT_MASTER_PORT = 29500
PREPROCESS_SUCCESS = "Success! Preprocessed data path"
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

# What `axolotl preprocess` leaves in dataset_prepared_path: one directory per dataset hash (md5) and
# the file lock trio of axolotl.utils.data.lock. Anything else there is not ours to delete.
_PREPARED_HASH_DIR = re.compile(r"[0-9a-f]{32}")
_PREPARED_LOCK_FILES = frozenset({"datasets_prep.lock", "datasets_ready.flag", "process_counter.txt"})
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Values that end up on an `#SBATCH` line or in a rendezvous id: no spaces, quotes or newlines.
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_.,:@%+=/\[\]-]+")


@dataclass(frozen=True)
class StageContext:
    run: str
    stage: str
    kind: str  # prepare | train | merge | transfer | script
    attempt: int  # 1-based
    workdir: Path  # the run's workdir: logs/ and the rendered files live under it
    options: Mapping[str, Any]  # the stage's validated spec entry
    axolotl_config: Path | None = None
    venv: Path | None = None
    merged_dir: Path | None = None  # None: <output_dir>/merged
    # The directory the jobs `cd` into and against which relative paths in the axolotl config
    # resolve (the run spec's directory). None: the axolotl config's own directory.
    base_dir: Path | None = None


@dataclass(frozen=True)
class Submission:
    """What to start for one attempt: an sbatch script, or a command on the supervisor's host."""

    script: Path | None = None
    command: tuple[str, ...] | None = None
    sbatch_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    derived_config: Path | None = None
    resume_from: Path | None = None  # train: the checkpoint this attempt resumes from
    moved_aside: tuple[Path, ...] = ()  # train: incomplete checkpoints renamed before this attempt
    cleaned: tuple[Path, ...] = ()  # prepare: prepared-data entries removed before this retry


@dataclass(frozen=True)
class MergePlan:
    mode: str  # "merge": accelerate merge-weights on a sharded checkpoint; "copy": unsharded files
    checkpoint: Path | None  # merge: the final checkpoint-N
    model_files: tuple[str, ...] = ()  # copy: file names in output_dir


# --------------------------------------------------------------------------------------------------
# Context helpers


def attempt_dir(ctx: StageContext) -> Path:
    return ctx.workdir / "stages" / ctx.stage / f"attempt-{ctx.attempt}"


def _base_dir(ctx: StageContext) -> Path:
    if ctx.base_dir is not None:
        return ctx.base_dir.absolute()
    return _require_config_path(ctx).absolute().parent


def _require_config_path(ctx: StageContext) -> Path:
    if ctx.axolotl_config is None:
        raise StageError(f"stage {ctx.stage} ({ctx.kind}) needs axolotl_config in the run spec")
    return ctx.axolotl_config


def load_axolotl_config(ctx: StageContext) -> axolotl.AxolotlConfig:
    return axolotl.load_config(_require_config_path(ctx), base_dir=_base_dir(ctx))


def _venv(ctx: StageContext) -> Path:
    venv = ctx.options.get("venv") or ctx.venv
    if not venv:
        raise StageError(f"stage {ctx.stage} ({ctx.kind}) needs a venv (run spec `venv`)")
    return Path(venv).absolute()


def merged_dir(ctx: StageContext, config: axolotl.AxolotlConfig) -> Path:
    if ctx.merged_dir is not None:
        return ctx.merged_dir if ctx.merged_dir.is_absolute() else _base_dir(ctx) / ctx.merged_dir
    return config.output_dir / "merged"


def rdzv_id(ctx: StageContext) -> str:
    """Unique per attempt and identical on every node of it."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{ctx.run}-{ctx.stage}-{ctx.attempt}")


def _gpus_per_node(options: Mapping[str, Any]) -> int:
    return int(options.get("gpus_per_node") or 0)


# --------------------------------------------------------------------------------------------------
# Rendering (pure)


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


def format_time(value: Any) -> str:
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
        return _token("time", value)
    raise StageError(f"time: expected HH:MM:SS, minutes or a duration, got {value!r}")


def _token(name: str, value: Any) -> str:
    text = str(value)
    if not _SAFE_TOKEN.fullmatch(text):
        raise StageError(f"{name}: {text!r} is not a valid SLURM value")
    return text


def sbatch_directives(kind: str, options: Mapping[str, Any]) -> list[str]:
    """``#SBATCH`` lines for one stage; unset options produce no line."""
    nodes = int(options.get("nodes") or 1) if kind == "train" else 1
    lines = [f"--nodes={nodes}", "--ntasks-per-node=1"]
    gpus = _gpus_per_node(options)
    if kind == "train" and gpus > 0:
        lines.append(f"--gpus-per-node={gpus}")
    for key, flag in (
        ("cpus_per_task", "cpus-per-task"),
        ("mem", "mem"),
        ("partition", "partition"),
        ("account", "account"),
        ("qos", "qos"),
    ):
        value = options.get(key)
        if value is not None and value != "":
            lines.append(f"--{flag}={_token(key, value)}")
    if options.get("time") is not None:
        lines.append(f"--time={format_time(options['time'])}")
    if options.get("exclusive"):
        lines.append("--exclusive")
    return [f"#SBATCH {line}" for line in lines]


def render(template: str, values: Mapping[str, str]) -> str:
    return _SbatchTemplate(template).substitute(values)


def _read_template(kind: str, templates_dir: Path | None) -> str:
    return ((templates_dir or TEMPLATES_DIR) / f"{kind}.sbatch").read_text(encoding="utf-8")


def _common_values(ctx: StageContext, *, venv: Path, base_dir: Path) -> dict[str, str]:
    return {
        "sbatch_directives": "\n".join(sbatch_directives(ctx.kind, ctx.options)),
        "run": ctx.run,
        "stage": ctx.stage,
        "attempt": str(ctx.attempt),
        "venv": shlex.quote(str(venv)),
        "base_dir": shlex.quote(str(base_dir)),
    }


def render_prepare(
    ctx: StageContext,
    *,
    venv: Path,
    base_dir: Path,
    config: Path,
    dataset_prepared_path: Path,
    templates_dir: Path | None = None,
) -> str:
    values = _common_values(ctx, venv=venv, base_dir=base_dir)
    values["config"] = shlex.quote(str(config))
    values["dataset_prepared_path"] = shlex.quote(str(dataset_prepared_path))
    return render(_read_template("prepare", templates_dir), values)


def render_train(
    ctx: StageContext,
    *,
    venv: Path,
    base_dir: Path,
    config: Path,
    resume_from: Path | None,
    templates_dir: Path | None = None,
) -> str:
    gpus = _gpus_per_node(ctx.options)
    values = _common_values(ctx, venv=venv, base_dir=base_dir)
    values.update(
        config=shlex.quote(str(config)),
        nodes=str(int(ctx.options.get("nodes") or 1)),
        # gpus_per_node 0 is a CPU-only launch: one process per node.
        nproc_per_node=str(gpus if gpus > 0 else 1),
        rdzv_id=rdzv_id(ctx),
        master_port=str(int(ctx.options.get("master_port") or DEFAULT_MASTER_PORT)),
        resume_from=shlex.quote(str(resume_from)) if resume_from else "scratch",
    )
    return render(_read_template("train", templates_dir), values)


def render_merge(
    ctx: StageContext,
    *,
    venv: Path,
    base_dir: Path,
    output_dir: Path,
    merged: Path,
    plan: MergePlan,
    verify_script: Path = VERIFY_MERGE_SCRIPT,
    templates_dir: Path | None = None,
) -> str:
    values = _common_values(ctx, venv=venv, base_dir=base_dir)
    values.update(
        mode=plan.mode,
        output_dir=shlex.quote(str(output_dir)),
        checkpoint=shlex.quote(str(plan.checkpoint) if plan.checkpoint else ""),
        merged_dir=shlex.quote(str(merged)),
        model_files=" ".join(shlex.quote(name) for name in plan.model_files),
        extra_files=" ".join(MODEL_SIDE_FILES),
        verify_script=shlex.quote(str(verify_script)),
    )
    return render(_read_template("merge", templates_dir), values)


def transfer_command(source: Path, destination: str, *, attempts: int = 5, backoff: float = 30.0) -> tuple[str, ...]:
    return (
        sys.executable, "-m", "supervisor.stages.rsync", str(source), destination,
        "--attempts", str(attempts), "--backoff", str(backoff),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Filesystem work done before an attempt


def clean_prepared_data(prepared: Path, *, protect: Sequence[Path] = ()) -> list[Path]:
    """Remove what an earlier preprocessing attempt left in ``prepared``; return what was removed.

    Only axolotl's own entries (dataset-hash directories and its lock files) directly inside
    ``prepared`` are removed; a symlink is unlinked, never followed. Refuses a ``prepared`` that is
    the filesystem root, the home directory, or contains any ``protect`` path.
    """
    if not prepared.exists():
        return []
    root = prepared.resolve()
    if root == Path(root.anchor) or root == Path.home().resolve():
        raise StageError(f"refusing to clean dataset_prepared_path {prepared}: too broad")
    for path in protect:
        if path.resolve().is_relative_to(root):
            raise StageError(f"refusing to clean dataset_prepared_path {prepared}: it contains {path}")
    removed = []
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            if _PREPARED_HASH_DIR.fullmatch(entry.name) or entry.name in _PREPARED_LOCK_FILES:
                entry.unlink()
                removed.append(entry)
            continue
        if entry.is_dir() and _PREPARED_HASH_DIR.fullmatch(entry.name):
            if entry.resolve().parent != root:
                raise StageError(f"refusing to remove {entry}: not inside {root}")
            shutil.rmtree(entry)
            removed.append(entry)
        elif entry.is_file() and entry.name in _PREPARED_LOCK_FILES:
            entry.unlink()
            removed.append(entry)
    return removed


def prepared_dataset_present(prepared: Path) -> bool:
    """A dataset saved by ``save_to_disk`` (its ``state.json`` and an arrow file) under ``prepared``."""
    if not prepared.is_dir():
        return False
    for entry in prepared.iterdir():
        if not (entry.is_dir() and _PREPARED_HASH_DIR.fullmatch(entry.name)):
            continue
        for state in entry.rglob("state.json"):
            if any(state.parent.glob("*.arrow")):
                return True
    return False


def plan_merge(config: axolotl.AxolotlConfig) -> MergePlan:
    """Copy an unsharded final model when output_dir holds a readable one; else merge the final
    sharded checkpoint. Raises StageError when training has not produced either."""
    files = unsharded_model_files(config.output_dir)
    if files:
        try:
            headers = read_model_headers(files)
        except CheckpointError:
            headers = {}  # half-written by a save that hung: fall back to the sharded checkpoint
        if headers or not any(f.suffix == ".safetensors" for f in files):
            return MergePlan(mode="copy", checkpoint=None, model_files=tuple(f.name for f in files))
    if not _final_reached(config.output_dir, config.max_steps):
        raise StageError(f"{config.output_dir}: no complete final checkpoint to merge", permanent=False)
    final = newest_complete(config.output_dir)
    assert final is not None  # final_reached implies one
    if not (final.path / SHARDED_MODEL_DIR).is_dir():
        raise StageError(f"{final.path}: no {SHARDED_MODEL_DIR} to merge (not a sharded checkpoint)")
    return MergePlan(mode="merge", checkpoint=final.path)


def _write_script(ctx: StageContext, text: str) -> Path:
    directory = attempt_dir(ctx)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{ctx.stage}.sbatch"
    tmp = directory / f".{ctx.stage}.sbatch.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o755)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------------
# The hooks


def prepare_submission(ctx: StageContext, *, templates_dir: Path | None = None) -> Submission:
    """Write what one attempt needs into the workdir and say how to start it.

    Raises StageError or AxolotlConfigError (both permanent unless flagged otherwise).
    """
    if ctx.kind == "script":
        script = ctx.options.get("script")
        if not script:
            raise StageError(f"stage {ctx.stage}: kind script needs `script`")
        return Submission(script=Path(script))
    if ctx.kind not in KINDS:
        raise StageError(f"stage {ctx.stage}: unknown kind {ctx.kind!r}")

    config = load_axolotl_config(ctx)
    if ctx.kind == "transfer":
        destination = ctx.options.get("destination")
        if not destination:
            raise StageError(f"stage {ctx.stage}: kind transfer needs `destination`")
        command = transfer_command(
            merged_dir(ctx, config),
            str(destination),
            attempts=int(ctx.options.get("attempts") or 5),
            backoff=float(ctx.options.get("backoff") or 30.0),
        )
        # The command runs `-m supervisor.stages.rsync` from the run's workdir: make the package findable.
        package_root = str(Path(supervisor.__file__).resolve().parents[1])
        return Submission(command=command, env={"PYTHONPATH": package_root})

    venv = _venv(ctx)
    base_dir = _base_dir(ctx)
    out = attempt_dir(ctx)
    if ctx.kind == "prepare":
        cleaned: list[Path] = []
        if ctx.attempt > 1:
            cleaned = clean_prepared_data(
                config.dataset_prepared_path,
                protect=(base_dir, config.output_dir, ctx.workdir, config.path),
            )
        derived = axolotl.write_derived(config, axolotl.prepare_overrides(config), out)
        text = render_prepare(
            ctx,
            venv=venv,
            base_dir=base_dir,
            config=derived,
            dataset_prepared_path=config.dataset_prepared_path,
            templates_dir=templates_dir,
        )
        return Submission(script=_write_script(ctx, text), derived_config=derived, cleaned=tuple(cleaned))

    if ctx.kind == "train":
        moved = move_aside_incomplete(config.output_dir)
        newest = newest_complete(config.output_dir)
        resume = newest.path if newest else None
        derived = axolotl.write_derived(config, axolotl.train_overrides(config, resume), out)
        text = render_train(
            ctx, venv=venv, base_dir=base_dir, config=derived, resume_from=resume, templates_dir=templates_dir
        )
        return Submission(
            script=_write_script(ctx, text),
            derived_config=derived,
            resume_from=resume,
            moved_aside=tuple(moved),
        )

    plan = plan_merge(config)
    text = render_merge(
        ctx,
        venv=venv,
        base_dir=base_dir,
        output_dir=config.output_dir,
        merged=merged_dir(ctx, config),
        plan=plan,
        templates_dir=templates_dir,
    )
    return Submission(script=_write_script(ctx, text))


def merged_model_ok(directory: Path) -> bool:
    """Supervisor-side check of a merged model: config present, safetensors headers consistent."""
    files = unsharded_model_files(directory)
    if not files or not (directory / "config.json").is_file():
        return False
    try:
        headers = read_model_headers(files)
    except CheckpointError:
        return False
    return bool(headers) or not any(f.suffix == ".safetensors" for f in files)


def check_success(ctx: StageContext, exit_code: int | None, log_tail: str) -> bool:
    """The kind's success rule, applied once the attempt's job has ended."""
    if ctx.kind == "script":
        return exit_code == 0
    if ctx.kind == "transfer":
        return exit_code == 0 and VERIFIED_MARKER in log_tail
    tail = _ANSI.sub("", log_tail)
    if ctx.kind == "prepare":
        config = load_axolotl_config(ctx)
        return PREPROCESS_SUCCESS in tail and prepared_dataset_present(config.dataset_prepared_path)
    if ctx.kind == "train":
        # Whatever the exit code: the hang in the final merge ends in an NCCL abort after the last
        # checkpoint was already complete.
        return training_finished(ctx)
    if ctx.kind == "merge":
        config = load_axolotl_config(ctx)
        return MERGE_READY in tail and merged_model_ok(merged_dir(ctx, config))
    raise StageError(f"stage {ctx.stage}: unknown kind {ctx.kind!r}")


def training_finished(ctx: StageContext) -> bool:
    """Final checkpoint complete with global_step >= max_steps."""
    config = load_axolotl_config(ctx)
    return _final_reached(config.output_dir, config.max_steps)


def resume_checkpoint(ctx: StageContext) -> Path | None:
    """The checkpoint the next training attempt would resume from (no side effects)."""
    newest = newest_complete(load_axolotl_config(ctx).output_dir)
    return newest.path if newest else None

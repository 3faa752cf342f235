"""The run spec: a YAML file describing one pipeline. Validated up front with errors that name file and field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from supervisor.domain.durations import parse_duration
from supervisor.domain.errors import SpecError
from supervisor.domain.types import StageKind
from supervisor.notify.config import NotifyChannelSpec

NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")



def _duration(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


Duration = Annotated[float, BeforeValidator(_duration)]


class _Strict(BaseModel):
    # hide_input_in_errors: a secret pasted into the wrong field must not be echoed back in the error.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class StageSpec(_Strict):
    name: str = Field(pattern=NAME_RE.pattern)
    kind: StageKind = StageKind.SCRIPT
    script: Path | None = None
    command: list[str] | None = Field(default=None, min_length=1)
    sbatch_args: list[str] = []
    max_attempts: int = Field(default=3, ge=1, le=1000)
    # First wait before a resubmission; doubles with every failed attempt (capped at one hour).
    retry_backoff: Duration = 30.0
    env: dict[str, str] = {}
    # Hang detection: no log output and no new checkpoint for this long => cancel and resubmit.
    stall_timeout: Duration | None = None
    # Until the first training step shows up (NVCC/rendezvous hangs happen here).
    startup_timeout: Duration | None = None
    # Pipeline kinds (prepare/train/merge/transfer) render their own sbatch script from these.
    nodes: int | None = Field(default=None, ge=1)
    gpus_per_node: int | None = Field(default=None, ge=0)
    cpus_per_task: int | None = Field(default=None, ge=1)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    mem: str | None = None
    exclusive: bool = False
    master_port: int | None = Field(default=None, ge=1, le=65535)
    venv: Path | None = None
    destination: str | None = None

    @model_validator(mode="after")
    def _what_to_run(self) -> StageSpec:
        if self.kind is StageKind.SCRIPT:
            if (self.script is None) == (self.command is None):
                raise ValueError("a stage needs exactly one of `script` (an sbatch script) or `command`")
        elif self.script is not None or self.command is not None:
            raise ValueError(f"a `{self.kind}` stage renders its own job: drop `script`/`command`")
        if self.kind is StageKind.TRANSFER and not self.destination:
            raise ValueError("a `transfer` stage needs `destination` (a local path or host:path)")
        return self


class RunSpec(_Strict):
    name: str = Field(pattern=NAME_RE.pattern)
    backend: Literal["slurm", "local"] | None = None
    workdir: Path | None = None
    stages: list[StageSpec] = Field(min_length=1)
    axolotl_config: Path | None = None
    venv: Path | None = None
    merged_dir: Path | None = None
    signatures: list[dict[str, Any]] = []
    notify: list[NotifyChannelSpec] = []

    @model_validator(mode="after")
    def _unique_stages(self) -> RunSpec:
        seen: set[str] = set()
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"duplicate stage name {stage.name!r}")
            seen.add(stage.name)
        kinds = {s.kind for s in self.stages}
        if kinds & {StageKind.PREPARE, StageKind.TRAIN, StageKind.MERGE} and self.axolotl_config is None:
            raise ValueError("prepare/train/merge stages need `axolotl_config`")
        return self


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in {"constrained-str"}:
            continue
        else:
            out += f".{part}" if out else part
    return out


def _first_error(path: Path, exc: ValidationError) -> SpecError:
    err = exc.errors()[0]
    loc = _loc(tuple(err["loc"]))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "string_pattern_mismatch":
        msg = f"{err.get('input')!r} is not a valid name: expected 1-64 of A-Z a-z 0-9 . _ -"
    elif msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
    return SpecError(path, loc, msg)


def _resolve(base: Path, value: Path | None) -> Path | None:
    if value is None:
        return None
    value = value.expanduser()
    return value if value.is_absolute() else (base / value).resolve()


def load_spec(path: Path) -> RunSpec:
    """Read, validate and resolve a spec; every relative path becomes relative to the spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(path, "", "file not found") from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as exc:
        raise SpecError(path, "", f"cannot read the file: {exc.__class__.__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError(path, where, f"invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError(path, "", "expected a YAML mapping with `name` and `stages`")
    try:
        spec = RunSpec.model_validate(data)
    except ValidationError as exc:
        raise _first_error(path, exc) from None
    if spec.signatures:
        from supervisor.domain.errors import SignatureError
        from supervisor.logs.scanner import Catalogue

        try:
            Catalogue.load(spec.signatures, source=str(path))
        except SignatureError as exc:
            # The message already names the file, the entry and the field.
            raise SpecError(path, "", str(exc).removeprefix(f"{path}: ")) from None
    return _resolve_paths(path, spec)


def _resolve_paths(path: Path, spec: RunSpec) -> RunSpec:
    base = path.resolve().parent
    stages = []
    for i, stage in enumerate(spec.stages):
        script = _resolve(base, stage.script)
        if script is not None and not script.is_file():
            raise SpecError(path, f"stages[{i}].script", f"file not found: {stage.script}")
        if script is not None and not _readable(script):
            raise SpecError(path, f"stages[{i}].script", f"file not readable: {stage.script}")
        stages.append(stage.model_copy(update={"script": script, "venv": _resolve(base, stage.venv)}))
    axolotl_config = _resolve(base, spec.axolotl_config)
    if axolotl_config is not None:
        if not axolotl_config.is_file():
            raise SpecError(path, "axolotl_config", f"file not found: {spec.axolotl_config}")
        from supervisor.domain.errors import AxolotlConfigError
        from supervisor.stages.axolotl import load_config

        try:
            # A config the pipeline cannot work with fails here, not hours later in a queued job.
            load_config(axolotl_config, base_dir=base)
        except AxolotlConfigError as exc:
            raise SpecError(path, "axolotl_config", str(exc)) from None
    workdir = _resolve(base, spec.workdir) or (base / "runs" / spec.name)
    return spec.model_copy(
        update={
            "stages": stages,
            "workdir": workdir,
            "axolotl_config": axolotl_config,
            "venv": _resolve(base, spec.venv),
            "merged_dir": _resolve(base, spec.merged_dir),
        }
    )


def _readable(path: Path) -> bool:
    try:
        with path.open("rb"):
            return True
    except OSError:
        return False

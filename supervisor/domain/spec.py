"""The run spec: a YAML file describing one pipeline. Validated up front with errors that name file and field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from supervisor.domain.defaults import FINISH_GRACE_S, MAX_EXCLUDED_NODES, PENDING_GRACE_S
from supervisor.domain.durations import parse_duration
from supervisor.domain.errors import SpecError
from supervisor.domain.paths import directory_problem, file_problem
from supervisor.domain.types import StageKind
from supervisor.notify.config import NotifyChannelSpec

# A leading letter or digit: `.`, `..` and `-rf` become directory names and command-line words.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "expected 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _duration(value: Any) -> float | None:
    if value is None:
        return None
    return parse_duration(value)


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise ValueError("must be more than 0 (leave it out to switch the check off)")
    return value


# retry_backoff may be 0 (resubmit at once); a timeout of 0 would cancel every job at its first poll.
Duration = Annotated[float, BeforeValidator(_duration)]
PositiveDuration = Annotated[float, BeforeValidator(_duration), AfterValidator(_positive)]
# strict: YAML `true` is an int to pydantic's lax mode, and `max_attempts: true` must not mean 1.
Count = Annotated[int, Field(strict=True)]


def _nul_at(value: Any, loc: str = "") -> str | None:
    """Where the first NUL byte in the parsed document is (a field path), or None."""
    if isinstance(value, str):
        return loc if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{loc}.{key}" if loc else str(key)
            if isinstance(key, str) and "\x00" in key:
                return f"{loc or '<top level>'} (a key)"
            if (found := _nul_at(item, sub)) is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _nul_at(item, f"{loc}[{i}]")) is not None:
                return found
    return None


class _Strict(BaseModel):
    # hide_input_in_errors: a secret pasted into the wrong field must not be echoed back in the error.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class StageSpec(_Strict):
    name: str = Field(pattern=NAME_RE.pattern)
    kind: StageKind = StageKind.SCRIPT
    script: Path | None = None
    command: list[str] | None = Field(default=None, min_length=1)
    sbatch_args: list[str] = []
    max_attempts: Count = Field(default=3, ge=1, le=1000)
    # First wait before a resubmission; doubles with every failed attempt (capped at one hour).
    retry_backoff: Duration = 30.0
    env: dict[str, str] = {}
    # Hang detection: no log output and no new checkpoint for this long => cancel and resubmit.
    stall_timeout: PositiveDuration | None = None
    # Until the first training step shows up (NVCC/rendezvous hangs happen here).
    startup_timeout: PositiveDuration | None = None
    # A job pending this long for a reason waiting never clears (PartitionNodeLimit, ...) needs a person.
    pending_grace: Duration = PENDING_GRACE_S
    # Once the stage's work is saved (train: the final checkpoint complete), this long without log output
    # ends the job as finished: the end-of-training hang. Off with `null`.
    finish_grace: PositiveDuration | None = FINISH_GRACE_S
    # Pipeline kinds (prepare/train/merge/transfer) render their own sbatch script from these.
    nodes: Count | None = Field(default=None, ge=1)
    gpus_per_node: Count | None = Field(default=None, ge=0)
    cpus_per_task: Count | None = Field(default=None, ge=1)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    mem: str | None = None
    exclusive: bool = False
    master_port: Count | None = Field(default=None, ge=1, le=65535)
    venv: Path | None = None
    destination: str | None = None

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        # `A=B` or `1X` cannot be exported: sbatch --export and the shell would split or drop them.
        if not all(ENV_KEY_RE.match(key) for key in env):
            raise ValueError("every key must be a POSIX name: letters, digits and _, not starting with a digit")
        return env

    @field_validator("command")
    @classmethod
    def _program(cls, command: list[str] | None) -> list[str] | None:
        if command and not command[0].strip():
            raise ValueError("the first element (the program to run) is empty")
        return command

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


class Budget(_Strict):
    """Node-hours a run (or a campaign, all its runs together) may spend; past either, nothing new is submitted."""

    node_hours: float | None = Field(default=None, gt=0, strict=True)
    wasted_node_hours: float | None = Field(default=None, gt=0, strict=True)

    @model_validator(mode="after")
    def _something(self) -> Budget:
        if self.node_hours is None and self.wasted_node_hours is None:
            raise ValueError("a budget needs `node_hours`, `wasted_node_hours` or both")
        return self


class RunSpec(_Strict):
    name: str = Field(pattern=NAME_RE.pattern)
    backend: Literal["slurm", "pyslurm", "local"] | None = None
    workdir: Path | None = None
    stages: list[StageSpec] = Field(min_length=1)
    axolotl_config: Path | None = None
    venv: Path | None = None
    merged_dir: Path | None = None
    signatures: list[dict[str, Any]] = []
    notify: list[NotifyChannelSpec] = []
    # Nodes the run may keep excluded at once; past it a person is notified instead (0: never exclude).
    max_excluded_nodes: Count = Field(default=MAX_EXCLUDED_NODES, ge=0, le=1000)
    budget: Budget | None = None

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


def _first_error(path: Path, exc: ValidationError, within: str = "") -> SpecError:
    err = exc.errors()[0]
    loc = _loc(tuple(err["loc"]))
    if within:
        loc = f"{within}.{loc}" if loc else within
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "string_pattern_mismatch" and loc.rsplit(".", 1)[-1] == "name":
        # Never the value: a name field is where a pasted token most often lands.
        msg = f"not a valid name: {NAME_RULE}"
    elif msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
    return SpecError(path, loc, msg)


def _resolve(base: Path, value: Path | None) -> Path | None:
    if value is None:
        return None
    value = value.expanduser()
    if value.is_absolute():
        return value
    try:
        return (base / value).resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13): the checks name it
        return base / value


def _at(within: str, field: str) -> str:
    return f"{within}.{field}" if within else field


def _line_column(text: str, position: int) -> str:
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return f"line {line}, column {column}"


def parse_yaml(text: str) -> tuple[Any, str, str]:
    """``(data, "", "")``, or ``(None, where, problem)``, each one line, when ``text`` is not usable YAML."""
    try:
        return yaml.safe_load(text), "", ""
    except yaml.reader.ReaderError as exc:
        # A control character: PyYAML gives a character offset instead of a mark, and a two-line message.
        what = f"character #x{exc.character:04x}" if isinstance(exc.character, int) else "byte"
        return None, _line_column(text, exc.position), f"invalid YAML: {what} is not allowed"
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or "not valid YAML").split())
        return None, where, f"invalid YAML: {problem}"
    except RecursionError:
        # PyYAML's composer recurses once per level: 20,000 nested brackets exhaust Python's stack.
        return None, "", "invalid YAML: nested too deeply"


# The key that makes a spec file a campaign (domain/campaign.py), told apart here so that reading a run
# spec does not build the campaign models.
CAMPAIGN_KEY = "campaign"


def is_campaign(data: Mapping[str, Any]) -> bool:
    return CAMPAIGN_KEY in data


def read_mapping(path: Path, expected: str = "a YAML mapping with `name` and `stages`") -> dict[str, Any]:
    """The YAML mapping in ``path``; SpecError (one line naming the file and where) for anything else."""
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise SpecError(path, "", problem if problem == "file not found" else f"cannot read the file: {problem}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(path, "", f"not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise SpecError(path, "", f"cannot read the file: {exc.strerror or exc.__class__.__name__}") from None
    data, where, problem = parse_yaml(text)
    if problem:
        raise SpecError(path, where, problem)
    if not isinstance(data, dict):
        raise SpecError(path, "", f"expected {expected}")
    # execve() and open() stop at a NUL: the job would run another argv or path than the spec says.
    if (nul := _nul_at(data)) is not None:
        raise SpecError(path, nul, "contains a NUL byte")
    return data


def load_spec(path: Path) -> RunSpec:
    """Read, validate and resolve a spec; every relative path becomes relative to the spec file."""
    return run_spec(Path(path), read_mapping(path))


def run_spec(path: Path, data: Mapping[str, Any], within: str = "") -> RunSpec:
    """Validate and resolve one run's spec read from ``path``; ``within`` prefixes the field in errors
    (a campaign's ``runs[2]``)."""
    try:
        spec = RunSpec.model_validate(data)
    except ValidationError as exc:
        raise _first_error(path, exc, within) from None
    if spec.signatures:
        from supervisor.domain.errors import SignatureError
        from supervisor.logs.scanner import Catalogue

        try:
            Catalogue.load(spec.signatures, source=str(path))
        except SignatureError as exc:
            # The message already names the file, the entry and the field.
            raise SpecError(path, within, str(exc).removeprefix(f"{path}: ")) from None
    return _resolve_paths(path, spec, within)


def _resolve_paths(path: Path, spec: RunSpec, within: str = "") -> RunSpec:
    base = path.resolve().parent
    stages = []
    for i, stage in enumerate(spec.stages):
        script = _resolve(base, stage.script)
        if script is not None and (problem := file_problem(script)) is not None:
            raise SpecError(path, _at(within, f"stages[{i}].script"), f"{problem}: {stage.script}")
        stages.append(stage.model_copy(update={"script": script, "venv": _resolve(base, stage.venv)}))
    axolotl_config = _resolve(base, spec.axolotl_config)
    if axolotl_config is not None:
        if (problem := file_problem(axolotl_config)) is not None:
            raise SpecError(path, _at(within, "axolotl_config"), f"{problem}: {spec.axolotl_config}")
        from supervisor.domain.errors import AxolotlConfigError
        from supervisor.stages.axolotl import load_config

        try:
            # A config the pipeline cannot work with fails here, not hours later in a queued job.
            load_config(axolotl_config, base_dir=base)
        except AxolotlConfigError as exc:
            raise SpecError(path, _at(within, "axolotl_config"), str(exc)) from None
    workdir = _resolve(base, spec.workdir) or (base / "runs" / spec.name)
    # Checked now: a workdir that cannot be created fails every attempt of every stage, hours later.
    if (problem := directory_problem(workdir)) is not None:
        raise SpecError(path, _at(within, "workdir"), f"{workdir} {problem}")
    return spec.model_copy(
        update={
            "stages": stages,
            "workdir": workdir,
            "axolotl_config": axolotl_config,
            "venv": _resolve(base, spec.venv),
            "merged_dir": _resolve(base, spec.merged_dir),
        }
    )

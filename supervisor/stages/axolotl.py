"""Reading an axolotl YAML config and writing the derived copies the jobs run with.

The user's config is read as-is and never modified: each stage attempt gets its own derived copy in
the run's workdir (precision switched off for preprocessing on a GPU-less node; an explicit
``resume_from_checkpoint`` for training).

Relative paths. axolotl resolves ``output_dir``, ``dataset_prepared_path`` and dataset paths against
its current working directory, not against the config file. The jobs therefore ``cd`` into one
fixed *base directory* before starting axolotl (the run spec's directory, where the team would have
typed ``axolotl train configs/x.yaml``), and this module resolves the two paths the supervisor itself
inspects against that same directory. The derived configs carry those two as absolute paths so
the supervisor's view and the job's view cannot drift apart, whatever the daemon's own cwd.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from supervisor.domain.errors import AxolotlConfigError
from supervisor.domain.spec import parse_yaml

SHARDED_STATE_DICT = "SHARDED_STATE_DICT"
FULL_STATE_DICT = "FULL_STATE_DICT"

# Keys switched off for `axolotl preprocess`: with any of them on, a GPU-less node refuses to start.
PRECISION_KEYS = ("bf16", "fp16", "tf32")


@dataclass(frozen=True)
class AxolotlConfig:
    path: Path  # the user's config, never written
    base_dir: Path  # relative paths resolve against this (the jobs' working directory)
    raw: Mapping[str, Any]
    output_dir: Path  # absolute
    dataset_prepared_path: Path  # absolute
    max_steps: int | None
    num_epochs: float | None
    save_steps: float | None  # an int, or a fraction of the total steps as HF accepts
    saves_per_epoch: int | None
    bf16: bool | str | None  # axolotl also accepts "auto"
    fp16: bool | None
    tf32: bool | None
    fsdp_version: int | None
    state_dict_type: str | None  # fsdp_config.state_dict_type, deprecated `fsdp_` spelling folded in

    @property
    def uses_fsdp(self) -> bool:
        return self.fsdp_version is not None or bool(self.raw.get("fsdp")) or bool(self.raw.get("fsdp_config"))

    @property
    def sharded_checkpoints(self) -> bool:
        return self.uses_fsdp and self.state_dict_type == SHARDED_STATE_DICT


def _resolve(base_dir: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _optional_int(path: Path, raw: Mapping[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AxolotlConfigError(path, key, "a non-negative integer")
    return value


def _optional_number(path: Path, raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise AxolotlConfigError(path, key, "a positive number")
    return float(value)


def _optional_flag(path: Path, raw: Mapping[str, Any], key: str) -> bool | None:
    value = raw.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise AxolotlConfigError(path, key, "true or false")


def _fsdp_setting(fsdp_config: Mapping[str, Any], key: str) -> Any:
    # axolotl accepts both `state_dict_type` and the deprecated `fsdp_state_dict_type` spelling.
    if key in fsdp_config:
        return fsdp_config[key]
    return fsdp_config.get(f"fsdp_{key}")


def read_raw(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AxolotlConfigError(path, "<file>", f"a readable file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise AxolotlConfigError(path, "<file>", f"UTF-8 text (byte {exc.start} is not)") from None
    # One line with the position: the message ends up in `submit`'s single error line.
    data, where, problem = parse_yaml(text)
    if problem:
        detail = problem.removeprefix("invalid YAML: ")
        raise AxolotlConfigError(path, "<file>", f"valid YAML ({where + ': ' if where else ''}{detail})")
    if not isinstance(data, dict):
        raise AxolotlConfigError(path, "<file>", "a YAML mapping at the top level")
    return data


def parse_config(path: Path, raw: Mapping[str, Any], *, base_dir: Path) -> AxolotlConfig:
    """Validate the keys the pipeline depends on. Pure: no file access."""
    for key in ("output_dir", "dataset_prepared_path"):
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            # Without dataset_prepared_path, `axolotl train` would re-tokenise on 32 GPU nodes and
            # the retry cleanup of `prepare` would have nothing safe to empty.
            raise AxolotlConfigError(path, key, "a non-empty path")

    fsdp_config = raw.get("fsdp_config")
    if fsdp_config is None:
        fsdp_config = {}
    if not isinstance(fsdp_config, Mapping):
        raise AxolotlConfigError(path, "fsdp_config", "a mapping")

    fsdp_version_raw = raw.get("fsdp_version", _fsdp_setting(fsdp_config, "version"))
    fsdp_version: int | None = None
    if fsdp_version_raw is not None:
        try:
            fsdp_version = int(fsdp_version_raw)
        except (TypeError, ValueError):
            raise AxolotlConfigError(path, "fsdp_version", "1 or 2") from None
        if fsdp_version not in (1, 2):
            raise AxolotlConfigError(path, "fsdp_version", "1 or 2")

    state_dict_type = _fsdp_setting(fsdp_config, "state_dict_type")
    if state_dict_type is not None and not isinstance(state_dict_type, str):
        raise AxolotlConfigError(path, "fsdp_config.state_dict_type", "a string")

    bf16 = raw.get("bf16")
    if bf16 is not None and not isinstance(bf16, bool) and bf16 != "auto":
        raise AxolotlConfigError(path, "bf16", "true, false or auto")

    config = AxolotlConfig(
        path=path,
        base_dir=base_dir,
        raw=raw,
        output_dir=_resolve(base_dir, raw["output_dir"]),
        dataset_prepared_path=_resolve(base_dir, raw["dataset_prepared_path"]),
        max_steps=_optional_int(path, raw, "max_steps"),
        num_epochs=_optional_number(path, raw, "num_epochs"),
        save_steps=_optional_number(path, raw, "save_steps"),
        saves_per_epoch=_optional_int(path, raw, "saves_per_epoch"),
        bf16=bf16,
        fp16=_optional_flag(path, raw, "fp16"),
        tf32=_optional_flag(path, raw, "tf32"),
        fsdp_version=fsdp_version,
        state_dict_type=state_dict_type,
    )
    if config.uses_fsdp and state_dict_type != SHARDED_STATE_DICT:
        # A FULL_STATE_DICT save gathers the whole model on rank 0 at every checkpoint: the hang at the
        # end of training that this pipeline works around, and no per-rank shards to resume from.
        raise AxolotlConfigError(path, "fsdp_config.state_dict_type", f"{SHARDED_STATE_DICT} (got {state_dict_type})")
    return config


def load_config(path: Path, *, base_dir: Path | None = None) -> AxolotlConfig:
    """Read and validate ``path``. ``base_dir`` defaults to the config's own directory."""
    path = path.absolute()
    return parse_config(path, read_raw(path), base_dir=(base_dir or path.parent).absolute())


def _with_absolute_paths(config: AxolotlConfig) -> dict[str, Any]:
    derived = dict(config.raw)
    derived["output_dir"] = str(config.output_dir)
    derived["dataset_prepared_path"] = str(config.dataset_prepared_path)
    return derived


def prepare_overrides(config: AxolotlConfig) -> dict[str, Any]:
    """The config `axolotl preprocess` runs with: the same data settings, all precision flags off."""
    derived = _with_absolute_paths(config)
    for key in PRECISION_KEYS:
        derived[key] = False
    return derived


def train_overrides(config: AxolotlConfig, resume_from: Path | None) -> dict[str, Any]:
    """The config one training attempt runs with.

    An explicit ``resume_from_checkpoint`` replaces axolotl's auto-resume, which picks the highest
    ``checkpoint-N`` whether or not it is complete. With nothing to resume from, a value the user set
    (e.g. a checkpoint of an earlier run) is kept.
    """
    derived = _with_absolute_paths(config)
    if resume_from is not None:
        derived["resume_from_checkpoint"] = str(resume_from)
        derived["auto_resume_from_checkpoints"] = False
    return derived


def write_derived(
    config: AxolotlConfig, derived: Mapping[str, Any], directory: Path, name: str = "axolotl.yaml"
) -> Path:
    """Write a derived copy of ``config`` into ``directory`` (created if needed); return its path.

    Written to a temporary name and renamed, so a job never reads half a config.
    """
    target = directory / name
    if target.absolute().resolve() == config.path.resolve():
        raise ValueError(f"refusing to overwrite the original axolotl config {config.path}")
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    tmp.write_text(yaml.safe_dump(dict(derived), sort_keys=False), encoding="utf-8")
    tmp.replace(target)
    return target

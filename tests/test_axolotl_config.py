"""Reading axolotl configs and writing the derived copies (no torch, no axolotl)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.domain.errors import AxolotlConfigError
from supervisor.stages import axolotl

EXAMPLE = Path(__file__).resolve().parents[1] / "jobs" / "example" / "llama-3.1-8B_1M_1epoch.yaml"


def write(tmp_path: Path, data: Any, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


BASE = {"output_dir": "out", "dataset_prepared_path": "prepared", "max_steps": 10}


def test_example_config_is_valid_and_sharded() -> None:
    config = axolotl.load_config(EXAMPLE, base_dir=Path("/project"))
    assert config.fsdp_version == 2
    assert config.state_dict_type == "SHARDED_STATE_DICT"
    assert config.sharded_checkpoints
    assert config.output_dir.is_absolute() and config.output_dir.is_relative_to("/project")


def test_relative_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    config = axolotl.load_config(write(tmp_path, BASE), base_dir=Path("/runs/base"))
    assert config.output_dir == Path("/runs/base/out")
    assert config.dataset_prepared_path == Path("/runs/base/prepared")


def test_base_dir_defaults_to_the_config_directory(tmp_path: Path) -> None:
    config = axolotl.load_config(write(tmp_path, BASE))
    assert config.output_dir == tmp_path / "out"


def test_absolute_paths_kept(tmp_path: Path) -> None:
    config = axolotl.load_config(write(tmp_path, {**BASE, "output_dir": "/scratch/o"}), base_dir=Path("/elsewhere"))
    assert config.output_dir == Path("/scratch/o")


def test_fields_extracted(tmp_path: Path) -> None:
    raw = {
        **BASE,
        "num_epochs": 4,
        "save_steps": 50,
        "saves_per_epoch": None,
        "bf16": "auto",
        "fp16": False,
        "tf32": True,
    }
    config = axolotl.load_config(write(tmp_path, raw))
    assert (config.max_steps, config.num_epochs, config.save_steps) == (10, 4.0, 50.0)
    assert (config.bf16, config.fp16, config.tf32) == ("auto", False, True)
    assert not config.uses_fsdp and config.fsdp_version is None


def test_deprecated_fsdp_prefixed_keys(tmp_path: Path) -> None:
    raw = {**BASE, "fsdp_config": {"fsdp_version": 2, "fsdp_state_dict_type": "SHARDED_STATE_DICT"}}
    config = axolotl.load_config(write(tmp_path, raw))
    assert config.fsdp_version == 2
    assert config.state_dict_type == "SHARDED_STATE_DICT"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"dataset_prepared_path": "p", "max_steps": 1}, "output_dir"),
        ({"output_dir": "o", "max_steps": 1}, "dataset_prepared_path"),
        ({**BASE, "output_dir": "  "}, "output_dir"),
        (
            {**BASE, "fsdp_version": 2, "fsdp_config": {"state_dict_type": "FULL_STATE_DICT"}},
            "fsdp_config.state_dict_type",
        ),
        (
            {**BASE, "fsdp": ["full_shard", "auto_wrap"], "fsdp_config": {"fsdp_offload_params": False}},
            "fsdp_config.state_dict_type",
        ),
        ({**BASE, "fsdp_version": 3, "fsdp_config": {"state_dict_type": "SHARDED_STATE_DICT"}}, "fsdp_version"),
        ({**BASE, "max_steps": "ten"}, "max_steps"),
        ({**BASE, "bf16": "yes"}, "bf16"),
        ({**BASE, "fsdp_config": ["SHARDED_STATE_DICT"]}, "fsdp_config"),
    ],
)
def test_unworkable_configs_name_the_field(tmp_path: Path, raw: dict[str, Any], field: str) -> None:
    path = write(tmp_path, raw)
    with pytest.raises(AxolotlConfigError) as info:
        axolotl.load_config(path)
    assert info.value.field == field
    assert info.value.path == path
    assert str(path) in str(info.value) and field in str(info.value)


@pytest.mark.parametrize("text", ["output_dir: [unclosed", "- just\n- a list\n", ""])
def test_unreadable_yaml(tmp_path: Path, text: str) -> None:
    with pytest.raises(AxolotlConfigError) as info:
        axolotl.load_config(write(tmp_path, text))
    assert info.value.field == "<file>"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AxolotlConfigError, match="readable"):
        axolotl.load_config(tmp_path / "nope.yaml")


def test_prepare_derived_turns_precision_off_and_leaves_original(tmp_path: Path) -> None:
    raw = {**BASE, "bf16": "auto", "tf32": True, "datasets": [{"path": "data.jsonl", "type": "chat_template"}]}
    path = write(tmp_path, raw)
    before = path.read_bytes()
    config = axolotl.load_config(path, base_dir=tmp_path)
    derived_path = axolotl.write_derived(config, axolotl.prepare_overrides(config), tmp_path / "work")
    assert path.read_bytes() == before
    derived = yaml.safe_load(derived_path.read_text())
    assert (derived["bf16"], derived["fp16"], derived["tf32"]) == (False, False, False)
    assert derived["output_dir"] == str(tmp_path / "out")
    assert derived["dataset_prepared_path"] == str(tmp_path / "prepared")
    assert derived["datasets"] == raw["datasets"]
    original_keys = list(yaml.safe_load(before))
    assert list(derived)[: len(original_keys)] == original_keys, "key order preserved"


def test_train_derived_sets_resume(tmp_path: Path) -> None:
    config = axolotl.load_config(write(tmp_path, {**BASE, "bf16": True}))
    derived = axolotl.train_overrides(config, tmp_path / "out" / "checkpoint-20")
    assert derived["resume_from_checkpoint"] == str(tmp_path / "out" / "checkpoint-20")
    assert derived["auto_resume_from_checkpoints"] is False
    assert derived["bf16"] is True


def test_train_derived_without_checkpoint_keeps_user_resume(tmp_path: Path) -> None:
    config = axolotl.load_config(write(tmp_path, {**BASE, "resume_from_checkpoint": "/old/checkpoint-5"}))
    assert axolotl.train_overrides(config, None)["resume_from_checkpoint"] == "/old/checkpoint-5"
    assert "resume_from_checkpoint" not in axolotl.train_overrides(axolotl.load_config(write(tmp_path, BASE)), None)


def test_write_derived_refuses_to_overwrite_the_original(tmp_path: Path) -> None:
    path = write(tmp_path, BASE, name="axolotl.yaml")
    config = axolotl.load_config(path)
    with pytest.raises(ValueError, match="original"):
        axolotl.write_derived(config, axolotl.prepare_overrides(config), tmp_path)
    assert yaml.safe_load(path.read_text()) == BASE

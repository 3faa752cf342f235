"""Checkpoint completeness, moving incomplete ones aside, the final-step rule, safetensors headers."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest

from supervisor.domain.errors import CheckpointError
from supervisor.stages import checkpoints

NOW = datetime(2024, 12, 28, 15, 44, 53, tzinfo=UTC)


def make_checkpoint(
    out: Path, step: int, *, state: bool = True, metadata: bool = True, max_steps: int = 100, sharded: bool = True
) -> Path:
    ckpt = out / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    if sharded:
        for sub in ("pytorch_model_fsdp_0", "optimizer_0"):
            (ckpt / sub).mkdir()
            for rank in range(2):
                (ckpt / sub / f"__{rank}_0.distcp").write_bytes(b"x")
            if metadata:
                (ckpt / sub / ".metadata").write_bytes(b"m")
    if state:
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps}))
    return ckpt


def test_list_sorted_numerically_and_ignores_others(tmp_path: Path) -> None:
    for step in (100, 20, 3):
        make_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-7.tmp").mkdir()
    (tmp_path / "incomplete-checkpoint-9-20240101T000000Z").mkdir()
    (tmp_path / "checkpoint-8").write_text("a file, not a dir")
    assert [c.step for c in checkpoints.list_checkpoints(tmp_path)] == [3, 20, 100]
    assert checkpoints.list_checkpoints(tmp_path / "missing") == []


def test_completeness(tmp_path: Path) -> None:
    assert checkpoints.is_complete(make_checkpoint(tmp_path, 1))
    assert not checkpoints.is_complete(make_checkpoint(tmp_path, 2, state=False))
    assert not checkpoints.is_complete(make_checkpoint(tmp_path, 3, metadata=False))
    assert checkpoints.is_complete(make_checkpoint(tmp_path, 4, sharded=False))
    one_missing = make_checkpoint(tmp_path, 5)
    (one_missing / "optimizer_0" / ".metadata").unlink()
    assert not checkpoints.is_complete(one_missing)
    truncated = make_checkpoint(tmp_path, 6)
    (truncated / "trainer_state.json").write_text('{"global_step": ')
    assert not checkpoints.is_complete(truncated)
    empty_shard_dir = make_checkpoint(tmp_path, 7, sharded=False)
    (empty_shard_dir / "pytorch_model_fsdp_0").mkdir()
    assert not checkpoints.is_complete(empty_shard_dir)


def test_newest_complete_skips_incomplete(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20)
    make_checkpoint(tmp_path, 30, metadata=False)
    newest = checkpoints.newest_complete(tmp_path)
    assert newest is not None and newest.step == 20
    assert checkpoints.newest_complete(tmp_path / "nothing") is None


def test_move_aside_only_newer_incomplete(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 5, state=False)  # older than the newest complete: left alone
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20, state=False)
    make_checkpoint(tmp_path, 30, metadata=False)
    moved = checkpoints.move_aside_incomplete(tmp_path, now=NOW)
    assert [p.name for p in moved] == [
        "incomplete-checkpoint-20-20241228T154453Z",
        "incomplete-checkpoint-30-20241228T154453Z",
    ]
    assert all(p.is_dir() for p in moved), "renamed, not deleted"
    assert (moved[1] / "pytorch_model_fsdp_0" / "__0_0.distcp").exists()
    assert [c.step for c in checkpoints.list_checkpoints(tmp_path)] == [5, 10]
    # Same name again at the same second: a suffix instead of a clash.
    make_checkpoint(tmp_path, 20, state=False)
    again = checkpoints.move_aside_incomplete(tmp_path, now=NOW)
    assert [p.name for p in again] == ["incomplete-checkpoint-20-20241228T154453Z.1"]
    assert checkpoints.move_aside_incomplete(tmp_path, now=NOW) == []


def test_move_aside_with_no_complete_checkpoint(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 10, state=False)
    assert len(checkpoints.move_aside_incomplete(tmp_path, now=NOW)) == 1
    assert checkpoints.list_checkpoints(tmp_path) == []


def test_final_reached(tmp_path: Path) -> None:
    assert not checkpoints.final_reached(tmp_path, 100)
    make_checkpoint(tmp_path, 90)
    assert not checkpoints.final_reached(tmp_path, 100)
    make_checkpoint(tmp_path, 100, metadata=False)
    assert not checkpoints.final_reached(tmp_path, 100), "an incomplete final checkpoint is not final"
    make_checkpoint(tmp_path, 110)
    assert checkpoints.final_reached(tmp_path, 100)


def test_final_reached_by_epochs_uses_trainer_state(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 62, max_steps=63)
    assert not checkpoints.final_reached(tmp_path, None)
    make_checkpoint(tmp_path, 63, max_steps=63)
    assert checkpoints.final_reached(tmp_path, None)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], *, pad: int = 0) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    widths = {"F32": 4, "BF16": 2}
    for name, (dtype, shape) in tensors.items():
        n = widths[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * (offset + pad))


def test_safetensors_header(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"a.weight": ("F32", [4, 8]), "b": ("BF16", [3])})
    tensors = checkpoints.read_safetensors_header(path)
    assert tensors["a.weight"].shape == (4, 8) and tensors["a.weight"].nbytes == 128
    assert tensors["b"].dtype == "BF16"
    assert checkpoints.total_bytes(tensors) == 134


@pytest.mark.parametrize("damage", ["truncated", "garbage", "too_long", "empty"])
def test_safetensors_header_rejects_damage(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"a": ("F32", [16])})
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:-4])
    elif damage == "garbage":
        path.write_bytes(struct.pack("<Q", 10) + b"not json!!" + data[18:])
    elif damage == "too_long":
        path.write_bytes(data + b"\0")
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError):
        checkpoints.read_safetensors_header(path)


def test_model_headers_across_shards(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": ("F32", [2])})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b": ("F32", [2])})
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    files = checkpoints.unsharded_model_files(tmp_path)
    assert [f.name for f in files] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    assert sorted(checkpoints.read_model_headers(files)) == ["a", "b"]
    write_safetensors(tmp_path / "model.safetensors", {"a": ("F32", [2])})
    with pytest.raises(CheckpointError, match="more than one"):
        checkpoints.read_model_headers(checkpoints.unsharded_model_files(tmp_path))

"""Partial-save safety: a sharded unsharded-model save is shipped only whole, and JIT caches stay node-local."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
from test_stage_kinds import SHARDED, ctx, make_ckpt, prepare, project

from supervisor.domain.errors import CheckpointError, StageError
from supervisor.stages.checkpoints import SAFETENSORS_INDEX, check_shard_index
from supervisor.stages.context import load_axolotl_config
from supervisor.stages.merge import MergePlan, merged_model_ok, plan_merge
from supervisor.stages.render import read_template

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def write_shard(path: Path, tensors: dict[str, list[int]]) -> int:
    """A safetensors file of F32 zeros; returns the bytes its tensors hold."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return offset


def sharded_save(directory: Path) -> None:
    """What save_pretrained leaves for a model too big for one file: two shards and their index."""
    directory.mkdir(parents=True, exist_ok=True)
    held = write_shard(directory / SHARDS[0], {"embed": [8, 4], "layer.0": [4, 4]})
    held += write_shard(directory / SHARDS[1], {"layer.1": [4, 4], "head": [4, 8]})
    weight_map = {"embed": SHARDS[0], "layer.0": SHARDS[0], "layer.1": SHARDS[1], "head": SHARDS[1]}
    (directory / SAFETENSORS_INDEX).write_text(json.dumps({"metadata": {"total_size": held},
                                                           "weight_map": weight_map}))


def test_a_whole_sharded_save_is_copied_shard_by_shard(tmp_path: Path) -> None:
    config = project(tmp_path, **SHARDED)
    out = config.parent / "out"
    sharded_save(out)
    # A shard of an earlier save with another shard count: not part of this model, never shipped.
    write_shard(out / "model-00001-of-00003.safetensors", {"embed": [8, 4]})
    assert check_shard_index(out) == SHARDS
    c = ctx("merge", 1, workdir=tmp_path / "work", config=config)
    assert plan_merge(load_axolotl_config(c)) == MergePlan("copy", None, (*SHARDS, SAFETENSORS_INDEX))
    sub = prepare(c)
    assert sub.script is not None and "model-00001-of-00003" not in sub.script.read_text()


@pytest.mark.parametrize("damage", ["missing", "truncated", "misplaced", "total_size"])
def test_a_partial_sharded_save_is_not_shipped(tmp_path: Path, damage: str) -> None:
    config = project(tmp_path, **SHARDED)
    out = config.parent / "out"
    sharded_save(out)
    index = json.loads((out / SAFETENSORS_INDEX).read_text())
    if damage == "missing":  # killed after the index and the first shard
        (out / SHARDS[1]).unlink()
    elif damage == "truncated":  # killed while writing the second shard
        (out / SHARDS[1]).write_bytes((out / SHARDS[1]).read_bytes()[:-16])
    elif damage == "misplaced":
        index["weight_map"]["head"] = SHARDS[0]
    else:
        index["metadata"]["total_size"] += 64
    (out / SAFETENSORS_INDEX).write_text(json.dumps(index))
    why = {"missing": f"lists {SHARDS[1]}, which is missing", "truncated": "does not match its header",
           "misplaced": "has no tensor head", "total_size": "total_size"}[damage]
    with pytest.raises(CheckpointError, match=why):
        check_shard_index(out)
    c = ctx("merge", 1, workdir=tmp_path / "work", config=config)
    with pytest.raises(StageError, match="no complete final checkpoint") as raised:
        plan_merge(load_axolotl_config(c))
    assert why in str(raised.value)  # says why the unsharded model was passed over
    make_ckpt(out, 20)
    assert plan_merge(load_axolotl_config(c)) == MergePlan("merge", out / "checkpoint-20")


def test_a_merged_model_with_a_missing_shard_is_no_success(tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    sharded_save(merged)
    (merged / "config.json").write_text("{}")
    assert merged_model_ok(merged)
    (merged / SHARDS[0]).unlink()
    assert not merged_model_ok(merged)


def _cache_dirs(env: dict[str, str]) -> list[str]:
    """The cache lines of the training template, run on their own as a job's shell would."""
    lines = [line for line in read_template("train").splitlines()
             if line.startswith(("node_local=", "export TRITON_CACHE_DIR=", "export TORCH_EXTENSIONS_DIR="))]
    assert len(lines) == 3
    script = "\n".join([*lines, 'printf "%s\\n" "$TRITON_CACHE_DIR" "$TORCH_EXTENSIONS_DIR"'])
    clean = {k: v for k, v in os.environ.items() if k not in ("TRITON_CACHE_DIR", "TORCH_EXTENSIONS_DIR")}
    done = subprocess.run(["bash", "-euc", script], env={**clean, **env}, capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_the_training_template_keeps_jit_caches_node_local() -> None:
    assert _cache_dirs({"TMPDIR": "/scratch/local", "SLURM_JOB_ID": "77"}) == [
        "/scratch/local/supervisor-77/triton", "/scratch/local/supervisor-77/torch_extensions"]
    no_tmpdir = {k: v for k, v in os.environ.items() if k != "TMPDIR"}
    assert _cache_dirs({**no_tmpdir, "SLURM_JOB_ID": "78"})[0] == "/tmp/supervisor-78/triton"
    # A place the user chose is kept.
    assert _cache_dirs({"SLURM_JOB_ID": "79", "TRITON_CACHE_DIR": "/fast/triton"})[0] == "/fast/triton"

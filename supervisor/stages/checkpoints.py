"""Reading training checkpoints and model files on disk (no torch: only JSON and directory listings).

Layout (HF Trainer as driven by axolotl): ``output_dir/checkpoint-N/`` with, under FSDP
SHARDED_STATE_DICT, ``pytorch_model_fsdp_0/`` and ``optimizer_0/`` (each ``__{rank}_0.distcp`` files
plus a ``.metadata`` written once every rank is done), rng/scheduler files, and ``trainer_state.json``
written last. A crash mid-save leaves a directory with some of these missing.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from supervisor.domain.errors import CheckpointError

TRAINER_STATE = "trainer_state.json"
DCP_METADATA = ".metadata"
SHARDED_MODEL_DIR = "pytorch_model_fsdp_0"

_CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
# Prefix chosen so that neither HF's checkpoint rotation (glob `checkpoint-*`) nor axolotl's
# auto-resume (which parses the text after the last `-` as an int) ever picks a moved-aside directory.
INCOMPLETE_PREFIX = "incomplete-"

# Files that make up an unsharded final model saved by `save_pretrained`.
UNSHARDED_MODEL_PATTERNS = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True, order=True)
class Checkpoint:
    step: int
    path: Path


def list_checkpoints(output_dir: Path) -> list[Checkpoint]:
    """``checkpoint-N`` directories in ascending step order (moved-aside ones excluded)."""
    if not output_dir.is_dir():
        return []
    found = []
    for entry in output_dir.iterdir():
        match = _CHECKPOINT_RE.fullmatch(entry.name)
        if match and entry.is_dir():
            found.append(Checkpoint(int(match.group(1)), entry))
    return sorted(found)


def read_trainer_state(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's trainer_state.json, or None when missing or not (yet) valid JSON."""
    try:
        data = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _sharded_dirs(checkpoint: Path) -> list[Path]:
    dirs = []
    for entry in checkpoint.iterdir():
        if not entry.is_dir():
            continue
        if entry.name.startswith(("pytorch_model_fsdp", "optimizer")) or any(entry.glob("*.distcp")):
            dirs.append(entry)
    return dirs


def is_complete(checkpoint: Path) -> bool:
    """trainer_state.json readable and every DCP directory in it has its ``.metadata``."""
    if not checkpoint.is_dir() or read_trainer_state(checkpoint) is None:
        return False
    return all((d / DCP_METADATA).is_file() for d in _sharded_dirs(checkpoint))


def newest_complete(output_dir: Path) -> Checkpoint | None:
    for checkpoint in reversed(list_checkpoints(output_dir)):
        if is_complete(checkpoint.path):
            return checkpoint
    return None


def _timestamp(now: datetime | None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def incomplete_after_newest(output_dir: Path) -> list[Checkpoint]:
    """The incomplete checkpoints newer than the newest complete one: what a resumed attempt must not take."""
    newest = newest_complete(output_dir)
    floor = newest.step if newest else -1
    return [c for c in list_checkpoints(output_dir) if c.step > floor and not is_complete(c.path)]


def move_aside_incomplete(output_dir: Path, *, now: datetime | None = None) -> list[Path]:
    """Rename incomplete checkpoints newer than the newest complete one; return the new paths.

    Renamed, never deleted: a half-written checkpoint may still be worth inspecting, and deleting
    the wrong directory of a multi-day run is not recoverable. Older incomplete ones are left alone,
    since nothing resumes from them.
    """
    moved = []
    for checkpoint in incomplete_after_newest(output_dir):
        base = output_dir / f"{INCOMPLETE_PREFIX}{checkpoint.path.name}-{_timestamp(now)}"
        target, n = base, 1
        while target.exists():
            target = base.with_name(f"{base.name}.{n}")
            n += 1
        checkpoint.path.rename(target)
        moved.append(target)
    return moved


def final_reached(output_dir: Path, max_steps: int | None) -> bool:
    """The newest complete checkpoint is the last one training will write.

    ``max_steps`` from the axolotl config when set; otherwise (training by epochs) the ``max_steps``
    HF wrote into trainer_state.json is the authority.
    """
    newest = newest_complete(output_dir)
    if newest is None:
        return False
    state = read_trainer_state(newest.path) or {}
    global_step = state.get("global_step")
    target = max_steps if max_steps is not None else state.get("max_steps")
    if not isinstance(global_step, int) or not isinstance(target, int) or target <= 0:
        return False
    return global_step >= target


def unsharded_model_files(directory: Path) -> list[Path]:
    """Model weight files saved by ``save_pretrained`` directly in ``directory``."""
    if not directory.is_dir():
        return []
    files: set[Path] = set()
    for pattern in UNSHARDED_MODEL_PATTERNS:
        files.update(p for p in directory.glob(pattern) if p.is_file())
    return sorted(files)


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip

# A safetensors header is a JSON object; anything this large is a corrupt length prefix.
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes of a .safetensors file, checked against the file's size.

    Reads only the 8-byte length prefix and the JSON header: safe on multi-GB files.
    """
    try:
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) != 8:
                raise CheckpointError(f"{path}: shorter than a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length == 0 or length > _MAX_HEADER:
                raise CheckpointError(f"{path}: implausible safetensors header length {length}")
            raw = fh.read(length)
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{path}: {exc.strerror}") from exc
    if len(raw) != length:
        raise CheckpointError(f"{path}: truncated safetensors header")
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(f"{path}: safetensors header is not JSON") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not an object")
    tensors: dict[str, TensorInfo] = {}
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name], stop = _tensor_info(path, name, entry)
        end = max(end, stop)
    if 8 + length + end != size:
        raise CheckpointError(f"{path}: size {size} does not match its header ({8 + length + end})")
    return tensors


def _tensor_info(path: Path, name: str, entry: Any) -> tuple[TensorInfo, int]:
    try:
        dtype = entry["dtype"]
        shape = tuple(int(d) for d in entry["shape"])
        start, stop = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed header entry for {name}") from exc
    numel = 1
    for d in shape:
        numel *= d
    width = _DTYPE_BYTES.get(dtype)
    if width is None or stop - start != numel * width or start < 0:
        raise CheckpointError(f"{path}: header entry for {name} is inconsistent ({dtype}, {shape})")
    return TensorInfo(dtype=dtype, shape=shape, nbytes=stop - start), stop


def read_model_headers(files: Sequence[Path]) -> dict[str, TensorInfo]:
    """Merged header of every ``.safetensors`` file in ``files``; a tensor in two files is an error."""
    merged: dict[str, TensorInfo] = {}
    for path in files:
        if path.suffix != ".safetensors":
            continue
        for name, info in read_safetensors_header(path).items():
            if name in merged:
                raise CheckpointError(f"{path}: tensor {name} appears in more than one file")
            merged[name] = info
    return merged


def total_bytes(tensors: Mapping[str, TensorInfo]) -> int:
    return sum(t.nbytes for t in tensors.values())


SAFETENSORS_INDEX = "model.safetensors.index.json"


def check_shard_index(directory: Path) -> tuple[str, ...]:
    """The shard files ``model.safetensors.index.json`` names, checked against the directory (none: no index).

    A save killed between shards leaves an index that names files which are missing or cut short; copying
    what is there would ship a model that fails to load at the destination. Raises CheckpointError when
    a listed file is missing, a shard's size disagrees with its header, a tensor is not in the file the
    index names, or the index's ``total_size`` is more than the shards hold.
    """
    index = directory / SAFETENSORS_INDEX
    if not index.is_file():
        return ()
    try:
        data = json.loads(index.read_text())
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise TypeError("weight_map")
    except OSError as exc:
        raise CheckpointError(f"{index}: {exc.strerror}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a safetensors index (no weight_map of tensor -> file)") from exc
    names = tuple(sorted(set(weight_map.values())))
    for name in names:
        if Path(name).name != name:
            raise CheckpointError(f"{index}: lists {name!r}, which is not a file next to it")
        if not (directory / name).is_file():
            raise CheckpointError(f"{index}: lists {name}, which is missing")
    headers = {name: read_safetensors_header(directory / name) for name in names}  # size vs header of each
    for tensor, name in weight_map.items():
        if tensor not in headers[name]:
            raise CheckpointError(f"{directory / name}: has no tensor {tensor}, which the index puts there")
    metadata = data.get("metadata")
    declared = metadata.get("total_size") if isinstance(metadata, dict) else None
    held = sum(total_bytes(h) for h in headers.values())
    # Only "more than the shards hold" is an error: that is what a lost shard looks like, and a writer that
    # leaves tied or non-persistent tensors out of total_size must not block a good model.
    if isinstance(declared, int) and declared > held:
        raise CheckpointError(f"{index}: total_size {declared} but the shards hold {held} bytes")
    return names

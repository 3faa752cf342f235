#!/usr/bin/env python
"""Check a merged (or copied) model before it replaces merged_dir. Runs inside the merge job with the
training venv's python, since reading a DCP ``.metadata`` means unpickling it with torch.

    python verify_merge.py MERGED_DIR --dcp CKPT/pytorch_model_fsdp_0   # after accelerate merge-weights
    python verify_merge.py MERGED_DIR --reference OUTPUT_DIR            # after copying unsharded files

Checks: every safetensors header readable and consistent with its file size; tensor names and shapes
equal to the checkpoint's (DCP metadata, or the reference files); total size equal to the expected
element count; config.json present. Prints one ``verify_merge: OK ...`` line, or ``verify_merge:
FAILED ...`` lines and exits 1. Standalone on purpose: the supervisor package is not installed in the
training venv.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


class Mismatch(Exception):
    pass


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    with path.open("rb") as fh:
        prefix = fh.read(8)
        if len(prefix) != 8:
            raise Mismatch(f"{path}: too short")
        (length,) = struct.unpack("<Q", prefix)
        if not 0 < length < 100 * 1024 * 1024:
            raise Mismatch(f"{path}: implausible header length {length}")
        header = json.loads(fh.read(length))
    end = 0
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = entry["dtype"], tuple(entry["shape"])
        start, stop = entry["data_offsets"]
        numel = 1
        for d in shape:
            numel *= d
        if dtype not in DTYPE_BYTES or stop - start != numel * DTYPE_BYTES[dtype]:
            raise Mismatch(f"{path}: {name}: offsets do not match {dtype}{list(shape)}")
        end = max(end, stop)
        tensors[name] = (dtype, shape)
    if path.stat().st_size != 8 + length + end:
        raise Mismatch(f"{path}: file size {path.stat().st_size} != {8 + length + end} from its header")
    return tensors


def model_tensors(directory: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Names -> (dtype, shape) of the model files in ``directory`` (safetensors, or .bin via torch)."""
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    files = sorted(directory.glob("*.safetensors"))
    for path in files:
        for name, info in safetensors_header(path).items():
            if name in tensors:
                raise Mismatch(f"{name} appears in more than one file")
            tensors[name] = info
    if not files:
        import torch

        for path in sorted(directory.glob("pytorch_model*.bin")):
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            for name, tensor in state.items():
                tensors[name] = (str(tensor.dtype), tuple(tensor.shape))
    return tensors


def dcp_shapes(dcp_dir: Path) -> dict[str, tuple[int, ...]]:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(str(dcp_dir)).read_metadata()
    shapes = {
        key: tuple(entry.size)
        for key, entry in metadata.state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata)
    }
    # The trainer saves {"model": state_dict}; accelerate's merge unwraps that top-level key.
    if shapes and all(key.startswith("model.") for key in shapes):
        shapes = {key[len("model.") :]: shape for key, shape in shapes.items()}
    return shapes


def compare(merged: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> list[str]:
    problems = []
    missing = sorted(set(expected) - set(merged))
    extra = sorted(set(merged) - set(expected))
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensor(s), e.g. {extra[:3]}")
    wrong = [name for name in set(merged) & set(expected) if merged[name] != expected[name]]
    for name in sorted(wrong)[:5]:
        problems.append(f"{name}: shape {list(merged[name])} != {list(expected[name])}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("merged", type=Path)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dcp", type=Path, help="the checkpoint's pytorch_model_fsdp_0 directory")
    source.add_argument("--reference", type=Path, help="directory holding the original unsharded files")
    args = parser.parse_args(argv)

    problems: list[str] = []
    try:
        tensors = model_tensors(args.merged)
        if not tensors:
            raise Mismatch(f"{args.merged}: no model weights")
        shapes = {name: shape for name, (_, shape) in tensors.items()}
        if args.dcp is not None:
            problems += compare(shapes, dcp_shapes(args.dcp))
        else:
            reference = model_tensors(args.reference)
            problems += compare(shapes, {name: shape for name, (_, shape) in reference.items()})
            dtypes = [n for n in tensors if n in reference and tensors[n][0] != reference[n][0]]
            problems += [f"{n}: dtype {tensors[n][0]} != {reference[n][0]}" for n in dtypes[:5]]
        numel = 0
        for _, shape in tensors.values():
            count = 1
            for d in shape:
                count *= d
            numel += count
        if numel == 0:
            problems.append("all tensors are empty")
        config = args.merged / "config.json"
        if not config.is_file():
            problems.append("config.json missing")
        else:
            json.loads(config.read_text(encoding="utf-8"))
    except (Mismatch, OSError, ValueError, KeyError, TypeError) as exc:
        problems.append(str(exc))

    if problems:
        for problem in problems:
            print(f"verify_merge: FAILED {problem}")
        return 1
    size = sum(p.stat().st_size for p in args.merged.iterdir() if p.is_file())
    print(f"verify_merge: OK {len(tensors)} tensors, {numel} parameters, {size} bytes in {args.merged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real FSDP2 sharded checkpoint on CPU, in the layout the HF Trainer writes under FSDP.

    torchrun --nproc_per_node 2 make_fsdp_ckpt.py MODEL_DIR OUTPUT_DIR STEP

Shards MODEL_DIR's weights with ``fully_shard`` over a 2-process gloo mesh and saves
``OUTPUT_DIR/checkpoint-STEP/pytorch_model_fsdp_0`` (``.metadata`` + one ``.distcp`` per rank) with
``torch.distributed.checkpoint``, then ``trainer_state.json`` last, as the trainer does. The unsharded
originals go next to OUTPUT_DIR (``original.safetensors``) for an exact comparison after merging; config
and tokenizer files are copied into OUTPUT_DIR, where the merge stage looks for them.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM


def main(model_dir: Path, output_dir: Path, step: int) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    original = {name: t.detach().clone().contiguous() for name, t in model.state_dict().items()}
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)

    checkpoint = output_dir / f"checkpoint-{step}"
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(checkpoint / "pytorch_model_fsdp_0"))
    dist.barrier()
    if rank == 0:
        save_file(original, str(output_dir.parent / "original.safetensors"))
        for name in (
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
        ):
            if (model_dir / name).exists():
                shutil.copy(model_dir / name, output_dir / name)
        state = {"global_step": step, "max_steps": step, "epoch": 1.0, "log_history": []}
        (checkpoint / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))

"""One real time-limit chunk on the SLURM cluster: Slurm ends a training job at its time limit after it saved
a new checkpoint; the resubmission does not use up ``max_attempts: 1``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from harness import Harness, slurm_available, slurm_jobs_by_name

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(400)]


def fake_training(root: Path) -> tuple[Path, Path]:
    """(venv, axolotl config): an ``axolotl`` that saves one complete checkpoint, then outlives its time limit."""
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
    axolotl = venv / "bin" / "axolotl"
    axolotl.write_text("""#!/bin/bash
n=$(( $(ls -d out/checkpoint-* 2>/dev/null | wc -l) * 10 + 10 ))
mkdir -p out/checkpoint-$n/pytorch_model_fsdp_0
echo m > out/checkpoint-$n/pytorch_model_fsdp_0/.metadata
echo "{\\"global_step\\": $n, \\"max_steps\\": 30}" > out/checkpoint-$n/trainer_state.json
echo "saved checkpoint-$n"
sleep 600
""")
    axolotl.chmod(0o755)
    project = root / "project"
    project.mkdir()
    config = project / "cfg.yaml"
    config.write_text(yaml.safe_dump({"output_dir": "out", "dataset_prepared_path": "prepared", "max_steps": 30,
                                      "fsdp_version": 2,
                                      "fsdp_config": {"state_dict_type": "SHARDED_STATE_DICT"}}))
    return venv, config


@pytest.mark.skipif(not slurm_available(), reason="needs the SLURM cluster (deploy/slurm-cluster.sh start)")
def test_a_time_limit_after_a_new_checkpoint_is_resubmitted_without_using_the_budget(harness: Harness) -> None:
    venv, config = fake_training(harness.root)
    harness.submit({"name": "chunked", "backend": "slurm", "workdir": str(harness.root / "work"),
                    "axolotl_config": str(config), "venv": str(venv),
                    "stages": [{"name": "train", "kind": "train", "nodes": 1, "gpus_per_node": 0,
                                "time": "00:01:00", "max_attempts": 1, "retry_backoff": 0}]})
    harness.start_daemon(poll="2s")
    try:
        harness.wait_for(lambda: len(harness.attempts("chunked", "train")) >= 2, 240,
                         "the resubmission after Slurm's time limit")
        first = harness.attempts("chunked", "train")[0]
        assert first["counted"] is False, first
        assert first["counted_why"] == "time limit after a new checkpoint (checkpoint-10): progress"
        assert harness.show("chunked")["state"] == "running"  # max_attempts 1 would have failed it
    finally:
        harness.stop_daemon()
        harness.cli("cancel", "chunked", check=False)
        for job in slurm_jobs_by_name().get("chunked-train-2", []):
            subprocess.run(["scancel", job], check=False)

"""`diagnose` on a log written by the real axolotl 0.19 (CPU, tiny Llama, resumed from checkpoint-10).

The fixture is the second training attempt of tests/axolotl/test_supervised_e2e.py, kept as it came
out of the SLURM job: the supervisor's echo line, axolotl's banner and config dump, warnings from a
CPU-only torchao/bitsandbytes, tqdm bars redrawn with ``\\r``, metric dicts with quoted values, the
checkpoint saves and the end-of-training lines. Failure signatures the team met on the GPU cluster
are spliced into it where they happen in a real run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor.domain.types import Progress
from supervisor.logs.diagnose import diagnose, scan_file
from supervisor.logs.scanner import Catalogue, MilestoneKind, ScanAccumulator

FIXTURE = Path(__file__).parent / "fixtures" / "logs" / "axolotl_real_train.log"
WATCHDOG = (
    "[rank0]:[E1228 15:44:53.523176693 ProcessGroupNCCL.cpp:607] [Rank 0] Watchdog caught collective operation "
    "timeout: WorkNCCL(SeqNum=264290, OpType=_ALLGATHER_BASE, NumelIn=54528000, NumelOut=218112000, "
    "Timeout(ms)=600000) ran for 600018 milliseconds before timing out."
)
CHILD_FAILED = [
    "E1228 15:45:02.000000 859901 torch/distributed/elastic/multiprocessing/api.py:869] failed "
    "(exitcode: -6) local_rank: 0 (pid: 859956) of binary: /opt/venv/bin/python",
    "Traceback (most recent call last):",
    '  File "/opt/venv/bin/torchrun", line 8, in <module>',
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
    "============================================================",
    "srun: error: node01: task 0: Exited with exit code 1",
]
NVCC = "[2026-11-28 01:26:12,101] [WARNING] [axolotl.utils] NVCC timeout while compiling the fused kernels; waiting"


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.load()


@pytest.fixture(scope="module")
def real() -> bytes:
    return FIXTURE.read_bytes()


def write(tmp_path: Path, data: bytes) -> Path:
    log = tmp_path / "train-1-123.log"
    log.write_bytes(data)
    return log


def lines(*text: str) -> bytes:
    return "".join(line + "\n" for line in text).encode()


def signatures(result: dict[str, Any]) -> list[str]:
    return [m["signature"] for m in result["matches"]]


def before(data: bytes, marker: bytes) -> bytes:
    """Everything before the line holding ``marker`` (lines split on \\n only, as written)."""
    return data[: data.rindex(b"\n", 0, data.index(marker)) + 1]


def test_real_log_is_clean_and_complete(real: bytes, catalogue: Catalogue) -> None:
    result = diagnose(FIXTURE, catalogue)
    # Nothing in a healthy real run trips a failure signature: not the torchao/bitsandbytes load
    # failures, the offline-hub warning of the kernels package, nor the DDP notice.
    assert signatures(result) == ["training_completed"]
    assert result["verdict"] == {"signature": "training_completed", "action": "finish"}
    assert b"Hugging Face Hub is in" in real and b"Failed to load" in real

    acc = ScanAccumulator()
    for chunk in scan_file(FIXTURE, catalogue, chunk_bytes=1024):
        acc.add(chunk)
    assert acc.progress == Progress(step=20, total=20)
    assert acc.metrics is not None and acc.metrics["train_loss"] == pytest.approx(2.418)
    kinds = [m.kind for m in acc.milestones]
    assert kinds == [MilestoneKind.TRAINER_STARTED, MilestoneKind.TRAINING_COMPLETED, MilestoneKind.MODEL_SAVED]


def test_watchdog_after_training_completed_is_finished(tmp_path: Path, real: bytes, catalogue: Catalogue) -> None:
    """The team's end-of-training hang: the final collective times out after the model was saved."""
    log = write(tmp_path, real + lines(WATCHDOG, *CHILD_FAILED))
    result = diagnose(log, catalogue)
    assert signatures(result) == ["training_completed", "nccl_watchdog_timeout", "child_failed_error"]
    assert result["verdict"] == {"signature": "training_completed", "action": "finish"}


def test_watchdog_mid_training_under_child_failed_error(tmp_path: Path, real: bytes, catalogue: Catalogue) -> None:
    """Mid-run the watchdog is the root cause; ChildFailedError only reports that a rank died."""
    data = before(real, b"Saving model checkpoint to") + lines(WATCHDOG, *CHILD_FAILED)
    result = diagnose(write(tmp_path, data), catalogue)
    assert signatures(result) == ["nccl_watchdog_timeout", "child_failed_error"]
    assert result["verdict"] == {"signature": "nccl_watchdog_timeout", "action": "resubmit"}
    watchdog = result["matches"][0]
    assert watchdog["line"] == data.replace(b"\r", b"\n").split(b"\n").index(WATCHDOG.encode()) + 1


def test_child_failed_error_alone_is_the_verdict(tmp_path: Path, real: bytes, catalogue: Catalogue) -> None:
    """With no root cause above it, the wrapper's own action applies."""
    data = before(real, b"Training completed!") + lines(*CHILD_FAILED)
    result = diagnose(write(tmp_path, data), catalogue)
    assert signatures(result) == ["child_failed_error"]
    assert result["verdict"] == {"signature": "child_failed_error", "action": "resubmit"}


def test_nvcc_timeout_at_startup_glued_to_a_bar(tmp_path: Path, real: bytes, catalogue: Catalogue) -> None:
    """A startup hang: the log stops after the NVCC timeout, which arrives glued to a tqdm redraw."""
    data = before(real, b"Starting trainer...") + b"Loading weights: 100%|##########| 21/21\r" + lines(NVCC)
    result = diagnose(write(tmp_path, data), catalogue)
    assert signatures(result) == ["nvcc_timeout"]
    assert result["verdict"] == {"signature": "nvcc_timeout", "action": "resubmit"}
    assert result["matches"][0]["text"] == NVCC

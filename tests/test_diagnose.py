from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from supervisor.domain.types import Progress
from supervisor.logs.diagnose import diagnose, scan_file
from supervisor.logs.inotify import LogDirWatcher
from supervisor.logs.scanner import Catalogue, MilestoneKind, ScanAccumulator

FIXTURE = Path(__file__).parent / "fixtures" / "logs" / "axolotl_train.log"
WATCHDOG = (
    "[rank16]:[E1228 15:44:53.523176693 ProcessGroupNCCL.cpp:607] [Rank 0] Watchdog caught collective operation "
    "timeout: WorkNCCL(SeqNum=264290, OpType=_ALLGATHER_BASE, NumelIn=54528000, NumelOut=218112000, "
    "Timeout(ms)=600000) ran for 600018 milliseconds before timing out."
)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.load()


def _logical_lines(data: bytes) -> list[bytes]:
    return data.replace(b"\r", b"\n").split(b"\n")


def test_successful_axolotl_log(catalogue: Catalogue) -> None:
    result = diagnose(FIXTURE, catalogue)
    json.dumps(result)
    assert set(result) == {"matches", "verdict"}
    assert [m["signature"] for m in result["matches"]] == ["extension_build_hang", "training_completed"]
    for m in result["matches"]:
        assert set(m) == {"signature", "action", "line", "text", "node"}
        assert m["text"].encode() in _logical_lines(FIXTURE.read_bytes())[m["line"] - 1]
    assert result["verdict"] == {"signature": "training_completed", "action": "finish"}


def test_fixture_progress_metrics_and_milestones(catalogue: Catalogue) -> None:
    acc = ScanAccumulator()
    for chunk in scan_file(FIXTURE, catalogue, chunk_bytes=512):
        acc.add(chunk)
    assert acc.progress == Progress(step=20, total=20)
    assert acc.metrics is not None and acc.metrics["train_loss"] == 4.8
    kinds = [m.kind for m in acc.milestones]
    assert kinds == [MilestoneKind.TRAINER_STARTED, MilestoneKind.TRAINING_COMPLETED, MilestoneKind.MODEL_SAVED]
    assert acc.milestones[-1].path == "./outputs/out"


def test_small_chunks_give_the_same_answer(catalogue: Catalogue) -> None:
    whole = [(m.signature, m.line) for r in scan_file(FIXTURE, catalogue) for m in r.matches]
    tiny = [(m.signature, m.line) for r in scan_file(FIXTURE, catalogue, chunk_bytes=97) for m in r.matches]
    assert whole == tiny


def _crashed_log(tmp_path: Path, tail: list[str], cut_at: bytes = b"{'loss': '4.401'") -> Path:
    """The fixture up to mid-training, then the given lines, as a crashed multi-rank job leaves it."""
    base = FIXTURE.read_bytes()
    log = tmp_path / "slurm-123.out"
    log.write_bytes(base[: base.index(cut_at)] + "".join(line + "\n" for line in tail).encode())
    return log


def test_oom_under_child_failed_error(tmp_path: Path, catalogue: Catalogue) -> None:
    log = _crashed_log(
        tmp_path,
        [
            "[rank3]: Traceback (most recent call last):",
            '[rank3]:   File "/opt/venv/lib/python3.11/site-packages/axolotl/train.py", line 203, in execute_training',
            "[rank3]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 3 has a total "
            "capacity of 79.11 GiB of which 1.06 GiB is free.",
            "E1106 09:15:02.000000 859901 torch/distributed/elastic/multiprocessing/api.py:869] failed "
            "(exitcode: 1) local_rank: 3 (pid: 859956) of binary: /opt/venv/bin/python",
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
            "srun: error: node03: task 0: Exited with exit code 1",
        ],
    )
    result = diagnose(log, catalogue)
    sigs = [m["signature"] for m in result["matches"]]
    assert sigs == ["extension_build_hang", "cuda_oom", "child_failed_error"]
    assert result["verdict"] == {"signature": "cuda_oom", "action": "fail"}
    oom = result["matches"][1]
    assert _logical_lines(log.read_bytes())[oom["line"] - 1].startswith(b"[rank3]: torch.OutOfMemoryError")


def test_completed_then_watchdog(tmp_path: Path, catalogue: Catalogue) -> None:
    base = FIXTURE.read_bytes()
    log = tmp_path / "slurm-124.out"
    log.write_bytes(base + (WATCHDOG + "\n").encode() + b"srun: error: node01: task 0: Aborted\n")
    result = diagnose(log, catalogue)
    assert [m["signature"] for m in result["matches"]][-2:] == ["training_completed", "nccl_watchdog_timeout"]
    assert result["verdict"] == {"signature": "training_completed", "action": "finish"}


def test_startup_failure_glued_to_bar_and_no_trailing_newline(tmp_path: Path, catalogue: Catalogue) -> None:
    log = _crashed_log(
        tmp_path,
        ["\r  0%|          | 0/20 [00:00<?, ?it/s]srun: error: Node failure on gpu-node12", "tail without newline"],
        cut_at=b"  0%|",
    )
    log.write_bytes(log.read_bytes().rstrip(b"\n") + b"\nERROR: unable to setup node")
    result = diagnose(log, catalogue)
    sigs = [(m["signature"], m["text"]) for m in result["matches"]]
    assert ("slurm_node_failure", "srun: error: Node failure on gpu-node12") in sigs
    assert sigs[-1][0] == "node_setup_failure"  # found even without a final newline
    assert result["verdict"] == {"signature": "slurm_node_failure", "action": "resubmit_exclude_node"}


def test_each_match_names_the_slurm_node_its_host_stands_for(tmp_path: Path, catalogue: Catalogue) -> None:
    log = tmp_path / "slurm-9.out"
    log.write_text(
        "ng30904:1:2 [0] NCCL INFO NET/IB : Got completion from peer ng30903-ib.narval.calcul.quebec<43127> with "
        "status=12 opcode=0 len=0 vendor err 129 (Recv)\n"
        "ng30904:1:2 [0] misc/socket.cc:47 NCCL WARN Call to recv from 10.82.4.17<53822> failed : Broken pipe\n"
        "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970\n")
    nodes = [(m["signature"], m["node"]) for m in diagnose(log, catalogue)["matches"]]
    # A host name loses its domain and interface suffix; an address needs the job's allocation to name a node.
    assert nodes == [("nccl_error", "ng30903"), ("nccl_error", None), ("nccl_error", None)]


def test_missing_file_raises(tmp_path: Path, catalogue: Catalogue) -> None:
    with pytest.raises(FileNotFoundError):
        diagnose(tmp_path / "absent.log", catalogue)


class Told:
    """The changes a LogDirWatcher reports, and an event set by each."""

    def __init__(self) -> None:
        self.changed: list[Path] = []
        self.seen = threading.Event()

    def __call__(self, path: Path | None) -> None:
        assert path is not None  # None: an inotify queue overflow
        self.changed.append(path)
        self.seen.set()


@pytest.mark.parametrize("observer", [None, Observer], ids=["reader", "observer"])
def test_watcher_wakes_on_write_and_follows_the_watch_set(
    tmp_path: Path, observer: Callable[[], BaseObserver] | None,
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    told = Told()

    with LogDirWatcher(told, observer_factory=observer) as watcher:
        watcher.set_dirs([a, b])
        assert watcher.watched == {a.resolve()}
        assert b.resolve() in watcher.unwatched
        (a / "slurm-1.out").write_text("hello\n")
        assert watcher.wait(10)
        assert told.seen.wait(10)
        assert told.changed[0].name == "slurm-1.out"
        b.mkdir()
        watcher.set_dirs([b])
        assert watcher.watched == {b.resolve()}
        assert watcher.unwatched == {}


def test_watcher_wakes_for_a_log_directory_deleted_and_made_again(tmp_path: Path) -> None:
    """On the inotify reader a deleted directory's watch is gone; the next set_dirs watches the new one."""
    logs = tmp_path / "logs"
    logs.mkdir()
    told = Told()

    with LogDirWatcher(told) as watcher:
        watcher.set_dirs([logs])
        (logs / "old.log").write_text("x\n")
        assert told.seen.wait(10)
        shutil.rmtree(logs)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the kernel's IN_IGNORED reaches the reader thread
            watcher.set_dirs([logs])
            if logs.resolve() in watcher.unwatched:
                break
            time.sleep(0.05)
        assert logs.resolve() in watcher.unwatched
        logs.mkdir()
        watcher.set_dirs([logs])
        assert watcher.watched == {logs.resolve()}
        told.seen.clear()
        (logs / "new.log").write_text("y\n")
        assert told.seen.wait(10)
        assert told.changed[-1].name == "new.log"

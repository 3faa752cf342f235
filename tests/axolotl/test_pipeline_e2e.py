"""End to end with the real tools: axolotl preprocess/train, accelerate merge-weights, rsync.

Needs the training venv (``deploy/training-venv.sh``; override with ``TRAINING_VENV``). The rendered
sbatch scripts run directly under bash here, with tiny ``srun``/``scontrol`` stand-ins on PATH; the
per-stage helpers (``run_job``, ``start_job``, ``assert_*``) are meant to be reused unchanged when the
same stages run through the supervisor on the local SLURM cluster.

    .venv/bin/pytest -m axolotl tests/axolotl -s      # -s prints the per-stage timings
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor import checkpoints, pipeline, transfer
from supervisor.pipeline import StageContext, Submission

pytestmark = pytest.mark.axolotl

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TRAINING_VENV = Path(os.environ.get("TRAINING_VENV", REPO / ".cache" / "training-venv"))
MAX_STEPS = 30
SAVE_STEPS = 5
JOB_TIMEOUT = 600.0


# --------------------------------------------------------------------------------------------------
# Reusable helpers


def training_python() -> Path:
    return TRAINING_VENV / "bin" / "python"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_shims(directory: Path) -> Path:
    """``srun`` and ``scontrol`` stand-ins so a rendered sbatch script runs outside SLURM."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "srun").write_text('#!/bin/bash\nwhile [[ "${1:-}" == -* ]]; do shift; done\nexec "$@"\n')
    (directory / "scontrol").write_text("#!/bin/bash\nhostname\n")
    for shim in directory.iterdir():
        shim.chmod(0o755)
    return directory


def job_env(shims: Path, job_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{shims}:{env['PATH']}"
    env["SLURM_JOB_ID"] = str(job_id)
    env["SLURM_JOB_NODELIST"] = socket.gethostname()
    return env


def start_job(script: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a rendered script as a job of its own (its own session, like a batch step)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as fh:
        return subprocess.Popen(
            ["bash", str(script)], stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc (torchrun puts its workers in new sessions)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def kill_job(proc: subprocess.Popen[bytes]) -> None:
    """What scancel does through the job's cgroup: SIGKILL every process of the job at once."""
    for pid in descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def run_job(script: Path, log: Path, env: dict[str, str]) -> int:
    proc = start_job(script, log, env)
    try:
        return proc.wait(timeout=JOB_TIMEOUT)
    finally:
        if proc.poll() is None:
            kill_job(proc)


def kill_when(proc: subprocess.Popen[bytes], condition: Callable[[], bool], timeout: float = JOB_TIMEOUT) -> bool:
    """Kill the job once ``condition`` holds; False if the job ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            if proc.poll() is None:
                kill_job(proc)
                return True
            return False
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    kill_job(proc)
    raise AssertionError("condition never held")


def log_text(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")


def safetensors_tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """name -> (dtype, shape, raw bytes), read without torch."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    return {
        name: (entry["dtype"], tuple(entry["shape"]), body[entry["data_offsets"][0] : entry["data_offsets"][1]])
        for name, entry in header.items()
        if name != "__metadata__"
    }


def assert_prepare_succeeded(ctx: StageContext, rc: int, log: Path) -> None:
    assert rc == 0, log_text(log)[-3000:]
    assert pipeline.check_success(ctx, rc, log_text(log)), log_text(log)[-3000:]


def assert_training_finished(ctx: StageContext, log: Path) -> None:
    assert pipeline.training_finished(ctx), log_text(log)[-3000:]
    assert pipeline.check_success(ctx, None, log_text(log))


def assert_merge_succeeded(ctx: StageContext, rc: int, log: Path) -> Path:
    text = log_text(log)
    assert rc == 0, text[-3000:]
    assert "verify_merge: OK" in text
    assert pipeline.check_success(ctx, rc, text)
    merged = pipeline.merged_dir(ctx, pipeline.load_axolotl_config(ctx))
    assert not list(merged.parent.glob(f"{merged.name}.partial-*")), "staging directory left behind"
    return merged


def assert_same_tensors(merged: Path, original: Path) -> None:
    got, want = safetensors_tensors(merged), safetensors_tensors(original)
    assert sorted(got) == sorted(want)
    for name, (dtype, shape, raw) in want.items():
        assert got[name][:2] == (dtype, shape), name
        assert got[name][2] == raw, f"{name}: merged values differ from the original"


# --------------------------------------------------------------------------------------------------
# Fixtures: one pipeline, stage by stage


@dataclass
class E2E:
    root: Path
    assets: Path
    shims: Path
    timings: dict[str, float] = field(default_factory=dict)
    job_ids: Iterator[int] = field(default_factory=lambda: iter(range(1000, 10**6)))

    def ctx(self, stage: str, kind: str, attempt: int, config: Path, **options: Any) -> StageContext:
        return StageContext(
            run="e2e",
            stage=stage,
            kind=kind,
            attempt=attempt,
            workdir=self.root / "work",
            options=options,
            axolotl_config=config,
            venv=TRAINING_VENV,
            base_dir=config.parent,
        )

    def env(self) -> dict[str, str]:
        return job_env(self.shims, next(self.job_ids))

    def log(self, ctx: StageContext) -> Path:
        return ctx.workdir / "logs" / f"{ctx.stage}.{ctx.attempt}.log"


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    if not (TRAINING_VENV / ".training-venv-complete").is_file():
        pytest.skip(f"no training venv at {TRAINING_VENV}: run deploy/training-venv.sh")
    root = tmp_path_factory.mktemp("e2e")
    state = E2E(root=root, assets=root / "assets", shims=make_shims(root / "shims"))
    started = time.monotonic()
    subprocess.run([str(training_python()), str(HERE / "make_assets.py"), str(state.assets)], check=True)
    state.timings["assets"] = time.monotonic() - started
    yield state
    sys.stdout.write("\nstage timings (s): " + json.dumps({k: round(v, 1) for k, v in state.timings.items()}) + "\n")


@pytest.fixture(scope="module")
def axolotl_config(e2e: E2E) -> Path:
    project = e2e.root / "project"
    project.mkdir()
    config = {
        "base_model": str(e2e.assets / "model"),
        "tokenizer_config": str(e2e.assets / "model"),
        "datasets": [
            {
                "path": str(e2e.assets / "data.jsonl"),
                "ds_type": "json",
                "type": "chat_template",
                "field_messages": "conversations",
            }
        ],
        "chat_template": "tokenizer_default",
        # Relative on purpose: resolved against the run's base directory, like the team's configs.
        "dataset_prepared_path": "prepared",
        "output_dir": "outputs/tiny",
        "sequence_len": 128,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": MAX_STEPS,
        "save_steps": SAVE_STEPS,
        "learning_rate": 0.001,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "val_set_size": 0,
        "logging_steps": 1,
        # bf16 on a CPU-only machine breaks training; preprocessing switches all three off regardless.
        "bf16": False,
        "tf32": False,
        "seed": 42,
    }
    path = project / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass(frozen=True)
class StageRecord:
    submissions: list[Submission]
    codes: list[int | None]
    logs: list[Path]
    killed: bool = False


@pytest.fixture(scope="module")
def prepared(e2e: E2E, axolotl_config: Path) -> StageRecord:
    """Attempt 1 killed once partial output exists; attempt 2 cleans it and succeeds."""
    original = axolotl_config.read_text()
    ctx1 = e2e.ctx("prepare", "prepare", 1, axolotl_config, partition="cpu", time="04:00:00")
    sub1 = pipeline.prepare_submission(ctx1)
    assert sub1.script is not None
    prepared_path = axolotl_config.parent / "prepared"
    started = time.monotonic()
    proc = start_job(sub1.script, e2e.log(ctx1), e2e.env())
    killed = kill_when(proc, lambda: any(p.is_dir() for p in prepared_path.glob("*")))
    e2e.timings["prepare attempt 1 (killed)"] = time.monotonic() - started

    ctx2 = e2e.ctx("prepare", "prepare", 2, axolotl_config, partition="cpu", time="04:00:00")
    started = time.monotonic()
    sub2 = pipeline.prepare_submission(ctx2)
    assert sub2.script is not None
    rc2 = run_job(sub2.script, e2e.log(ctx2), e2e.env())
    e2e.timings["prepare"] = time.monotonic() - started
    assert axolotl_config.read_text() == original, "the user's config was modified"
    return StageRecord([sub1, sub2], [proc.returncode, rc2], [e2e.log(ctx1), e2e.log(ctx2)], killed)


def test_prepare_retry_cleans_partial_output(e2e: E2E, axolotl_config: Path, prepared: StageRecord) -> None:
    first, second = prepared.submissions
    assert first.derived_config is not None
    derived = yaml.safe_load(first.derived_config.read_text())
    assert (derived["bf16"], derived["fp16"], derived["tf32"]) == (False, False, False)
    assert derived["dataset_prepared_path"] == str(axolotl_config.parent / "prepared")
    if prepared.killed:
        assert not pipeline.check_success(
            e2e.ctx("prepare", "prepare", 1, axolotl_config), prepared.codes[0], log_text(prepared.logs[0])
        )
    # The retry removed what attempt 1 left (its dataset-hash directory and lock file), nothing else.
    assert any(p.name == "datasets_prep.lock" for p in second.cleaned)
    assert any(len(p.name) == 32 for p in second.cleaned)
    rc = prepared.codes[1]
    assert rc is not None
    assert_prepare_succeeded(e2e.ctx("prepare", "prepare", 2, axolotl_config), rc, prepared.logs[1])


@pytest.fixture(scope="module")
def trained(e2e: E2E, axolotl_config: Path, prepared: StageRecord) -> StageRecord:
    """Attempt 1 killed mid-run after a complete checkpoint; attempt 2 resumes and finishes."""
    options = {"nodes": 1, "gpus_per_node": 0, "master_port": free_port()}
    output_dir = axolotl_config.parent / "outputs" / "tiny"
    ctx1 = e2e.ctx("train", "train", 1, axolotl_config, **options)
    sub1 = pipeline.prepare_submission(ctx1)
    assert sub1.script is not None and sub1.resume_from is None
    started = time.monotonic()
    proc = start_job(sub1.script, e2e.log(ctx1), e2e.env())
    killed = kill_when(proc, lambda: checkpoints.is_complete(output_dir / f"checkpoint-{2 * SAVE_STEPS}"))
    e2e.timings["train attempt 1 (killed)"] = time.monotonic() - started
    assert killed, "training finished before it could be interrupted"

    # A save cut short by the kill: a newer checkpoint without trainer_state.json.
    newest = checkpoints.newest_complete(output_dir)
    assert newest is not None
    partial = output_dir / f"checkpoint-{newest.step + SAVE_STEPS}"
    if not partial.exists():
        shutil.copytree(newest.path, partial)
        (partial / checkpoints.TRAINER_STATE).unlink()

    options["master_port"] = free_port()
    ctx2 = e2e.ctx("train", "train", 2, axolotl_config, **options)
    started = time.monotonic()
    sub2 = pipeline.prepare_submission(ctx2)
    assert sub2.script is not None
    rc2 = run_job(sub2.script, e2e.log(ctx2), e2e.env())
    e2e.timings["train attempt 2 (resumed)"] = time.monotonic() - started
    return StageRecord([sub1, sub2], [proc.returncode, rc2], [e2e.log(ctx1), e2e.log(ctx2)], killed)


def test_train_resumes_from_last_complete_checkpoint(e2e: E2E, axolotl_config: Path, trained: StageRecord) -> None:
    second = trained.submissions[1]
    output_dir = axolotl_config.parent / "outputs" / "tiny"
    assert trained.killed and trained.codes[0] != 0
    assert second.resume_from is not None
    resumed_at = int(second.resume_from.name.split("-")[1])
    assert resumed_at >= 2 * SAVE_STEPS
    assert second.moved_aside, "the incomplete newer checkpoint was not moved aside"
    for moved in second.moved_aside:
        assert moved.parent == output_dir and moved.name.startswith(checkpoints.INCOMPLETE_PREFIX)
    assert second.derived_config is not None
    derived = yaml.safe_load(second.derived_config.read_text())
    assert derived["resume_from_checkpoint"] == str(second.resume_from)

    assert trained.codes[1] == 0, log_text(trained.logs[1])[-3000:]
    assert_training_finished(e2e.ctx("train", "train", 2, axolotl_config), trained.logs[1])
    final = checkpoints.newest_complete(output_dir)
    assert final is not None
    state = checkpoints.read_trainer_state(final.path)
    assert state is not None and state["global_step"] == MAX_STEPS
    # Attempt 2 logged only the steps after the checkpoint it resumed from: global_step continued.
    losses = log_text(trained.logs[1]).count("'loss':")
    assert losses == MAX_STEPS - resumed_at
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == list(range(1, MAX_STEPS + 1))


@pytest.fixture(scope="module")
def merged_copy(e2e: E2E, axolotl_config: Path, trained: StageRecord) -> tuple[StageContext, int, Path]:
    ctx = e2e.ctx("merge", "merge", 1, axolotl_config, partition="bigmem")
    started = time.monotonic()
    sub = pipeline.prepare_submission(ctx)
    assert sub.script is not None
    rc = run_job(sub.script, e2e.log(ctx), e2e.env())
    e2e.timings["merge (copy of unsharded final model)"] = time.monotonic() - started
    return ctx, rc, e2e.log(ctx)


def test_merge_copies_unsharded_final_model(axolotl_config: Path, merged_copy: tuple[StageContext, int, Path]) -> None:
    ctx, rc, log = merged_copy
    merged = assert_merge_succeeded(ctx, rc, log)
    output_dir = axolotl_config.parent / "outputs" / "tiny"
    assert_same_tensors(merged / "model.safetensors", output_dir / "model.safetensors")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (merged / name).read_bytes() == (output_dir / name).read_bytes()


@pytest.fixture(scope="module")
def fsdp_run(e2e: E2E) -> tuple[StageContext, int, Path, Path]:
    """A 2-process FSDP2 sharded checkpoint, merged by the merge stage with accelerate."""
    project = e2e.root / "fsdp-project"
    output_dir = project / "outputs" / "fsdp"
    output_dir.mkdir(parents=True)
    step = 8
    started = time.monotonic()
    subprocess.run(
        [
            str(TRAINING_VENV / "bin" / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
            str(HERE / "make_fsdp_ckpt.py"), str(e2e.assets / "model"), str(output_dir), str(step),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    e2e.timings["fsdp checkpoint (2 procs)"] = time.monotonic() - started
    config = {
        "base_model": str(e2e.assets / "model"),
        "datasets": [{"path": str(e2e.assets / "data.jsonl"), "type": "chat_template"}],
        "dataset_prepared_path": "prepared",
        "output_dir": "outputs/fsdp",
        "max_steps": step,
        "fsdp_version": 2,
        "fsdp_config": {"state_dict_type": "SHARDED_STATE_DICT", "reshard_after_forward": True},
    }
    path = project / "fsdp.yaml"
    path.write_text(yaml.safe_dump(config))
    ctx = e2e.ctx("merge", "merge", 1, path, partition="bigmem")
    started = time.monotonic()
    sub = pipeline.prepare_submission(ctx)
    assert sub.script is not None
    rc = run_job(sub.script, e2e.log(ctx), e2e.env())
    e2e.timings["merge (accelerate merge-weights)"] = time.monotonic() - started
    return ctx, rc, e2e.log(ctx), output_dir.parent / "original.safetensors"


def test_merge_of_sharded_checkpoint_gives_back_the_originals(fsdp_run: tuple[StageContext, int, Path, Path]) -> None:
    ctx, rc, log, original = fsdp_run
    checkpoint = pipeline.plan_merge(pipeline.load_axolotl_config(ctx)).checkpoint
    assert checkpoint is not None and len(list((checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))) == 2
    merged = assert_merge_succeeded(ctx, rc, log)
    assert_same_tensors(merged / "model.safetensors", original)
    assert (merged / "config.json").is_file() and (merged / "tokenizer.json").is_file()


def test_transfer_stage_command_copies_and_verifies(e2e: E2E, fsdp_run: tuple[StageContext, int, Path, Path]) -> None:
    merge_ctx = fsdp_run[0]
    config = merge_ctx.axolotl_config
    assert config is not None
    destination = e2e.root / "home" / "models" / "tiny"
    destination.parent.mkdir(parents=True)
    ctx = e2e.ctx("transfer", "transfer", 1, config, destination=str(destination), attempts=2, backoff=1)
    sub = pipeline.prepare_submission(ctx)
    assert sub.command is not None and sub.script is None
    started = time.monotonic()
    done = subprocess.run(
        sub.command, env={**os.environ, **sub.env}, cwd=ctx.workdir, capture_output=True, text=True, check=False
    )
    e2e.timings["transfer"] = time.monotonic() - started
    assert pipeline.check_success(ctx, done.returncode, done.stdout), done.stdout + done.stderr
    merged = pipeline.merged_dir(ctx, pipeline.load_axolotl_config(ctx))
    assert sorted(p.name for p in destination.iterdir()) == sorted(p.name for p in merged.iterdir())
    assert transfer.verify(merged, str(destination)) == []


def test_interrupted_transfer_resumes_and_checksum_catches_corruption(e2e: E2E) -> None:
    source = e2e.root / "bulk"
    source.mkdir()
    size = 4 * 1024 * 1024
    for i in range(4):
        (source / f"shard-{i}.bin").write_bytes(os.urandom(size))
    destination = e2e.root / "bulk-dest"

    started = time.monotonic()
    argv = transfer.rsync_argv(source, str(destination), extra=["--bwlimit=4096"])
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def one_file_done() -> bool:
        return destination.is_dir() and any(
            p.stat().st_size == size for p in destination.glob("shard-*.bin") if not p.name.startswith(".")
        )

    deadline = time.monotonic() + 120
    while not one_file_done() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "rsync finished before it could be interrupted"
    proc.kill()
    proc.wait()
    assert transfer.verify(source, str(destination)), "nothing left to send after the interruption?"

    result = transfer.transfer(source, str(destination), attempts=2, backoff=0.0)
    e2e.timings["transfer interrupted + resumed (16 MiB, throttled)"] = time.monotonic() - started
    assert result.progress is not None and result.progress.files_transferred is not None
    assert result.progress.files_transferred < 4, "the resumed transfer started over"
    assert transfer.verify(source, str(destination)) == []

    # Same size and mtime, different bytes: only a checksum comparison notices.
    victim = destination / "shard-2.bin"
    stat = victim.stat()
    with victim.open("r+b") as fh:
        fh.seek(size // 2)
        byte = fh.read(1)
        fh.seek(size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    left = transfer.verify(source, str(destination))
    assert [line.split(" ", 1)[1] for line in left] == ["shard-2.bin"]

    transfer.transfer_and_verify(source, str(destination), attempts=1, backoff=0.0)
    assert victim.read_bytes() == (source / "shard-2.bin").read_bytes()

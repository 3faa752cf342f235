"""Reactions end to end: real daemon subprocess, real CLI, real SQLite, jobs on the one-node SLURM cluster.

Each job prints a failure signature (or goes silent) and then hangs, so only the supervisor can end it:
an attempt found CANCELLED proves the reaction did not wait for the job to exit.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from supervisor.app.daemon import MIN_WAKE_INTERVAL, WAKE_JOB, Daemon
from supervisor.app.service import TickReport
from supervisor.domain.types import SignatureAction
from supervisor.logs.catalogue import load_builtin

from harness import Harness, slurm_available
from slurm_fixtures import compute_nodes, expand_hostlist, sacct_job

REPO = Path(__file__).resolve().parents[1]
FIXTURE_LOG = REPO / "tests" / "fixtures" / "logs" / "axolotl_train.log"

WATCHDOG = (
    "[rank16]:[E1228 15:44:53.523176693 ProcessGroupNCCL.cpp:607] [Rank 0] Watchdog caught collective operation "
    "timeout: WorkNCCL(SeqNum=264290, OpType=_ALLGATHER_BASE, NumelIn=54528000, NumelOut=218112000, "
    "Timeout(ms)=600000) ran for 600018 milliseconds before timing out."
)
COMPLETED = (
    "[2025-11-06 11:25:10,069] [INFO] [axolotl.train.save_trained_model:228] [PID:859953] [RANK:0] "
    "Training completed! Saving trained model to models/base."
)

# One realistic line per built-in signature. `fake01` is a FUTURE node of the dev cluster: a valid
# --exclude name, but no node of any job's allocation: a line naming it excludes nothing. Lines without a node
# make the supervisor exclude the job's node, the only one it has.
LINES: dict[str, str] = {
    "nvcc_timeout": "[rank0]: RuntimeError: NVCC timeout while compiling fused kernels",
    "unsupported_device": "RuntimeError: Unsupported device: cuda:3",
    "node_setup_failure": "srun: error: unable to setup node gpu17",
    "nccl_watchdog_timeout": WATCHDOG,
    "nccl_heartbeat_timeout": (
        "[rank3]:[E1228 15:54:53.000 ProcessGroupNCCL.cpp:1416] [PG ID 0 PG GUID 0(default_pg) Rank 3] "
        "Heartbeat monitor timed out! Process will be terminated after dumping debug info."
    ),
    "nccl_error": "gpu04:2210:2301 [0] NCCL WARN socketProgress: Connection closed by remote peer fake01<45678>",
    "rendezvous_timeout": "torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError",
    "child_failed_error": "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
    "cuda_oom": (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
        "79.11 GiB of which 1.06 GiB is free."
    ),
    "host_oom": (
        "slurmstepd: error: Detected 1 oom_kill event in StepId=123.0. Some of your processes may have been "
        "killed by the cgroup out-of-memory handler."
    ),
    "illegal_memory_access": "RuntimeError: CUDA error: an illegal memory access was encountered",
    "ecc_error": "RuntimeError: CUDA error: uncorrectable ECC error encountered",
    "slurm_time_limit": (
        "slurmstepd: error: *** JOB 123 ON node01 CANCELLED AT 2024-12-28T15:44:53 DUE TO TIME LIMIT ***"
    ),
    "slurm_node_failure": "srun: error: Node failure on fake01",
    "slurm_preempted": (
        "slurmstepd: error: *** STEP 123.0 ON node01 CANCELLED AT 2024-12-28T15:44:53 DUE TO PREEMPTION ***"
    ),
    "srun_step_failure": "srun: error: Unable to create step for job 123: Memory required by task is not available",
    "extension_build_hang": "Using /root/.cache/torch_extensions/py311_cu124 as PyTorch extensions root...",
    "extension_build_error": "RuntimeError: Error building extension 'fused_adam'",
    "hub_offline": "huggingface_hub.errors.LocalEntryNotFoundError: Cannot find the requested files in the disk cache",
    "disk_full": "OSError: [Errno 28] No space left on device",
    "bf16_unsupported": (
        "ValueError: bf16 requested, but AMP is not supported on this GPU. Requires Ampere series or above."
    ),
    "training_completed": COMPLETED,
    "nccl_communicator_aborted": "NCCL communicator was aborted on rank 1.",
    "gloo_timeout": (
        "RuntimeError: [../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms "
        "for recv operation to complete"
    ),
    "rendezvous_closed": "torch.distributed.elastic.rendezvous.api.RendezvousClosedError",
    "rendezvous_port_in_use": (
        "RuntimeError: The server socket has failed to listen on any local network address. port: 29500, useIpv6: 0, "
        "code: -98, name: EADDRINUSE, message: address already in use"
    ),
    "worker_killed": (
        "E1228 15:45:02.000000 859901 torch/distributed/elastic/multiprocessing/api.py:869] failed (exitcode: -9) "
        "local_rank: 0 (pid: 859956) of binary: /opt/venv/bin/python"
    ),
    "shm_exhausted": (
        "ERROR: Unexpected bus error encountered in worker. This might be caused by insufficient shared memory (shm)."
    ),
    "bus_error": "srun: error: fake01: task 3: Bus error",
    "cuda_device_unavailable": "RuntimeError: CUDA error: CUDA-capable device(s) is/are busy or unavailable",
    "srun_task_launch_failure": (
        "srun: error: Task launch for StepId=123.0 failed on node fake01: Socket timed out on send/recv operation"
    ),
    "stale_file_handle": "OSError: [Errno 116] Stale file handle: '/home/u/.triton/cache/ab12/cuda_utils.so'",
    "hub_rate_limited": (
        "requests.exceptions.HTTPError: 429 Client Error: Too Many Requests for url: "
        "https://huggingface.co/meta-llama/Meta-Llama-3-8B/resolve/main/config.json"
    ),
    "checkpoint_write_failed": (
        "RuntimeError: [enforce fail at inline_container.cc:857] . PytorchStreamWriter failed writing file data/322: "
        "file write failed"
    ),
}

CATALOGUE = {spec.name: spec for spec in load_builtin()}
STALL_S = 3  # for the entries that never decide on their own line (hang hints, milestones)
SLURM_ONLY = pytest.mark.slurm


def require_slurm() -> None:
    if not slurm_available():
        pytest.fail("SLURM is not answering: start it with deploy/slurm-cluster.sh start")


def hanging_job(h: Harness, name: str, lines: list[str], *, then: str = "sleep 300") -> Path:
    """Attempt 1 prints `lines` and hangs; any later attempt succeeds at once."""
    printed = "\n".join(f"printf '%s\\n' {shlex.quote(line)}" for line in lines)
    return h.script(f"{name}.sbatch", f"""
#SBATCH --time=00:10:00
if [ "$SUPERVISOR_ATTEMPT" -ge 2 ]; then echo "attempt $SUPERVISOR_ATTEMPT: nothing to do"; exit 0; fi
echo "attempt 1 on $(hostname -s)"
{printed}
{then}
""")


def signature_spec(h: Harness, backend: str, signature: str) -> dict[str, Any]:
    stage: dict[str, Any] = {"name": "s", "script": str(hanging_job(h, f"{backend}-{signature}", [LINES[signature]])),
                             "max_attempts": 2, "retry_backoff": 0}
    spec = CATALOGUE[signature]
    if spec.hang_hint or spec.action is SignatureAction.FINISH:
        stage["stall_timeout"] = f"{STALL_S}s"
    return {"name": f"{backend}-{signature.replace('_', '-')}", "backend": backend,
            "workdir": str(h.root / "w" / f"{backend}-{signature}"), "stages": [stage]}


def events(data: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in data["events"] if e["kind"] == kind]


def wait_all_settled(h: Harness, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """One `status` call per round (not one `show` per run): the CLI costs a Python start-up each."""
    settled = {"succeeded", "failed", "cancelled", "paused"}
    h.wait_for(lambda: all(r["state"] in settled for r in h.status() if r["name"] in names), timeout,
               f"runs {names} to settle")
    return {name: h.show(name) for name in names}


def scontrol_job(job_id: str) -> dict[str, str]:
    # Others share the dev cluster and some of their tests stop slurmctld for a while: wait that out.
    deadline = time.monotonic() + 120
    while True:
        done = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True,
                              timeout=90)
        if done.returncode == 0 or "Invalid job id" in done.stderr or time.monotonic() > deadline:
            break
        time.sleep(1)
    if "Invalid job id" in done.stderr:
        # Forgotten after MinJobAge (30 s on the cluster with accounting): the state is in sacct.
        accounted = sacct_job(job_id)
        assert accounted is not None, f"neither scontrol nor sacct knows job {job_id}"
        # sacct keeps no ExcNodeList, but the sbatch command line it keeps has the --exclude given.
        excluded = [arg.split("=", 1)[1] for arg in shlex.split(accounted["SubmitLine"])
                    if arg.startswith("--exclude=")]
        return {"JobState": accounted["State"].split(" ", 1)[0], "NodeList": accounted["NodeList"],
                "ExcNodeList": excluded[0] if excluded else "(null)"}
    assert done.returncode == 0, f"scontrol show job {job_id}: {done.stderr.strip()}"
    return dict(field.split("=", 1) for field in done.stdout.split() if "=" in field)


# ---- every built-in signature: printed, then a hang ---------------------------------------------------


def test_every_catalogue_entry_has_a_line() -> None:
    assert set(LINES) == set(CATALOGUE)


def signature_runs(
    tmp_path_factory: pytest.TempPathFactory, backend: str, signatures: Iterable[str], timeout: float
) -> Iterator[dict[str, dict[str, Any]]]:
    """All signature runs under one daemon at once; the parametrized tests below each read one."""
    h = Harness(tmp_path_factory.mktemp(f"signatures-{backend}"))
    try:
        names = [h.submit(signature_spec(h, backend, sig)) for sig in signatures]
        h.start_daemon(poll="0.5s")
        yield wait_all_settled(h, names, timeout=timeout)
    finally:
        h.close()


@pytest.fixture(scope="module")
def slurm_signature_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    require_slurm()
    yield from signature_runs(tmp_path_factory, "slurm", CATALOGUE, timeout=240)


@pytest.fixture(scope="module")
def local_signature_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    yield from signature_runs(tmp_path_factory, "local", LOCAL_SUBSET, timeout=120)


# One per action (and the two that never decide on their own line) is enough on the embedded backend.
LOCAL_SUBSET = ["nvcc_timeout", "cuda_oom", "ecc_error", "training_completed", "extension_build_hang"]


def check_reaction(data: dict[str, Any], signature: str, backend: str) -> None:
    spec = CATALOGUE[signature]
    (stage,) = data["stages"]
    attempts = stage["attempts"]
    first = attempts[0]
    # The job would have slept for 300 s: only the supervisor ended it.
    assert first["state"] == "cancelled", first
    if backend == "slurm":
        assert scontrol_job(first["job_id"])["JobState"] == "CANCELLED"

    if spec.hang_hint:
        # A hint explains a hang but is not one: no verdict on the line, the stall timeout ends it, and the
        # stall is named after the hint it stopped on.
        assert events(data, "signature") == []
        assert first["cause"] == signature and first["outcome"] == "resubmit"
        assert [a["state"] for a in attempts] == ["cancelled", "succeeded"]
        assert data["state"] == "succeeded"
        return
    if spec.action is SignatureAction.FINISH:
        (milestone,) = events(data, "milestone")
        assert milestone["message"].startswith(f"{signature}: ")
        assert first["outcome"] == "finish"
        assert len(attempts) == 1 and stage["state"] == "succeeded" and data["state"] == "succeeded"
        return

    (sig_event,) = events(data, "signature")
    assert sig_event["message"].startswith(f"{signature} at line 2: ")
    assert first["cause"] == signature
    if spec.action is SignatureAction.FAIL:
        assert first["outcome"] == "fail"
        assert len(attempts) == 1, "a fail signature is never retried"
        assert stage["state"] == "failed" and data["state"] == "failed"
        assert events(data, "resubmitted") == []
        return

    assert first["outcome"] == "resubmit"
    assert len(attempts) == 2 and attempts[1]["number"] == 2
    (resubmitted,) = events(data, "resubmitted")
    assert signature in resubmitted["message"]
    excluded = {x["node"] for x in data["excluded_nodes"]}
    if spec.action is SignatureAction.RESUBMIT:
        assert excluded == set()
        assert attempts[1]["state"] == "succeeded" and data["state"] == "succeeded"
        return

    # resubmit_exclude_node: the node named in the line when it is one of the job's, else the job's only node.
    if "fake01" in LINES[signature]:
        # fake01 is no node of the job's allocation: the host stays unresolved and nothing is excluded.
        assert excluded == set() and events(data, "excluded_node") == [], excluded
        assert attempts[1]["state"] == "succeeded"
        if backend == "slurm":
            assert scontrol_job(attempts[1]["job_id"])["ExcNodeList"] == "(null)"
        return
    node = first["nodes"]
    if node is None:
        # Cancelled before the job had a node: no evidence against any node, so nothing is excluded.
        assert excluded == set() and events(data, "excluded_node") == [], excluded
        assert attempts[1]["state"] == "succeeded" and data["state"] == "succeeded"
        return
    assert any(e["message"].startswith(f"node {node} excluded") for e in events(data, "excluded_node")), node
    if backend != "slurm":
        assert excluded == {node}, (excluded, first["nodes"])
        return  # recorded, but a local process has no nodes to avoid
    if compute_nodes() != [node]:
        # On the multi-node cluster the job's only node stays excluded and another node takes the
        # resubmission.
        assert excluded == {node}, excluded
        assert attempts[1]["state"] == "succeeded" and data["state"] == "succeeded"
        assert node not in expand_hostlist(attempts[1]["nodes"]), (first, attempts[1])
        return
    # The one node of the one-node cluster excluded: sbatch refuses the resubmission, which proves the
    # exclusion reached it. The supervisor's own exclusion made the job impossible, not the run: it is
    # lifted and the job submitted again without it.
    (lifted,) = [e for e in events(data, "excluded_node") if "lifted" in e["message"]]
    assert "node configuration is not available" in lifted["message"]
    assert excluded == set()
    assert attempts[1]["state"] == "succeeded" and data["state"] == "succeeded"
    assert scontrol_job(attempts[1]["job_id"])["ExcNodeList"] == "(null)"


@SLURM_ONLY
@pytest.mark.parametrize("signature", sorted(LINES))
def test_signature_then_hang_slurm(slurm_signature_runs: dict[str, dict[str, Any]], signature: str) -> None:
    check_reaction(slurm_signature_runs[f"slurm-{signature.replace('_', '-')}"], signature, "slurm")


@pytest.mark.parametrize("signature", LOCAL_SUBSET)
def test_signature_then_hang_local(local_signature_runs: dict[str, dict[str, Any]], signature: str) -> None:
    check_reaction(local_signature_runs[f"local-{signature.replace('_', '-')}"], signature, "local")


@SLURM_ONLY
def test_exclude_job_nodes_when_the_log_wakes_the_daemon_before_any_poll(harness: Harness) -> None:
    """With a long poll the reaction comes from inotify before any poll saw the job running: the job's
    node list must still be learnt for the exclusion."""
    require_slurm()
    harness.submit(signature_spec(harness, "slurm", "ecc_error"))
    harness.start_daemon(poll="30s")
    data = harness.wait_state("slurm-ecc-error", ["succeeded", "failed"], timeout=60)
    first = data["stages"][0]["attempts"][0]
    assert first["cause"] == "ecc_error" and first["nodes"]
    check_reaction(data, "ecc_error", "slurm")


# ---- training: a fake axolotl in a fake venv, checkpoints in the real layout -------------------------

FAKE_AXOLOTL = r'''
"""A stand-in for `axolotl train CFG ...`: same config keys, checkpoint layout and log lines, no torch."""
import json, os, sys, time
from pathlib import Path
import yaml

WATCHDOG = %(watchdog)r
assert sys.argv[1] == "train", sys.argv
cfg = yaml.safe_load(Path(sys.argv[2]).read_text())
out = Path(cfg["output_dir"])
max_steps, save_steps = int(cfg["max_steps"]), int(cfg["save_steps"])
resume = cfg.get("resume_from_checkpoint")
start = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"] if resume else 0
hang_at = int(os.environ.get("FAKE_HANG_AT_STEP", "0")) if not resume else 0
out.mkdir(parents=True, exist_ok=True)
with (out / "fake-axolotl.jsonl").open("a") as fh:
    fh.write(json.dumps({"config": sys.argv[2], "resume_from_checkpoint": resume, "start": start}) + "\n")

def log(text, end="\n"):
    sys.stdout.write(text + end)
    sys.stdout.flush()

def hang():
    while True:
        time.sleep(60)

def shards(directory, complete):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "__0_0.distcp").write_bytes(b"\0" * 64)
    if complete:
        (directory / ".metadata").write_bytes(b"metadata")

log("[2025-11-06 09:14:07,585] [INFO] [axolotl.train.execute_training:203] [PID:1] [RANK:0] Starting trainer...")
history = []
for step in range(start + 1, max_steps + 1):
    time.sleep(0.05)
    pct = 100 * step // max_steps
    log(f"{pct:3d}%%|{'#' * (pct // 10):<10}| {step}/{max_steps} [00:{step:02d}<00:{max_steps - step:02d},  1.00it/s]",
        end="\r")
    loss = round(2.0 / step, 4)
    history.append({"loss": loss, "step": step})
    log(f"{{'loss': '{loss}', 'grad_norm': '1.5', 'learning_rate': '2e-05', 'epoch': '{step / max_steps}'}}")
    with (out / "steps.log").open("a") as fh:
        fh.write(f"{step}\n")
    if step %% save_steps:
        continue
    ckpt = out / f"checkpoint-{step}"
    if step == hang_at:
        # The save never finishes: shards on disk, no .metadata, no trainer_state.json.
        shards(ckpt / "pytorch_model_fsdp_0", complete=False)
        log(WATCHDOG)
        hang()
    shards(ckpt / "pytorch_model_fsdp_0", complete=True)
    shards(ckpt / "optimizer_0", complete=True)
    (ckpt / "rng_state_0.pth").write_bytes(b"rng")
    (ckpt / "scheduler.pt").write_bytes(b"sched")
    state = {"global_step": step, "max_steps": max_steps, "epoch": step / max_steps, "log_history": history}
    (ckpt / "trainer_state.json").write_text(json.dumps(state))  # last, as HF does
log("{'train_runtime': '1.2', 'train_samples_per_second': '26.2', 'train_loss': '0.9', 'epoch': '1.0'}")
if not os.environ.get("FAKE_NO_COMPLETED_LINE"):
    log(f"[2025-11-06 11:25:10,069] [INFO] [axolotl.train.save_trained_model:228] [PID:1] [RANK:0] "
        f"Training completed! Saving trained model to {out}.")
# The final merge inside accelerate hangs until the NCCL watchdog fires; nothing ends the process.
log(WATCHDOG)
hang()
'''


def fake_training_env(root: Path) -> Path:
    """A `venv` whose bin/activate puts a fake `axolotl` on PATH."""
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH={shlex.quote(str(venv / "bin"))}:"$PATH"\n')
    axolotl = venv / "bin" / "axolotl"
    axolotl.write_text(f"#!{sys.executable}\n" + FAKE_AXOLOTL % {"watchdog": WATCHDOG})
    axolotl.chmod(0o755)
    return venv


def train_spec(h: Harness, name: str, env: dict[str, str]) -> dict[str, Any]:
    base = h.root / name
    base.mkdir()
    config = {"base_model": "./tiny-llama", "output_dir": str(base / "out"),
              "dataset_prepared_path": str(base / "prepared"),
              "max_steps": 8, "save_steps": 2, "micro_batch_size": 1, "fsdp_version": 2,
              "fsdp_config": {"state_dict_type": "SHARDED_STATE_DICT"}}
    (base / "axolotl.yaml").write_text(yaml.safe_dump(config))
    after = h.script(f"{name}-after.sbatch", "echo merged\n")
    return {"name": name, "backend": "slurm", "workdir": str(base / "work"),
            "axolotl_config": str(base / "axolotl.yaml"), "venv": str(fake_training_env(base)),
            "stages": [{"name": "train", "kind": "train", "max_attempts": 3, "retry_backoff": 0, "env": env},
                       {"name": "after", "script": str(after)}]}


@SLURM_ONLY
def test_mid_training_timeout_resumes_and_end_of_training_hang_finishes(harness: Harness) -> None:
    require_slurm()
    harness.submit(train_spec(harness, "resume", {"FAKE_HANG_AT_STEP": "6"}))
    harness.submit(train_spec(harness, "final", {"FAKE_NO_COMPLETED_LINE": "1"}))
    harness.start_daemon(poll="0.5s")
    runs = wait_all_settled(harness, ["resume", "final"], timeout=180)

    data = runs["resume"]
    out = harness.root / "resume" / "out"
    assert data["state"] == "succeeded", data["events"]
    train, after = data["stages"]
    first, second = train["attempts"]  # never a third: the end-of-training hang is not retrained
    assert first["state"] == "cancelled" and first["cause"] == "nccl_watchdog_timeout"
    assert first["outcome"] == "resubmit"
    assert second["state"] == "cancelled" and second["outcome"] == "finish"
    assert after["state"] == "succeeded" and len(after["attempts"]) == 1
    derived = yaml.safe_load((harness.root / "resume" / "work" / "stages" / "train" / "attempt-2" / "axolotl.yaml")
                             .read_text())
    assert derived["resume_from_checkpoint"] == str(out / "checkpoint-4")
    assert derived["auto_resume_from_checkpoints"] is False
    aside = [p.name for p in out.iterdir() if p.name.startswith("incomplete-checkpoint-6-")]
    assert len(aside) == 1 and not (out / aside[0] / "trainer_state.json").exists()
    (prepared,) = events(data, "prepared")
    assert "checkpoint-4" in prepared["message"] and aside[0] in prepared["message"]
    steps = [int(s) for s in (out / "steps.log").read_text().split()]
    assert steps == [1, 2, 3, 4, 5, 6, 5, 6, 7, 8]  # attempt 2 continued after the last complete checkpoint
    final_state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert final_state["global_step"] == final_state["max_steps"] == 8
    launches = [json.loads(line) for line in (out / "fake-axolotl.jsonl").read_text().splitlines()]
    assert [launch["start"] for launch in launches] == [0, 4]

    # No "Training completed!" line: the complete final checkpoint alone makes the watchdog a finish.
    data = runs["final"]
    assert data["state"] == "succeeded", data["events"]
    train, after = data["stages"]
    (only,) = train["attempts"]
    assert only["state"] == "cancelled" and only["outcome"] == "finish" and only["cause"] == "nccl_watchdog_timeout"
    assert after["state"] == "succeeded"
    # The work is recorded as done from the checkpoint itself (the accounting counts the attempt as used).
    assert [e["message"] for e in events(data, "milestone")] == ["the final checkpoint is complete"]
    assert only["wasted_node_hours"] <= only["node_hours"]


@pytest.mark.parametrize("backend", ["local", pytest.param("slurm", marks=SLURM_ONLY)])
def test_completed_then_watchdog_hang_moves_to_next_stage(harness: Harness, backend: str) -> None:
    if backend == "slurm":
        require_slurm()
    train = hanging_job(harness, "train", ["{'loss': '0.91', 'epoch': '1.0'}", COMPLETED, WATCHDOG])
    merge = harness.script("merge.sbatch", "echo merged\n")
    harness.submit({"name": "eot", "backend": backend, "workdir": str(harness.root / "w"),
                    "stages": [{"name": "train", "script": str(train), "max_attempts": 3, "retry_backoff": 0},
                               {"name": "merge", "script": str(merge)}]})
    harness.start_daemon(poll="0.5s")
    data = harness.wait_state("eot", ["succeeded", "failed"], timeout=90)
    assert data["state"] == "succeeded"
    train_stage, merge_stage = data["stages"]
    (attempt,) = train_stage["attempts"]
    assert attempt["state"] == "cancelled" and attempt["outcome"] == "finish"
    assert [a["state"] for a in merge_stage["attempts"]] == ["succeeded"]
    assert events(data, "resubmitted") == []


# ---- hangs without a signature --------------------------------------------------------------------


@SLURM_ONLY
def test_silent_hang_and_startup_hang_are_cancelled_and_resubmitted(harness: Harness) -> None:
    require_slurm()
    silent = hanging_job(harness, "silent", [" 10%|#         | 1/10 [00:01<00:09,  1.00it/s]"])
    # Keeps talking (no stall) but never reaches a training step.
    startup = hanging_job(harness, "startup", ["Building extension module fused_adam..."],
                          then="while true; do echo 'waiting for the lock'; sleep 0.5; done")
    harness.submit({"name": "stall", "backend": "slurm", "workdir": str(harness.root / "stall"),
                    "stages": [{"name": "train", "script": str(silent), "stall_timeout": "3s",
                                "retry_backoff": 0, "max_attempts": 2}]})
    harness.submit({"name": "startup", "backend": "slurm", "workdir": str(harness.root / "startup"),
                    "stages": [{"name": "train", "script": str(startup), "startup_timeout": "3s",
                                "stall_timeout": "60s", "retry_backoff": 0, "max_attempts": 2}]})
    harness.start_daemon(poll="0.5s")
    runs = wait_all_settled(harness, ["stall", "startup"], timeout=120)
    for name, cause in (("stall", "stall_timeout"), ("startup", "startup_timeout")):
        data = runs[name]
        first, second = data["stages"][0]["attempts"]
        assert first["state"] == "cancelled" and first["cause"] == cause and first["outcome"] == "resubmit", first
        assert scontrol_job(first["job_id"])["JobState"] == "CANCELLED"
        assert second["state"] == "succeeded" and data["state"] == "succeeded"
        assert len(events(data, "stalled")) == 1


# ---- operator actions -----------------------------------------------------------------------------


@SLURM_ONLY
def test_external_scancel_and_hold_pause_the_run_until_resume(harness: Harness) -> None:
    require_slurm()
    long = hanging_job(harness, "long", ["working"])
    harness.submit({"name": "ext", "backend": "slurm", "workdir": str(harness.root / "ext"),
                    "stages": [{"name": "s", "script": str(long), "retry_backoff": 0}]})
    # Held: a job that cannot start for an hour, held by an operator while pending.
    harness.submit({"name": "held", "backend": "slurm", "workdir": str(harness.root / "held"),
                    "stages": [{"name": "s", "script": str(long), "retry_backoff": 0,
                                "sbatch_args": ["--begin=now+3600"]}]})
    harness.start_daemon(poll="0.5s")
    harness.wait_for(lambda: [a["state"] for a in harness.attempts("ext", "s")] == ["running"], 90, "ext running")
    harness.wait_for(lambda: [a["state"] for a in harness.attempts("held", "s")] == ["queued"], 90, "held queued")
    ext_job = harness.attempts("ext", "s")[0]["job_id"]
    held_job = harness.attempts("held", "s")[0]["job_id"]
    subprocess.run(["scancel", ext_job], check=True, timeout=30)
    subprocess.run(["scontrol", "hold", held_job], check=True, timeout=30)
    runs = wait_all_settled(harness, ["ext", "held"], timeout=60)
    for name in ("ext", "held"):
        data = runs[name]
        assert data["state"] == "paused", (name, data["events"])
        (attempt,) = data["stages"][0]["attempts"]  # paused: not resubmitted
        assert attempt["outcome"] == "operator", attempt
        assert len(events(data, "paused_by_operator")) == 1
    assert runs["ext"]["stages"][0]["attempts"][0]["cause"] == "cancelled_by_operator"

    harness.cli("resume", "ext")
    harness.cli("resume", "held")
    data = harness.wait_state("ext", ["succeeded", "failed"], timeout=90)
    assert [a["state"] for a in data["stages"][0]["attempts"]] == ["cancelled", "succeeded"]
    harness.wait_for(lambda: len(harness.attempts("held", "s")) == 2, 60, "held resubmitted")
    assert harness.show("held")["state"] == "running"
    harness.cli("cancel", "held")  # its new attempt would wait an hour


# ---- wake-ups -----------------------------------------------------------------------------------------


class BlockingSupervisor:
    """Counts passes; the first one blocks until released, as a pass busy with scancel or sbatch does."""

    def __init__(self) -> None:
        self.passes = 0
        self.first_started = threading.Event()
        self.release = threading.Event()

    def tick(self, poll: bool = True) -> TickReport:
        self.passes += 1
        if self.passes == 1:
            self.first_started.set()
            self.release.wait(30)
        return TickReport(runs=1, actions=0)


def test_log_change_during_a_pass_is_read_by_another_pass() -> None:
    fake = BlockingSupervisor()
    daemon = Daemon(cast(Any, fake), poll=3600)
    daemon.scheduler.start()
    try:
        daemon.wake()
        assert fake.first_started.wait(30)
        daemon.wake()  # a second job printed its signature while the first pass was still busy
        time.sleep(0.5)  # past MIN_WAKE_INTERVAL: that wake-up's pass is due while the first still runs
        fake.release.set()
        deadline = time.monotonic() + 10
        while fake.passes < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.passes >= 2, "the wake-up that came during a pass was dropped"
    finally:
        daemon.stop_requested.set()
        daemon.scheduler.shutdown(wait=True)


def test_a_burst_of_log_changes_does_not_postpone_the_pass() -> None:
    daemon = Daemon(cast(Any, BlockingSupervisor()), poll=3600)
    daemon.scheduler.start(paused=True)  # scheduled passes stay pending: only their times are inspected
    try:
        for _ in range(20):
            daemon.wake()
        last_call = datetime.now(UTC)
        job = daemon.scheduler.get_job(WAKE_JOB)
        assert job is not None
        # Each change used to push the pending pass MIN_WAKE_INTERVAL further out (here by 4 s).
        assert job.next_run_time <= last_call + timedelta(seconds=MIN_WAKE_INTERVAL + 0.1)
    finally:
        daemon.scheduler.shutdown(wait=False)


# ---- crash safety of the tailer -----------------------------------------------------------------------


@SLURM_ONLY
def test_daemon_killed_after_reacting_does_not_react_twice(harness: Harness) -> None:
    require_slurm()
    go = harness.root / "go"
    script = harness.script("job.sbatch", f"""
if [ "$SUPERVISOR_ATTEMPT" -eq 1 ]; then printf '%s\\n' {shlex.quote(LINES['nvcc_timeout'])}; sleep 300; fi
printf '%s\\n' {shlex.quote(COMPLETED)}
while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.2; done
printf '%s\\n' {shlex.quote(WATCHDOG)}
sleep 300
""")
    harness.submit({"name": "crash", "backend": "slurm", "workdir": str(harness.root / "w"),
                    "stages": [{"name": "train", "script": str(script), "retry_backoff": 0, "max_attempts": 3}]})
    harness.start_daemon(poll="0.5s")
    # The milestone can come through inotify before any poll saw attempt 2 running: wait for both, so
    # the restarted daemon has nothing left to record.
    harness.wait_for(lambda: len(events(data := harness.show("crash"), "milestone")) == 1
                     and any(e["attempt"] == 2 for e in events(data, "started")), 90, "milestone of attempt 2")
    assert harness.stop_daemon(signal.SIGKILL) == -signal.SIGKILL
    before = harness.show("crash")
    # Passes over the offsets stored before the kill, each in a fresh process as after a restart, counted
    # rather than waited for: `tick` returns when its pass is done.
    for _ in range(3):
        harness.cli("tick")
    assert harness.show("crash")["events"] == before["events"]
    harness.start_daemon(poll="0.5s")
    go.touch()
    data = harness.wait_state("crash", ["succeeded", "failed"], timeout=60)
    assert data["state"] == "succeeded"
    assert [(e["attempt"], e["message"].split(" ")[0]) for e in events(data, "signature")] == [
        (1, "nvcc_timeout"), (2, "nccl_watchdog_timeout")]
    assert len(events(data, "milestone")) == 1
    assert len(events(data, "submitted")) == 2 and len(data["stages"][0]["attempts"]) == 2


# ---- `supervisor diagnose` --------------------------------------------------------------------------


def splice(tmp_path: Path, lines: dict[int, str]) -> Path:
    """The fixture log with `lines` inserted before the given 1-based line numbers."""
    original = FIXTURE_LOG.read_text().splitlines()
    for number in sorted(lines, reverse=True):
        original.insert(number - 1, lines[number])
    path = tmp_path / "spliced.log"
    path.write_text("\n".join(original) + "\n")
    return path


def test_diagnose_json_contract(harness: Harness, tmp_path: Path) -> None:
    log = splice(tmp_path, {40: LINES["cuda_oom"], 60: LINES["child_failed_error"]})
    result = harness.cli("diagnose", str(log), "--json")
    data = json.loads(result.out)
    assert set(data) == {"matches", "verdict"}
    by_sig = {m["signature"]: m for m in data["matches"]}
    # The contract's fields, and since it gained one, the SLURM node a match names.
    assert all(set(m) == {"signature", "action", "line", "text", "node"} for m in data["matches"])
    assert by_sig["cuda_oom"]["line"] == 40 and by_sig["cuda_oom"]["action"] == "fail"
    assert "CUDA out of memory" in by_sig["cuda_oom"]["text"]
    assert by_sig["child_failed_error"]["line"] == 61
    assert data["verdict"] == {"signature": "cuda_oom", "action": "fail"}  # the root cause, not the wrapper

    clean = harness.cli("diagnose", str(FIXTURE_LOG), "--json")
    clean_data = json.loads(clean.out)
    # A successful log: the milestone is the verdict, the harmless extensions-root hint is only listed.
    assert [m["signature"] for m in clean_data["matches"]] == ["extension_build_hang", "training_completed"]
    assert clean_data["verdict"] == {"signature": "training_completed", "action": "finish"}


def test_diagnose_with_run_signatures_and_missing_file(harness: Harness, tmp_path: Path) -> None:
    script = harness.script("s.sbatch", "echo hi\n")
    harness.submit({"name": "custom", "backend": "local", "workdir": str(harness.root / "w"),
                    "stages": [{"name": "s", "script": str(script)}],
                    "signatures": [{"name": "gpu_fell_off", "action": "resubmit_exclude_node",
                                    "patterns": ["GPU has fallen off the bus on (?P<node>[a-z0-9]+)"],
                                    "description": "Xid 79"}]})
    log = splice(tmp_path, {50: "NVRM: Xid 79: GPU has fallen off the bus on gpu12"})
    without = json.loads(harness.cli("diagnose", str(log), "--json").out)
    assert "gpu_fell_off" not in {m["signature"] for m in without["matches"]}
    data = json.loads(harness.cli("diagnose", str(log), "--run", "custom", "--json").out)
    assert {"signature": "gpu_fell_off", "action": "resubmit_exclude_node", "line": 50,
            "text": "NVRM: Xid 79: GPU has fallen off the bus on gpu12", "node": "gpu12"} in data["matches"]
    assert data["verdict"] == {"signature": "gpu_fell_off", "action": "resubmit_exclude_node"}

    missing = harness.cli("diagnose", str(tmp_path / "nope.log"), "--json", check=False)
    assert missing.code == 2 and "nope.log" in missing.err and missing.out == ""
    unknown = harness.cli("diagnose", str(log), "--run", "nosuchrun", "--json", check=False)
    assert unknown.code == 2 and "nosuchrun" in unknown.err

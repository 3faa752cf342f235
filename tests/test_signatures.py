from __future__ import annotations

import pytest

from supervisor.domain.errors import SignatureError
from supervisor.domain.types import SignatureAction
from supervisor.logs.catalogue import load_builtin, load_specs, parse_signatures
from supervisor.logs.scanner import Catalogue

A = SignatureAction

REQUIRED = {
    "nvcc_timeout": A.RESUBMIT,
    "unsupported_device": A.RESUBMIT,
    "node_setup_failure": A.RESUBMIT,
    "nccl_watchdog_timeout": A.RESUBMIT,
    "nccl_heartbeat_timeout": A.RESUBMIT,
    "nccl_error": A.RESUBMIT_EXCLUDE_NODE,
    "rendezvous_timeout": A.RESUBMIT,
    "cuda_oom": A.FAIL,
    "host_oom": A.FAIL,
    "illegal_memory_access": A.RESUBMIT_EXCLUDE_NODE,
    "ecc_error": A.RESUBMIT_EXCLUDE_NODE,
    "slurm_time_limit": A.RESUBMIT,
    "slurm_node_failure": A.RESUBMIT_EXCLUDE_NODE,
    "slurm_preempted": A.RESUBMIT,
    "srun_step_failure": A.RESUBMIT,
    "extension_build_hang": A.RESUBMIT,
    "hub_offline": A.FAIL,
    "disk_full": A.FAIL,
    "bf16_unsupported": A.FAIL,
    "training_completed": A.FINISH,
}

# Realistic lines (FIELD-NOTES wording) -> the signature each must produce, and the node when captured.
REAL_LINES: list[tuple[str, str, str | None]] = [
    ("[rank0]: RuntimeError: NVCC timeout while compiling fused kernels", "nvcc_timeout", None),
    ("ERROR: nvcc timed out after 600 s", "nvcc_timeout", None),
    ("RuntimeError: Unsupported device: cuda:3", "unsupported_device", None),
    ("srun: error: unable to setup node gpu17", "node_setup_failure", None),
    ("Unable to set up node", "node_setup_failure", None),
    (
        "[rank16]:[E1228 15:44:53.523176693 ProcessGroupNCCL.cpp:607] [Rank 0] Watchdog caught collective "
        "operation timeout: WorkNCCL(SeqNum=264290, OpType=_ALLGATHER_BASE, NumelIn=54528000, "
        "NumelOut=218112000, Timeout(ms)=600000) ran for 600018 milliseconds before timing out.",
        "nccl_watchdog_timeout",
        None,
    ),
    (
        "[rank3]:[E1228 15:54:53.000 ProcessGroupNCCL.cpp:1416] [PG ID 0 PG GUID 0(default_pg) Rank 3] "
        "Heartbeat monitor timed out! Process will be terminated after dumping debug info.",
        "nccl_heartbeat_timeout",
        None,
    ),
    (
        "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:317, "
        "unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5",
        "nccl_error",
        None,
    ),
    ("ncclSystemError: System call (e.g. socket, malloc) or external library call failed", "nccl_error", None),
    ("ncclInternalError: Internal check failed.", "nccl_error", None),
    ("ncclRemoteError: A call failed possibly due to a network error or a remote process exiting", "nccl_error", None),
    (
        "gpu04:2210:2301 [0] NCCL WARN socketProgress: Connection closed by remote peer gpu09.cluster<45678>",
        "nccl_error",
        "gpu09",
    ),
    ("torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError", "rendezvous_timeout", None),
    (
        "torch.distributed.elastic.rendezvous.api.RendezvousConnectionError: The connection failed",
        "rendezvous_timeout",
        None,
    ),
    (
        "torch.distributed.DistNetworkError: The client socket has timed out after 60s while trying to connect "
        "to (node01, 29500).",
        "rendezvous_timeout",
        None,
    ),
    (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
        "79.11 GiB of which 1.06 GiB is free.",
        "cuda_oom",
        None,
    ),
    ("RuntimeError: CUDA error: out of memory", "cuda_oom", None),
    (
        "slurmstepd: error: Detected 1 oom_kill event in StepId=123.0. Some of your processes may have been "
        "killed by the cgroup out-of-memory handler.",
        "host_oom",
        None,
    ),
    ("slurmstepd: error: Detected 2 oom-kill event(s) in step 123.batch cgroup.", "host_oom", None),
    ("RuntimeError: CUDA error: an illegal memory access was encountered", "illegal_memory_access", None),
    ("RuntimeError: CUDA error: uncorrectable ECC error encountered", "ecc_error", None),
    (
        "slurmstepd: error: *** JOB 123 ON node01 CANCELLED AT 2024-12-28T15:44:53 DUE TO TIME LIMIT ***",
        "slurm_time_limit",
        None,
    ),
    (
        "slurmstepd: error: *** JOB 123 ON node01 CANCELLED AT 2024-12-28T15:44:53 DUE TO NODE FAILURE ***",
        "slurm_node_failure",
        None,
    ),
    ("srun: error: Node failure on node07", "slurm_node_failure", "node07"),
    (
        "slurmstepd: error: *** STEP 123.0 ON node01 CANCELLED AT 2024-12-28T15:44:53 DUE TO PREEMPTION ***",
        "slurm_preempted",
        None,
    ),
    (
        "srun: error: Unable to create step for job 123: Memory required by task is not available",
        "srun_step_failure",
        None,
    ),
    (
        "srun: error: Unable to allocate resources: Requested node configuration is not available",
        "srun_step_failure",
        None,
    ),
    ("Using /root/.cache/torch_extensions/py311_cu124 as PyTorch extensions root...", "extension_build_hang", None),
    ("RuntimeError: Error building extension 'fused_adam'", "extension_build_error", None),
    (
        "OSError: We couldn't connect to 'https://huggingface.co' to load this file, couldn't find it in the "
        "cached files and it looks like meta-llama/Llama-3.1-8B is not the path to a directory",
        "hub_offline",
        None,
    ),
    (
        "huggingface_hub.errors.LocalEntryNotFoundError: Cannot find the requested files in the disk cache",
        "hub_offline",
        None,
    ),
    ("OSError: [Errno 122] Disk quota exceeded: '/scratch/out/checkpoint-500/optimizer_0'", "disk_full", None),
    ("OSError: [Errno 28] No space left on device", "disk_full", None),
    (
        "ValueError: bf16 requested, but AMP is not supported on this GPU. Requires Ampere series or above.",
        "bf16_unsupported",
        None,
    ),
    (
        "[2025-11-06 11:25:10,069] [INFO] [axolotl.train.save_trained_model:228] [PID:859953] [RANK:0] "
        "Training completed! Saving trained model to models/base.",
        "training_completed",
        None,
    ),
    ("Training Completed!!! Saving pre-trained model to ./qlora-out", "training_completed", None),
    ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError:", "child_failed_error", None),
]

BENIGN = [
    "[2025-11-06 09:14:02,114] [INFO] [axolotl.utils.data.sft._load_prepared_dataset:94] [PID:859953] [RANK:0] "
    "Loading prepared dataset from disk at last_run_prepared/6f3c1a9e...",
    "[2025-11-06 09:14:07,585] [INFO] [axolotl.train.execute_training:203] [PID:65109] [RANK:0] Starting trainer...",
    "[2025-11-06 09:20:11,408] [INFO] [axolotl.core.trainers.base._save:613] [PID:859953] [RANK:0] "
    "Saving model checkpoint to outputs/out/checkpoint-500",
    "[2025-11-06 11:25:11,945] [INFO] [axolotl.train.save_trained_model:350] [PID:859953] [RANK:0] "
    "Model successfully saved to models/base",
    "[rank3]:[W1106 09:14:07.112233445 ProcessGroupNCCL.cpp:4561] [PG ID 0 PG GUID 0 Rank 3]  using GPU 3 to "
    "perform barrier as devices used by this process are currently unknown. This can potentially cause a hang.",
    "node03:1234:1290 [3] NCCL INFO Channel 00/0 : 3[3] -> 4[0] [send] via NET/IB/0/GDRDMA",
    "node03:1234:1290 [3] NCCL INFO NCCL_SOCKET_IFNAME set by environment to ib0",
    "{'loss': 'nan', 'grad_norm': 'inf', 'learning_rate': '1.99e-05', 'memory/max_active (GiB)': '12.3', "
    "'epoch': '0.03'}",
    "{'train_runtime': '158.8', 'train_samples_per_second': '26.2', 'train_loss': '1.567', 'epoch': '1'}",
    " 45%|████▌     | 450/1000 [12:34<15:20,  1.67s/it]",
    "Tokenizing Prompts (num_proc=64): 100%|██████████| 1000/1000 [00:02<00:00, 412.50 examples/s]",
    "W1106 09:13:31.412000 859901 torch/distributed/run.py:792] Setting OMP_NUM_THREADS environment variable for "
    "each process to be 1 in default, to avoid your system being overloaded",
    "Emitting ninja build file /root/.cache/torch_extensions/py311_cu124/fused_adam/build.ninja...",
    "Loading extension module fused_adam...",
    "/opt/venv/lib/python3.11/site-packages/torch/utils/checkpoint.py:86: UserWarning: None of the inputs have "
    "requires_grad=True. Gradients will be None",
    "Detected kernel version 5.4.0, which is below the recommended minimum of 5.5.0; this can cause the "
    "process to hang.",
    "The following values were not passed to `accelerate launch` and had defaults used instead:",
    "[2025-11-06 09:13:41,555] [WARNING] [axolotl.utils.config] `ddp_timeout` set to 1800; NCCL timeout 600",
    "wandb: Tracking run with wandb version 0.19.1",
    "[2025-11-06 09:13:43,954] [INFO] [axolotl.loaders.tokenizer.load_tokenizer:298] No Chat template selected.",
    "[2025-11-06 09:13:42,000] [INFO] [axolotl.utils.trainer] max_steps: 1000, time limit handled by Slurm",
]


@pytest.fixture(scope="module", params=["hyperscan", "regex"])
def catalogue(request: pytest.FixtureRequest) -> Catalogue:
    return Catalogue.load(engine=request.param)


def test_builtin_catalogue_has_the_required_entries_and_actions() -> None:
    specs = {s.name: s for s in load_builtin()}
    for name, action in REQUIRED.items():
        assert name in specs, name
        assert specs[name].action is action, name
        assert specs[name].description
    assert specs["child_failed_error"].wrapper
    assert specs["extension_build_hang"].hang_hint
    assert specs["extension_build_error"].action is A.FAIL


@pytest.mark.parametrize(("line", "signature", "node"), REAL_LINES)
def test_every_signature_matches_a_real_line(catalogue: Catalogue, line: str, signature: str, node: str | None) -> None:
    matches = catalogue.scan(line.encode() + b"\n", 1)
    assert [m.signature for m in matches] == [signature]
    assert matches[0].node == node
    assert matches[0].line == 1


def test_every_required_signature_is_exercised() -> None:
    assert set(REQUIRED) <= {sig for _, sig, _ in REAL_LINES}


@pytest.mark.parametrize("line", BENIGN)
def test_benign_axolotl_lines_match_nothing(catalogue: Catalogue, line: str) -> None:
    assert catalogue.scan(line.encode() + b"\n", 1) == []


def test_user_entry_overrides_builtin_and_adds_new() -> None:
    user = [
        {"name": "cuda_oom", "patterns": ["CUDA out of memory"], "action": "resubmit"},
        {
            "name": "site_gpu_fell_off",
            "patterns": ["GPU has fallen off the bus on (?P<node>[a-z0-9]+)"],
            "action": "resubmit_exclude_node",
            "description": "Xid 79",
        },
    ]
    specs = load_specs(user, "run.yaml")
    names = [s.name for s in specs]
    assert names.count("cuda_oom") == 1
    assert names[-1] == "site_gpu_fell_off"
    cat = Catalogue(specs)
    data = b"torch.OutOfMemoryError: CUDA out of memory.\nNVRM: GPU has fallen off the bus on gpu12\n"
    found = {(m.signature, m.action, m.node) for m in cat.scan(data, 1)}
    assert found == {("cuda_oom", A.RESUBMIT, None), ("site_gpu_fell_off", A.RESUBMIT_EXCLUDE_NODE, "gpu12")}


def test_override_replaces_the_whole_entry() -> None:
    # The built-in cuda_oom also matches "CUDA error: out of memory"; the override does not.
    cat = Catalogue.load([{"name": "cuda_oom", "patterns": ["CUDA out of memory"], "action": "fail"}])
    assert cat.scan(b"RuntimeError: CUDA error: out of memory\n", 1) == []


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"name": "x", "patterns": ["(unclosed"], "action": "fail"}, "patterns"),
        ({"name": "x", "patterns": ["ok"], "action": "explode"}, "action"),
        ({"name": "x", "patterns": [], "action": "fail"}, "patterns"),
        ({"name": "x", "action": "fail"}, "patterns"),
        ({"name": "Bad Name", "patterns": ["ok"], "action": "fail"}, "name"),
        ({"name": "x", "patterns": ["^anchored"], "action": "fail"}, "anchors"),
        ({"name": "x", "patterns": ["(a)\\1"], "action": "fail"}, "back-references"),
        ({"name": "x", "patterns": ["a*?b"], "action": "fail"}, "lazy"),
        ({"name": "x", "patterns": ["(?P<host>h)"], "action": "fail"}, "node"),
        ({"name": "x", "patterns": ["a*"], "action": "fail"}, "empty"),
        ({"name": "x", "patterns": ["ok"], "action": "fail", "typo": 1}, "typo"),
    ],
)
def test_bad_user_signature_gives_a_clear_error(entry: dict[str, object], fragment: str) -> None:
    with pytest.raises(SignatureError) as err:
        load_specs([entry], "run.yaml")
    message = str(err.value)
    assert "run.yaml" in message
    assert "signatures[0]" in message
    assert fragment in message


def test_error_names_the_offending_entry_index_and_name() -> None:
    entries = [
        {"name": "fine", "patterns": ["fine"], "action": "ignore"},
        {"name": "broken", "patterns": ["ok", "[unterminated"], "action": "fail"},
    ]
    with pytest.raises(SignatureError, match=r"signatures\[1\] \(name='broken'\).*patterns.*\[unterminated"):
        parse_signatures(entries, "run.yaml")


def test_signatures_must_be_a_list() -> None:
    with pytest.raises(SignatureError, match="must be a list"):
        parse_signatures({"name": "x"}, "run.yaml")


def test_duplicate_user_names_rejected() -> None:
    entry = {"name": "dup", "patterns": ["a b c"], "action": "fail"}
    with pytest.raises(SignatureError, match="duplicate"):
        parse_signatures([entry, entry], "run.yaml")

"""The whole pipeline through the supervisor, on the local SLURM cluster, with the real tools.

Two runs, registered with ``supervisor submit`` and driven by one ``supervisor daemon``:

* ``tiny``: prepare -> train -> merge -> transfer on a tiny Llama with real ``axolotl preprocess`` and
  ``axolotl train`` (CPU, one node, no GPU). Its ``venv`` sources the real training venv and puts
  ``axolotl_shim.py`` first on PATH, which makes attempt 1 of prepare and of train die on its own after
  partial output. The supervisor must clean the prepared dataset and retry, resume training from the
  last complete checkpoint (moving the half-written newer one aside), copy and verify the final model
  (CPU training saves it unsharded) and rsync it to a local destination.
* ``fsdp``: merge -> transfer of a real FSDP2 sharded checkpoint made by ``make_fsdp_ckpt.py`` (2 gloo
  processes), merged by the real ``accelerate merge-weights``; the result must equal the originals.

The daemon drives both at once; the module fixture runs them and the tests check what they left.

    .venv/bin/pytest -m axolotl tests/axolotl -s      # -s prints the per-attempt timings
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.stages import checkpoints
from supervisor.stages import rsync as transfer

from harness import Harness, slurm_jobs_by_name
from slurm_fixtures import require_slurm

# The first test's setup may build the training venv (minutes) and then runs both pipelines.
pytestmark = [pytest.mark.axolotl, pytest.mark.slurm, pytest.mark.timeout(3600)]

HERE = Path(__file__).resolve().parent
MAX_STEPS = 20
SAVE_STEPS = 5
KILL_AFTER_STEP = 10  # attempt 1 of train dies once checkpoint-10 is complete
FSDP_STEP = 8
# Bounds on how long a broken run may hang the test, not claims about speed.
RUN_TIMEOUT_S = 1800.0
HASH_DIR = re.compile(r"[0-9a-f]{32}")


# --------------------------------------------------------------------------------------------------
# Helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def assert_same_tensors(got_path: Path, want_path: Path) -> None:
    got, want = safetensors_tensors(got_path), safetensors_tensors(want_path)
    assert sorted(got) == sorted(want)
    for name, (dtype, shape, raw) in want.items():
        assert got[name][:2] == (dtype, shape), name
        assert got[name][2] == raw, f"{name}: values differ from {want_path}"


def shim_venv(directory: Path, training_venv: Path) -> Path:
    """A `venv` for the run spec: the real training venv, with the failing `axolotl` shim first on PATH."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(
        f"source {training_venv}/bin/activate\n"
        f'export PATH="{bin_dir}:$PATH"\n'
        f"export E2E_REAL_AXOLOTL={training_venv}/bin/axolotl\n"
    )
    shim = bin_dir / "axolotl"
    shim.write_text(f'#!/bin/bash\nexec {training_venv}/bin/python {HERE / "axolotl_shim.py"} "$@"\n')
    shim.chmod(0o755)
    return directory


def tiny_config(project: Path, assets: Path) -> Path:
    config = {
        "base_model": str(assets / "model"),
        "tokenizer_config": str(assets / "model"),
        "datasets": [
            {
                "path": str(assets / "data.jsonl"),
                "ds_type": "json",
                "type": "chat_template",
                "field_messages": "conversations",
            }
        ],
        "chat_template": "tokenizer_default",
        # Relative on purpose: resolved against the run spec's directory, like the team's configs.
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


def fsdp_config(project: Path, assets: Path) -> Path:
    config = {
        "base_model": str(assets / "model"),
        "datasets": [{"path": str(assets / "data.jsonl"), "type": "chat_template"}],
        "dataset_prepared_path": "prepared",
        "output_dir": "outputs/fsdp",
        "max_steps": FSDP_STEP,
        "fsdp_version": 2,
        "fsdp_config": {"state_dict_type": "SHARDED_STATE_DICT", "reshard_after_forward": True},
    }
    path = project / "fsdp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def make_sharded_checkpoint(training_venv: Path, assets: Path, output_dir: Path) -> None:
    output_dir.mkdir(parents=True)
    subprocess.run(
        [
            str(training_venv / "bin" / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
            str(HERE / "make_fsdp_ckpt.py"), str(assets / "model"), str(output_dir), str(FSDP_STEP),
        ],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip


def cancel_leftover_jobs(run_names: list[str]) -> None:
    """scancel whatever a failed test left on the shared cluster (job names start with `<run>.`)."""
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        for name, ids in slurm_jobs_by_name().items():
            if any(name.startswith(f"{run}.") for run in run_names):
                subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)


def read(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8", errors="replace")


# --------------------------------------------------------------------------------------------------
# The runs


@dataclass
class Runs:
    harness: Harness
    tiny: str
    fsdp: str
    tiny_dir: Path  # the run spec's directory: relative paths in tiny.yaml resolve against it
    fsdp_dir: Path
    tiny_config_text: str
    tiny_dest: Path
    fsdp_dest: Path
    shows: dict[str, dict[str, Any]]

    def stage(self, run: str, name: str) -> dict[str, Any]:
        return next(s for s in self.shows[run]["stages"] if s["name"] == name)

    def attempts(self, run: str, stage: str) -> list[dict[str, Any]]:
        return self.stage(run, stage)["attempts"]  # type: ignore[no-any-return]

    def events(self, run: str, kind: str, stage: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.shows[run]["events"] if e["kind"] == kind and (stage is None or e["stage"] == stage)]

    def derived(self, stage: str, attempt: int) -> dict[str, Any]:
        path = Path(self.shows[self.tiny]["workdir"]) / "stages" / stage / f"attempt-{attempt}" / "axolotl.yaml"
        return yaml.safe_load(path.read_text())  # type: ignore[no-any-return]


def _timings(show: dict[str, Any]) -> dict[str, float]:
    out = {}
    for stage in show["stages"]:
        for a in stage["attempts"]:
            # A job that ends between two polls is never seen running: count from its submission then.
            began = a["started_at"] or a["submitted_at"]
            if began and a["ended_at"]:
                took = datetime.fromisoformat(a["ended_at"]) - datetime.fromisoformat(began)
                out[f"{stage['name']}.{a['number']} ({a['state']})"] = round(took.total_seconds(), 1)
    return out


@pytest.fixture(scope="module")
def runs(training_venv: Path, assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    require_slurm()
    root = tmp_path_factory.mktemp("supervised")
    suffix = secrets.token_hex(3)
    tiny, fsdp = f"tiny-{suffix}", f"fsdp-{suffix}"
    harness = Harness(root)

    tiny_dir = root / "tiny-project"
    tiny_dir.mkdir()
    config = tiny_config(tiny_dir, assets)
    config_text = read(config)
    tiny_dest = root / "home" / "models" / "tiny"
    tiny_spec = {
        "name": tiny,
        "backend": "slurm",
        "workdir": "work",
        "axolotl_config": config.name,
        "venv": str(shim_venv(root / "shim-venv", training_venv)),
        "stages": [
            {"name": "prepare", "kind": "prepare", "partition": "lrd_all_serial", "time": "00:30:00",
             "retry_backoff": "1s"},
            {"name": "train", "kind": "train", "nodes": 1, "gpus_per_node": 0, "time": "01:00:00",
             "master_port": free_port(), "stall_timeout": "10m", "startup_timeout": "10m", "retry_backoff": "1s",
             "env": {"E2E_KILL_AFTER_STEP": str(KILL_AFTER_STEP), "E2E_SAVE_STEPS": str(SAVE_STEPS)}},
            {"name": "merge", "kind": "merge", "time": "00:30:00", "retry_backoff": "1s"},
            {"name": "transfer", "kind": "transfer", "destination": str(tiny_dest)},
        ],
    }  # fmt: skip
    tiny_spec_path = tiny_dir / "pipeline.yaml"
    tiny_spec_path.write_text(yaml.safe_dump(tiny_spec, sort_keys=False))

    fsdp_dir = root / "fsdp-project"
    fsdp_dir.mkdir()
    fsdp_dest = root / "home" / "models" / "fsdp"
    fsdp_spec = {
        "name": fsdp,
        "backend": "slurm",
        "workdir": "work",
        "axolotl_config": fsdp_config(fsdp_dir, assets).name,
        "venv": str(training_venv),
        "stages": [
            {"name": "merge", "kind": "merge", "partition": "lrd_all_serial", "time": "00:30:00",
             "retry_backoff": "1s"},
            {"name": "transfer", "kind": "transfer", "destination": str(fsdp_dest)},
        ],
    }  # fmt: skip
    fsdp_spec_path = fsdp_dir / "pipeline.yaml"
    fsdp_spec_path.write_text(yaml.safe_dump(fsdp_spec, sort_keys=False))

    started = time.monotonic()
    try:
        assert harness.cli("submit", str(tiny_spec_path)).out.strip() == tiny
        harness.start_daemon(poll="1s")
        # Made while the first run's prepare job runs: the sharded checkpoint the second run merges.
        make_sharded_checkpoint(training_venv, assets, fsdp_dir / "outputs" / "fsdp")
        assert harness.cli("submit", str(fsdp_spec_path)).out.strip() == fsdp
        harness.wait_state(fsdp, ("succeeded", "failed", "cancelled"), timeout=RUN_TIMEOUT_S)
        harness.wait_state(tiny, ("succeeded", "failed", "cancelled", "paused"), timeout=RUN_TIMEOUT_S)
        shows = {name: harness.show(name) for name in (tiny, fsdp)}
        sys.stdout.write(
            f"\nsupervised e2e: {time.monotonic() - started:.0f}s; attempt durations (s): "
            + json.dumps({name: _timings(show) for name, show in shows.items()})
            + "\n"
        )
        yield Runs(
            harness=harness, tiny=tiny, fsdp=fsdp, tiny_dir=tiny_dir, fsdp_dir=fsdp_dir,
            tiny_config_text=config_text, tiny_dest=tiny_dest, fsdp_dest=fsdp_dest, shows=shows,
        )  # fmt: skip
    finally:
        harness.stop_daemon()
        harness.close()
        cancel_leftover_jobs([tiny, fsdp])


# --------------------------------------------------------------------------------------------------
# The tests


def _explain(runs: Runs, run: str) -> str:
    show = runs.shows[run]
    lines = [f"{e['kind']} {e['stage']}.{e['attempt']}: {e['message']}" for e in show["events"]]
    for stage in show["stages"]:
        for a in stage["attempts"]:
            if a["state"] != "succeeded" and a["log"] and Path(a["log"]).is_file():
                lines.append(f"--- {a['log']}\n" + read(a["log"])[-2500:])
    return "\n".join(lines)


def test_both_runs_succeed_on_slurm(runs: Runs) -> None:
    for run in (runs.tiny, runs.fsdp):
        assert runs.shows[run]["state"] == "succeeded", _explain(runs, run)
        assert runs.shows[run]["backend"] == "slurm"
        for stage in runs.shows[run]["stages"]:
            for a in stage["attempts"]:
                # Pipeline stages are sbatch jobs on the cluster; the transfer runs on the supervisor's host.
                assert a["backend"] == ("local" if stage["kind"] == "transfer" else "slurm"), (stage["name"], a)
                assert a["job_id"], (stage["name"], a)


def test_prepare_retry_empties_the_prepared_dataset(runs: Runs) -> None:
    first, second = runs.attempts(runs.tiny, "prepare")
    assert first["state"] == "failed" and first["exit_code"] != 0
    log1 = read(first["log"])
    assert "axolotl_shim: attempt 1 of `axolotl preprocess` killed on purpose" in log1
    assert "Success! Preprocessed data path" not in log1
    assert second["state"] == "succeeded"
    assert "Success! Preprocessed data path" in read(second["log"])

    # The supervisor said what it removed before attempt 2: what attempt 1 left, which attempt 2 rebuilt.
    prepared = runs.tiny_dir / "prepared"
    (event,) = runs.events(runs.tiny, "prepared", "prepare")
    assert event["attempt"] == 2
    assert "emptied" in event["message"]
    hash_dirs = [p.name for p in prepared.iterdir() if HASH_DIR.fullmatch(p.name)]
    assert hash_dirs
    for name in hash_dirs:
        assert str(prepared / name) in event["message"], event["message"]
    assert str(prepared / "datasets_prep.lock") in event["message"]

    # The job ran axolotl with a derived config (no precision flags on the CPU node, absolute paths);
    # the user's own config is untouched.
    derived = runs.derived("prepare", 2)
    assert (derived["bf16"], derived["fp16"], derived["tf32"]) == (False, False, False)
    assert derived["dataset_prepared_path"] == str(prepared)
    assert read(runs.tiny_dir / "tiny.yaml") == runs.tiny_config_text


def test_killed_training_resumes_from_last_complete_checkpoint(runs: Runs) -> None:
    output_dir = runs.tiny_dir / "outputs" / "tiny"
    first, second = runs.attempts(runs.tiny, "train")
    assert first["state"] == "failed" and first["exit_code"] != 0, _explain(runs, runs.tiny)
    log1 = read(first["log"])
    assert "axolotl_shim: attempt 1 of `axolotl train` killed on purpose" in log1
    assert second["state"] == "succeeded"

    # What the shim found complete right after the kill: checkpoint-10 unless the trainer outran it.
    killed_at = int(re.findall(r"newest complete checkpoint at the kill: checkpoint-(\d+)", log1)[-1])
    assert KILL_AFTER_STEP <= killed_at < MAX_STEPS
    resume_from = output_dir / f"checkpoint-{killed_at}"
    (event,) = runs.events(runs.tiny, "prepared", "train")
    assert event["attempt"] == 2
    assert f"resuming from {resume_from}" in event["message"]
    # The save the kill cut short was renamed, not resumed from (auto-resume would have picked it).
    moved = [p for p in output_dir.iterdir() if p.name.startswith(checkpoints.INCOMPLETE_PREFIX)]
    assert [p.name.split("-")[1:3] for p in moved] == [["checkpoint", str(killed_at + SAVE_STEPS)]]
    assert f"moved incomplete checkpoints aside: {moved[0]}" in event["message"]
    derived = runs.derived("train", 2)
    assert derived["resume_from_checkpoint"] == str(resume_from)
    assert derived["auto_resume_from_checkpoints"] is False
    assert f"resume from {resume_from}" in read(second["log"])

    # global_step went on from the checkpoint: attempt 2 trained only the remaining steps, and the
    # final state's history holds every step once.
    final = checkpoints.newest_complete(output_dir)
    assert final is not None and final.step == MAX_STEPS
    state = checkpoints.read_trainer_state(final.path)
    assert state is not None and state["global_step"] == MAX_STEPS
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, MAX_STEPS + 1))
    assert read(second["log"]).count("'loss':") == MAX_STEPS - killed_at


def test_merge_copies_and_verifies_the_unsharded_model(runs: Runs) -> None:
    output_dir = runs.tiny_dir / "outputs" / "tiny"
    (attempt,) = runs.attempts(runs.tiny, "merge")
    log = read(attempt["log"])
    assert "mode=copy" in log and "verify_merge: OK" in log, log[-3000:]
    merged = output_dir / "merged"
    assert not list(output_dir.glob("merged.partial-*")), "staging directory left behind"
    assert_same_tensors(merged / "model.safetensors", output_dir / "model.safetensors")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (merged / name).read_bytes() == (output_dir / name).read_bytes()


def test_merge_of_sharded_checkpoint_gives_back_the_originals(runs: Runs) -> None:
    output_dir = runs.fsdp_dir / "outputs" / "fsdp"
    checkpoint = output_dir / f"checkpoint-{FSDP_STEP}" / "pytorch_model_fsdp_0"
    assert len(list(checkpoint.glob("*.distcp"))) == 2
    (attempt,) = runs.attempts(runs.fsdp, "merge")
    log = read(attempt["log"])
    assert "mode=merge" in log and "verify_merge: OK" in log, log[-3000:]
    merged = output_dir / "merged"
    assert_same_tensors(merged / "model.safetensors", runs.fsdp_dir / "outputs" / "original.safetensors")
    assert (merged / "config.json").is_file() and (merged / "tokenizer.json").is_file()


@pytest.mark.parametrize("which", ["tiny", "fsdp"])
def test_transfer_delivers_a_verified_copy(runs: Runs, which: str) -> None:
    run, project, dest = (
        (runs.tiny, runs.tiny_dir / "outputs" / "tiny", runs.tiny_dest)
        if which == "tiny"
        else (runs.fsdp, runs.fsdp_dir / "outputs" / "fsdp", runs.fsdp_dest)
    )
    (attempt,) = runs.attempts(run, "transfer")
    # The destination's parent (home/models/) did not exist: created, so rsync's first try succeeded.
    assert f"{transfer.VERIFIED_MARKER} {project / 'merged'} -> {dest} (1 attempt(s))" in read(attempt["log"])
    merged = project / "merged"
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in merged.iterdir())
    assert transfer.verify(merged, str(dest)) == []
    assert_same_tensors(dest / "model.safetensors", merged / "model.safetensors")

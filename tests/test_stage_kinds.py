"""Each stage kind's preparation on disk and its success rule, reached through the registry."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.domain.errors import StageError
from supervisor.domain.spec import StageSpec
from supervisor.domain.types import Progress, StageKind
from supervisor.stages import kind_for, registry
from supervisor.stages.base import StageContext, Submission
from supervisor.stages.context import load_axolotl_config
from supervisor.stages.merge import MERGE_READY, MergePlan, plan_merge
from supervisor.stages.rsync import VERIFIED_MARKER
from supervisor.stages.train import resume_checkpoint

VENV = Path("/leonardo_work/MYPROJ/venvs/axolotl-0.19")


def ctx(kind: str, attempt: int, workdir: Path, config: Path | None = None, **options: Any) -> StageContext:
    spec = StageSpec(name=kind, kind=StageKind(kind), **options)
    return StageContext(
        run="llama-8b", spec=spec, attempt=attempt, workdir=workdir, axolotl_config=config, venv=VENV,
        base_dir=config.parent if config else None,
    )  # fmt: skip


def prepare(c: StageContext) -> Submission:
    return kind_for(c.kind).prepare(c)


def succeeded(c: StageContext, exit_code: int | None, log_tail: str) -> bool:
    return kind_for(c.kind).succeeded(c, exit_code, log_tail)


def test_registry_has_one_kind_per_stage_kind() -> None:
    assert set(registry()) == set(StageKind)
    assert all(kind_for(key).kind is key for key in StageKind)
    assert len({id(k) for k in registry().values()}) == len(StageKind)


def test_where_each_kind_runs() -> None:
    assert kind_for(StageKind.SCRIPT).runs_locally(StageSpec(name="e", command=["true"]))
    assert not kind_for(StageKind.SCRIPT).runs_locally(StageSpec(name="e", script=Path("/x/eval.sbatch")))
    assert kind_for(StageKind.TRANSFER).runs_locally(StageSpec(name="t", kind=StageKind.TRANSFER, destination="/d"))
    for kind in (StageKind.PREPARE, StageKind.TRAIN, StageKind.MERGE):
        assert not kind_for(kind).runs_locally(StageSpec(name="s", kind=kind))


def test_only_transfer_reads_progress_from_the_log() -> None:
    text = "\r   100  10%  1.00kB/s  0:00:09\r   900  90%  1.00kB/s  0:00:01 (xfr#1, to-chk=0/2)\n"
    assert kind_for(StageKind.TRANSFER).progress(text) == Progress(step=90, total=100)
    assert kind_for(StageKind.TRANSFER).progress("building file list\n") is None
    for kind in set(StageKind) - {StageKind.TRANSFER}:
        assert kind_for(kind).progress(text) is None


# ---- preparing submissions on disk ---------------------------------------------------------------


def project(tmp_path: Path, **overrides: Any) -> Path:
    base = tmp_path / "project"
    base.mkdir(exist_ok=True)
    raw = {"output_dir": "out", "dataset_prepared_path": "prepared", "max_steps": 20, "bf16": True, **overrides}
    path = base / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_prepare_submission_writes_derived_and_script(tmp_path: Path) -> None:
    config = project(tmp_path)
    sub = prepare(ctx("prepare", 1, workdir=tmp_path / "work", config=config, partition="cpu"))
    assert sub.script is not None and sub.derived_config is not None
    assert sub.script.parent == tmp_path / "work/stages/prepare/attempt-1"
    assert yaml.safe_load(sub.derived_config.read_text())["bf16"] is False
    assert yaml.safe_load(config.read_text())["bf16"] is True
    text = sub.script.read_text()
    assert f"axolotl preprocess {sub.derived_config}" in text
    assert f"cd {config.parent}" in text
    assert "#SBATCH --partition=cpu" in text
    assert sub.cleaned == ()


def complete_dataset(prepared: Path, name: str) -> Path:
    dataset = prepared / name
    dataset.mkdir(parents=True)
    (dataset / "data-00000-of-00001.arrow").write_bytes(b"rows")
    (dataset / "state.json").write_text("{}")
    return dataset


def test_prepare_retry_removes_only_what_the_failed_attempt_added(tmp_path: Path) -> None:
    config = project(tmp_path)
    prepared = config.parent / "prepared"
    # Before attempt 1: another run's finished dataset, axolotl's lock file, and things that are not axolotl's.
    other = complete_dataset(prepared, "c" * 32)
    (prepared / "datasets_prep.lock").write_text("")
    (prepared / "notes.txt").write_text("keep me")
    first = prepare(ctx("prepare", 1, workdir=tmp_path / "work", config=config))
    assert first.cleaned == ()
    # What attempt 1 left when it died: half a dataset, its ready flag, and a symlinked hash directory.
    partial = prepared / ("a" * 32)
    partial.mkdir()
    (partial / "data-00000-of-00001.arrow").write_bytes(b"half")
    (prepared / "datasets_ready.flag").write_text("")
    (prepared / "NotAHash").mkdir()
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data").write_text("precious")
    (prepared / ("b" * 32)).symlink_to(outside, target_is_directory=True)

    sub = prepare(ctx("prepare", 2, workdir=tmp_path / "work", config=config))
    assert sorted(p.name for p in sub.cleaned) == sorted(["a" * 32, "b" * 32, "datasets_ready.flag"])
    assert sorted(p.name for p in prepared.iterdir()) == ["NotAHash", "c" * 32, "datasets_prep.lock", "notes.txt"]
    assert (other / "data-00000-of-00001.arrow").read_bytes() == b"rows", "a dataset from before is untouched"
    assert (outside / "data").read_text() == "precious", "a symlink is unlinked, never followed"


def test_a_second_retry_compares_with_what_was_there_after_the_first_cleanup(tmp_path: Path) -> None:
    config = project(tmp_path)
    prepared = config.parent / "prepared"
    prepare(ctx("prepare", 1, workdir=tmp_path / "work", config=config))
    complete_dataset(prepared, "a" * 32)  # attempt 1 finished its dataset, then failed on something else
    assert [p.name for p in prepare(ctx("prepare", 2, workdir=tmp_path / "work", config=config)).cleaned] == ["a" * 32]
    complete_dataset(prepared, "d" * 32)  # attempt 2's
    assert [p.name for p in prepare(ctx("prepare", 3, workdir=tmp_path / "work", config=config)).cleaned] == ["d" * 32]


def test_a_retry_without_a_snapshot_keeps_every_finished_dataset(tmp_path: Path) -> None:
    """An attempt made by a version that kept no snapshot: only unfinished hash directories go."""
    config = project(tmp_path)
    prepared = config.parent / "prepared"
    finished = complete_dataset(prepared, "c" * 32)
    (prepared / ("a" * 32)).mkdir()
    (prepared / "datasets_prep.lock").write_text("")
    sub = prepare(ctx("prepare", 2, workdir=tmp_path / "work", config=config))
    assert [p.name for p in sub.cleaned] == ["a" * 32]
    assert finished.exists() and (prepared / "datasets_prep.lock").exists()


@pytest.mark.parametrize("prepared", [".", "..", "/"])
def test_prepare_cleanup_refuses_broad_paths(tmp_path: Path, prepared: str) -> None:
    config = project(tmp_path, dataset_prepared_path=prepared)
    with pytest.raises(StageError, match="refusing"):
        prepare(ctx("prepare", 2, workdir=tmp_path / "work", config=config))


def make_ckpt(out: Path, step: int, *, complete: bool = True, max_steps: int = 20) -> Path:
    ckpt = out / f"checkpoint-{step}"
    (ckpt / "pytorch_model_fsdp_0").mkdir(parents=True)
    (ckpt / "pytorch_model_fsdp_0" / "__0_0.distcp").write_bytes(b"x")
    if complete:
        (ckpt / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"m")
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps}))
    return ckpt


SHARDED = {"fsdp_version": 2, "fsdp_config": {"state_dict_type": "SHARDED_STATE_DICT"}}


def test_train_submission_resumes_and_moves_aside(tmp_path: Path) -> None:
    config = project(tmp_path, **SHARDED)
    out = config.parent / "out"
    train = kind_for(StageKind.TRAIN)
    c = ctx("train", 1, workdir=tmp_path / "work", config=config, nodes=2, gpus_per_node=4)
    first = prepare(c)
    assert first.resume_from is None and resume_checkpoint(out) is None
    assert "resume_from_checkpoint" not in yaml.safe_load(first.derived_config.read_text())  # type: ignore[union-attr]
    assert train.last_saved(c) is None

    make_ckpt(out, 5)
    make_ckpt(out, 10)
    make_ckpt(out, 15, complete=False)
    c2 = ctx("train", 2, workdir=tmp_path / "work", config=config, nodes=2, gpus_per_node=4)
    sub = prepare(c2)
    assert sub.resume_from == out / "checkpoint-10"
    assert [p.name.split("-2")[0] for p in sub.moved_aside] == ["incomplete-checkpoint-15"]
    assert yaml.safe_load(sub.derived_config.read_text())["resume_from_checkpoint"] == str(out / "checkpoint-10")  # type: ignore[union-attr]
    assert sub.script is not None and "--rdzv_id llama-8b-train-2" in sub.script.read_text()
    assert "#SBATCH --nodes=2\n" in sub.script.read_text()
    assert resume_checkpoint(out) == out / "checkpoint-10"
    # The newest by step, whatever the file times say.
    os.utime(out / "checkpoint-5", (1_700_000_600, 1_700_000_600))
    os.utime(out / "checkpoint-10", (1_700_000_000, 1_700_000_000))
    assert train.last_saved(c2) == "checkpoint-10"
    assert not train.work_finished(c2)
    assert not succeeded(c2, 0, "Training completed!")

    make_ckpt(out, 20)
    assert train.work_finished(c2)
    # A hang in the final merge ends in an NCCL abort: still a success once the last checkpoint is in.
    assert succeeded(c2, -6, "Watchdog caught collective operation timeout")


def write_safetensors(path: Path, shape: list[int]) -> None:
    n = 4
    for d in shape:
        n *= d
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, n]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * n)


def test_merge_plan_prefers_a_readable_unsharded_model(tmp_path: Path) -> None:
    config = project(tmp_path, **SHARDED)
    out = config.parent / "out"
    c = ctx("merge", 1, workdir=tmp_path / "work", config=config)
    with pytest.raises(StageError, match="no complete final checkpoint"):
        prepare(c)
    make_ckpt(out, 20)
    assert plan_merge(load_axolotl_config(c)).mode == "merge"
    # A half-written save (header promises more bytes than the file holds) is not a model to ship.
    write_safetensors(out / "model.safetensors", [4, 4])
    (out / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:-8])
    assert plan_merge(load_axolotl_config(c)) == MergePlan("merge", out / "checkpoint-20")
    write_safetensors(out / "model.safetensors", [4, 4])
    assert plan_merge(load_axolotl_config(c)) == MergePlan("copy", None, ("model.safetensors",))
    sub = prepare(c)
    assert sub.script is not None and "mode=copy" in sub.script.read_text()


def test_merge_success_rule(tmp_path: Path) -> None:
    config = project(tmp_path)
    merged = tmp_path / "shipped"
    spec = StageSpec(name="merge", kind=StageKind.MERGE)
    c = StageContext("r", spec, 1, tmp_path / "work", config, VENV, merged, config.parent)
    log = f"verify_merge: OK\n{MERGE_READY} {merged}\n"
    assert not succeeded(c, 0, log)
    merged.mkdir()
    write_safetensors(merged / "model.safetensors", [2, 3])
    assert not succeeded(c, 0, log), "no config.json"
    (merged / "config.json").write_text("{}")
    assert succeeded(c, 0, log)
    assert not succeeded(c, 0, "verify_merge: FAILED ...")


def test_prepare_success_rule(tmp_path: Path) -> None:
    config = project(tmp_path)
    c = ctx("prepare", 1, workdir=tmp_path / "work", config=config)
    line = "\x1b[32m[INFO] Success! Preprocessed data path: `dataset_prepared_path: prepared`\x1b[39m"
    assert not succeeded(c, 0, line), "success line but no dataset on disk"
    dataset = config.parent / "prepared" / ("c" * 32)
    dataset.mkdir(parents=True)
    (dataset / "state.json").write_text("{}")
    assert not succeeded(c, 0, line), "no arrow file"
    (dataset / "data-00000-of-00001.arrow").write_bytes(b"x")
    assert succeeded(c, 0, line)
    assert not succeeded(c, 0, "Traceback ...")


def test_transfer_submission_is_a_host_command(tmp_path: Path) -> None:
    config = project(tmp_path)
    c = ctx("transfer", 1, workdir=tmp_path / "work", config=config, destination="user@hitz:/models/x")
    sub = prepare(c)
    assert sub.script is None and sub.command is not None
    assert sub.command[0] == sys.executable
    assert sub.command[1:4] == ("-m", "supervisor.stages.rsync", str(config.parent / "out" / "merged"))
    assert sub.command[4] == "user@hitz:/models/x"
    assert Path(sub.env["PYTHONPATH"], "supervisor", "stages", "rsync.py").is_file()
    assert succeeded(c, 0, f"...\n{VERIFIED_MARKER} a -> b\n")
    assert not succeeded(c, 0, "rsync done")
    assert not succeeded(c, 1, VERIFIED_MARKER)


def test_transfer_command_starts_without_a_warning_in_its_log() -> None:
    # The registry is built when the package is imported; if that loaded the rsync module, runpy would
    # warn on stderr (the attempt's log) every time the transfer command starts.
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.stages.rsync", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage:" in done.stdout and done.stderr == ""


def test_script_kind_and_errors(tmp_path: Path) -> None:
    c = StageContext("r", StageSpec(name="eval", script=Path("/x/eval.sbatch")), 1, tmp_path)
    assert prepare(c) == Submission(script=Path("/x/eval.sbatch"))
    assert succeeded(c, 0, "") and not succeeded(c, 1, "")
    assert not succeeded(c, None, "")
    local = StageContext("r", StageSpec(name="eval", command=["python", "eval.py"]), 1, tmp_path)
    assert prepare(local) == Submission(command=("python", "eval.py"))
    with pytest.raises(StageError, match="axolotl_config"):
        prepare(StageContext("r", StageSpec(name="train", kind=StageKind.TRAIN), 1, tmp_path))
    config = project(tmp_path)
    no_venv = StageContext("r", StageSpec(name="train", kind=StageKind.TRAIN), 1, tmp_path, config)
    with pytest.raises(StageError, match="venv"):
        prepare(no_venv)
    # The spec validator refuses a transfer without a destination; one built around it must not rsync to "".
    unchecked = StageSpec.model_construct(name="t", kind=StageKind.TRANSFER)
    with pytest.raises(StageError, match="destination"):
        prepare(StageContext("r", unchecked, 1, tmp_path, config))


def test_a_dry_run_moves_no_checkpoint_and_renders_the_merge_of_the_final_one(tmp_path: Path) -> None:
    """`plan`: the kinds change nothing outside the (scratch) attempt directory."""
    import dataclasses

    config = project(tmp_path, **SHARDED)
    out = config.parent / "out"
    make_ckpt(out, 10)
    make_ckpt(out, 15, complete=False)
    c = dataclasses.replace(ctx("train", 1, workdir=tmp_path / "scratch", config=config), dry_run=True)
    sub = prepare(c)
    assert sub.moved_aside == (out / "checkpoint-15",) and (out / "checkpoint-15").is_dir()
    assert sub.resume_from == out / "checkpoint-10"
    with pytest.raises(StageError, match="no complete final checkpoint"):
        prepare(ctx("merge", 1, workdir=tmp_path / "scratch", config=config))
    merge = prepare(dataclasses.replace(ctx("merge", 1, workdir=tmp_path / "scratch", config=config), dry_run=True))
    assert merge.script is not None and str(out / "checkpoint-20") in merge.script.read_text()

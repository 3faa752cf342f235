"""Rendering the stage scripts (golden files), the per-kind preparation and success rules."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.domain.errors import StageError
from supervisor.stages import pipeline
from supervisor.stages.pipeline import MergePlan, StageContext
from supervisor.stages.rsync import VERIFIED_MARKER

GOLDEN = Path(__file__).resolve().parent / "golden"
VENV = Path("/leonardo_work/MYPROJ/venvs/axolotl-0.19")
BASE = Path("/leonardo_work/MYPROJ/llama run")  # a space, to prove the quoting
WORK = Path("/leonardo_work/MYPROJ/supervisor/runs/llama-8b")


def ctx(kind: str, attempt: int = 1, workdir: Path = WORK, config: Path | None = None, **options: Any) -> StageContext:
    return StageContext(
        run="llama-8b",
        stage=kind,
        kind=kind,
        attempt=attempt,
        workdir=workdir,
        options=options,
        axolotl_config=config,
        venv=VENV,
        base_dir=config.parent if config else BASE,
    )


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with UPDATE_GOLDEN=1 if intended"
    subprocess.run(["bash", "-n"], input=text.encode(), check=True)


TRAIN_OPTIONS = {
    "nodes": 32, "gpus_per_node": 4, "partition": "boost_usr_prod", "account": "MYPROJ", "qos": "normal",
    "time": "24:00:00", "cpus_per_task": 32,
}  # fmt: skip


def test_train_golden() -> None:
    text = pipeline.render_train(
        ctx("train", 3, **TRAIN_OPTIONS),
        venv=VENV,
        base_dir=BASE,
        config=WORK / "stages/train/attempt-3/axolotl.yaml",
        resume_from=BASE / "outputs/llama/checkpoint-750",
    )
    check_golden("train.sbatch", text)
    assert "--rdzv_id llama-8b-train-3" in text
    assert "--nnodes 32 --nproc_per_node 4" in text


def test_train_cpu_only_golden() -> None:
    text = pipeline.render_train(
        ctx("train", 1, nodes=1, gpus_per_node=0, master_port=29611),
        venv=VENV, base_dir=BASE, config=WORK / "stages/train/attempt-1/axolotl.yaml", resume_from=None,
    )  # fmt: skip
    check_golden("train-cpu.sbatch", text)
    assert "--gpus-per-node" not in text and "--partition" not in text and "--time" not in text
    assert "--nproc_per_node 1" in text


def test_prepare_golden() -> None:
    text = pipeline.render_prepare(
        ctx("prepare", 2, partition="boost_usr_prod", account="MYPROJ", time="04:00:00"),
        venv=VENV,
        base_dir=BASE,
        config=WORK / "stages/prepare/attempt-2/axolotl.yaml",
        dataset_prepared_path=BASE / "prepared/llama",
    )
    check_golden("prepare.sbatch", text)


@pytest.mark.parametrize(
    ("name", "plan"),
    [
        ("merge.sbatch", MergePlan("merge", BASE / "outputs/llama/checkpoint-1000")),
        (
            "merge-copy.sbatch",
            MergePlan("copy", None, ("model-00001-of-00002.safetensors", "model.safetensors.index.json")),
        ),
    ],
)
def test_merge_golden(name: str, plan: MergePlan) -> None:
    text = pipeline.render_merge(
        ctx("merge", 1, partition="boost_usr_prod", account="MYPROJ", time="01:00:00"),
        venv=VENV,
        base_dir=BASE,
        output_dir=BASE / "outputs/llama",
        merged=BASE / "outputs/llama/merged",
        plan=plan,
        verify_script=Path("/opt/supervisor/jobs/lib/verify_merge.py"),
    )
    check_golden(name, text)


def test_directives_omit_unset_and_format_time() -> None:
    lines = pipeline.sbatch_directives(
        "merge", {"partition": "bigmem", "time": timedelta(days=1, hours=2), "mem": "480G"}
    )
    assert lines == [
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --mem=480G",
        "#SBATCH --partition=bigmem",
        "#SBATCH --time=1-02:00:00",
    ]
    assert "#SBATCH --time=90" in pipeline.sbatch_directives("prepare", {"time": 90})
    # Only train is multi-node.
    assert "#SBATCH --nodes=1" in pipeline.sbatch_directives("prepare", {"nodes": 8})


@pytest.mark.parametrize("bad", [{"partition": "a b"}, {"account": "x\n#SBATCH --qos=high"}, {"time": "1 day"}])
def test_directive_injection_refused(bad: dict[str, str]) -> None:
    with pytest.raises(StageError):
        pipeline.sbatch_directives("train", bad)


def test_unknown_placeholder_is_an_error() -> None:
    with pytest.raises(KeyError):
        pipeline.render("{{missing}}", {})
    with pytest.raises(ValueError):
        pipeline.render("{{ spaced }}", {})
    assert pipeline.render('echo "$HOME ${X:-y}" {{a}}', {"a": "1"}) == 'echo "$HOME ${X:-y}" 1'


def test_rdzv_id_unique_per_attempt() -> None:
    ids = {pipeline.rdzv_id(ctx("train", n)) for n in range(1, 4)}
    assert len(ids) == 3
    assert pipeline.rdzv_id(StageContext("my run/1", "train", "train", 1, WORK, {})) == "my-run-1-train-1"


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
    sub = pipeline.prepare_submission(ctx("prepare", 1, workdir=tmp_path / "work", config=config, partition="cpu"))
    assert sub.script is not None and sub.derived_config is not None
    assert sub.script.parent == tmp_path / "work/stages/prepare/attempt-1"
    assert yaml.safe_load(sub.derived_config.read_text())["bf16"] is False
    assert yaml.safe_load(config.read_text())["bf16"] is True
    text = sub.script.read_text()
    assert f"axolotl preprocess {sub.derived_config}" in text
    assert f"cd {config.parent}" in text
    assert sub.cleaned == ()


def test_prepare_retry_cleans_only_axolotl_entries(tmp_path: Path) -> None:
    config = project(tmp_path)
    prepared = config.parent / "prepared"
    partial = prepared / ("a" * 32)
    partial.mkdir(parents=True)
    (partial / "data-00000-of-00001.arrow").write_bytes(b"half")
    (prepared / "datasets_prep.lock").write_text("")
    (prepared / "notes.txt").write_text("keep me")
    (prepared / "NotAHash").mkdir()
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data").write_text("precious")
    (prepared / ("b" * 32)).symlink_to(outside, target_is_directory=True)

    first = pipeline.prepare_submission(ctx("prepare", 1, workdir=tmp_path / "work", config=config))
    assert first.cleaned == () and partial.exists(), "attempt 1 cleans nothing"
    sub = pipeline.prepare_submission(ctx("prepare", 2, workdir=tmp_path / "work", config=config))
    assert sorted(p.name for p in sub.cleaned) == sorted(["a" * 32, "b" * 32, "datasets_prep.lock"])
    assert sorted(p.name for p in prepared.iterdir()) == ["NotAHash", "notes.txt"]
    assert (outside / "data").read_text() == "precious", "a symlink is unlinked, never followed"


@pytest.mark.parametrize("prepared", [".", "..", "/"])
def test_prepare_cleanup_refuses_broad_paths(tmp_path: Path, prepared: str) -> None:
    config = project(tmp_path, dataset_prepared_path=prepared)
    with pytest.raises(StageError, match="refusing"):
        pipeline.prepare_submission(ctx("prepare", 2, workdir=tmp_path / "work", config=config))


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
    c = ctx("train", 1, workdir=tmp_path / "work", config=config, nodes=2, gpus_per_node=4)
    first = pipeline.prepare_submission(c)
    assert first.resume_from is None and pipeline.resume_checkpoint(c) is None
    assert "resume_from_checkpoint" not in yaml.safe_load(first.derived_config.read_text())  # type: ignore[union-attr]

    make_ckpt(out, 5)
    make_ckpt(out, 10)
    make_ckpt(out, 15, complete=False)
    c2 = ctx("train", 2, workdir=tmp_path / "work", config=config, nodes=2, gpus_per_node=4)
    sub = pipeline.prepare_submission(c2)
    assert sub.resume_from == out / "checkpoint-10"
    assert [p.name.split("-2")[0] for p in sub.moved_aside] == ["incomplete-checkpoint-15"]
    assert yaml.safe_load(sub.derived_config.read_text())["resume_from_checkpoint"] == str(out / "checkpoint-10")  # type: ignore[union-attr]
    assert sub.script is not None and "--rdzv_id llama-8b-train-2" in sub.script.read_text()
    assert pipeline.resume_checkpoint(c2) == out / "checkpoint-10"
    assert not pipeline.training_finished(c2)
    assert not pipeline.check_success(c2, 0, "Training completed!")

    make_ckpt(out, 20)
    assert pipeline.training_finished(c2)
    # A hang in the final merge ends in an NCCL abort: still a success once the last checkpoint is in.
    assert pipeline.check_success(c2, -6, "Watchdog caught collective operation timeout")


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
        pipeline.prepare_submission(c)
    make_ckpt(out, 20)
    assert pipeline.plan_merge(pipeline.load_axolotl_config(c)).mode == "merge"
    # A half-written save (header promises more bytes than the file holds) is not a model to ship.
    write_safetensors(out / "model.safetensors", [4, 4])
    (out / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:-8])
    assert pipeline.plan_merge(pipeline.load_axolotl_config(c)) == MergePlan("merge", out / "checkpoint-20")
    write_safetensors(out / "model.safetensors", [4, 4])
    assert pipeline.plan_merge(pipeline.load_axolotl_config(c)) == MergePlan("copy", None, ("model.safetensors",))
    sub = pipeline.prepare_submission(c)
    assert sub.script is not None and "mode=copy" in sub.script.read_text()


def test_merge_success_rule(tmp_path: Path) -> None:
    config = project(tmp_path)
    merged = tmp_path / "shipped"
    c = StageContext("r", "merge", "merge", 1, tmp_path / "work", {}, config, VENV, merged, config.parent)
    log = f"verify_merge: OK\n{pipeline.MERGE_READY} {merged}\n"
    assert not pipeline.check_success(c, 0, log)
    merged.mkdir()
    write_safetensors(merged / "model.safetensors", [2, 3])
    assert not pipeline.check_success(c, 0, log), "no config.json"
    (merged / "config.json").write_text("{}")
    assert pipeline.check_success(c, 0, log)
    assert not pipeline.check_success(c, 0, "verify_merge: FAILED ...")


def test_prepare_success_rule(tmp_path: Path) -> None:
    config = project(tmp_path)
    c = ctx("prepare", 1, workdir=tmp_path / "work", config=config)
    line = "\x1b[32m[INFO] Success! Preprocessed data path: `dataset_prepared_path: prepared`\x1b[39m"
    assert not pipeline.check_success(c, 0, line), "success line but no dataset on disk"
    dataset = config.parent / "prepared" / ("c" * 32)
    dataset.mkdir(parents=True)
    (dataset / "state.json").write_text("{}")
    assert not pipeline.check_success(c, 0, line), "no arrow file"
    (dataset / "data-00000-of-00001.arrow").write_bytes(b"x")
    assert pipeline.check_success(c, 0, line)
    assert not pipeline.check_success(c, 0, "Traceback ...")


def test_transfer_submission_is_a_host_command(tmp_path: Path) -> None:
    config = project(tmp_path)
    c = ctx("transfer", 1, workdir=tmp_path / "work", config=config, destination="user@hitz:/models/x")
    sub = pipeline.prepare_submission(c)
    assert sub.script is None and sub.command is not None
    assert sub.command[1:4] == ("-m", "supervisor.stages.rsync", str(config.parent / "out" / "merged"))
    assert sub.command[4] == "user@hitz:/models/x"
    assert pipeline.check_success(c, 0, f"...\n{VERIFIED_MARKER} a -> b\n")
    assert not pipeline.check_success(c, 0, "rsync done")
    assert not pipeline.check_success(c, 1, VERIFIED_MARKER)


def test_script_kind_and_errors(tmp_path: Path) -> None:
    c = StageContext("r", "eval", "script", 1, tmp_path, {"script": "/x/eval.sbatch"})
    assert pipeline.prepare_submission(c).script == Path("/x/eval.sbatch")
    assert pipeline.check_success(c, 0, "") and not pipeline.check_success(c, 1, "")
    assert not pipeline.check_success(c, None, "")
    with pytest.raises(StageError, match="axolotl_config"):
        pipeline.prepare_submission(StageContext("r", "train", "train", 1, tmp_path, {}))
    config = project(tmp_path)
    no_venv = StageContext("r", "train", "train", 1, tmp_path, {}, config)
    with pytest.raises(StageError, match="venv"):
        pipeline.prepare_submission(no_venv)
    with pytest.raises(StageError, match="destination"):
        pipeline.prepare_submission(StageContext("r", "t", "transfer", 1, tmp_path, {}, config))

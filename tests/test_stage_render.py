"""Rendering the stage scripts (golden files), the ``#SBATCH`` lines and the template engine."""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from supervisor.domain.errors import StageError
from supervisor.domain.spec import StageSpec
from supervisor.domain.types import StageKind
from supervisor.stages.base import StageContext
from supervisor.stages.merge import MergePlan, render_merge
from supervisor.stages.prepare import render_prepare
from supervisor.stages.render import format_time, render, sbatch_directives
from supervisor.stages.train import rdzv_id, render_train

GOLDEN = Path(__file__).resolve().parent / "golden"
VENV = Path("/leonardo_work/MYPROJ/venvs/axolotl-0.19")
BASE = Path("/leonardo_work/MYPROJ/llama run")  # a space, to prove the quoting
WORK = Path("/leonardo_work/MYPROJ/supervisor/runs/llama-8b")


def ctx(kind: str, attempt: int = 1, **options: Any) -> StageContext:
    spec = StageSpec(name=kind, kind=StageKind(kind), **options)
    return StageContext(run="llama-8b", spec=spec, attempt=attempt, workdir=WORK, venv=VENV, base_dir=BASE)


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
    text = render_train(
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
    text = render_train(
        ctx("train", 1, nodes=1, gpus_per_node=0, master_port=29611),
        venv=VENV, base_dir=BASE, config=WORK / "stages/train/attempt-1/axolotl.yaml", resume_from=None,
    )  # fmt: skip
    check_golden("train-cpu.sbatch", text)
    assert "--gpus-per-node" not in text and "--partition" not in text and "--time" not in text
    assert "--nproc_per_node 1" in text


def test_prepare_golden() -> None:
    text = render_prepare(
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
    text = render_merge(
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
    lines = sbatch_directives(
        StageSpec(name="m", kind=StageKind.MERGE, partition="bigmem", time="1-02:00:00", mem="480G")
    )
    assert lines == [
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --mem=480G",
        "#SBATCH --partition=bigmem",
        "#SBATCH --time=1-02:00:00",
    ]
    assert format_time(timedelta(days=1, hours=2)) == "1-02:00:00"
    assert format_time(timedelta(minutes=90, seconds=5)) == "01:30:05"
    assert format_time(90) == "90"
    with pytest.raises(StageError, match="time"):
        format_time(True)  # a bool is an int to Python, not a number of minutes


def test_only_train_spans_nodes_and_asks_for_gpus() -> None:
    options: dict[str, Any] = {"nodes": 8, "gpus_per_node": 4, "exclusive": True}
    prepare = render_prepare(
        ctx("prepare", **options), venv=VENV, base_dir=BASE, config=WORK / "a.yaml", dataset_prepared_path=BASE
    )
    assert "#SBATCH --nodes=1\n" in prepare and "--gpus-per-node" not in prepare
    assert "#SBATCH --exclusive" in prepare
    train = render_train(ctx("train", **options), venv=VENV, base_dir=BASE, config=WORK / "a.yaml", resume_from=None)
    assert "#SBATCH --nodes=8\n" in train and "#SBATCH --gpus-per-node=4\n" in train


@pytest.mark.parametrize("bad", [{"partition": "a b"}, {"account": "x\n#SBATCH --qos=high"}, {"time": "1 day"}])
def test_directive_injection_refused(bad: dict[str, str]) -> None:
    with pytest.raises(StageError):
        sbatch_directives(StageSpec.model_validate({"name": "t", "kind": "train", **bad}))


def test_unknown_placeholder_is_an_error() -> None:
    with pytest.raises(KeyError):
        render("{{missing}}", {})
    with pytest.raises(ValueError):
        render("{{ spaced }}", {})
    assert render('echo "$HOME ${X:-y}" {{a}}', {"a": "1"}) == 'echo "$HOME ${X:-y}" 1'


def test_rdzv_id_unique_per_attempt() -> None:
    ids = {rdzv_id(ctx("train", n)) for n in range(1, 4)}
    assert len(ids) == 3
    spec = StageSpec(name="train", kind=StageKind.TRAIN)
    assert rdzv_id(StageContext("my run/1", spec, 1, WORK)) == "my-run-1-train-1"

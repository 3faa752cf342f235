"""Campaigns on the real multi-node cluster: runs that share a dataset_prepared_path, one prepare per dataset,
a cap on live jobs.

The jobs run the real templates (jobs/templates/prepare.sbatch, train.sbatch) with a stand-in `axolotl`:
``preprocess`` writes a dataset-hash directory as ``save_to_disk`` does (an arrow file, then state.json) and
can die half-way once; ``train`` checksums the dataset it trains from when it starts and again when it ends,
and fails if the two differ or the dataset is gone.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from multinode_fixtures import Driven, driven, require_multinode

__all__ = ["driven"]  # the fixture, re-exported for pytest

FAKE_AXOLOTL = '''
import hashlib, json, os, sys, time
from pathlib import Path
import yaml

command, config = sys.argv[1], Path(sys.argv[2])
cfg = yaml.safe_load(config.read_text())
prepared = Path(cfg["dataset_prepared_path"])
digest = hashlib.md5(json.dumps(cfg["datasets"], sort_keys=True).encode()).hexdigest()
dataset = prepared / digest

def checksum():
    files = sorted(dataset.rglob("*")) if dataset.is_dir() else []
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files if p.is_file())).hexdigest()

if command == "preprocess":
    with open(cfg["x_calls"], "a") as calls:
        calls.write(f"{digest} {os.environ.get('SLURM_JOB_ID')}\\n")
    dataset.mkdir(parents=True, exist_ok=True)
    (dataset / "data-00000-of-00001.arrow").write_bytes(digest.encode() * 4096)
    marker = Path(cfg.get("x_die_once", "/nonexistent/x"))
    if cfg.get("x_die_once") and not marker.exists():
        marker.write_text("died")
        print("Killed: preprocessing died half-way", flush=True)
        sys.exit(137)
    (dataset / "state.json").write_text("{}")
    print(f"Success! Preprocessed data path: `dataset_prepared_path: {prepared}`", flush=True)
elif command == "train":
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    if not (dataset / "state.json").exists():
        print(f"no prepared dataset at {dataset}", flush=True)
        sys.exit(1)
    before = checksum()
    time.sleep(float(cfg.get("x_train_s", 0)))
    after = checksum()
    (out / "dataset-check.json").write_text(json.dumps({"before": before, "after": after}))
    if after != before:
        print("the dataset changed under the training", flush=True)
        sys.exit(1)
    steps = cfg["max_steps"]
    ckpt = out / f"checkpoint-{steps}"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": steps, "max_steps": steps}))
'''


def fake_venv(root: Path) -> Path:
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv / "bin"}:$PATH"\n')
    axolotl = venv / "bin" / "axolotl"
    axolotl.write_text(f"#!{sys.executable}\n{FAKE_AXOLOTL}")
    axolotl.chmod(0o755)
    return venv


def axolotl_config(root: Path, name: str, dataset: str, *, epochs: int = 1, **extra: Any) -> Path:
    config = {"base_model": "./tiny-llama", "datasets": [{"path": dataset, "type": "alpaca"}],
              "dataset_prepared_path": str(root / "prepared"), "output_dir": str(root / "out" / name),
              "num_epochs": epochs, "max_steps": 2, "sequence_len": 512, "x_calls": str(root / "calls.txt"),
              **extra}
    path = root / "configs" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


STAGES = [
    {"name": "prepare", "kind": "prepare", "partition": "lrd_all_serial", "max_attempts": 3, "retry_backoff": 0,
     "time": "00:05:00"},
    {"name": "train", "kind": "train", "nodes": 1, "gpus_per_node": 0, "max_attempts": 1, "retry_backoff": 0,
     "time": "00:05:00"},
]


def run_spec(root: Path, name: str, config: Path) -> dict[str, Any]:
    return {"name": name, "backend": "slurm", "workdir": str(root / "work" / name), "axolotl_config": str(config),
            "venv": str(fake_venv(root) if not (root / "venv").exists() else root / "venv"), "stages": STAGES}


def tree_digest(path: Path) -> str:
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes()
                                   for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()


def stage_state(d: Driven, run: str, stage: str) -> str:
    return str(next(s for s in d.show(run)["stages"] if s["name"] == stage)["state"])


def test_a_prepare_retry_leaves_the_dataset_another_run_trains_from_byte_for_byte(driven: Driven) -> None:
    """Two runs, two datasets, one dataset_prepared_path: run `b`'s preprocess dies half-way and is retried while
    run `a` trains from its finished dataset. The retry's cleanup removes b's half dataset and nothing else."""
    require_multinode()
    root = driven.root
    a_cfg = axolotl_config(root, "a", "data/a.jsonl", x_train_s=25)
    b_cfg = axolotl_config(root, "b", "data/b.jsonl", x_die_once=str(root / "b-died"))
    driven.submit(run_spec(root, "a", a_cfg))
    driven.tick_until(lambda: stage_state(driven, "a", "train") == "running" or None, "a's training to start")
    (a_dataset,) = [p for p in (root / "prepared").iterdir() if p.is_dir()]
    a_before = tree_digest(a_dataset)

    driven.submit(run_spec(root, "b", b_cfg))
    b = driven.tick_until(lambda: driven.settled("b"), "run b to finish")
    a = driven.tick_until(lambda: driven.settled("a"), "run a to finish")

    assert b["state"] == "succeeded", b["events"]
    prepare = next(s for s in b["stages"] if s["name"] == "prepare")
    assert [t["state"] for t in prepare["attempts"]] == ["failed", "succeeded"]
    assert a["state"] == "succeeded", a["events"]
    check = json.loads((root / "out" / "a" / "dataset-check.json").read_text())
    assert check["before"] == check["after"], "a's dataset changed while it trained"
    assert tree_digest(a_dataset) == a_before
    assert len([p for p in (root / "prepared").iterdir() if p.is_dir()]) == 2


def live_jobs(d: Driven) -> int:
    """Jobs of this test the scheduler has queued or running now."""
    done = subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True, text=True, timeout=60,
                          check=True)
    return len(set(done.stdout.split()) & set(d.cluster.submitted))


def test_a_campaign_of_four_runs_on_two_datasets_prepares_twice_and_keeps_to_max_live_jobs(driven: Driven) -> None:
    require_multinode()
    root = driven.root
    fake_venv(root)
    configs = {f"{data}-{epochs}ep": axolotl_config(root, f"{data}-{epochs}ep", f"data/{data}.jsonl", epochs=epochs)
               for data in ("1m", "full") for epochs in (1, 4)}
    campaign = {"campaign": "hparams", "max_live_jobs": 2,
                "defaults": {"backend": "slurm", "venv": str(root / "venv"), "stages": STAGES},
                "runs": [{"name": name, "axolotl_config": str(path), "workdir": str(root / "work" / name)}
                         for name, path in configs.items()]}
    spec = root / "campaign.yaml"
    spec.write_text(yaml.safe_dump(campaign))
    assert driven.sv.submit(spec, "slurm") == list(configs)

    most = 0

    def all_settled() -> list[dict[str, Any]] | None:
        nonlocal most
        most = max(most, live_jobs(driven))
        shown = [driven.show(name) for name in configs]
        return shown if all(s["state"] in ("succeeded", "failed", "cancelled", "paused") for s in shown) else None

    shown = driven.tick_until(all_settled, "the campaign's four runs to finish")
    assert [s["state"] for s in shown] == ["succeeded"] * 4, [s["events"] for s in shown]
    calls = (root / "calls.txt").read_text().split()
    assert len(calls) == 4 and len(set(calls[0::2])) == 2, calls  # two preprocess jobs, one per dataset
    shared = [s["name"] for s in shown if any("prepared the same dataset" in e["message"] for e in s["events"])]
    assert len(shared) == 2, shared
    assert 1 <= most <= 2
    rows = [r for r in driven.sv.status() if r["campaign"] == "hparams"]
    assert len(rows) == 4


def test_a_failure_loop_that_spends_the_wasted_budget_pauses_the_run_with_one_notification(driven: Driven) -> None:
    """Every attempt sleeps 3 s and exits 1: 3 wasted node-seconds each against a budget of 7.2 (0.002 h)."""
    require_multinode()
    from sqlalchemy import select

    from supervisor.store.models import OutboxEntry

    script = driven.files.script("loop.sbatch", "#!/bin/bash\n#SBATCH --time=00:02:00\nsleep 3\nexit 1\n")
    driven.submit({"name": "loop", "backend": "slurm", "workdir": str(driven.root / "work"),
                   "budget": {"wasted_node_hours": 0.002},
                   "notify": [{"webhook": {"url": "http://127.0.0.1:9/hook"}}],
                   "stages": [{"name": "s", "script": str(script), "max_attempts": 50, "retry_backoff": 0}]})
    paused = driven.tick_until(lambda: driven.settled("loop"), "the run to stop")
    assert paused["state"] == "paused", paused["events"]
    assert paused["reason"].startswith("budget: "), paused["reason"]
    attempts = driven.attempts("loop")
    assert 3 <= len(attempts) < 50 and all(a["state"] == "failed" for a in attempts)
    # One node each, all wasted: the seconds each ran, summed, pass 7.2 s with the last attempt and not before.
    ran = [(datetime.fromisoformat(a["ended_at"]) - datetime.fromisoformat(a["started_at"])).total_seconds()
           for a in attempts]
    assert sum(ran) >= 7.2 > sum(ran[:-1]), ran
    submitted = len(driven.cluster.submitted)
    for _ in range(5):
        driven.tick()
    assert len(driven.cluster.submitted) == submitted == len(attempts), "nothing is submitted after the budget"
    with driven.sv.sessions() as session:
        kinds = list(session.scalars(select(OutboxEntry.kind)))
    assert kinds.count("budget_exceeded") == 1, kinds
    assert [e["kind"] for e in driven.show("loop")["events"]].count("budget_exceeded") == 1

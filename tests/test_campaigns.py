"""Campaigns without a cluster: the spec, registration all or none, the commands that take a campaign name,
and the core's and the gate's decisions (pure). The cluster scenarios are in test_campaign_slurm.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.domain import core
from supervisor.domain.core import Gate, RunView, SetRun, SetStage, SharedPrepare, Sharing, StageView, Submit
from supervisor.domain.core.actions import Emit
from supervisor.domain.types import EventKind, RunState, StageState
from supervisor.stages.datasets import share_key
from supervisor.store.gates import Peer, sharing

from harness import Harness

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


# ---- the campaign spec, through the CLI -------------------------------------------------------------------


def campaign_file(h: Harness, **overrides: Any) -> Path:
    data: dict[str, Any] = {
        "campaign": "hp", "max_live_jobs": 1,
        "defaults": {"backend": "local", "stages": [{"name": "s", "command": ["true"]}]},
        "runs": [{"name": "r1", "workdir": str(h.root / "w1")}, {"name": "r2", "workdir": str(h.root / "w2")}],
        **overrides,
    }
    return h.write_spec(data, "campaign.yaml")


def test_a_campaign_registers_every_run_and_the_commands_take_its_name(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert h.cli("submit", str(campaign_file(h))).out.split() == ["r1", "r2"]
    rows = json.loads(h.cli("status", "--json", "--campaign", "hp").out)
    assert [(r["name"], r["campaign"]) for r in rows] == [("r1", "hp"), ("r2", "hp")]
    assert h.cli("status", "--campaign", "hp").out.startswith("campaign hp: 2 runs (2 pending)")
    assert h.cli("pause", "hp").out.split("\n")[:2] == ["paused r1", "paused r2"]
    assert {r["state"] for r in h.status()} == {"paused"}
    assert h.cli("resume", "hp").out.split("\n")[:2] == ["resumed r1", "resumed r2"]
    assert h.cli("cancel", "hp").out.split("\n")[:2] == ["cancelled r1", "cancelled r2"]
    assert {r["state"] for r in h.status()} == {"cancelled"}
    missing = h.cli("status", "--campaign", "nope", check=False)
    assert missing.code == 2 and "no campaign named 'nope'" in missing.err


@pytest.mark.parametrize(("overrides", "where"), [
    ({"runs": [{"name": "r1"}, {"name": "r1"}]}, "runs[1].name: a second run named 'r1'"),
    ({"runs": [{"name": "r1"}, {"name": "r2", "stages": []}]}, "runs[1].stages: List should have at least 1"),
    ({"runs": [{"name": "r1"}, {"name": "r2", "axolotl_config": "missing.yaml"}]}, "runs[1].axolotl_config"),
    ({"matrix": {"axolotl_config": ["a.yaml"]}}, "a campaign needs exactly one of `runs` (a list) or `matrix`"),
    ({"max_live_jobs": 0}, "max_live_jobs: Input should be greater than or equal to 1"),
    ({"budget": {}}, "budget: a budget needs `node_hours`, `wasted_node_hours` or both"),
    ({"defaults": {"name": "x"}}, "`defaults` cannot give a `name`"),
])
def test_a_bad_campaign_is_one_error_naming_the_field_and_registers_nothing(
        tmp_path: Path, overrides: dict[str, Any], where: str) -> None:
    h = Harness(tmp_path)
    done = h.cli("submit", str(campaign_file(h, **overrides)), check=False)
    assert done.code == 2, done.err
    assert where in done.err and done.err.count("\n") == 1, done.err
    assert h.status() == []


def test_a_campaign_whose_run_name_is_taken_registers_none_of_its_runs(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.submit({"name": "r2", "backend": "local", "workdir": str(tmp_path / "w"), "stages": [{"name": "s",
                                                                                            "command": ["true"]}]})
    done = h.cli("submit", str(campaign_file(h)), check=False)
    assert done.code == 2 and "a run named 'r2' already exists" in done.err
    assert [r["name"] for r in h.status()] == ["r2"]
    assert h.cli("submit", str(campaign_file(h, runs=[{"name": "r3", "workdir": str(tmp_path / "w3")}]))).out \
        .split() == ["r3"], "the campaign name was not taken by the refused attempt"


def test_a_matrix_names_one_run_per_config(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for name in ("llama-3.1-8B_1M_1epoch", "llama-3.1-8B_Full_4epoch"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"output_dir": f"out/{name}",
                                                               "dataset_prepared_path": "prepared"}))
    spec = campaign_file(h, runs=[], matrix={"axolotl_config": ["llama-3.1-8B_1M_1epoch.yaml",
                                                                 "llama-3.1-8B_Full_4epoch.yaml"]},
                         defaults={"backend": "local", "stages": [{"name": "p", "kind": "prepare"}]})
    assert h.cli("submit", str(spec)).out.split() == ["hp-llama-3.1-8B_1M_1epoch", "hp-llama-3.1-8B_Full_4epoch"]
    shown = h.show("hp-llama-3.1-8B_1M_1epoch")
    assert shown["campaign"] == "hp"
    assert shown["stages"][0]["prepare"] == {"dataset_prepared_path": str(tmp_path / "prepared"),
                                             "shared_with": None, "sharing": None}


# ---- which configs share a prepared dataset ---------------------------------------------------------------


def test_configs_that_differ_only_in_how_they_train_share_a_prepare() -> None:
    base = {"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "alpaca"}], "sequence_len": 4096}
    one = share_key({**base, "num_epochs": 1, "output_dir": "a", "learning_rate": 1e-5}, Path("/p"), Path("/b"))
    four = share_key({**base, "num_epochs": 4, "output_dir": "b", "bf16": True}, Path("/p"), Path("/b"))
    assert one == four
    assert share_key({**base, "sequence_len": 8192}, Path("/p"), Path("/b")) != one
    assert share_key({**base, "datasets": [{"path": "full.jsonl", "type": "alpaca"}]}, Path("/p"), Path("/b")) != one
    assert share_key(base, Path("/other"), Path("/b")) != share_key(base, Path("/p"), Path("/b"))
    assert share_key(base, Path("/p"), Path("/elsewhere")) != share_key(base, Path("/p"), Path("/b"))


def peer(state: str, *, same: bool = True, attempts: int = 1, live: int = 0, campaign: str | None = "c",
         run_state: str = "running", name: str = "other") -> Peer:
    return Peer(name, campaign, run_state, state, same, attempts, live, "nccl_error")


def test_what_a_prepare_follows_among_its_peers() -> None:
    assert sharing([peer("succeeded")], "c", present=True) == SharedPrepare("other", Sharing.SUCCEEDED)
    assert sharing([peer("succeeded")], "c", present=False) is None, "a deleted dataset is no source"
    assert sharing([peer("running", live=1)], "c", True) == SharedPrepare("other", Sharing.LIVE)
    assert sharing([peer("running", attempts=0)], "c", True) is None, "a peer that never started leads nothing"
    assert sharing([peer("running", same=False, live=1)], "c", True) == SharedPrepare("other", Sharing.BUSY)
    assert sharing([peer("running", same=False, live=0)], "c", True) is None
    assert sharing([peer("failed")], "c", True) == SharedPrepare("other", Sharing.FAILED, "nccl_error")
    assert sharing([peer("failed", campaign="d")], "c", True) is None, "another campaign's failure is not ours"
    assert sharing([peer("failed")], None, True) is None
    both = [peer("running", same=False, live=1, name="x"), peer("succeeded", name="y")]
    assert sharing(both, "c", True) == SharedPrepare("y", Sharing.SUCCEEDED), "a finished dataset needs no wait"


# ---- the core: what it does instead of submitting ---------------------------------------------------------


def run_view(gate: Gate, state: RunState = RunState.PENDING) -> RunView:
    return RunView(name="r", state=state, gate=gate,
                   stages=(StageView(name="prepare", state=StageState.PENDING, max_attempts=3),
                           StageView(name="train", state=StageState.PENDING, max_attempts=3)))


def test_the_core_follows_a_shared_prepare_instead_of_submitting() -> None:
    done = core.advance(run_view(Gate(prepare={"prepare": SharedPrepare("a", Sharing.SUCCEEDED)})), NOW)
    assert done[:2] == [SetRun(RunState.RUNNING), SetStage("prepare", StageState.SUCCEEDED)]
    assert isinstance(done[2], Emit) and done[2].message == \
        "stage prepare succeeded: run a prepared the same dataset"
    assert core.advance(run_view(Gate(prepare={"prepare": SharedPrepare("a", Sharing.LIVE)})), NOW) == []
    assert core.advance(run_view(Gate(prepare={"prepare": SharedPrepare("a", Sharing.BUSY)})), NOW) == []
    failed = core.advance(run_view(Gate(prepare={"prepare": SharedPrepare("a", Sharing.FAILED, "oom")})), NOW)
    assert SetRun(RunState.FAILED) in failed
    assert any(isinstance(a, Emit) and a.message.endswith("shares with run a failed (oom)") for a in failed)


def test_the_core_pauses_on_a_spent_budget_and_waits_for_the_job_cap() -> None:
    spent = core.advance(run_view(Gate(over_budget="3 node-hours spent")), NOW)
    assert spent[0] == SetRun(RunState.PAUSED, "budget: 3 node-hours spent")
    assert [a.kind for a in spent if isinstance(a, Emit)] == [EventKind.BUDGET_EXCEEDED]
    quiet = core.advance(run_view(Gate(over_budget="3 node-hours spent", announce_budget=False)), NOW)
    assert quiet == [SetRun(RunState.PAUSED, "budget: 3 node-hours spent")]
    assert core.advance(run_view(Gate(wait="campaign c: 2 of max_live_jobs 2 jobs live")), NOW) == []
    assert Submit("prepare", 1) in core.advance(run_view(Gate()), NOW)


def test_report_and_status_give_a_campaigns_node_hours_against_its_allocation_and_budget(tmp_path: Path) -> None:
    from datetime import timedelta

    from supervisor.app.service import Supervisor
    from supervisor.store.models import Attempt, Run

    h = Harness(tmp_path)
    h.cli("submit", str(campaign_file(h, allocation_node_hours=10, budget={"node_hours": 5})))
    sv = Supervisor(h.home)
    with sv.sessions.begin() as session:
        run = session.query(Run).filter_by(name="r1").one()
        run.stages[0].state = "succeeded"
        start = datetime.now(UTC) - timedelta(hours=2)
        session.add(Attempt(stage_id=run.stages[0].id, number=1, tag="r1-1", backend="local", job_id="1",
                            state="succeeded", submitted_at=start, started_at=start,
                            ended_at=start + timedelta(hours=1), nodes="node[01-02]"))
    report = json.loads(h.cli("report", "--json").out)
    (campaign,) = report["campaigns"]
    assert (campaign["name"], campaign["node_hours"], campaign["allocation_used_percent"]) == ("hp", 2.0, 20.0)
    rows = {r["name"]: r for r in json.loads(h.cli("status", "--json").out)}
    assert rows["r2"]["budget"] == {"scope": "campaign", "node_hours": 5, "wasted_node_hours": None,
                                    "used": 2.0, "wasted": 0.0}

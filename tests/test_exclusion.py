"""Which node a failure line is evidence against: pure rules, no cluster, no clock, no database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from supervisor.backends.slurm_cli import (
    SlurmCliCluster,
    is_down,
    parse_scontrol_node_states,
    parse_scontrol_nodes,
    render_sbatch_argv,
    scontrol_show_nodes_argv,
)
from supervisor.domain import core, hostlist
from supervisor.domain.core import AttemptView, Observation, Outcome, RunView, StageView
from supervisor.domain.core.exclusion import host_forms, resolve_host
from supervisor.domain.ports import CommandResult
from supervisor.domain.types import (
    AttemptState,
    EventKind,
    JobInfo,
    JobPhase,
    LogMatch,
    RunState,
    SignatureAction,
    StageState,
    SubmitRequest,
)

from slurm_fixtures import FIXTURES

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EXCLUDE = SignatureAction.RESUBMIT_EXCLUDE_NODE


def running(number: int = 1) -> AttemptView:
    return AttemptView(number=number, state=AttemptState.RUNNING, job_id=str(100 + number), started_at=T0)


def failed(number: int, nodes: str) -> AttemptView:
    return AttemptView(number=number, state=AttemptState.CANCELLED, outcome=Outcome.RESUBMIT, cause="nccl_error",
                       ended_at=T0, nodes=nodes)


def run_of(*attempts: AttemptView, excluded: tuple[str, ...] = (), cap: int = 4) -> RunView:
    stage = StageView(name="train", state=StageState.RUNNING, max_attempts=5, attempts=attempts, retry_backoff=0.0)
    return RunView("r", RunState.RUNNING, (stage,), excluded_nodes=excluded, max_excluded_nodes=cap)


def on(nodes: str, host: str | None = None, addresses: Mapping[str, tuple[str, ...]] | None = None,
       text: str = "NCCL error: remote peer closed", down: frozenset[str] = frozenset()) -> Observation:
    job = JobInfo(job_id="10", name="t", phase=JobPhase.RUNNING, nodes=nodes, raw_state="RUNNING")
    return Observation(job=job, matches=(LogMatch("nccl_error", EXCLUDE, 12, text, node=host),),
                       node_addresses=addresses or {}, down_nodes=down)


def decide(run: RunView, obs: Observation) -> list[core.Action]:
    number = run.stages[0].attempts[-1].number
    return core.observe(run, {("train", number): obs}, T0)


def excluded(actions: list[core.Action]) -> list[str]:
    return [a.node for a in actions if isinstance(a, core.ExcludeNode)]


def signature_data(actions: list[core.Action]) -> dict[str, object]:
    (event,) = [a for a in actions if isinstance(a, core.Emit) and a.kind is EventKind.SIGNATURE]
    return dict(event.data)


# ---- naming a host ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "node"), [
    ("ng30903-ib.narval.calcul.quebec", "ng30903"),
    ("ng30903-ib", "ng30903"),
    ("nid001234-hsn0", "nid001234"),
    ("NG30903.narval.calcul.quebec.", "ng30903"),
    ("ng30903", "ng30903"),
])
def test_a_host_is_the_node_without_domain_and_interface_suffix(host: str, node: str) -> None:
    assert resolve_host(host, ["ng30902", node]) == node


def test_a_node_really_named_with_a_suffix_matches_as_itself() -> None:
    assert resolve_host("gpu1-ib", ["gpu1", "gpu1-ib"]) == "gpu1-ib"
    assert host_forms("gpu1-ib.x.org") == ["gpu1-ib.x.org", "gpu1-ib", "gpu1"]


def test_an_ip_resolves_through_the_allocations_addresses_only() -> None:
    addresses = {"lrdn0001": ("lrdn0001-net", "10.1.0.1"), "lrdn0002": ("10.1.0.2",)}
    assert resolve_host("10.1.0.2", ["lrdn0001", "lrdn0002"], addresses) == "lrdn0002"
    assert resolve_host("10.1.0.2", ["lrdn0001", "lrdn0002"]) is None
    assert resolve_host("lrdn0001-net.cineca.it", ["lrdn0001", "lrdn0002"], addresses) == "lrdn0001"
    # One address behind two nodes names neither.
    shared = {"a1": ("10.0.0.9",), "a2": ("10.0.0.9",)}
    assert resolve_host("10.0.0.9", ["a1", "a2"], shared) is None


def test_a_line_naming_an_ip_of_the_allocation_excludes_that_nodes_name() -> None:
    addresses = {"lrdn0001": ("10.1.0.1",), "lrdn0002": ("10.1.0.2",)}
    actions = decide(run_of(running()), on("lrdn[0001-0002]", "10.1.0.2", addresses))
    assert excluded(actions) == ["lrdn0002"]
    (exclusion,) = [a for a in actions if isinstance(a, core.ExcludeNode)]
    assert exclusion.evidence == "NCCL error: remote peer closed" and exclusion.line == 12
    assert "named in the line" in exclusion.reason
    assert signature_data(actions)["node"] == "lrdn0002"


def test_a_host_outside_the_allocation_excludes_nothing_and_is_unresolved() -> None:
    actions = decide(run_of(running()), on("lrdn[0001-0002]", "gpu17.example.org"))
    assert excluded(actions) == []
    data = signature_data(actions)
    assert data["unresolved"] == "gpu17.example.org" and data["node"] is None
    assert core.Cancel("train", 1, Outcome.RESUBMIT, "nccl_error") in actions


# ---- no host named ------------------------------------------------------------------------------------


def test_an_unnamed_failure_on_a_multi_node_allocation_excludes_nothing_the_first_time() -> None:
    actions = decide(run_of(running()), on("lrdn[0001-0004]"))
    assert excluded(actions) == []
    assert "nothing excluded" in str(signature_data(actions)["exclusion"])
    assert core.Cancel("train", 1, Outcome.RESUBMIT, "nccl_error") in actions


def test_an_unnamed_failure_excludes_the_allocations_one_node_the_scheduler_marks_down() -> None:
    actions = decide(run_of(running()), on("node[01-03]", down=frozenset({"node02", "node09"})))
    assert excluded(actions) == ["node02"]
    assert "marks down" in str(signature_data(actions)["exclusion"])


def test_a_job_releasing_its_nodes_is_judged_on_the_allocation_it_ran_on() -> None:
    """squeue lists a COMPLETING job's remaining nodes only: node02 died, `node[01-03]` reads `node[01,03]`
    (seen on the dev cluster). The dead node is still the allocation's one node marked down."""
    started = AttemptView(number=1, state=AttemptState.RUNNING, job_id="101", started_at=T0, nodes="node[01-03]")
    job = JobInfo(job_id="101", name="t", phase=JobPhase.RUNNING, nodes="node[01,03]", raw_state="COMPLETING")
    unnamed = (LogMatch("slurm_node_failure", EXCLUDE, 4,
                        "*** JOB 101 ON node01 CANCELLED AT 2026-12-03T09:33:55 DUE TO NODE FAILURE ***"),)
    assert core.wants_down_nodes(started, job, unnamed) == ("node01", "node02", "node03")
    actions = decide(run_of(started), Observation(job=job, matches=unnamed, down_nodes=frozenset({"node02"})))
    assert excluded(actions) == ["node02"]
    # Nor is the attempt's recorded allocation narrowed to what the job still holds.
    updates = [a.changes.nodes for a in actions if isinstance(a, core.UpdateAttempt)]
    assert all(nodes in (None, "node[01-03]") for nodes in updates), updates


def test_two_nodes_down_in_the_allocation_are_no_evidence_against_either() -> None:
    assert excluded(decide(run_of(running()), on("node[01-03]", down=frozenset({"node02", "node03"})))) == []


def test_the_scheduler_is_asked_only_for_an_unnamed_fault_on_several_nodes() -> None:
    unnamed = (LogMatch("slurm_node_failure", EXCLUDE, 3, "*** STEP 41.0 ON node01 ... DUE TO NODE FAILURE ***"),)
    named = (LogMatch("slurm_node_failure", EXCLUDE, 4, "srun: error: Node failure on node02", node="node02"),)
    job = JobInfo(job_id="10", name="t", phase=JobPhase.RUNNING, nodes="node[01-03]", raw_state="RUNNING")
    single = JobInfo(job_id="10", name="t", phase=JobPhase.RUNNING, nodes="node01", raw_state="RUNNING")
    assert core.wants_down_nodes(running(), job, unnamed) == ("node01", "node02", "node03")
    assert core.wants_down_nodes(running(), job, unnamed + named) == ()  # the later line names it
    assert core.wants_down_nodes(running(), job, named) == ()
    assert core.wants_down_nodes(running(), single, unnamed) == ()


def test_an_unnamed_failure_excludes_the_jobs_only_node() -> None:
    assert excluded(decide(run_of(running()), on("lrdn0007"))) == ["lrdn0007"]


def test_the_one_node_shared_with_the_previous_failed_allocation_is_suspect() -> None:
    run = run_of(failed(1, "lrdn[0001-0002]"), running(2))
    actions = decide(run, on("lrdn[0002-0003]"))
    assert excluded(actions) == ["lrdn0002"]
    (exclusion,) = [a for a in actions if isinstance(a, core.ExcludeNode)]
    assert "shared with the previous allocation that failed the same way (attempt 1)" in exclusion.reason


def test_a_previous_failure_of_another_kind_makes_no_node_suspect() -> None:
    """An NVCC timeout on node[01-02] and then an NCCL error on node[02-03] say nothing about node02."""
    nvcc = AttemptView(number=1, state=AttemptState.CANCELLED, outcome=Outcome.RESUBMIT, cause="nvcc_timeout",
                       ended_at=T0, nodes="lrdn[0001-0002]")
    assert excluded(decide(run_of(nvcc, running(2)), on("lrdn[0002-0003]"))) == []


def test_no_suspect_when_the_allocations_share_several_nodes_or_none() -> None:
    assert excluded(decide(run_of(failed(1, "lrdn[0001-0003]"), running(2)), on("lrdn[0002-0003]"))) == []
    assert excluded(decide(run_of(failed(1, "lrdn[0001-0002]"), running(2)), on("lrdn[0005-0006]"))) == []


def test_an_operators_cancel_is_no_failed_allocation() -> None:
    stopped = AttemptView(number=1, state=AttemptState.CANCELLED, outcome=Outcome.OPERATOR, ended_at=T0,
                          nodes="lrdn[0001-0002]")
    assert excluded(decide(run_of(stopped, running(2)), on("lrdn[0002-0003]"))) == []


# ---- the cap ------------------------------------------------------------------------------------------


def test_past_max_excluded_nodes_a_person_is_notified_instead() -> None:
    full = ("lrdn0010", "lrdn0011")
    actions = decide(run_of(running(), excluded=full, cap=2), on("lrdn0007"))
    assert excluded(actions) == []
    (notice,) = [a for a in actions if isinstance(a, core.Emit) and a.kind is EventKind.NEEDS_ATTENTION]
    assert notice.data["capped"] == ["lrdn0007"] and notice.data["max_excluded_nodes"] == 2
    assert core.Cancel("train", 1, Outcome.RESUBMIT, "nccl_error") in actions


def test_renewing_an_exclusion_takes_no_room_under_the_cap() -> None:
    actions = decide(run_of(running(), excluded=("lrdn0007",), cap=1), on("lrdn0007"))
    assert excluded(actions) == ["lrdn0007"]
    assert not [a for a in actions if isinstance(a, core.Emit) and a.kind is EventKind.NEEDS_ATTENTION]


# ---- host lists ---------------------------------------------------------------------------------------


def test_hostlist_expand_and_join_round_trip() -> None:
    assert hostlist.expand("lrdn[0001-0002,0010],gpu7") == ["lrdn0001", "lrdn0002", "lrdn0010", "gpu7"]
    assert hostlist.expand("n[08-10]") == ["n08", "n09", "n10"]
    assert hostlist.join(["b2", "a1", "b2"]) == "a1,b2"
    for bad in ("n[3-1]", "n[1-", "n[a-b]"):
        with pytest.raises(ValueError):
            hostlist.expand(bad)
    with pytest.raises(ValueError):
        hostlist.join(["node[01-02]"])


def test_the_exclude_list_passed_to_sbatch_is_valid_host_list_syntax() -> None:
    request = SubmitRequest(tag="t", workdir=Path("/w"), log_pattern="/w/%j.log", script=Path("/w/s.sh"),
                            exclude=("node[01-02]", "gpu2", "gpu1", "a b"))
    (flag,) = [a for a in render_sbatch_argv(request) if a.startswith("--exclude=")]
    assert flag == "--exclude=gpu1,gpu2"


# ---- scontrol show node -------------------------------------------------------------------------------


def test_parse_scontrol_show_node_golden() -> None:
    text = (FIXTURES / "scontrol_show_node.txt").read_text()
    # scontrol prints "Node fake01 not found" among the records (exit status 1): no node of that name.
    assert "Node fake01 not found" in text
    assert parse_scontrol_nodes(text) == {"vm": ("vm",)}


def test_a_killed_nodes_state_reads_as_down() -> None:
    # Captured on the 4-node test cluster ~25 s after `deploy/slurm-cluster.sh kill-node node03`:
    # IDLE, then IDLE+NOT_RESPONDING after SlurmdTimeout, then DOWN+NOT_RESPONDING.
    states = parse_scontrol_node_states((FIXTURES / "mn_scontrol_show_node_down.txt").read_text())
    assert states == {"node02": "IDLE", "node03": "DOWN+NOT_RESPONDING"}
    assert [s for s in ("IDLE", "ALLOCATED", "MIXED+DRAIN", "DOWN+NOT_RESPONDING", "IDLE+NOT_RESPONDING",
                        "FAIL", "DOWN*", "COMPLETING") if is_down(s)] == [
        "DOWN+NOT_RESPONDING", "IDLE+NOT_RESPONDING", "FAIL", "DOWN*"]


def test_down_nodes_asks_scontrol_once_for_the_allocation() -> None:
    calls: list[list[str]] = []

    def runner(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
               timeout: float = 60.0) -> CommandResult:
        calls.append(list(argv))
        return CommandResult(0, (FIXTURES / "mn_scontrol_show_node_down.txt").read_text(), "")

    cluster = SlurmCliCluster(runner=runner)
    assert cluster.down_nodes(["node02", "node03"]) == {"node03"}
    assert calls == [["scontrol", "show", "node", "--oneliner", "node02,node03"]]


def test_node_addresses_keeps_the_known_nodes_when_scontrol_exits_1() -> None:
    calls: list[list[str]] = []

    def runner(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
               timeout: float = 60.0) -> CommandResult:
        calls.append(list(argv))
        return CommandResult(1, (FIXTURES / "scontrol_show_node.txt").read_text(),
                             (FIXTURES / "scontrol_show_node.stderr").read_text())

    cluster = SlurmCliCluster(runner=runner, resolver=lambda name: ("192.0.2.5",) if name == "vm" else ())
    assert cluster.node_addresses(["vm", "fake01"]) == {"vm": ("vm", "192.0.2.5")}
    assert calls == [scontrol_show_nodes_argv(["vm", "fake01"])] == [
        ["scontrol", "show", "node", "--oneliner", "fake01,vm"]]

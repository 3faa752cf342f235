"""The supervisor on a cluster shaped like the real one: 4 nodes, accounting, nodes that die.

Needs `deploy/slurm-cluster.sh start --nodes 4 --accounting` (what deploy/test.sh starts). Each test
drives an in-process Supervisor with an injected clock (see multinode_fixtures.Driven) and checks
what SLURM itself recorded with scontrol and sacct.
"""

from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from multinode_fixtures import Driven, driven, free_port, require_multinode, slurmctld_job
from slurm_fixtures import cluster_script, compute_nodes, expand_hostlist, sacct_job, wait_until

__all__ = ["driven"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.slurm

NODE_FAILURE_LINE = "srun: error: Node failure on {node}"
VANISHED_REASON = "job left the queue with no final state on record"


def script_stage(script: Path, **options: Any) -> dict[str, Any]:
    return {"name": "s", "script": str(script), "retry_backoff": 0, **options}


def run_spec(d: Driven, name: str, *stages: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "backend": "slurm", "workdir": str(d.root / name), "stages": list(stages)}


def log_of(attempt: dict[str, Any]) -> str:
    path = attempt.get("log")
    return Path(path).read_text() if path and Path(path).exists() else ""


# ---- a real multi-node allocation --------------------------------------------------------------------


def fake_launcher_venv(root: Path) -> Path:
    """A venv whose `axolotl` stands in for torchrun's rendezvous: on each node it reads the launcher
    arguments, the rendezvous node listens on --rdzv_endpoint and every other node connects to it by
    that name. Once all have joined, the rendezvous node writes the final checkpoint."""
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH={shlex.quote(str(venv / "bin"))}:"$PATH"\n')
    axolotl = venv / "bin" / "axolotl"
    axolotl.write_text(f"#!{sys.executable}\n" + '''
import json, os, socket, sys, time
from pathlib import Path
import yaml

assert sys.argv[1] == "train", sys.argv
cfg = yaml.safe_load(Path(sys.argv[2]).read_text())
out = Path(cfg["output_dir"])
out.mkdir(parents=True, exist_ok=True)
argv = sys.argv[1:]
host, port = argv[argv.index("--rdzv_endpoint") + 1].rsplit(":", 1)
nnodes = int(argv[argv.index("--nnodes") + 1])
node = os.environ["SLURMD_NODENAME"]
record = {"node": node, "master_addr": os.environ.get("MASTER_ADDR"), "argv": argv, "joined": []}
if node == host:
    with socket.create_server((host, int(port))) as server:
        server.settimeout(60)
        for _ in range(nnodes - 1):
            conn, _ = server.accept()
            with conn:
                record["joined"].append(conn.recv(64).decode())
else:
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=5) as conn:
                conn.sendall(node.encode())
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
(out / f"launch-{node}.json").write_text(json.dumps(record))
if node == host:
    ckpt = out / f"checkpoint-{cfg['max_steps']}"
    ckpt.mkdir(parents=True, exist_ok=True)
    state = {"global_step": cfg["max_steps"], "max_steps": cfg["max_steps"], "epoch": 1.0, "log_history": []}
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
''')
    axolotl.chmod(0o755)
    return venv


def train_run(d: Driven, name: str, nodes: int, sbatch_args: list[str]) -> dict[str, Any]:
    base = d.root / name
    base.mkdir()
    config = {"base_model": "./tiny-llama", "output_dir": str(base / "out"),
              "dataset_prepared_path": str(base / "prepared"), "max_steps": 2, "save_steps": 1,
              "micro_batch_size": 1}
    (base / "axolotl.yaml").write_text(yaml.safe_dump(config))
    return {"name": name, "backend": "slurm", "workdir": str(base / "work"),
            "axolotl_config": str(base / "axolotl.yaml"), "venv": str(fake_launcher_venv(base)),
            "stages": [{"name": "train", "kind": "train", "nodes": nodes, "gpus_per_node": 0, "max_attempts": 1,
                        "retry_backoff": 0, "time": "00:10:00", "master_port": free_port(),
                        "sbatch_args": sbatch_args}]}


def test_training_spans_every_node_and_meets_on_the_first_node_of_the_allocation(driven: Driven) -> None:
    """jobs/templates/train.sbatch for real: srun starts the launcher once per node, every node is given
    the first host of SLURM's host list as rendezvous (also when that is not node01), and reaches it."""
    nodes = require_multinode()
    first, *rest = nodes
    driven.submit(train_run(driven, "wide", nodes=len(nodes), sbatch_args=[]))
    # node01 excluded: the allocation is node[02-04], so its head is node02.
    driven.submit(train_run(driven, "shifted", nodes=len(rest), sbatch_args=[f"--exclude={first}"]))

    runs = {name: driven.tick_until(functools.partial(driven.settled, name), f"run {name} to settle")
            for name in ("wide", "shifted")}

    for name, expected_nodes in (("wide", nodes), ("shifted", rest)):
        data = runs[name]
        assert data["state"] == "succeeded", (name, data["events"])
        (attempt,) = data["stages"][0]["attempts"]
        assert expand_hostlist(attempt["nodes"]) == expected_nodes, attempt
        launches = {p.name: p for p in (driven.root / name / "out").glob("launch-*.json")}
        assert sorted(launches) == [f"launch-{n}.json" for n in expected_nodes]
        head = expected_nodes[0]
        head_record = yaml.safe_load(launches[f"launch-{head}.json"].read_text())
        endpoint = head_record["argv"][head_record["argv"].index("--rdzv_endpoint") + 1]
        assert endpoint.startswith(f"{head}:"), endpoint
        for node in expected_nodes:
            record = yaml.safe_load(launches[f"launch-{node}.json"].read_text())
            argv = record["argv"]
            assert record["node"] == node
            assert record["master_addr"] == head, record
            assert argv[argv.index("--rdzv_endpoint") + 1] == endpoint, argv
            assert argv[argv.index("--nnodes") + 1] == str(len(expected_nodes)), argv
            assert argv[argv.index("--rdzv_id") + 1] == f"{name}-train-1", argv
        # Every other node reached the rendezvous node under the name the template gave it.
        assert sorted(head_record["joined"]) == expected_nodes[1:]
        assert f"rendezvous {endpoint}" in log_of(attempt)


# ---- --exclude steers the scheduler -----------------------------------------------------------------


def test_a_node_named_in_the_log_is_excluded_by_the_scheduler(driven: Driven) -> None:
    nodes = require_multinode()
    victim = nodes[1]
    go = driven.root / "go"
    script = driven.files.script("named.sbatch", f"""
#SBATCH --nodes=3
#SBATCH --time=00:10:00
echo "attempt $SUPERVISOR_ATTEMPT job $SLURM_JOB_ID on $SLURM_JOB_NODELIST"
if [ "$SUPERVISOR_ATTEMPT" -eq 1 ]; then echo {shlex.quote(NODE_FAILURE_LINE.format(node=victim))}; sleep 300; fi
while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.2; done
""")
    driven.submit(run_spec(driven, "named", script_stage(script, max_attempts=2)))

    second = driven.tick_until(
        lambda: next((a for a in driven.attempts("named")[1:] if a["state"] == "running"), None),
        "attempt 2 running")

    data = driven.show("named")
    first = data["stages"][0]["attempts"][0]
    assert (first["state"], first["cause"], first["outcome"]) == ("cancelled", "slurm_node_failure", "resubmit")
    assert [x["node"] for x in data["excluded_nodes"]] == [victim]
    job = slurmctld_job(second["job_id"])
    assert job is not None, "attempt 2 is running: slurmctld knows it"
    assert job["ExcNodeList"] == victim
    placed = expand_hostlist(job["NodeList"])
    # Three nodes out of four: without the exclusion the scheduler would have taken node[01-03].
    assert len(placed) == 3 and victim not in placed, placed
    go.touch()
    data = driven.tick_until(lambda: driven.settled("named"), "run to settle")
    assert data["state"] == "succeeded"


# ---- a node dies under a running job ----------------------------------------------------------------


def running_on_every_node(driven: Driven, name: str, nodes: int) -> dict[str, Any]:
    """The run's attempt once it runs and each of its ``nodes`` printed "NODE up"."""
    return driven.tick_until(
        lambda: next((a for a in driven.attempts(name) if a["state"] == "running" and log_of(a).count(" up") == nodes),
                     None),
        f"attempt running on {nodes} nodes")


def test_killed_node_fails_the_attempt_and_the_run_completes_elsewhere_without_any_requeue(driven: Driven) -> None:
    require_multinode()
    starts = driven.root / "starts.txt"
    script = driven.files.script("dies.sbatch", f"""
#SBATCH --nodes=3
#SBATCH --time=00:10:00
# One line per start of this script: a job SLURM requeued would add a second line for the same job id.
echo "attempt=$SUPERVISOR_ATTEMPT job=$SLURM_JOB_ID nodes=$SLURM_JOB_NODELIST" >> {shlex.quote(str(starts))}
if [ "$SUPERVISOR_ATTEMPT" -eq 1 ]; then
    srun --ntasks-per-node=1 bash -c 'echo "$SLURMD_NODENAME up"; sleep 300'
else
    srun --ntasks-per-node=1 bash -c 'echo "$SLURMD_NODENAME done"'
fi
""")
    driven.submit(run_spec(driven, "dies", script_stage(script, max_attempts=3)))
    first = running_on_every_node(driven, "dies", 3)
    allocation = expand_hostlist(first["nodes"])
    victim = allocation[1]  # not the batch host: its srun is the one that reports the failure
    cluster_script("kill-node", victim)
    try:
        data = driven.tick_until(lambda: driven.settled("dies"), "run to settle after the node failure", timeout=180)
        attempts = data["stages"][0]["attempts"]
        assert data["state"] == "succeeded", data["events"]
        assert len(attempts) == 2, attempts
        failed, retried = attempts
        assert failed["cause"] == "slurm_node_failure" and failed["outcome"] == "resubmit", failed
        assert NODE_FAILURE_LINE.format(node=victim) in log_of(failed)
        assert [x["node"] for x in data["excluded_nodes"]] == [victim]
        placed = expand_hostlist(retried["nodes"])
        assert len(placed) == 3 and victim not in placed, placed
        assert sorted(line.split()[0] for line in log_of(retried).splitlines() if line.endswith(" done")) == placed

        lines = starts.read_text().splitlines()
        assert lines == [f"attempt=1 job={failed['job_id']} nodes={first['nodes']}",
                         f"attempt=2 job={retried['job_id']} nodes={retried['nodes']}"], lines
        # What SLURM recorded for the failed job: it ended once and was never put back in the queue.
        job = slurmctld_job(failed["job_id"])
        if job is not None:
            assert (job["Restarts"], job["Requeue"]) == ("0", "0"), job
            assert job["JobState"] in ("NODE_FAIL", "CANCELLED"), job
        accounted = wait_until(lambda: sacct_job(failed["job_id"]), "sacct to record the failed job")
        assert accounted["State"] in ("NODE_FAIL", "CANCELLED") or accounted["State"].startswith("CANCELLED by")
    finally:
        cluster_script("revive-node", victim)
    assert victim in compute_nodes()



def test_a_node_failure_no_line_names_is_pinned_on_the_node_slurm_marks_down(driven: Driven) -> None:
    """srun's own stderr goes to a file of its own (as with `srun --error`), so the job log holds only the
    batch step's `*** JOB n ON <batch host> CANCELLED ... DUE TO NODE FAILURE ***`, which names no failed node."""
    require_multinode()
    srun_err = shlex.quote(str(driven.root / "srun-"))
    script = driven.files.script("dies-quietly.sbatch", f"""
#SBATCH --nodes=3
#SBATCH --time=00:10:00
if [ "$SUPERVISOR_ATTEMPT" -eq 1 ]; then
    srun --ntasks-per-node=1 bash -c 'echo "$SLURMD_NODENAME up"; sleep 300' 2>{srun_err}$SLURM_JOB_ID.err
else
    srun --ntasks-per-node=1 bash -c 'echo "$SLURMD_NODENAME done"'
fi
""")
    driven.submit(run_spec(driven, "quiet", script_stage(script, max_attempts=3)))
    first = running_on_every_node(driven, "quiet", 3)
    victim = expand_hostlist(first["nodes"])[1]
    cluster_script("kill-node", victim)
    try:
        data = driven.tick_until(lambda: driven.settled("quiet"), "run to settle after the node failure", timeout=180)
        failed, retried = data["stages"][0]["attempts"]
        assert failed["cause"] == "slurm_node_failure", failed
        assert "Node failure on" not in log_of(failed) and "DUE TO NODE FAILURE" in log_of(failed)
        assert data["state"] == "succeeded", data["events"]
        (exclusion,) = data["excluded_nodes"]
        assert exclusion["node"] == victim and "marks down" in exclusion["reason"], exclusion
        assert victim not in expand_hostlist(retried["nodes"])
    finally:
        cluster_script("revive-node", victim)

# ---- a job that only accounting still knows -----------------------------------------------------------


def test_job_forgotten_by_slurmctld_is_read_from_sacct_not_marked_vanished(driven: Driven) -> None:
    require_multinode(accounting=True)
    go = driven.root / "go"
    for name, code in (("quiet-ok", 0), ("quiet-bad", 3)):
        script = driven.files.script(f"{name}.sbatch", f"""
#SBATCH --nodes=2
#SBATCH --time=00:10:00
while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.2; done
exit {code}
""")
        driven.submit(run_spec(driven, name, script_stage(script, max_attempts=1)))
    names = ("quiet-ok", "quiet-bad")

    def both_running() -> list[dict[str, Any]] | None:
        attempts = [driven.attempts(n) for n in names]
        return [a[0] for a in attempts] if all(len(a) == 1 and a[0]["state"] == "running" for a in attempts) else None

    running = driven.tick_until(both_running, "both jobs running")
    job_ids = [a["job_id"] for a in running]

    # The supervisor stops ticking; the jobs end, and slurmctld forgets them after MinJobAge.
    go.touch()
    wait_until(lambda: True if all(slurmctld_job(j) is None for j in job_ids) else None,
               "slurmctld to forget both jobs (MinJobAge)", timeout=240, interval=2)
    accounted = {j: wait_until(functools.partial(sacct_job, j), f"sacct to know job {j}") for j in job_ids}

    driven.tick()

    for name, state, exit_code in (("quiet-ok", "succeeded", 0), ("quiet-bad", "failed", 3)):
        data = driven.show(name)
        (attempt,) = data["stages"][0]["attempts"]
        record = accounted[attempt["job_id"]]
        assert (attempt["state"], attempt["exit_code"]) == (state, exit_code), attempt
        assert attempt["nodes"] == record["NodeList"] and len(expand_hostlist(record["NodeList"])) == 2, attempt
        assert attempt["reason"] != VANISHED_REASON
        assert data["state"] == state
    crashed = [e for e in driven.show("quiet-bad")["events"] if e["kind"] == "crashed"]
    assert len(crashed) == 1 and "FAILED (exit 3)" in crashed[0]["message"], crashed


# ---- node-hours from the scheduler's own figures ------------------------------------------------------


def test_node_hours_per_attempt_are_what_sacct_recorded_and_the_failure_carries_the_waste(driven: Driven) -> None:
    """`report`'s node-seconds per attempt are sacct's ElapsedRaw x NNodes, the resubmitted attempt's are
    wasted on the injected signature, and used + wasted is the sum over attempts."""
    require_multinode(accounting=True)
    from supervisor.app.report import scheduler_figures
    from supervisor.store import readmodels

    script = driven.files.script("costly.sbatch", """
#SBATCH --nodes=2
#SBATCH --time=00:10:00
sleep 3
if [ "$SUPERVISOR_ATTEMPT" -eq 1 ]; then echo "RuntimeError: NVCC timeout while building fused_adam"; sleep 300; fi
echo done
""")
    driven.submit(run_spec(driven, "costly", script_stage(script, max_attempts=3)))
    data = driven.tick_until(lambda: driven.settled("costly"), "run to settle", timeout=180)
    assert data["state"] == "succeeded", data["events"]
    failed, done = data["stages"][0]["attempts"]
    assert failed["cause"] == "nvcc_timeout", failed
    records = {job: wait_until(functools.partial(_accounted_end, job), f"sacct to close job {job}")
               for job in (failed["job_id"], done["job_id"])}

    reader = readmodels.FileReader.open(driven.files.home)
    assert reader is not None
    report = reader.report(figures=scheduler_figures(driven.files.home))
    (run,) = report["runs"]
    attempts = run["stages"][0]["attempts"]
    for attempt in attempts:
        record = records[attempt["job_id"]]
        assert record["NNodes"] == "2", record
        assert attempt["node_seconds"] == int(record["ElapsedRaw"]) * int(record["NNodes"]), (attempt, record)
    first, second = attempts
    assert first["wasted_node_seconds"] == first["node_seconds"] > 0 and first["waste_cause"] == "nvcc_timeout"
    assert second["wasted_node_seconds"] == 0 and second["used_node_seconds"] == second["node_seconds"] > 0
    total = sum(a["node_seconds"] for a in attempts)
    assert run["used_node_seconds"] + run["wasted_node_seconds"] == run["node_seconds"] == total
    assert [c["cause"] for c in run["waste_by_cause"]] == ["nvcc_timeout"]


def _accounted_end(job_id: str) -> dict[str, str] | None:
    """sacct's record once the job has ended there (ElapsedRaw is final only then)."""
    record = sacct_job(job_id)
    return record if record is not None and record["State"] not in ("RUNNING", "PENDING", "") else None

"""Reliability when a compute node dies under a running job: the real `supervisor daemon` on the 4-node cluster.

    deploy/slurm-cluster.sh start --nodes 4 --accounting && eval "$(deploy/slurm-cluster.sh env)"
    PYTHONPATH=$PWD .venv/bin/python bench/reliability_node_kill.py [--repeats 3] [--nodes 2] [--poll 1s]

Each repeat submits one run whose only stage is a ``--nodes`` job (srun one task per node: attempt 1
prints "NODE up" and sleeps, a later attempt prints "NODE done" and exits 0) under one daemon. Once every
node of attempt 1 printed "up", the last node of its allocation (never the batch host) is killed with
``deploy/slurm-cluster.sh kill-node``: its slurmd and everything it ran, SIGKILL, as a node that loses
power. SLURM notices after SlurmdTimeout (10 s on the accounting layout), fails the job, and the daemon
must read the failure, exclude the dead node and resubmit; then the node is revived for the next repeat.

PASS (exit 0) when, in every repeat: the run succeeded with exactly two attempts and two SLURM jobs (no
duplicate, no SLURM requeue: Restarts 0), attempt 1 ended on ``slurm_node_failure``, the run excludes
exactly the killed node, and attempt 2 ran on no excluded node. FAIL (exit 1) otherwise. Figures per
repeat and as medians: kill -> SLURM ended the job (sacct End), kill -> the daemon's decision (its
signature event), kill -> attempt 2 submitted, and the node-hours of the failed job (sacct ElapsedRaw x
NNodes: what the dead node cost the run).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reliability_kill
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test harness

from reliability_kill import cluster_jobs, load_average, print_problems

from harness import TERMINAL, Harness, slurm_available
from slurm_fixtures import expand_hostlist, sacct_job

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "deploy" / "slurm-cluster.sh"
SETTLE_TIMEOUT_S = 240.0


def cluster(*args: str) -> None:
    subprocess.run([str(CLUSTER), *args], check=True, timeout=180)


def log_of(attempt: dict[str, Any]) -> str:
    path = attempt.get("log")
    return Path(path).read_text(errors="replace") if path and Path(path).exists() else ""


def when(text: str | None) -> float | None:
    """An ISO time (the supervisor's, or sacct's local one without a zone) as epoch seconds."""
    if not text or text in ("Unknown", "None"):
        return None
    at = datetime.fromisoformat(text)
    return (at if at.tzinfo else at.astimezone()).timestamp()


def sacct_end(job_id: str) -> float | None:
    done = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={job_id}",
                           "--format=End"], capture_output=True, text=True, timeout=60, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return when(lines[-1].strip()) if lines else None


def wait_for_accounting(job_id: str, timeout: float = 60) -> dict[str, str] | None:
    """sacct's record of an ended job, once slurmdbd has its end (it gets it a moment after slurmctld)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = sacct_job(job_id)
        if record is not None and record.get("ElapsedRaw", "0") not in ("", "0") and sacct_end(job_id):
            return record
        time.sleep(1)
    return sacct_job(job_id)


def one_repeat(h: Harness, index: int, nodes: int, prefix: str) -> tuple[dict[str, float | None], list[str]]:
    """Run, kill, wait, check. Returns the figures and the problems found."""
    name = f"{prefix}-{index}"
    since = datetime.now(UTC)
    script = h.script(f"{name}.sbatch", f"""
#SBATCH --nodes={nodes}
#SBATCH --time=00:10:00
if [ "$SUPERVISOR_ATTEMPT" -eq 1 ]; then
    srun --ntasks-per-node=1 bash -c 'echo "$SLURMD_NODENAME up"; sleep 600'
else
    srun --ntasks-per-node=1 bash -c 'echo "$SLURMD_NODENAME done"'
fi
""")
    h.submit({"name": name, "backend": "slurm", "workdir": str(h.root / name),
              "stages": [{"name": "s", "script": str(script), "retry_backoff": 0, "max_attempts": 3}]})

    def first_up() -> dict[str, Any] | None:
        attempts = h.attempts(name, "s")
        return next((a for a in attempts if a["state"] == "running" and log_of(a).count(" up") == nodes), None)

    h.wait_for(lambda: first_up() is not None, 180, f"{name}: attempt 1 running on {nodes} nodes")
    first = first_up()
    if first is None:
        raise RuntimeError(f"{name}: attempt 1 stopped running before the kill")
    allocation = expand_hostlist(first["nodes"])
    victim = allocation[-1]
    killed_at = time.time()
    cluster("kill-node", victim)
    problems: list[str] = []
    try:
        h.wait_for(lambda: h.show(name)["state"] in TERMINAL, SETTLE_TIMEOUT_S, f"{name} to settle")
    finally:
        cluster("revive-node", victim)
    data = h.show(name)
    attempts = data["stages"][0]["attempts"]
    if data["state"] != "succeeded":
        problems.append(f"{name}: ended {data['state']}")
    if len(attempts) != 2:
        problems.append(f"{name}: {len(attempts)} attempts, expected 2")
    failed = attempts[0]
    if failed.get("cause") != "slurm_node_failure":
        problems.append(f"{name}: attempt 1 ended on {failed.get('cause')!r}, not slurm_node_failure")
    excluded = [x["node"] for x in data.get("excluded_nodes") or []]
    if excluded != [victim]:
        problems.append(f"{name}: excludes {excluded}, expected [{victim!r}]")
    retried = attempts[1] if len(attempts) > 1 else None
    if retried is not None and retried.get("nodes"):
        placed = expand_hostlist(retried["nodes"])
        if set(placed) & set(excluded):
            problems.append(f"{name}: attempt 2 ran on {placed}, an excluded node among them")
    jobs = [a["job_id"] for a in attempts if a.get("job_id")]
    # Every SLURM job of this run (job names are attempt tags: RUN.STAGE.N.ID).
    on_cluster = sorted({i for ids in cluster_jobs(f"{name}.", since).values() for i in ids})
    if len(on_cluster) != len(attempts):
        problems.append(f"{name}: {len(on_cluster)} SLURM jobs ({', '.join(on_cluster)}) for {len(attempts)} attempts")
    record = wait_for_accounting(failed["job_id"])
    job_ctld = subprocess.run(["scontrol", "show", "job", "--oneliner", failed["job_id"]], capture_output=True,
                              text=True, timeout=30, check=False).stdout
    if "Restarts=" in job_ctld and "Restarts=0" not in job_ctld:
        problems.append(f"{name}: SLURM requeued job {failed['job_id']}")
    decided = next((when(e["at"]) for e in data["events"] if e["kind"] == "signature" and e.get("attempt") == 1),
                   None)
    ended = sacct_end(failed["job_id"])
    resubmitted = when(retried.get("submitted_at")) if retried is not None else None
    node_hours = (int(record["ElapsedRaw"]) * int(record["NNodes"]) / 3600.0
                  if record is not None and record.get("ElapsedRaw", "").isdigit() else None)
    figures = {
        "slurm_end_s": ended - killed_at if ended else None,
        "decided_s": decided - killed_at if decided else None,
        "resubmitted_s": resubmitted - killed_at if resubmitted else None,
        "failed_job_node_hours": node_hours,
    }
    print(f"repeat {index}: {name} on {first['nodes']}, killed {victim}; jobs {', '.join(jobs)} "
          f"({len(on_cluster)} on the cluster); " + ", ".join(
              f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in figures.items()), flush=True)
    return figures, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=2, help="nodes per job (2 or more)")
    parser.add_argument("--poll", default="1s", help="the daemon's --poll")
    args = parser.parse_args()
    if args.nodes < 2:
        print("--nodes: expected 2 or more (the killed node is never the batch host)", file=sys.stderr)
        return 2
    if not slurm_available():
        print('SLURM is not answering: eval "$(deploy/slurm-cluster.sh env)" first', file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="reliability-node-"))
    h = Harness(root)
    prefix = f"nk{secrets.token_hex(3)}"
    started = time.monotonic()
    results: list[dict[str, float | None]] = []
    problems: list[str] = []
    try:
        h.start_daemon(poll=args.poll)
        for index in range(1, args.repeats + 1):
            figures, found = one_repeat(h, index, args.nodes, prefix)
            results.append(figures)
            problems.extend(found)
        code = h.stop_daemon()
    finally:
        h.close()
    wall = time.monotonic() - started

    def median(key: str) -> str:
        values = [v for r in results if (v := r[key]) is not None]
        return f"{statistics.median(values):.2f}" if values else "-"

    print()
    print(f"repeats             {len(results)} ({args.nodes}-node jobs, daemon --poll {args.poll})")
    print(f"kill -> SLURM end   median {median('slurm_end_s')} s (sacct End; SlurmdTimeout bounds it)")
    print(f"kill -> decision    median {median('decided_s')} s (the daemon's signature event)")
    print(f"kill -> resubmitted median {median('resubmitted_s')} s (attempt 2 submitted, dead node excluded)")
    print(f"failed job          median {median('failed_job_node_hours')} node-hours (sacct ElapsedRaw x NNodes)")
    print(f"daemon              exited {code}")
    print(f"wall time           {wall:.0f}s")
    print(f"load average        {load_average()}")
    print()
    ok = print_problems({"node kill": problems, "daemon exit": [] if code == 0 else [f"exit code {code}"]}, root)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

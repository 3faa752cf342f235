"""A fault campaign on the real SLURM cluster: the supervisor against exit-code requeue and no supervision.

    eval "$(deploy/slurm-cluster.sh env)"
    PYTHONPATH=$PWD .venv/bin/python bench/fault_campaign.py

Time is scaled: one second stands for one minute (a 10 s NCCL watchdog is the usual 10 minutes, a job
time limit of 2 real minutes is 2 hours). Four training runs share one fixed fault schedule: the list of
what each run's successive training attempts do (printed at the start). The same schedule is played by

1. the supervisor: an in-process ``Supervisor(home).tick()`` every second (a scaled poll of one minute),
   one ``kind: train`` stage per run with ``stall_timeout`` 30 min and ``startup_timeout`` 20 min (scaled);
2. exit-code requeue (what submitit and SkyPilot-style managed jobs do), implemented here: ``sbatch`` the
   same job, poll ``sacct`` every second, resubmit when the job ends non-zero or TIMEOUT; no log is read,
   so a hang lasts until the watchdog or the time limit, and a job that hangs after its final checkpoint
   is resubmitted (the new job resumes from that checkpoint, finds nothing to train and exits 0);
3. no supervision, as a model computed from the schedule and the requeue's measured job lengths: a person
   who looks every 3 hours (180 s) and resubmits then. The model is generous to the person: an attempt
   starts the moment it is submitted, and a job that hung after "Training completed!" and its final
   checkpoint is taken as the finished model, not resubmitted.

The training job is a stand-in for ``axolotl train`` (a script named ``axolotl`` in a venv, started by
``srun`` once per node exactly as jobs/templates/train.sbatch starts axolotl): it loads for 3 s, trains one
step a second with a tqdm bar, saves ``checkpoint-N/trainer_state.json`` every 10 steps and resumes from
``resume_from_checkpoint`` (the supervisor's derived config) or, with ``auto_resume_from_checkpoints``, from
the newest complete checkpoint (what the requeue baseline relies on). Which fault an attempt plays is the
run's count of earlier jobs that reached the trainer, so both strategies see the same sequence. Every fault
line is an ``examples`` entry of supervisor/logs/signatures.yaml, printed as it is there.

Node-hours are sacct's ``ElapsedRaw x NNodes`` summed over every job of the strategy, scaled back (1 s = 1
min). Wasted = used - what a faultless run needs (nodes x (startup + steps + save)), so the three columns
are measured against the same work. Time to a finished model: from the campaign's start to when the
strategy knows the model is done (the supervisor's run succeeded; the requeue's job COMPLETED; the
person's check after the model was written).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from supervisor.app.logsetup import configure_logging
from supervisor.app.service import Supervisor

REPO = Path(__file__).resolve().parents[1]
SIGNATURES = REPO / "supervisor" / "logs" / "signatures.yaml"

# Scaled constants: seconds of real time, each standing for a minute.
STARTUP_S = 3          # model and dataset loading before the first step
STEP_S = 1.0           # one optimizer step
MAX_STEPS = 60         # a one-hour training
SAVE_STEPS = 10
WATCHDOG_S = 10        # NCCL's watchdog: 10 minutes
TIME_LIMIT = "00:02:00"  # the job's time limit: 2 hours
STALL_TIMEOUT = "30s"
STARTUP_TIMEOUT = "20s"
CHECK_EVERY_S = 180    # the unsupervised person looks every 3 hours
POLL_S = 1.0           # supervisor tick and requeue sacct poll: once a minute
MINUTE_PER_S = 1.0     # the scale: 1 s = 1 min
PARTITION = "boost_usr_prod"
MAX_JOBS_PER_RUN = 8   # bounds a broken strategy, never reached by a correct one
ENDED_OK = {"COMPLETED"}
ENDED_BAD = {"FAILED", "TIMEOUT", "NODE_FAIL", "CANCELLED", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def example(name: str, index: int = 0) -> str:
    """The catalogue's own example line of a signature."""
    for entry in yaml.safe_load(SIGNATURES.read_text())["signatures"]:
        if entry["name"] == name:
            return str(entry["examples"][index])
    raise KeyError(name)


def schedule() -> dict[str, dict[str, Any]]:
    """Each run: its nodes per job and what its successive attempts do (past the list: train to the end)."""
    nvcc, device, setup = example("nvcc_timeout"), example("unsupported_device"), example("node_setup_failure")
    nccl, watchdog = example("nccl_error", 5), example("nccl_watchdog_timeout")
    return {
        "run-a": {"nodes": 2, "attempts": [
            {"kind": "startup_hang", "line": nvcc, "what": "NVCC timeout at startup, then hangs"},
            {"kind": "nccl_hang", "after_steps": 35, "line": nccl, "watchdog": watchdog,
             "what": "35 steps, NCCL error, hangs until the watchdog (exit 1)"},
            {"kind": "success", "what": "trains to the end"}]},
        "run-b": {"nodes": 2, "attempts": [
            {"kind": "startup_error", "line": device, "what": "Unsupported device at startup (exit 1)"},
            {"kind": "silent_hang", "after_steps": 25, "what": "25 steps, then silent until the time limit"},
            {"kind": "success", "what": "trains to the end"}]},
        "run-c": {"nodes": 1, "attempts": [
            {"kind": "startup_error", "line": setup, "what": "Unable to setup node at startup (exit 1)"},
            {"kind": "end_hang", "watchdog": watchdog,
             "what": "final checkpoint, Training completed!, hangs until the watchdog (exit 1)"},
            {"kind": "success", "what": "trains to the end"}]},
        "run-d": {"nodes": 1, "attempts": [
            {"kind": "silent_hang", "after_steps": 12, "what": "12 steps, then silent until the time limit"},
            {"kind": "nccl_hang", "after_steps": 20, "line": nccl, "watchdog": watchdog,
             "what": "20 steps, NCCL error, hangs until the watchdog (exit 1)"},
            {"kind": "end_hang", "watchdog": watchdog,
             "what": "final checkpoint, Training completed!, hangs until the watchdog (exit 1)"},
            {"kind": "success", "what": "trains to the end"}]},
    }


FAKE_AXOLOTL = '''
import json, os, sys, time
from pathlib import Path
import yaml

cfg = yaml.safe_load(Path(sys.argv[2]).read_text())
out = Path(cfg["output_dir"])
out.mkdir(parents=True, exist_ok=True)
plan = json.loads((out.parent / "faults.json").read_text())
job = os.environ["SLURM_JOB_ID"]
marker = out / f".exit-{job}"
if int(os.environ.get("SLURM_NODEID", "0")) != 0:
    # Every other node follows the first: srun --kill-on-bad-exit ends it on a failure, this on success.
    while not marker.exists():
        time.sleep(0.2)
    sys.exit(0)
starts = out.parent / "starts"
starts.mkdir(exist_ok=True)
(starts / job).touch()
index = sum(1 for p in starts.iterdir() if int(p.name) < int(job))
fault = plan["attempts"][index] if index < len(plan["attempts"]) else {"kind": "success"}
c = plan["constants"]

def say(line):
    print(line, flush=True)

def leave(code):
    marker.write_text(str(code))
    sys.exit(code)

def hang():
    while True:
        time.sleep(60)

resume = cfg.get("resume_from_checkpoint")
if not resume and cfg.get("auto_resume_from_checkpoints"):
    done = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    resume = max(done, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)
step = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"] if resume else 0
total = cfg["max_steps"]
say(f"[axolotl] attempt {index + 1} ({fault['kind']}) on {os.environ.get('SLURM_JOB_NODELIST')}, resume from {resume}")
say("[axolotl] loading tokenizer and model")
time.sleep(c["startup_s"] / 2)
if fault["kind"] in ("startup_error", "startup_hang"):
    say(fault["line"])
    if fault["kind"] == "startup_error":
        leave(1)
    hang()
time.sleep(c["startup_s"] / 2)
done_here = 0
while step < total:
    if fault["kind"] in ("nccl_hang", "silent_hang") and done_here == fault["after_steps"]:
        if fault["kind"] == "silent_hang":
            hang()
        say(fault["line"])
        time.sleep(c["watchdog_s"])
        say(fault["watchdog"])
        leave(1)
    time.sleep(c["step_s"])
    step += 1
    done_here += 1
    pct = 100 * step // total
    say(f"{pct:3d}%|{'#' * (pct // 10):<10}| {step}/{total} [00:{step:02d}<00:{total - step:02d},  1.00it/s]")
    if step % 5 == 0:
        say(str({"loss": round(2.0 - step / total, 4), "grad_norm": 0.5, "learning_rate": 1e-05,
                 "epoch": round(step / total, 2)}))
    if step % c["save_steps"] == 0 or step == total:
        ckpt = out / f"checkpoint-{step}"
        ckpt.mkdir(exist_ok=True)
        state = {"global_step": step, "max_steps": total, "epoch": step / total, "log_history": []}
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
say(f"[axolotl] Training completed! Saving pre-trained model to {out}")
if fault["kind"] == "end_hang":
    time.sleep(c["watchdog_s"])
    say(fault["watchdog"])
    leave(1)
leave(0)
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_run(base: Path, plan: dict[str, Any]) -> Path:
    """A run's directory: the fake launcher venv, the axolotl config and the fault plan; returns the config."""
    venv = base / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH={shlex.quote(str(venv / "bin"))}:"$PATH"\n')
    axolotl = venv / "bin" / "axolotl"
    axolotl.write_text(f"#!{sys.executable}\n{FAKE_AXOLOTL}")
    axolotl.chmod(0o755)
    constants = {"startup_s": STARTUP_S, "step_s": STEP_S, "watchdog_s": WATCHDOG_S, "save_steps": SAVE_STEPS}
    (base / "faults.json").write_text(json.dumps({"attempts": plan["attempts"], "constants": constants}))
    config = {"base_model": "./tiny-llama", "output_dir": str(base / "out"),
              "dataset_prepared_path": str(base / "prepared"), "max_steps": MAX_STEPS, "save_steps": SAVE_STEPS,
              "micro_batch_size": 1, "auto_resume_from_checkpoints": True}
    path = base / "axolotl.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Job:
    job_id: str
    state: str = ""
    elapsed_s: int = 0
    nodes: int = 0


@dataclass
class Outcome:
    """One strategy's campaign: every job of every run, and when each run's model was known to be done."""

    jobs: dict[str, list[Job]] = field(default_factory=dict)
    done_at: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def sacct(job_ids: list[str]) -> dict[str, Job]:
    """sacct's allocation lines of the jobs (state, ElapsedRaw, NNodes)."""
    if not job_ids:
        return {}
    done = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", ",".join(job_ids),
                           "--format=JobID,State,ElapsedRaw,NNodes"],
                          capture_output=True, text=True, timeout=60, check=False)
    found = {}
    for line in done.stdout.splitlines():
        job_id, state, elapsed, nodes = line.split("|")
        found[job_id] = Job(job_id, state.split()[0], int(elapsed or 0), int(nodes or 0))
    return found


def settle_sacct(job_ids: list[str], timeout: float = 90.0) -> dict[str, Job]:
    """sacct's figures once every job has a final state there (slurmdbd lags the controller)."""
    deadline = time.monotonic() + timeout
    while True:
        found = sacct(job_ids)
        if all(j in found and found[j].state in ENDED_OK | ENDED_BAD for j in job_ids):
            return found
        if time.monotonic() > deadline:
            return found
        time.sleep(2)


def own_report(home: Path) -> None:
    """The supervisor's own accounting of the same jobs (`supervisor report --json`), scaled: a cross-check."""
    done = subprocess.run([sys.executable, "-m", "supervisor", "--home", str(home), "report", "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        print(f"  supervisor report failed: {done.stderr.strip()}")
        return
    data = json.loads(done.stdout)
    scale = MINUTE_PER_S / 60
    hung = data["detection"]["hung_node_seconds"] * scale
    causes = ", ".join(f"{c['cause']} {c['node_seconds'] * scale:.2f}" for c in data["waste_by_cause"])
    print(f"  supervisor's own report (scaled node-hours): used {data['used_node_seconds'] * scale:.2f}, "
          f"wasted {data['wasted_node_seconds'] * scale:.2f} (hung {hung:.2f}); "
          f"by cause: {causes}")


def supervisor_strategy(root: Path, plans: dict[str, dict[str, Any]], deadline_s: float) -> Outcome:
    home = root / "home"
    sv = Supervisor(home)
    names = {}
    stamp = int(time.time())
    for run, plan in plans.items():
        base = root / run
        config = make_run(base, plan)
        spec = {"name": f"fc-{run}-{stamp}", "backend": "slurm", "workdir": str(base / "work"),
                "axolotl_config": str(config), "venv": str(base / "venv"),
                "stages": [{"name": "train", "kind": "train", "nodes": plan["nodes"], "gpus_per_node": 0,
                            "partition": PARTITION, "time": TIME_LIMIT, "master_port": free_port(),
                            "stall_timeout": STALL_TIMEOUT, "startup_timeout": STARTUP_TIMEOUT,
                            # the default 30s, scaled; max_attempts above the schedule's longest list
                            "retry_backoff": "500ms", "max_attempts": MAX_JOBS_PER_RUN}]}
        path = base / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        names[run] = sv.register(path, "slurm")
    outcome = Outcome(done_at=dict.fromkeys(plans))
    start = time.monotonic()
    try:
        while True:
            sv.tick()
            now = time.monotonic() - start
            for run, name in names.items():
                state = sv.show(name)["state"]
                if outcome.done_at[run] is None and state == "succeeded":
                    outcome.done_at[run] = now
                    print(f"  supervisor  {run}: succeeded at {now:.0f} s", flush=True)
                elif state in ("failed", "cancelled", "paused", "needs_attention") and run not in outcome.notes:
                    outcome.notes[run] = state
                    print(f"  supervisor  {run}: {state} at {now:.0f} s", flush=True)
            if all(outcome.done_at[r] is not None or r in outcome.notes for r in plans) or now > deadline_s:
                break
            time.sleep(POLL_S)
    finally:
        for name in names.values():
            if sv.show(name)["state"] not in ("succeeded", "failed", "cancelled"):
                sv.commands.cancel_run(name)
        sv.tick()
    for run, name in names.items():
        data = sv.show(name)
        attempts = data["stages"][0]["attempts"]
        ids = [a["job_id"] for a in attempts if a.get("job_id")]
        outcome.jobs[run] = [Job(i) for i in ids]
        for a in attempts:
            print(f"  supervisor  {run} attempt {a['number']}: job {a['job_id']} {a['state']}"
                  f" cause={a.get('cause')} outcome={a.get('outcome')}", flush=True)
        for x in data.get("excluded_nodes", []):
            print(f"  supervisor  {run} excluded {x['node']}: {x['reason']}", flush=True)
    return outcome


def requeue_script(base: Path, config: Path, nodes: int, port: int) -> Path:
    """The job a requeue wrapper resubmits unchanged: the same srun launch as the supervisor's train stage."""
    script = base / "train.sbatch"
    venv = base / "venv"
    script.write_text(f"""#!/bin/bash
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --partition={PARTITION}
#SBATCH --time={TIME_LIMIT}
#SBATCH --output={base}/logs/%j.log
set -euo pipefail
source {shlex.quote(str(venv))}/bin/activate
export PYTHONUNBUFFERED=1
cd {shlex.quote(str(base))}
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR="$head_node" MASTER_PORT={port}
srun --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 \\
    axolotl train {shlex.quote(str(config))} --launcher torchrun -- \\
    --nnodes {nodes} --nproc_per_node 1 --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d \\
    --rdzv_endpoint "$head_node:{port}"
""")
    (base / "logs").mkdir(exist_ok=True)
    return script


def sbatch(script: Path, name: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", f"--job-name={name}", str(script)],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip().split(";")[0]


def requeue_strategy(root: Path, plans: dict[str, dict[str, Any]], deadline_s: float) -> Outcome:
    scripts = {}
    for run, plan in plans.items():
        base = root / run
        config = make_run(base, plan)
        scripts[run] = requeue_script(base, config, plan["nodes"], free_port())
    outcome = Outcome(done_at=dict.fromkeys(plans))
    start = time.monotonic()
    for run, script in scripts.items():
        outcome.jobs[run] = [Job(sbatch(script, f"fc-requeue-{run}"))]
    try:
        while True:
            now = time.monotonic() - start
            live = {run: jobs[-1].job_id for run, jobs in outcome.jobs.items() if outcome.done_at[run] is None
                    and run not in outcome.notes}
            if not live or now > deadline_s:
                break
            states = sacct(list(live.values()))
            for run, job_id in live.items():
                state = states[job_id].state if job_id in states else "PENDING"
                if state in ENDED_OK:
                    outcome.done_at[run] = now
                    print(f"  requeue     {run}: job {job_id} COMPLETED at {now:.0f} s", flush=True)
                elif state in ENDED_BAD:
                    if len(outcome.jobs[run]) >= MAX_JOBS_PER_RUN:
                        outcome.notes[run] = f"gave up after {len(outcome.jobs[run])} jobs"
                        continue
                    new = sbatch(scripts[run], f"fc-requeue-{run}")
                    outcome.jobs[run].append(Job(new))
                    print(f"  requeue     {run}: job {job_id} {state} at {now:.0f} s, resubmitted as {new}",
                          flush=True)
            time.sleep(POLL_S)
    finally:
        for run, jobs in outcome.jobs.items():
            if outcome.done_at[run] is None:
                subprocess.run(["scancel", jobs[-1].job_id], check=False, timeout=60)
    return outcome


def measure(outcome: Outcome) -> None:
    """Fill every job's sacct state, ElapsedRaw and NNodes."""
    ids = [j.job_id for jobs in outcome.jobs.values() for j in jobs]
    found = settle_sacct(ids)
    for jobs in outcome.jobs.values():
        for j in jobs:
            if j.job_id in found:
                f = found[j.job_id]
                j.state, j.elapsed_s, j.nodes = f.state, f.elapsed_s, f.nodes


def unsupervised_model(plans: dict[str, dict[str, Any]], requeue: Outcome) -> Outcome:
    """A person looking every CHECK_EVERY_S: the requeue's jobs, attempt by attempt, resubmitted at the next
    look after each ended; a hang after the final checkpoint is taken as the finished model."""
    model = Outcome(done_at=dict.fromkeys(plans))
    for run, plan in plans.items():
        at = 0.0
        model.jobs[run] = []
        for index, job in enumerate(requeue.jobs[run]):
            model.jobs[run].append(Job(f"model-{index + 1}", job.state, job.elapsed_s, job.nodes))
            ended = at + job.elapsed_s
            look = CHECK_EVERY_S * -(-ended // CHECK_EVERY_S)
            kind = plan["attempts"][index]["kind"] if index < len(plan["attempts"]) else "success"
            if job.state in ENDED_OK or kind == "end_hang":
                model.done_at[run] = look
                break
            at = look
    return model


def node_hours(jobs: list[Job]) -> float:
    return sum(j.elapsed_s * j.nodes for j in jobs) * MINUTE_PER_S / 60


def needed_node_hours(plan: dict[str, Any]) -> float:
    """What a faultless attempt takes: startup, every step, nothing else."""
    return float(plan["nodes"]) * (STARTUP_S + MAX_STEPS * STEP_S) * MINUTE_PER_S / 60


def hours(seconds: float | None) -> str:
    return "not finished" if seconds is None else f"{seconds * MINUTE_PER_S / 60:.2f} h"


@dataclass(frozen=True)
class Tally:
    jobs: int
    used: float
    wasted: float
    runs: dict[str, float | None]
    campaign: float | None


def tally(outcome: Outcome, needed: float) -> Tally:
    used = sum(node_hours(j) for j in outcome.jobs.values())
    finished = [f for f in outcome.done_at.values() if f is not None]
    campaign = max(finished) if len(finished) == len(outcome.done_at) else None
    return Tally(sum(len(j) for j in outcome.jobs.values()), used, used - needed, dict(outcome.done_at), campaign)


def ratio(alternative: float | None, supervisor: float | None) -> str:
    return "n/a" if not alternative or not supervisor else f"{alternative / supervisor:.2f}x"


def report(plans: dict[str, dict[str, Any]], results: dict[str, Outcome]) -> None:
    needed = sum(needed_node_hours(p) for p in plans.values())
    rows = {label: tally(outcome, needed) for label, outcome in results.items()}
    runs = list(plans)
    print(f"\nNode-hours a faultless campaign needs: {needed:.2f}\n")
    print("| strategy | jobs | node-hours used | node-hours wasted | " + " | ".join(f"{r} finished" for r in runs)
          + " | campaign finished |")
    print("| --- " * (5 + len(runs)) + "|")
    for label, row in rows.items():
        print(f"| {label} | {row.jobs} | {row.used:.2f} | {row.wasted:.2f} | "
              + " | ".join(hours(row.runs[r]) for r in runs) + f" | {hours(row.campaign)} |")
    sup = rows["supervisor"]
    print("\nThe supervisor against each alternative (alternative / supervisor):\n")
    print("| alternative | node-hours used | node-hours wasted | campaign time |")
    print("| --- | --- | --- | --- |")
    for label, row in rows.items():
        if label != "supervisor":
            print(f"| {label} | {ratio(row.used, sup.used)} | {ratio(row.wasted, sup.wasted)} | "
                  f"{ratio(row.campaign, sup.campaign)} |")
    print("\n" + json.dumps({label: vars(row) for label, row in rows.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--deadline", type=float, default=420.0, help="seconds one strategy may take (default 420)")
    parser.add_argument("--root", type=Path, default=None, help="work directory (default: a fresh temporary one)")
    args = parser.parse_args()
    configure_logging("warning")  # the supervisor's own log lines (stderr) only when something goes wrong
    plans = schedule()
    print("Fault schedule (1 s = 1 min; attempts past a list train to the end):")
    for run, plan in plans.items():
        print(f"  {run} ({plan['nodes']} node(s) per job):")
        for number, attempt in enumerate(plan["attempts"], 1):
            line = f"  [{attempt['line']}]" if "line" in attempt else ""
            print(f"    attempt {number}: {attempt['what']}{line}")
    print(f"Job time limit {TIME_LIMIT} (2 h), watchdog {WATCHDOG_S} s, stall_timeout {STALL_TIMEOUT}, "
          f"startup_timeout {STARTUP_TIMEOUT}, {MAX_STEPS} steps of {STEP_S} s after {STARTUP_S} s of startup, "
          f"checkpoint every {SAVE_STEPS} steps; the person looks every {CHECK_EVERY_S} s")
    print(f"load average before: {os.getloadavg()}", flush=True)
    root = args.root or Path(tempfile.mkdtemp(prefix="fault-campaign-", dir=os.environ.get("TMPDIR", "/tmp")))
    started = time.monotonic()
    print("\n(1) the supervisor", flush=True)
    supervised = supervisor_strategy(root / "supervisor", plans, args.deadline)
    print(f"load average: {os.getloadavg()}\n(2) exit-code requeue", flush=True)
    requeued = requeue_strategy(root / "requeue", plans, args.deadline)
    measure(supervised)
    measure(requeued)
    for label, outcome in (("supervisor", supervised), ("requeue", requeued)):
        for run, jobs in outcome.jobs.items():
            print(f"  {label:<11} {run}: " + ", ".join(f"{j.job_id} {j.state} {j.elapsed_s}s x{j.nodes}"
                                                        for j in jobs))
    own_report(root / "supervisor" / "home")
    modelled = unsupervised_model(plans, requeued)
    report(plans, {"supervisor": supervised, "exit-code requeue": requeued, "no supervision (model)": modelled})
    print(f"\nwall {time.monotonic() - started:.0f} s; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

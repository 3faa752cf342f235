"""End-of-training hang -> merge submitted, on the real SLURM cluster.

    .venv/bin/python bench/hang_to_merge.py [--trials 10] [--concurrency 4] [--stall-timeout 30s] [--poll 30s]

Each trial is a run of two stages, ``train`` (kind train, the real jobs/templates/train.sbatch) and
``merge`` (kind merge). The run's venv holds a fake ``axolotl`` that does what a finished FSDP training does
before the known end-of-training hang: it writes its final complete checkpoint (``checkpoint-N`` with
``trainer_state.json`` at ``global_step == max_steps`` and the DCP ``.metadata``), prints the last metrics and
``Training completed! Saving trained model to out.``, then takes ``$EPOCHREALTIME`` (a bash builtin: no fork
between the last line and the timestamp) and hangs without another byte of output, as a rank stuck in the
final collective does until the NCCL watchdog fires.

One `supervisor daemon` supervises the trials. The hang is found by the train stage's ``stall_timeout`` (no
log output for that long; the final checkpoint makes the stall a ``finish``), on the first full tick after
it (``--poll``): the daemon cancels the job, closes the stage as succeeded and submits the merge in the same
pass. The daemon logs ``job_submitted`` (stage, ISO timestamp, job_id) right after sbatch returned. Latency
= the merge's ``job_submitted`` - the job's timestamp, split at the train job's ``job_cancelled``. Both
clocks are this machine's.

``--watchdog-after 20s`` (with a ``--stall-timeout`` longer than that) has the job print the NCCL watchdog's
line that long into the hang, as the real one does at the collective timeout: the line arrives through
inotify and, the final checkpoint being complete, ``nccl_watchdog_timeout`` becomes ``finish`` at once.

What a person has instead is not measured here but modelled: the job hangs until the NCCL watchdog aborts
the collective (``Timeout(ms)=600000`` in the team's logs: 10 minutes; HF Trainer's default ``ddp_timeout``
is 30 minutes), and, where no watchdog fires, until the job's time limit; then someone has to notice and
submit the merge.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from detect_latency import daemon_events, percentile, stamp  # this directory: run as bench/hang_to_merge.py

from supervisor.app.logsetup import configure_logging
from supervisor.app.service import Supervisor
from supervisor.backends import default_backend
from supervisor.domain.durations import parse_duration

MAX_STEPS = 20

# The fake launcher: one node, so no rendezvous; the final checkpoint, the end-of-training lines, the hang.
AXOLOTL = """#!/bin/bash
set -euo pipefail
sleep {delay}  # jobs start right after a daemon tick: without this every hang would begin in the same phase
ckpt=out/checkpoint-{steps}
mkdir -p "$ckpt/pytorch_model_fsdp_0"
echo m > "$ckpt/pytorch_model_fsdp_0/.metadata"
echo '{{"global_step": {steps}, "max_steps": {steps}, "epoch": 1.0, "log_history": []}}' > "$ckpt/trainer_state.json"
printf ' 100%%|##########| {steps}/{steps} [00:20<00:00,  1.00s/it]\\n'
echo "{{'train_runtime': '20.1', 'train_loss': '1.25', 'epoch': '1.0'}}"
echo "[2025-11-06 11:25:10,069] [INFO] [axolotl.train.save_trained_model:228] [PID:$$] [RANK:0] \\
Training completed! Saving trained model to out."
t=$EPOCHREALTIME
echo "$t" > {stamps}/$SLURM_JOB_ID.tmp && mv {stamps}/$SLURM_JOB_ID.tmp {stamps}/$SLURM_JOB_ID
{watchdog}sleep 1800  # stuck in the final collective: no output until the watchdog would fire
"""

WATCHDOG = (
    "[rank0]:[E1228 15:44:53.523176693 ProcessGroupNCCL.cpp:607] [Rank 0] Watchdog caught collective operation "
    "timeout: WorkNCCL(SeqNum=264290, OpType=_ALLGATHER_BASE, NumelIn=54528000, NumelOut=218112000, "
    "Timeout(ms)=600000) ran for 600018 milliseconds before timing out."
)


def fake_training(root: Path, stamps: Path, watchdog_after: float | None, spread: float) -> tuple[Path, Path]:
    """(venv, axolotl config) of a training that ends in the end-of-training hang; with `watchdog_after`, the
    watchdog's line comes that many seconds into the hang (the real one: the collective timeout)."""
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
    axolotl = venv / "bin" / "axolotl"
    watchdog = "" if watchdog_after is None else f"sleep {watchdog_after:g}\necho '{WATCHDOG}'\n"
    # A uniform delay over `spread` seconds, drawn by each job.
    delay = f'"$((RANDOM % {max(1, min(32767, round(spread * 100)))}))e-2"'
    axolotl.write_text(AXOLOTL.format(steps=MAX_STEPS, stamps=stamps, watchdog=watchdog, delay=delay))
    axolotl.chmod(0o755)
    config = root / "axolotl.yaml"
    config.write_text(yaml.safe_dump({"base_model": "./tiny-llama", "output_dir": "out",
                                      "dataset_prepared_path": "prepared", "max_steps": MAX_STEPS,
                                      "save_steps": 10, "micro_batch_size": 1, "fsdp_version": 2,
                                      "fsdp_config": {"state_dict_type": "SHARDED_STATE_DICT"}}))
    return venv, config


def trial_spec(name: str, base: Path, venv: Path, config: Path, stall_timeout: str) -> dict[str, object]:
    base.mkdir(parents=True)
    shutil.copy(config, base / "axolotl.yaml")
    return {"name": name, "backend": "slurm", "workdir": str(base / "work"),
            "axolotl_config": str(base / "axolotl.yaml"), "venv": str(venv),
            "stages": [
                {"name": "train", "kind": "train", "nodes": 1, "gpus_per_node": 0, "time": "00:40:00",
                 "max_attempts": 1, "retry_backoff": 0, "stall_timeout": stall_timeout},
                {"name": "merge", "kind": "merge", "nodes": 1, "gpus_per_node": 0, "time": "00:05:00",
                 "max_attempts": 1},
            ]}


def measured(events: list[dict[str, object]], stamps: Path) -> dict[str, tuple[float, float, float]]:
    """Per finished trial (run name): (hang -> merge sbatch returned, hang -> train scancel returned,
    scancel returned -> merge sbatch returned), in seconds."""
    train_job: dict[str, str] = {}
    merge_at: dict[str, float] = {}
    for e in events:
        if e.get("event") == "job_submitted":
            if e.get("stage") == "train":
                train_job[str(e["run"])] = str(e["job_id"])
            elif e.get("stage") == "merge":
                merge_at[str(e["run"])] = stamp(e["timestamp"])
    cancelled = {str(e["job_id"]): stamp(e["timestamp"]) for e in events if e.get("event") == "job_cancelled"}
    out = {}
    for run, at in merge_at.items():
        job = train_job.get(run)
        if job is None or not (stamps / job).exists() or job not in cancelled:
            continue
        hung = float((stamps / job).read_text().strip())
        out[run] = (at - hung, cancelled[job] - hung, at - cancelled[job])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4, help="trials running at once")
    parser.add_argument("--stall-timeout", default="30s", help="the train stage's stall_timeout")
    parser.add_argument("--poll", default="30s", help="the daemon's --poll")
    parser.add_argument("--log-poll", default="2s", help="the daemon's --log-poll")
    parser.add_argument("--watchdog-after", help="the job prints the NCCL watchdog line this long into the hang "
                        "(default: never)")
    parser.add_argument("--spread", help="each job waits a random time up to this long before it trains, so that "
                        "hangs begin at any phase of the daemon's ticks (default: --poll)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    if default_backend() != "slurm":
        print("needs SLURM (deploy/slurm-cluster.sh start)", file=sys.stderr)
        return 2
    stall_s = parse_duration(args.stall_timeout)

    root = Path(tempfile.mkdtemp(prefix="hang-to-merge-"))
    home, stamps = root / "home", root / "stamps"
    stamps.mkdir()
    watchdog_s = None if args.watchdog_after is None else parse_duration(args.watchdog_after)
    spread = parse_duration(args.poll) if args.spread is None else parse_duration(args.spread)
    venv, config = fake_training(root, stamps, watchdog_s, spread)
    configure_logging("warning")
    sv = Supervisor(home)

    def register(name: str) -> None:
        # Relative paths in the axolotl config resolve against the spec's directory: one per trial.
        data = trial_spec(name, root / name, venv, config, args.stall_timeout)
        spec = root / name / "run.yaml"
        spec.write_text(yaml.safe_dump(data))
        sv.register(spec, "slurm")

    env = {**os.environ, "SUPERVISOR_HOME": str(home)}
    daemon_log = root / "daemon.log"
    with daemon_log.open("wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "supervisor", "daemon", "--poll", args.poll,
                                   "--log-poll", args.log_poll], env=env, stdout=out, stderr=subprocess.STDOUT)
    load_before = os.getloadavg()[0]
    names: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while "daemon_started" not in daemon_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        done: dict[str, tuple[float, float, float]] = {}
        per_trial = min(stall_s, watchdog_s or stall_s) + 2 * parse_duration(args.poll) + spread + 60
        deadline = time.monotonic() + 120 + per_trial * -(-args.trials // max(1, args.concurrency))
        while len(done) < args.trials:
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out with {len(done)}/{args.trials} trials done; see {daemon_log}")
            done = measured(daemon_events(daemon_log), stamps)
            while len(names) - len(done) < args.concurrency and len(names) < args.trials:
                names.append(f"h{len(names) + 1:03d}")
                register(names[-1])  # submitted on the next full tick: before the job, outside every interval
            time.sleep(0.5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        for name in names:
            subprocess.run([sys.executable, "-m", "supervisor", "cancel", name], env=env, capture_output=True,
                           check=False)
    load_after = os.getloadavg()[0]

    total = [v[0] for v in done.values()]
    detect = [v[1] for v in done.values()]
    submit = [v[2] for v in done.values()]
    slurm = subprocess.run(["sinfo", "-V"], capture_output=True, text=True, check=False).stdout.strip()
    watched = "never" if args.watchdog_after is None else f"after {args.watchdog_after}"
    print(f"{len(total)} trials, train stall_timeout {args.stall_timeout}, watchdog line {watched}, "
          f"daemon --poll {args.poll} --log-poll {args.log_poll}, concurrency {args.concurrency}, "
          f"load average {load_before:.2f} -> {load_after:.2f}, backend slurm ({slurm})")
    for label, values in (("hang began -> merge sbatch returned", total),
                          ("  hang began -> train scancel returned", detect),
                          ("  scancel returned -> merge sbatch returned", submit),
                          ("  beyond the hang's first sign (stall_timeout or watchdog line)",
                           [t - min(stall_s, watchdog_s or stall_s) for t in total])):
        print(f"{label:64s} p50 {statistics.median(values):7.2f} s   p95 {percentile(values, 95):7.2f} s"
              f"   max {max(values):7.2f} s")
    p95 = percentile(total, 95)
    beyond = percentile([t - min(stall_s, watchdog_s or stall_s) for t in total], 95)
    for what, wait_s in (("NCCL watchdog at 10 min (Timeout(ms)=600000)", 600.0),
                         ("NCCL watchdog at HF's default ddp_timeout, 30 min", 1800.0)):
        if watchdog_s is None:
            print(f"model, not measured: {what}, then a person submits the merge: >= {wait_s / 60:.0f} min "
                  f"hung, x{wait_s / p95:.1f} the p95 above")
        else:
            # The watchdog's line came early here; the real one comes at its timeout, and the merge right after.
            print(f"model: {what}: the supervisor submits the merge at {wait_s / 60:.0f} min + {beyond:.2f} s "
                  f"(p95 above); a person: at {wait_s / 60:.0f} min + the job's exit + noticing it")
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

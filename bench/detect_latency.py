"""Detection latency on the real SLURM cluster: a signature line written to a job log -> `scancel` returned.

    .venv/bin/python bench/detect_latency.py [--trials 60] [--concurrency 2] [--poll 30s] [--log-poll 2s]
    .venv/bin/python bench/detect_latency.py --bindfs --poll 30s --log-poll 2s   # no inotify: Lustre-like

One `supervisor daemon` (default --poll 30s, so a reaction can only come that fast through the inotify
wake-up, not the poll) supervises a stream of one-stage runs. Each job waits a second, takes
``$EPOCHREALTIME`` (a bash builtin: no fork between it and the write), prints an NVCC-timeout line and
hangs. The daemon logs ``job_cancelled`` (JSON, ISO timestamp, job_id) right after scancel returned and
``signature`` when it decided; both clocks are this machine's. Latency = job_cancelled - the job's
timestamp; the split at ``signature`` separates detect+decide from record+scancel.

At most ``--concurrency`` runs are active at once so a reaction pass steps a realistic number of runs.
A new run is registered through the library and the daemon is nudged to submit it by creating a file
in the watched log directory (otherwise it would wait for the next poll); that nudge is not part of any
measured interval. A paused "keeper" run sharing the workdir keeps that directory watched throughout.

``--bindfs``: the workdir the supervisor sees is a FUSE ``bindfs`` view of the directory the jobs write
their line into, so no inotify event ever comes (as on Lustre, GPFS or NFS seen from the login node) and
only the ``--log-poll`` cadence can find the line before the next ``--poll``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

from supervisor.app.logsetup import configure_logging
from supervisor.app.service import Supervisor
from supervisor.backends import default_backend

LINE = "[rank0]: RuntimeError: NVCC timeout while compiling fused kernels"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))  # nearest rank
    return ordered[index]


def daemon_events(log: Path) -> list[dict[str, object]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def stamp(value: object) -> float:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def latencies(
    events: list[dict[str, object]], done: dict[str, float], stamps: Path
) -> tuple[list[float], list[float], list[float]]:
    """Per finished trial (ms): line written -> scancel returned, -> decision logged, decision -> scancel."""
    job_of_run = {str(e.get("run")): str(e["job_id"]) for e in events if e.get("event") == "job_submitted"}
    decided = {job_of_run[str(e["run"])]: stamp(e["timestamp"]) for e in events
               if e.get("event") == "signature" and str(e.get("run")) in job_of_run}
    total, detect, act = [], [], []
    for job, at in done.items():
        printed = float((stamps / job).read_text().strip())
        total.append((at - printed) * 1000)
        if job in decided:
            detect.append((decided[job] - printed) * 1000)
            act.append((at - decided[job]) * 1000)
    return total, detect, act


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--poll", default="30s")
    parser.add_argument("--log-poll", default="2s")
    parser.add_argument("--bindfs", action="store_true", help="jobs write under a bindfs view (no inotify)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    if default_backend() != "slurm":
        print("needs SLURM (deploy/slurm-cluster.sh start)", file=sys.stderr)
        return 2

    root = Path(tempfile.mkdtemp(prefix="detect-latency-"))
    home, work = root / "home", root / "work"
    work.mkdir()
    stamps = root / "stamps"
    stamps.mkdir()
    # Where the jobs write their line: the workdir itself, or the directory under the supervisor's bindfs view.
    real = work
    if args.bindfs:
        real = root / "real"
        (real / "logs").mkdir(parents=True)
        subprocess.run(["bindfs", str(real), str(work)], check=True)  # onto an empty directory only
    else:
        (work / "logs").mkdir()
    # The line goes straight into the log file, past the file descriptor Slurm opened (through the view).
    write_line = (f"for f in {real}/logs/*-$SLURM_JOB_ID.log; do printf '%s\\n' '{LINE}' >> \"$f\"; done"
                  if args.bindfs else f"printf '%s\\n' '{LINE}'")
    script = root / "job.sbatch"
    script.write_text(f"""#!/bin/bash
#SBATCH --time=00:10:00
sleep 1
t=$EPOCHREALTIME
{write_line}
echo "$t" > {stamps}/$SLURM_JOB_ID.tmp && mv {stamps}/$SLURM_JOB_ID.tmp {stamps}/$SLURM_JOB_ID
sleep 300
""")
    keeper = root / "keeper.sbatch"
    keeper.write_text("#!/bin/bash\necho keeper\n")

    configure_logging("warning")
    sv = Supervisor(home)

    def register(name: str, path: Path) -> None:
        spec = root / f"{name}.yaml"
        spec.write_text(yaml.safe_dump({"name": name, "backend": "slurm", "workdir": str(work),
                                        "stages": [{"name": "s", "script": str(path), "max_attempts": 1}]}))
        sv.register(spec, "slurm")

    register("keeper", keeper)
    sv.commands.pause("keeper")
    env = {**os.environ, "SUPERVISOR_HOME": str(home)}
    daemon_log = root / "daemon.log"
    with daemon_log.open("wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "supervisor", "daemon", "--poll", args.poll,
                                   "--log-poll", args.log_poll], env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "daemon_started" not in daemon_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # its first pass has put the keeper's log directory under watch
        started = 0
        done: dict[str, float] = {}
        deadline = time.monotonic() + 60 + args.trials * 20
        while len(done) < args.trials:
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out with {len(done)}/{args.trials} trials done; see {daemon_log}")
            cancelled = {str(e["job_id"]): stamp(e["timestamp"]) for e in daemon_events(daemon_log)
                         if e.get("event") == "job_cancelled"}
            done = {job: at for job, at in cancelled.items() if (stamps / job).exists()}
            while started - len(done) < args.concurrency and started < args.trials:
                started += 1
                register(f"t{started:03d}", script)
                (work / "logs" / f".nudge-{started}").touch()
            time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        if args.bindfs:
            subprocess.run(["umount", str(work)], check=False)

    total, detect, act = latencies(daemon_events(daemon_log), done, stamps)
    view = ", jobs writing under a bindfs view (no inotify)" if args.bindfs else ""
    print(f"{len(total)} trials, daemon --poll {args.poll} --log-poll {args.log_poll}{view}, "
          f"concurrency {args.concurrency}, load average {os.getloadavg()[0]:.2f}, "
          f"backend slurm ({subprocess.run(['sinfo', '-V'], capture_output=True, text=True).stdout.strip()})")
    for label, values in (("line written -> scancel returned", total),
                          ("  line written -> decision logged", detect),
                          ("  decision logged -> scancel returned", act)):
        if values:
            print(f"{label:40s} p50 {statistics.median(values):7.1f} ms   p95 {percentile(values, 95):7.1f} ms"
                  f"   max {max(values):7.1f} ms")
    subprocess.run([sys.executable, "-m", "supervisor", "cancel", "keeper"], env=env, capture_output=True)
    if args.keep:
        print(f"kept {root}")
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Scheduler commands per tick with many live runs, on the real SLURM cluster.

    .venv/bin/python bench/scheduler_calls.py [--runs 100] [--ticks 5]

``--runs`` one-stage runs are registered and supervised in-process (``Supervisor(home).tick()``), with
``sbatch``, ``squeue``, ``scontrol``, ``sacct`` and ``scancel`` found first on PATH as wrappers that log
their own name and exec the real command. The first tick submits every job; the following ones are the
steady state, where each tick is counted on its own. The jobs are submitted to start in two hours
(``--begin=now+2hours``: pending, reason BeginTime) so that a hundred of them do not take the one-node
cluster from everyone else; such a job is polled exactly as a queued or running one (a held job would
not do: the supervisor takes a hold for an operator's and pauses the run). Every run is cancelled at the end.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

TOOLS = ("sbatch", "squeue", "scontrol", "sacct", "scancel")


def wrappers(folder: Path, log: Path) -> None:
    folder.mkdir(parents=True)
    for tool in TOOLS:
        real = shutil.which(tool)
        if real is None:
            sys.exit(f"{tool} not found: this needs the SLURM clients")
        script = folder / tool
        script.write_text(f'#!/bin/sh\necho {tool} >> "{log}"\nexec "{real}" "$@"\n')
        script.chmod(0o755)


def counted(log: Path) -> collections.Counter[str]:
    return collections.Counter(log.read_text().split()) if log.exists() else collections.Counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--ticks", type=int, default=5, help="steady-state ticks counted after the first")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="scheduler-calls-"))
    log = work / "calls.log"
    wrappers(work / "bin", log)
    os.environ["PATH"] = f"{work / 'bin'}{os.pathsep}{os.environ['PATH']}"  # before any cluster is made

    from supervisor.app.service import Supervisor

    (work / "specs" / "work").mkdir(parents=True)
    (work / "specs" / "job.sh").write_text("#!/bin/bash\nsleep 900\n")
    sv = Supervisor(work / "home")
    names = [f"calls-{i:03d}" for i in range(args.runs)]
    for name in names:
        spec = work / "specs" / f"{name}.yaml"
        spec.write_text(yaml.safe_dump({"name": name, "backend": "slurm", "workdir": "work", "stages": [
            {"name": "job", "script": "job.sh", "time": "00:20:00", "sbatch_args": ["--begin=now+2hours"],
             "pending_grace": "2h"}]}))
        sv.register(spec, "slurm")

    rows: list[tuple[str, collections.Counter[str], float]] = []
    try:
        for tick in range(args.ticks + 1):
            before = counted(log)
            started = time.perf_counter()
            sv.tick()
            rows.append((("first (submits)" if tick == 0 else f"steady {tick}"), counted(log) - before,
                         time.perf_counter() - started))
        live = sum(1 for r in sv.status() if r["job_id"] and r["state"] in ("running", "pending"))
    finally:
        for name in names:
            sv.commands.cancel_run(name)

    load = os.getloadavg()
    print(f"# {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; {args.runs} runs, {live} with a live job after the last tick")
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    print("tick | " + " | ".join(TOOLS) + " | total | tick s")
    print(" | ".join("---" for _ in range(len(TOOLS) + 3)))
    for label, calls, seconds in rows:
        print(f"{label} | " + " | ".join(str(calls[t]) for t in TOOLS) + f" | {sum(calls.values())} | {seconds:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The daemon's RSS and CPU while it supervises many runs whose logs grow, on the local backend.

    .venv/bin/python bench/daemon_load.py [--runs 100] [--seconds 90] [--poll 30s] [--log-poll 2s]
    .venv/bin/python bench/daemon_load.py --profile /tmp/daemon.prof   # cProfile of each sampled window

One real ``supervisor daemon`` (its own state home, ``--poll`` and ``--log-poll`` as given) is sampled from
``/proc/<pid>`` once a second (CPU: utime + stime over wall time, all of its threads; RSS: ``VmRSS``, in MB
of 10^6 bytes) in three scenarios, one after the other:

1. idle, no runs;
2. idle with ``--runs`` runs: each a one-stage run on the local backend (each in its own workdir, as separate
   experiments are), whose job is running and prints nothing;
3. the same runs, each job appending one line a second to its log: mostly tqdm bars
   (``  5%|#    | 50/1000 [00:10<03:10,  5.00it/s]``), a Trainer metric dict every tenth line and an
   ordinary INFO line every 25th.

The jobs are bash loops that wait with ``read -t`` on a pipe nobody writes (no process started per line),
so a hundred of them cost the machine little besides their local-backend wrappers. Every scenario is
sampled after a warm-up of one ``--poll`` interval plus a few seconds. Every run is cancelled at the end.

``--profile PATH``: the daemon runs under cProfile (its tick, log-cadence and outbox jobs, in whichever
scheduler thread runs them), and the window of each scenario is written to ``PATH.<scenario>``
(``python -m pstats``), with the CPU of each of its threads in ``PATH.<scenario>.threads.txt``. The CPU
figures of such a run include the profiler's own cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

SCENARIOS = ("idle, no runs", "idle, {runs} runs", "{runs} logs, 1 line/s each")
PROFILE_NAMES = ("idle", "runs", "growing")
_PROFILED = "--profiled-daemon"

JOB = r"""#!/bin/bash
# Waits without starting a process: read -t on a pipe that this shell holds both ends of.
exec {nap}<> <(:)
while [ ! -e "$GO" ]; do read -t 1 -u $nap || true; done
bars=('' '#' '##' '###' '####' '#####' '######' '#######' '########' '#########' '##########')
i=0
total=1000
while :; do
  i=$((i + 1))
  n=$((i % total))
  if (( i % 25 == 0 )); then
    printf '[2026-12-02 10:%02d:%02d,%03d] [INFO] [axolotl.callbacks.on_step_end:123] [PID:%d] step %d\n' \
      $((i / 60 % 60)) $((i % 60)) $((RANDOM % 1000)) $$ "$n"
  elif (( i % 10 == 0 )); then
    printf "{'loss': 1.%03d, 'grad_norm': 0.%03d, 'learning_rate': 1.9e-05, 'epoch': 0.%02d}\n" \
      $((RANDOM % 1000)) $((RANDOM % 1000)) $((n / 10 % 100))
  else
    pct=$((n * 100 / total))
    printf '%3d%%|%-10s| %d/%d [%02d:%02d<03:10,  5.00it/s]\n' "$pct" "${bars[pct / 10]}" "$n" "$total" \
      $((i / 60 % 60)) $((i % 60))
  fi
  read -t 1 -u $nap || true
done
"""


@dataclass(frozen=True)
class Sample:
    cpu_percent: float  # of one core
    rss_mean_mb: float
    rss_max_mb: float
    load: tuple[float, float, float]


def cpu_ticks(pid: int) -> int:
    return cpu_ticks_of(Path(f"/proc/{pid}/stat"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def thread_ticks(pid: int) -> dict[int, int]:
    """CPU clock ticks of each of the process's threads."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ticks[int(task.name)] = cpu_ticks_of(task / "stat")
        except OSError:
            continue  # ended meanwhile
    return ticks


def cpu_ticks_of(stat_path: Path) -> int:
    stat = stat_path.read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def sample(pid: int, seconds: float) -> Sample:
    hz = os.sysconf("SC_CLK_TCK")
    rss: list[int] = []
    started, ticks = time.monotonic(), cpu_ticks(pid)
    while time.monotonic() - started < seconds:
        time.sleep(1.0)
        rss.append(rss_bytes(pid))
    wall, used = time.monotonic() - started, cpu_ticks(pid) - ticks
    return Sample(cpu_percent=100.0 * used / hz / wall, rss_mean_mb=sum(rss) / len(rss) / 1e6,
                  rss_max_mb=max(rss) / 1e6, load=os.getloadavg())


def duration_s(value: str) -> float:
    from supervisor.domain.durations import parse_duration

    return parse_duration(value)


def live_jobs(home: Path) -> int:
    """Jobs whose wrapper recorded a start and no end yet."""
    count = 0
    for record in (home / "local-jobs").glob("L*.json"):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        count += data.get("start_time") is not None and data.get("end_time") is None
    return count


def running_runs(home: Path) -> int:
    from supervisor.app.service import Supervisor

    return sum(1 for r in Supervisor(home).status() if r["state"] == "running" and r.get("job_id"))


def wait(what: str, check: object, timeout: float, daemon: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited ({daemon.returncode}) waiting for {what}; see {log}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}; see {log}")
        time.sleep(1.0)


def profiled_sample(daemon: subprocess.Popen[bytes], seconds: float, prefix: str, profile: Path) -> Sample:
    """:func:`sample`, with the profiled daemon's window written to ``prefix`` and its threads' CPU to
    ``prefix.threads.txt``."""
    daemon.send_signal(signal.SIGUSR1)  # profile from here
    before = thread_ticks(daemon.pid)
    found = sample(daemon.pid, seconds)
    spent = {tid: ticks - before.get(tid, 0) for tid, ticks in thread_ticks(daemon.pid).items()}
    Path(f"{prefix}.wanted").touch()
    daemon.send_signal(signal.SIGUSR1)  # write what was profiled since the last signal, and the threads
    deadline = time.monotonic() + 30
    while Path(f"{prefix}.wanted").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    names = json.loads(Path(f"{profile}.threads").read_text())
    hz = os.sysconf("SC_CLK_TCK")
    with Path(f"{prefix}.threads.txt").open("w") as out:
        for tid, ticks in sorted(spent.items(), key=lambda item: -item[1]):
            if ticks:
                print(f"{100 * ticks / hz / seconds:6.2f} % {names.get(str(tid), '?')}", file=out)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=90.0, help="sampled seconds per scenario")
    parser.add_argument("--poll", default="30s")
    parser.add_argument("--log-poll", default="2s")
    parser.add_argument("--shared-workdir", action="store_true", help="one workdir (one log directory) for all")
    parser.add_argument("--profile", type=Path, help="write a cProfile of each sampled window to PATH.<scenario>")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()

    from supervisor.app.logsetup import configure_logging
    from supervisor.app.service import Supervisor

    configure_logging("warning")
    root = Path(tempfile.mkdtemp(prefix="daemon-load-"))
    home, go = root / "home", root / "go"
    job = root / "job.sh"
    job.write_text(JOB)
    job.chmod(0o755)
    env = {**os.environ, "SUPERVISOR_HOME": str(home), "GO": str(go)}
    daemon_args = ["daemon", "--poll", args.poll, "--log-poll", args.log_poll]
    if args.profile is not None:
        argv = [sys.executable, __file__, _PROFILED, str(args.profile), *daemon_args]
    else:
        argv = [sys.executable, "-m", "supervisor", *daemon_args]
    log = root / "daemon.log"
    warmup = duration_s(args.poll) + 5
    names = [f"load-{i:03d}" for i in range(args.runs)]
    results: list[Sample] = []
    with log.open("wb") as out:
        daemon = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def window(index: int) -> Sample:
        time.sleep(warmup)
        if args.profile is None:
            return sample(daemon.pid, args.seconds)
        return profiled_sample(daemon, args.seconds, f"{args.profile}.{PROFILE_NAMES[index]}", args.profile)

    try:
        wait("daemon_started", lambda: "daemon_started" in log.read_text(), 60, daemon, log)
        results.append(window(0))

        sv = Supervisor(home)
        for i, name in enumerate(names):
            workdir = root / ("work" if args.shared_workdir else f"work-{i:03d}")
            spec = root / f"{name}.yaml"
            spec.write_text(yaml.safe_dump({"name": name, "backend": "local", "workdir": str(workdir),
                                            "stages": [{"name": "train", "script": str(job), "max_attempts": 1}]}))
            sv.register(spec, "local")
        wait(f"{args.runs} running jobs", lambda: running_runs(home) == args.runs, 600, daemon, log)
        results.append(window(1))

        go.touch()
        results.append(window(2))
        live = live_jobs(home)
    finally:
        for name in names:
            try:
                Supervisor(home).commands.cancel_run(name)
            except Exception as exc:  # a run not registered yet, or already ended: nothing to cancel
                print(f"cancel {name}: {exc}", file=sys.stderr)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
        deadline = time.monotonic() + 60
        while live_jobs(home) and time.monotonic() < deadline:
            time.sleep(1.0)

    load = os.getloadavg()
    print(f"# {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; {args.runs} runs on the local backend, {live} jobs live in the last scenario; "
          f"{os.cpu_count()} CPUs")
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    print("scenario | CPU % of a core | RSS mean MB | RSS max MB | load average (1 min)")
    print("--- | --- | --- | --- | ---")
    for label, found in zip(SCENARIOS, results, strict=False):
        print(f"{label.format(runs=args.runs)} | {found.cpu_percent:.2f} | {found.rss_mean_mb:.1f} | "
              f"{found.rss_max_mb:.1f} | {found.load[0]:.2f}")
    if args.keep:
        print(f"# kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def profiled_daemon(out: str, daemon_args: list[str]) -> None:
    """``supervisor daemon`` with its scheduled jobs under cProfile, one profiler per thread. SIGUSR1 starts
    a new window; the window that ends is written to ``<out>.<name>`` when ``<out>.<name>.wanted`` exists."""
    import cProfile
    import functools
    import pstats
    import threading
    from collections.abc import Callable
    from typing import Any

    from supervisor.app.daemon import Daemon
    from supervisor.app.service import Supervisor

    guard = threading.Lock()
    window: list[tuple[cProfile.Profile, threading.Lock]] = []
    generation = [0]
    local = threading.local()

    def profiled(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with guard:
                if getattr(local, "generation", -1) != generation[0]:
                    local.generation, local.profile = generation[0], (cProfile.Profile(), threading.Lock())
                    window.append(local.profile)
                prof, lock = local.profile
            with lock:
                prof.enable()
                try:
                    return fn(*args, **kwargs)
                finally:
                    prof.disable()

        return call

    def next_window(_signum: int, _frame: object) -> None:
        with guard:
            ended = list(window)
            window.clear()
            generation[0] += 1
        wanted = [p for p in PROFILE_NAMES if Path(f"{out}.{p}.wanted").exists() and not Path(f"{out}.{p}").exists()]
        if not wanted:
            return
        stats = pstats.Stats()
        for prof, lock in ended:
            with lock:
                stats.add(prof)
        stats.dump_stats(f"{out}.{wanted[0]}")
        Path(f"{out}.threads").write_text(json.dumps({t.native_id: t.name for t in threading.enumerate()}))
        Path(f"{out}.{wanted[0]}.wanted").unlink()

    for cls, name in ((Daemon, "_tick"), (Daemon, "check_logs"), (Supervisor, "flush_outbox")):
        setattr(cls, name, profiled(getattr(cls, name)))
    signal.signal(signal.SIGUSR1, next_window)
    sys.argv = ["supervisor", *daemon_args]
    from supervisor.app.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == _PROFILED:
        profiled_daemon(sys.argv[2], sys.argv[3:])
    else:
        raise SystemExit(main())

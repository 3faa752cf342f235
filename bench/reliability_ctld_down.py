"""Reliability through a controller outage: slurmctld stopped under the real `supervisor daemon`.

    eval "$(deploy/slurm-cluster.sh env)"
    PYTHONPATH=$PWD .venv/bin/python bench/reliability_ctld_down.py [--outage 120] [--runs 6] [--seed N]

Built on bench/reliability_kill.py (its run kinds, webhook receiver and checks are imported): ``--runs``
short two-stage runs (some resubmitting on an NVCC-timeout line, one failing on a CUDA OOM line) are
submitted at once and notify a loopback webhook receiver; one daemon runs throughout and is never
killed. Once a job is under way, slurmctld of this cluster is stopped (``deploy/slurm-cluster.sh
stop-ctld``: its pidfile, its state directory kept) for ``--outage`` seconds and started again
(``start-ctld``, which recovers the saved state). Then the script waits until every run has ended and
the outbox is empty, stops the daemon with SIGTERM and counts as reliability_kill.py does.

PASS (exit 0) when the daemon stayed up through the outage, and there are 0 duplicate jobs, 0 lost
transitions, 0 lost, duplicated or out-of-order notifications, every run ended as its script dictates;
FAIL (exit 1) otherwise. Figures: the outage length, the time from the restart of slurmctld to the
daemon's first successful squeue after it (each SLURM client the daemon runs goes through a shim that
logs its time and exit status), the warnings the daemon logged during the outage, the total wall time.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reliability_kill
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test harness

from reliability_kill import (
    DRAIN_TIMEOUT_S,
    FINISH_TIMEOUT_S,
    KINDS,
    Receiver,
    Sinks,
    cancel_leftovers,
    check,
    cluster_jobs,
    load_average,
    pending_outbox,
    print_outcome,
    print_problems,
    run_spec,
)

from harness import TERMINAL, Harness, slurm_available

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "deploy" / "slurm-cluster.sh"
CLIENTS = ("sbatch", "squeue", "scontrol", "sacct", "scancel")
WARNING = re.compile(r'"level":\s*"(warning|error|critical)"|\[(warning|error|critical)\s*\]', re.IGNORECASE)


def timed_clients(root: Path) -> tuple[dict[str, str], Path]:
    """Shims in front of the SLURM clients that append ``<end epoch> <client> <rc> <start epoch>`` to a log
    per call."""
    shim, log = root / "timedbin", root / "clients.log"
    shim.mkdir()
    for client in CLIENTS:
        real = shutil.which(client)
        if real is None:
            raise SystemExit(f"{client} is not installed")
        (shim / client).write_text(f'#!/bin/bash\nt0=$(date +%s.%N)\n{real} "$@"\nrc=$?\n'
                                   f'echo "$(date +%s.%N) {client} $rc $t0" >> {log}\nexit $rc\n')
        (shim / client).chmod(0o755)
    return {"PATH": f"{shim}:{os.environ.get('PATH', '')}"}, log


def client_calls(log: Path) -> list[tuple[float, str, int]]:
    if not log.exists():
        return []
    calls = []
    for line in log.read_text().splitlines():
        at, client, rc = line.split()[:3]
        calls.append((float(at), client, int(rc)))
    return calls


def cluster(cmd: str) -> None:
    subprocess.run([str(CLUSTER), cmd], check=True, timeout=180)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=120.0, help="seconds slurmctld stays down")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed")
    parser.add_argument("--poll", default="1s", help="the daemon's --poll")
    parser.add_argument("--answer-delay", type=float, default=0.3, help="seconds the webhook receiver takes")
    args = parser.parse_args()
    if not slurm_available():
        print('SLURM is not answering: eval "$(deploy/slurm-cluster.sh env)" first', file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    rng = random.Random(seed)
    print(f"seed {seed}, runs {args.runs}, outage {args.outage:.0f}s, poll {args.poll}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="reliability-ctld-"))
    sinks = Sinks(("webhook",))
    sinks.receiver = Receiver(args.answer_delay).start()
    env, calls_log = timed_clients(root)
    h = Harness(root, env)
    prefix = f"rc{secrets.token_hex(3)}"
    # Every kind once, then random ones: resubmissions are under way when the controller goes.
    order = sorted(KINDS)
    kinds = {f"{prefix}-{i}": order[i] if i < len(order) else rng.choice(order) for i in range(args.runs)}
    window_start = datetime.now(UTC) - timedelta(seconds=5)
    started = time.monotonic()
    ctld_down = False
    stopped_at = restarted_at = answering_at = 0.0
    log_at_stop = log_at_restart = 0
    daemon_up_through = False
    code: int | None = None
    try:
        for name, kind in kinds.items():
            h.submit(run_spec(h, name, kind, sinks.notify_specs()))
        daemon = h.start_daemon(poll=args.poll)
        h.wait_for(lambda: any(c == "sbatch" and rc == 0 for _, c, rc in client_calls(calls_log)), 120,
                   "a first job submitted")
        time.sleep(2)
        log_at_stop = h.daemon_log.stat().st_size
        cluster("stop-ctld")
        ctld_down, stopped_at = True, time.time()
        print(f"slurmctld stopped at {datetime.now(UTC):%H:%M:%S}; runs: "
              f"{Counter(r['state'] for r in h.status())}", flush=True)
        while time.time() - stopped_at < args.outage:
            if daemon.poll() is not None:
                break
            time.sleep(1)
        daemon_up_through = daemon.poll() is None
        log_at_restart = h.daemon_log.stat().st_size
        outage = time.time() - stopped_at
        restarted_at = time.time()
        cluster("start-ctld")  # returns once slurmctld answers
        ctld_down, answering_at = False, time.time()
        print(f"slurmctld started at {datetime.now(UTC):%H:%M:%S} after {outage:.0f}s; daemon "
              f"{'up' if daemon_up_through else 'DOWN'}", flush=True)
        h.wait_for(lambda: all(r["state"] in TERMINAL for r in h.status()), FINISH_TIMEOUT_S, "every run to end")
        h.wait_for(lambda: pending_outbox(h.home) == 0, DRAIN_TIMEOUT_S, "the outbox to drain")
        code = h.stop_daemon()
        wall = time.monotonic() - started
        found = check(h.home, kinds, cluster_jobs(prefix, window_start), sinks, [])
    finally:
        if ctld_down:
            cluster("start-ctld")
        h.close()
        sinks.stop()
        cancel_leftovers(prefix, window_start)

    calls = client_calls(calls_log)
    during = [c for c in calls if stopped_at <= c[0] < restarted_at]
    first_ok = next((at for at, c, rc in calls if at >= restarted_at and c == "squeue" and rc == 0), None)
    log_bytes = h.daemon_log.read_bytes()
    outage_lines = log_bytes[log_at_stop:log_at_restart].decode(errors="replace").splitlines()
    warnings = [line for line in outage_lines if WARNING.search(line)]
    by_event = Counter(m.group(1) for line in warnings if (m := re.search(r'"event":\s*"([^"]+)"', line)))
    print()
    print(f"outage              {outage:.0f}s (slurmctld stopped, state dir kept)")
    print(f"first poll after    {f'{first_ok - restarted_at:.1f}s' if first_ok else 'none'} from start-ctld run to "
          f"the end of the daemon's first successful squeue ({answering_at - restarted_at:.1f}s until "
          "slurmctld answered start-ctld's check)")
    print(f"client calls down   {len(during)} ({sum(rc != 0 for _, _, rc in during)} failed; "
          f"{', '.join(f'{k} {v}' for k, v in Counter(c for _, c, _ in during).most_common())})")
    print(f"warnings in outage  {len(warnings)} daemon log lines at warning or above "
          f"({', '.join(f'{k} {v}' for k, v in by_event.most_common()) or '-'})")
    print(f"daemon              {'stayed up' if daemon_up_through else 'DIED'} through the outage; exited {code}")
    print_outcome(kinds, found, sinks)
    print(f"wall time           {wall:.0f}s")
    print(f"load average        {load_average()}")
    print()
    ok = print_problems({**found.problems,
                         "daemon died in the outage": [] if daemon_up_through else ["not running after the outage"],
                         "daemon exit": [] if code == 0 else [f"exit code {code}"]}, root)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

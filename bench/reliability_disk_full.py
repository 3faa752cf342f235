"""Reliability on a full disk: the state directory on a small tmpfs, filled while the real `supervisor daemon` works.

    eval "$(deploy/slurm-cluster.sh env)"
    PYTHONPATH=$PWD .venv/bin/python bench/reliability_disk_full.py [--full 60] [--runs 6] [--size 64m]

Needs root (it mounts a tmpfs of ``--size`` as the state directory; job logs and workdirs stay on the
normal disk, as on a cluster where $HOME fills up but the scratch filesystem does not). Built on
bench/reliability_kill.py: ``--runs`` short two-stage runs of its kinds (some resubmitting on an
NVCC-timeout line, one failing on a CUDA OOM line) notify a loopback webhook receiver; one daemon runs
throughout and is never killed. Once a job is under way the tmpfs is filled to the last byte for
``--full`` seconds; meanwhile `supervisor status` is asked (a read must still answer) and `supervisor
pause` (a write must fail with one line naming the state directory, exit 1). Then the filler is removed
and the script waits until every run has ended and the outbox is empty, stops the daemon with SIGTERM
and counts as reliability_kill.py does.

PASS (exit 0) when the daemon stayed up, said `disk full at <state dir>` while the disk was full, the
read answered and the write failed with that one line, and there are 0 duplicate jobs, 0 lost
transitions, 0 lost, duplicated or out-of-order notifications, every run ended as its script dictates;
FAIL (exit 1) otherwise. A notification delivered while the disk was full cannot be recorded as delivered:
it is sent again, with the same id, once there is space (counted as a resend, as after a kill).
Figures: the daemon's disk-full and warning lines while the disk was full, the time from freeing the
space to the first pass that wrote again (the next event recorded), the time until every run had
ended, the wall time.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
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


def fill(mount: Path) -> None:
    """Write until the filesystem refuses; what is left is less than one block."""
    for name, block in (("filler", 1 << 16), ("filler-tail", 1)):
        with (mount / name).open("wb", buffering=0) as out:
            try:
                while True:
                    out.write(b"\0" * block)
            except OSError:
                pass


def events_recorded(h: Harness) -> int:
    """How many events the runs have, as `status --json` counts them (a read: it works on a full disk)."""
    return sum(len(h.show(r["name"])["events"]) for r in h.status())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", type=float, default=60.0, help="seconds the state directory stays full")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--size", default="64m", help="the tmpfs's size")
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed")
    parser.add_argument("--poll", default="1s", help="the daemon's --poll")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("mounting a tmpfs needs root", file=sys.stderr)
        return 2
    if not slurm_available():
        print('SLURM is not answering: eval "$(deploy/slurm-cluster.sh env)" first', file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    rng = random.Random(seed)
    print(f"seed {seed}, runs {args.runs}, full {args.full:.0f}s, tmpfs {args.size}, poll {args.poll}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="reliability-disk-"))
    h = Harness(root)
    h.home.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size}", "tmpfs", str(h.home)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        print(f"cannot mount a tmpfs at {h.home}: {mounted.stderr.strip()}", file=sys.stderr)
        return 2
    sinks = Sinks(("webhook",))
    sinks.receiver = Receiver(0.3).start()
    prefix = f"df{secrets.token_hex(3)}"
    order = sorted(KINDS)
    kinds = {f"{prefix}-{i}": order[i] if i < len(order) else rng.choice(order) for i in range(args.runs)}
    window_start = datetime.now(UTC) - timedelta(seconds=5)
    started = time.monotonic()
    daemon_up_through = False
    code: int | None = None
    problems: dict[str, list[str]] = {}
    try:
        for name, kind in kinds.items():
            h.submit(run_spec(h, name, kind, sinks.notify_specs()))
        daemon = h.start_daemon(poll=args.poll)
        h.wait_for(lambda: any(a.get("job_id") for r in h.status() for a in h.attempts(r["name"], "prep")), 120,
                   "a first job submitted")
        time.sleep(2)
        log_at_full = h.daemon_log.stat().st_size
        before = events_recorded(h)
        fill(h.home)
        full_at = time.time()
        print(f"state directory full at {datetime.now(UTC):%H:%M:%S}; runs: "
              f"{Counter(r['state'] for r in h.status())}", flush=True)
        read = h.cli("status", "--json", check=False)
        live = [r["name"] for r in h.status() if r["state"] in ("pending", "running")] or list(kinds)
        write = h.cli("pause", live[0], check=False)
        while time.time() - full_at < args.full and daemon.poll() is None:
            time.sleep(1)
        daemon_up_through = daemon.poll() is None
        log_at_free = h.daemon_log.stat().st_size
        for filler in h.home.glob("filler*"):
            filler.unlink()
        freed_at = time.time()
        print(f"space back at {datetime.now(UTC):%H:%M:%S} after {freed_at - full_at:.0f}s; daemon "
              f"{'up' if daemon_up_through else 'DOWN'}", flush=True)
        h.wait_for(lambda: events_recorded(h) > before, 120, "a pass to record an event again")
        writing_again = time.time() - freed_at
        h.wait_for(lambda: all(r["state"] in TERMINAL for r in h.status()), FINISH_TIMEOUT_S, "every run to end")
        all_ended = time.time() - freed_at
        h.wait_for(lambda: pending_outbox(h.home) == 0, DRAIN_TIMEOUT_S, "the outbox to drain")
        code = h.stop_daemon()
        wall = time.monotonic() - started
        # A delivery made while the disk was full could not be recorded: like one cut short by a kill, it is
        # sent again (with the same id, which the receiver deduplicates) once the space is back.
        found = check(h.home, kinds, cluster_jobs(prefix, window_start), sinks, [freed_at])
    finally:
        h.close()
        sinks.stop()
        cancel_leftovers(prefix, window_start)
        subprocess.run(["umount", "-l", str(h.home)], capture_output=True, check=False)

    full_lines = h.daemon_log.read_bytes()[log_at_full:log_at_free].decode(errors="replace").splitlines()
    said = [line for line in full_lines if f"disk full at {h.home}" in line]
    warnings = [line for line in full_lines if '"warning"' in line or "[warning" in line]
    expected_write = [f"error: disk full at {h.home}"]
    problems["daemon did not say disk full"] = [] if said else ["no 'disk full at' line while the disk was full"]
    problems["read failed on full disk"] = [] if read.code == 0 else [f"status exited {read.code}: {read.err}"]
    problems["write not one clear line"] = [] if (write.code, write.err.strip().splitlines()) == (1, expected_write) \
        else [f"pause exited {write.code}: {write.err.strip()!r}"]
    print()
    print(f"full                {args.full:.0f}s (tmpfs {args.size} filled to the last byte)")
    print(f"daemon said         {len(said)} 'disk full at {h.home}' lines, {len(warnings)} warning lines in all")
    print(f"read / write        status exit {read.code}; pause exit {write.code}: {write.err.strip()!r}")
    print(f"writing again       {writing_again:.1f}s after the space was back (the next event recorded)")
    print(f"every run ended     {all_ended:.0f}s after the space was back")
    print_outcome(kinds, found, sinks)
    print(f"wall time           {wall:.0f}s")
    print(f"load average        {load_average()}")
    print()
    ok = print_problems({**found.problems, **problems,
                         "daemon died on full disk": [] if daemon_up_through else ["not running after it"],
                         "daemon exit": [] if code == 0 else [f"exit code {code}"]}, root, width=32)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Reliability with the notification endpoint down: the Matrix homeserver unreachable for ``--outage`` seconds.

    eval "$(deploy/slurm-cluster.sh env)"
    PYTHONPATH=$PWD .venv/bin/python bench/reliability_endpoint_down.py [--outage 300] [--runs 6]
        [--concurrency 2] [--seed N] [--answer-delay 0.3] [--synapse-venv DIR]

Built on bench/reliability_kill.py (its runs, relay, room read-back and checks are reused): one real
`supervisor daemon` throughout (no kills) on the real SLURM cluster supervises ``--runs`` short
two-stage runs, at most ``--concurrency`` active, each notifying one room on a real Synapse
(tests/synapse_server.py) through the loopback relay. Once a first message has reached the room, the
relay closes every connection without an answer for ``--outage`` seconds (the daemon sees the
homeserver drop it, as when it is down), then forwards again. Runs keep being submitted during the
outage. The script waits until every run has ended and the outbox is empty (the outbox's retry delay
doubles from 30 s, so the first try after the outage may come minutes later), stops the daemon, then
reads the room back.

PASS (exit 0) when reliability_kill's checks all find nothing (every notification in the room
exactly once, in order and in thread per run, no duplicate job, no lost transition), at least one
event was recorded during the outage (supervision did not stall behind the dead endpoint), the outbox
has no pending or failed entry at the end, and the Matrix access token appears in no daemon log line.
FAIL (exit 1) otherwise.

Figures: outbox entries queued during the outage, seconds from the endpoint back to the outbox
drained of everything queued before it came back, delivery attempts refused, events during the
outage (by kind), wall time.
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reliability_kill as rk
from sqlalchemy import select

from supervisor.store.db import open_database
from supervisor.store.models import Event, OutboxEntry

from harness import TERMINAL, Harness, slurm_available
from synapse_server import DEFAULT_VENV

FINISH_TIMEOUT_S = 900.0
DRAIN_TIMEOUT_S = 900.0


class Gate:
    """While down, the relay drops each request unanswered (the daemon's connection is closed)."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.refused: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._forward = rk.forward

    def install(self) -> None:
        gate = self

        def gated(target: SplitResult, method: str, path: str, body: bytes,
                  headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
            if gate.down.is_set():
                with gate._lock:
                    gate.refused["sends" if rk.SEND_PATH in path else "other requests"] += 1
                # The relay's handler (the caller) drops an OSError unanswered; closing its connection
                # makes the daemon see the homeserver hang up at once rather than wait for its timeout.
                sys._getframe(1).f_locals["self"].close_connection = True
                raise ConnectionRefusedError("endpoint down")
            return gate._forward(target, method, path, body, headers)

        rk.forward = gated


def submit(c: rk.Campaign, kinds: list[str]) -> None:
    name = f"{c.prefix}-{len(c.kinds)}"
    c.kinds[name] = kinds[len(c.kinds) % len(kinds)]
    c.h.submit(rk.run_spec(c.h, name, c.kinds[name], c.sinks.notify_specs()))


def top_up(c: rk.Campaign, runs: int, concurrency: int, kinds: list[str]) -> None:
    live = sum(r["state"] not in TERMINAL for r in c.h.status())
    while live < concurrency and len(c.kinds) < runs:
        submit(c, kinds)
        live += 1


def outbox(home: Path) -> list[OutboxEntry]:
    with open_database(home)() as s:
        entries = list(s.scalars(select(OutboxEntry)))
        s.expunge_all()
    return entries


def events_between(home: Path, start: datetime, end: datetime) -> list[Event]:
    with open_database(home)() as s:
        found = list(s.scalars(select(Event).where(Event.at >= start, Event.at <= end)))
        s.expunge_all()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=300.0, help="seconds the endpoint is down")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=2, help="active runs at most")
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed (the run kinds)")
    parser.add_argument("--poll", default="1s", help="the daemon's --poll")
    parser.add_argument("--answer-delay", type=float, default=0.3, help="seconds the relay holds Synapse's answer")
    parser.add_argument("--synapse-venv", type=Path, default=DEFAULT_VENV)
    args = parser.parse_args()
    if not slurm_available():
        print('SLURM is not answering: eval "$(deploy/slurm-cluster.sh env)" first', file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    rng = random.Random(seed)
    kinds = sorted(rk.KINDS)
    rng.shuffle(kinds)
    print(f"seed {seed}, outage {args.outage:.0f}s, runs {args.runs}, concurrency {args.concurrency}, "
          f"poll {args.poll}, kinds in turn {kinds}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="reliability-endpoint-down-"))
    gate = Gate()
    gate.install()
    sinks = rk.start_sinks("matrix", args.answer_delay, root, args.synapse_venv)
    c = rk.Campaign(Harness(root, {rk.MATRIX_TOKEN_ENV: sinks.token}), sinks, rng, f"ed{secrets.token_hex(3)}")
    window_start = datetime.now(UTC) - timedelta(seconds=5)
    started = time.monotonic()
    relay = sinks.relay
    if relay is None:
        raise SystemExit("no relay in front of Synapse")
    try:
        c.h.start_daemon(poll=args.poll)
        top_up(c, args.runs, args.concurrency, kinds)
        c.h.wait_for(lambda: any(e["status"] == 200 for e in relay.log), 300, "a first message in the room")
        down_at, down_mono = datetime.now(UTC), time.monotonic()
        gate.down.set()
        print(f"endpoint down at {time.monotonic() - started:.0f}s ({sinks.so_far()} delivered)", flush=True)
        while time.monotonic() - down_mono < args.outage:
            top_up(c, args.runs, args.concurrency, kinds)
            time.sleep(1.0)
        gate.down.clear()
        up_at, up_mono = datetime.now(UTC), time.monotonic()
        print(f"endpoint up at {up_mono - started:.0f}s; refused {dict(gate.refused)}", flush=True)
        queued_before_up = {e.id for e in outbox(c.h.home) if e.created_at <= up_at}
        drained_after: float | None = None
        deadline = up_mono + FINISH_TIMEOUT_S
        while time.monotonic() < deadline:
            top_up(c, args.runs, args.concurrency, kinds)
            entries = outbox(c.h.home)
            if drained_after is None and not any(e.state == "pending" for e in entries if e.id in queued_before_up):
                drained_after = time.monotonic() - up_mono
                print(f"outbox queued before the endpoint came back drained {drained_after:.0f}s after", flush=True)
            if len(c.kinds) >= args.runs and all(r["state"] in TERMINAL for r in c.h.status()) \
                    and not any(e.state == "pending" for e in entries):
                break
            time.sleep(2.0)
        code = c.h.stop_daemon()
        wall = time.monotonic() - started
        entries = outbox(c.h.home)
        during = events_between(c.h.home, down_at, up_at)
        found = rk.check(c.h.home, c.kinds, rk.cluster_jobs(c.prefix, window_start), sinks, [])
        log_lines = c.h.daemon_log.read_text(errors="replace").splitlines()
    finally:
        c.h.close()
        sinks.stop()
        rk.cancel_leftovers(c.prefix, window_start)
    return 0 if report(c, found, entries, during, gate, drained_after, log_lines, wall, code,
                       down_at, up_at, args.outage) else 1


def report(c: rk.Campaign, found: rk.Findings, entries: list[OutboxEntry], during: list[Event], gate: Gate,
           drained_after: float | None, log_lines: list[str], wall: float, code: int | None,
           down_at: datetime, up_at: datetime, outage: float) -> bool:
    f = found.figures
    queued = [e for e in entries if down_at <= e.created_at <= up_at]
    left = Counter(e.state for e in entries if e.state != "delivered")
    leaks = [line for line in log_lines if c.sinks.token and c.sinks.token in line]
    retries = sum('"notify.retry"' in line for line in log_lines)
    by_kind = Counter(c.kinds.values())
    print()
    print(f"runs                     {len(c.kinds)} ({', '.join(f'{k} {by_kind[k]}' for k in sorted(by_kind))})")
    print(f"outage                   {outage:.0f}s")
    kinds = ", ".join(f"{k} {v}" for k, v in Counter(e.kind for e in during).most_common())
    print(f"events during outage     {len(during)} ({kinds})")
    print(f"outbox queued in outage  {len(queued)} of {len(entries)} entries")
    print(f"attempts refused         {gate.refused['sends']} sends, {gate.refused['other requests']} other requests; "
          f"{retries} notify.retry log lines")
    print(f"endpoint up -> drained   {'never' if drained_after is None else f'{drained_after:.0f}s'}")
    print(f"room                     {f['room messages']} messages; {f['matrix PUTs']} PUTs reached Synapse for "
          f"{f['matrix txnIds']} txnIds ({f['same-txnId resends']} same-txnId resends)")
    print(f"events                   {f['events']} ({f['notifying events']} of notifying kinds); jobs {f['jobs']}")
    print(f"wall time                {wall:.0f}s; daemon exited {code}")
    print(f"load average             {rk.load_average()}")
    print()
    extra: dict[str, list[Any]] = {
        "no transition during the outage": [] if during else ["0 events recorded between down and up"],
        "outbox not empty at the end": [f"{k} {v}" for k, v in left.items()],
        "access token in the daemon log": [line[:160] for line in leaks],
        "daemon exit": [] if code == 0 else [f"exit code {code}"],
    }
    return rk.print_problems({**found.problems, **extra}, c.h.root, width=34)


if __name__ == "__main__":
    sys.exit(main())

"""Reliability under fire: the real `supervisor daemon` SIGKILLed at random moments on the real SLURM cluster.

    eval "$(deploy/slurm-cluster.sh env)"
    PYTHONPATH=$PWD .venv/bin/python bench/reliability_kill.py [--kills 50] [--seed N] [--concurrency 4]

A campaign of short two-stage runs keeps the daemon busy: each run's first stage succeeds at once; its
second stage, by the run's kind, succeeds (``ok``), fails once or twice by printing an NVCC-timeout
line (a `resubmit` signature) before succeeding (``resub1``, ``resub2``), or prints a CUDA OOM line (a
`fail` signature) and the run fails (``fail``). Every run notifies through the `webhook` channel to a
loopback HTTP receiver this script runs. While the kills go on, at most ``--concurrency`` runs are
active; the script tops them up before each restart, so submissions, resubmissions and deliveries are
under way whenever a kill lands. Each kill: start the daemon, wait a seeded random delay, SIGKILL it.
After the last kill one daemon runs until every run has ended and the outbox is empty, then gets SIGTERM.

Then it counts, and each must be 0 (exit 0 when all are, 1 otherwise):

- duplicate jobs: two SLURM jobs for one attempt. A job's name is the attempt's tag; sacct over the
  test's window (and squeue, for jobs sacct has not yet written) lists every job of ours.
  Also counted: a job of ours for no attempt the database knows.
- lost transitions: an attempt not in a final state, a run whose end or attempt history is not what its
  script dictates, a stage whose attempt has not exactly one `submitted` event, a run whose events are
  out of order (ids and times) or whose last event is not its single terminal one.
- lost notifications: an event of a notifying kind that no document accepted by the receiver lists.
- duplicated notifications: an event listed by two documents with different ``id``s, which a receiver
  deduplicating on ``id`` / ``Idempotency-Key`` (docs/webhook-schema.md) would show twice. A document
  accepted again with the same ``id`` (a daemon killed after the answer, before recording it) is what
  the at-least-once contract allows; it is printed as ``redelivered (same id)``, not counted.

The seed is printed; ``--seed`` replays the kill schedule and the run kinds (the cluster's timing varies).
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test harness: the real CLI and daemon as subprocesses

from sqlalchemy import select  # noqa: E402  (after the path set-up above)

from harness import TERMINAL, Harness, slurm_available  # noqa: E402
from notify_fixtures import LoopbackReceiver  # noqa: E402
from supervisor.store.db import open_database  # noqa: E402
from supervisor.store.models import Attempt, Event, OutboxEntry, Run, Stage  # noqa: E402

NOTIFY_ON = ["crashed", "resubmitted", "stage_succeeded", "succeeded", "failed", "retries_exhausted"]
NVCC = "[rank0]: RuntimeError: NVCC timeout while compiling fused kernels"
OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."
# Run kind -> (attempts of the second stage that fail first, the run's end).
KINDS: dict[str, tuple[int, str]] = {"ok": (0, "succeeded"), "resub1": (1, "succeeded"),
                                     "resub2": (2, "succeeded"), "fail": (1, "failed")}
MIN_DELAY_S, MAX_DELAY_S = 0.5, 4.0
FINISH_TIMEOUT_S = 600.0
DRAIN_TIMEOUT_S = 300.0


def stage_script(h: Harness, name: str, kind: str) -> Path:
    failures, _ = KINDS[kind]
    line = OOM if kind == "fail" else NVCC
    fail = (f'if [ "$SUPERVISOR_ATTEMPT" -le {failures} ]; then printf "%s\\n" "{line}"; sleep 1; exit 1; fi\n'
            if failures else "")
    return h.script(f"{name}.sbatch", f"""
#SBATCH --time=00:05:00
echo "attempt $SUPERVISOR_ATTEMPT of $SUPERVISOR_TAG on $(hostname -s)"
sleep 1
{fail}echo done
""")


def run_spec(h: Harness, name: str, kind: str, hook: str) -> dict[str, Any]:
    prep = h.script(f"{name}-prep.sbatch", "#SBATCH --time=00:05:00\necho prepared\n")
    return {"name": name, "backend": "slurm", "workdir": str(h.root / "w" / name),
            "stages": [{"name": "prep", "script": str(prep)},
                       {"name": "train", "script": str(stage_script(h, f"{name}-train", kind)),
                        "max_attempts": 3, "retry_backoff": "1s"}],
            "notify": [{"webhook": {"url": hook}, "on": NOTIFY_ON}]}


def cluster_jobs(prefix: str, since: datetime) -> dict[str, set[str]]:
    """Job name (= attempt tag) -> job ids, from sacct over the window and squeue for the newest."""
    jobs: dict[str, set[str]] = {}
    start = since.astimezone().strftime("%Y-%m-%dT%H:%M:%S")
    sacct = subprocess.run(["sacct", "-X", "-n", "-P", "-S", start, "--format=JobName%200,JobID"],
                           capture_output=True, text=True, check=True, timeout=60).stdout
    squeue = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%j|%i"],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    for line in (sacct + squeue).splitlines():
        name, _, job_id = line.partition("|")
        if name.startswith(prefix):
            jobs.setdefault(name.strip(), set()).add(job_id.strip())
    return jobs


def active(h: Harness) -> list[str]:
    return [r["name"] for r in h.status() if r["state"] not in TERMINAL]


def pending_outbox(home: Path) -> int:
    with open_database(home)() as s:
        return len(s.scalars(select(OutboxEntry.id).where(OutboxEntry.state == "pending")).all())


def check(home: Path, kinds: dict[str, str], jobs: dict[str, set[str]],
          accepted: list[dict[str, Any]]) -> tuple[dict[str, list[str]], dict[str, int]]:
    problems: dict[str, list[str]] = {"duplicate jobs": [], "lost transitions": [],
                                      "lost notifications": [], "duplicated notifications": []}
    figures: Counter[str] = Counter()
    listed: dict[int, set[str]] = {}  # event id -> the ids of accepted documents listing it
    for doc in accepted:
        for e in doc["events"]:
            listed.setdefault(int(e["id"]), set()).add(doc["id"])
    figures["redelivered (same id)"] = len(accepted) - len({d["id"] for d in accepted})
    tags: set[str] = set()
    with open_database(home)() as s:
        for run in s.scalars(select(Run).where(Run.name.in_(kinds))):
            failures, end = KINDS[kinds[run.name]]
            lost = problems["lost transitions"]
            if run.state != end:
                lost.append(f"{run.name} ({kinds[run.name]}): {run.state}, expected {end}")
            events = list(s.scalars(select(Event).where(Event.run_id == run.id).order_by(Event.id)))
            figures["events"] += len(events)
            if any(b.at < a.at for a, b in zip(events, events[1:], strict=False)):
                lost.append(f"{run.name}: event times out of order")
            ends = [e for e in events if e.kind in TERMINAL]
            if len(ends) != 1 or events[-1] is not ends[0]:
                lost.append(f"{run.name}: terminal events {[e.kind for e in ends]}, last {events[-1].kind}")
            submitted = Counter((e.stage, e.attempt) for e in events if e.kind == "submitted")
            for stage in s.scalars(select(Stage).where(Stage.run_id == run.id).order_by(Stage.position)):
                attempts = sorted(stage.attempts, key=lambda a: a.number)
                figures["attempts"] += len(attempts)
                planned = 1 + failures if stage.name == "train" and end == "succeeded" else 1
                if [a.number for a in attempts] != list(range(1, planned + 1)):
                    lost.append(f"{run.name}/{stage.name}: attempts {[a.number for a in attempts]}")
                for a in attempts:
                    tags.add(a.tag)
                    if a.state not in ("succeeded", "failed", "cancelled"):
                        lost.append(f"{run.name}/{stage.name}#{a.number}: attempt left {a.state}")
                    if submitted[(stage.name, a.number)] != 1:
                        lost.append(f"{run.name}/{stage.name}#{a.number}: "
                                    f"{submitted[(stage.name, a.number)]} submitted events")
                    ids = jobs.get(a.tag, set())
                    if len(ids) > 1:
                        problems["duplicate jobs"].append(f"{a.tag}: jobs {sorted(ids)} (recorded {a.job_id})")
                    elif ids and a.job_id not in ids:
                        problems["duplicate jobs"].append(f"{a.tag}: job {sorted(ids)} but recorded {a.job_id}")
            for e in events:
                if e.kind not in NOTIFY_ON:
                    continue
                figures["notifying events"] += 1
                docs = listed.get(e.id, set())
                if not docs:
                    problems["lost notifications"].append(f"{run.name}: event {e.id} {e.kind} {e.stage}#{e.attempt}")
                elif len(docs) > 1:
                    problems["duplicated notifications"].append(f"{run.name}: event {e.id} {e.kind} in {sorted(docs)}")
        figures["outbox entries"] = len(s.scalars(select(OutboxEntry.id)).all())
    for tag in sorted(set(jobs) - tags):
        problems["duplicate jobs"].append(f"{tag}: jobs {sorted(jobs[tag])} for no recorded attempt")
    figures["jobs"] = sum(len(ids) for ids in jobs.values())
    return problems, dict(figures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed")
    parser.add_argument("--concurrency", type=int, default=4, help="active runs while the kills go on")
    parser.add_argument("--poll", default="1s", help="the daemon's --poll")
    args = parser.parse_args()
    if not slurm_available():
        print('SLURM is not answering: eval "$(deploy/slurm-cluster.sh env)" first', file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    rng = random.Random(seed)
    print(f"seed {seed} (replay: --seed {seed}), kills {args.kills}, concurrency {args.concurrency}, "
          f"poll {args.poll}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="reliability-kill-"))
    h = Harness(root)
    receiver = LoopbackReceiver().start()
    prefix = f"rk{secrets.token_hex(3)}"
    kinds: dict[str, str] = {}
    # sacct's -S has a one-second resolution and the cluster clock is this machine's: a margin suffices.
    window_start = datetime.now(UTC) - timedelta(seconds=5)
    started = time.monotonic()
    try:
        for i in range(args.kills):
            live = active(h)
            while len(live) < args.concurrency:
                name = f"{prefix}-{len(kinds)}"
                kinds[name] = rng.choice(sorted(KINDS))
                h.submit(run_spec(h, name, kinds[name], receiver.url + "/hook"))
                live.append(name)
            daemon = h.start_daemon(poll=args.poll)
            delay = rng.uniform(MIN_DELAY_S, MAX_DELAY_S)
            time.sleep(delay)
            daemon.kill()
            daemon.wait()
            h.daemon = None
            print(f"kill {i + 1:3d}/{args.kills}: after {delay:.2f}s, {len(live)} active, "
                  f"{len(receiver.accepted)} notifications so far", flush=True)
        kill_phase = time.monotonic() - started
        h.start_daemon(poll=args.poll)
        h.wait_for(lambda: not active(h), FINISH_TIMEOUT_S, "every run to end")
        h.wait_for(lambda: pending_outbox(h.home) == 0, DRAIN_TIMEOUT_S, "the outbox to drain")
        time.sleep(2)  # a delivery answered just now is recorded in the daemon's next transaction
        code = h.stop_daemon()
        wall = time.monotonic() - started
        accepted = [r.json() for r in list(receiver.accepted) if r.path == "/hook"]
        problems, figures = check(h.home, kinds, cluster_jobs(prefix, window_start), accepted)
    finally:
        h.close()
        receiver.stop()
        leftovers = [i for ids in cluster_jobs(prefix, window_start).values() for i in ids]
        if leftovers:
            subprocess.run(["scancel", *leftovers], capture_output=True, timeout=60, check=False)
    by_kind = Counter(kinds.values())
    adopted = sum('"adopted"' in line for line in h.daemon_log.read_text(errors="replace").splitlines())
    print()
    print(f"kills done          {args.kills}")
    print(f"runs                {len(kinds)} ({', '.join(f'{k} {by_kind[k]}' for k in sorted(by_kind))})")
    print(f"jobs                {figures['jobs']} ({figures['attempts']} attempts)")
    print(f"events              {figures['events']} ({figures['notifying events']} of notifying kinds)")
    print(f"notifications       {len(accepted)} delivered, {figures['redelivered (same id)']} redelivered "
          f"(same id), {figures['outbox entries']} outbox entries")
    print(f"adopted after kill  {adopted}")
    print(f"wall time           {wall:.0f}s (kill phase {kill_phase:.0f}s); last daemon exited {code}")
    print(f"load average        {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print()
    for what, found in problems.items():
        print(f"{what:26s}{len(found)}")
        for item in found:
            print(f"    {item}")
    print(f"state directory and daemon log: {root}")
    ok = all(not found for found in problems.values())
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

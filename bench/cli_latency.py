"""Latency of the `supervisor` command as a user types it: whole process, warm cache, against `squeue`.

    .venv/bin/python bench/cli_latency.py [--runs 7] [--big-runs 10000] [--events-per-run 20] [--json OUT] [--breakdown]

Each command is started as its own process (the venv's ``supervisor`` console script, as a user runs it)
``--runs`` times after one warm-up; wall time is the parent's clock from spawn to reap, CPU time is the
kernel's account of the child (``wait4``). Every run of a command is paired with a run of ``squeue``
started right after it, so the ratio (supervisor / squeue) is taken pair by pair and holds when the
machine's speed drifts; the load average is printed before and after.

Homes: an empty state directory (no database), one with 100 runs, one with ``--big-runs`` runs and
``--big-runs * --events-per-run`` events. The databases are created by the project's migrations and
filled with plain SQL inserts of the model tables (seconds, where as many `submit`s would take hours).
``--breakdown`` also times, in this process, the parts of `status` on the large home (each query, the
node-hours accounting, the JSON, the plain table) and, in fresh interpreters, the imports `submit` pays for.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

STAGES = ("prepare", "train", "merge")
SPEC = """name: {name}
backend: local
workdir: work
stages:
  - name: prepare
    script: prepare.sbatch
  - name: train
    script: train.sbatch
  - name: merge
    script: merge.sbatch
"""


@dataclass
class Sample:
    wall: float
    cpu: float
    code: int


@dataclass
class Result:
    label: str
    argv: list[str]
    goal_s: float | None
    samples: list[Sample] = field(default_factory=list)
    baseline: list[Sample] = field(default_factory=list)

    def walls(self) -> list[float]:
        return [s.wall for s in self.samples]

    def ratios(self) -> list[float]:
        return [a.wall / b.wall for a, b in zip(self.samples, self.baseline, strict=True) if b.wall > 0]


def run_once(argv: Sequence[str], cwd: Path) -> Sample:
    """One whole process: wall from spawn to reap, CPU (user + sys) from the kernel's rusage of the child."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), cwd=cwd, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        if proc.returncode != 0:
            errors.seek(0)
            sys.stderr.write(f"{' '.join(argv)} exited {proc.returncode}: {errors.read().decode()[-500:]}\n")
    return Sample(wall, usage.ru_utime + usage.ru_stime, proc.returncode)


def write_spec(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stage in STAGES:
        script = folder / f"{stage}.sbatch"
        if not script.exists():
            script.write_text("#!/bin/bash\necho done\n")
    path = folder / f"{name}.yaml"
    path.write_text(SPEC.format(name=name))
    return path


def fill_home(home: Path, runs: int, events_per_run: int, spec_dir: Path, *, settle: bool = True) -> None:
    """A state directory with ``runs`` runs in every state, made by the migrations and bulk inserts; with
    ``settle``, the ended attempts' costs settled as the daemon settles them (store/settlement.py)."""
    from sqlalchemy import insert

    from supervisor.domain.spec import load_spec
    from supervisor.store.db import open_database
    from supervisor.store.models import Attempt, Event, Run, Stage

    spec_path = write_spec(spec_dir, "template")
    spec = load_spec(spec_path).model_dump(mode="json")
    sessions = open_database(home)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    run_rows, stage_rows, attempt_rows, event_rows = [], [], [], []
    stage_id = attempt_id = 0
    for r in range(1, runs + 1):
        at = t0 + timedelta(minutes=r)
        # A mix like a busy team's: a third finished, a third training, the rest queued, failed or pending.
        kind = r % 6
        run_state = {0: "succeeded", 1: "succeeded", 2: "running", 3: "running", 4: "failed", 5: "pending"}[kind]
        run_rows.append({"id": r, "name": f"run-{r:05d}", "uid": f"{r:08x}", "state": run_state,
                         "backend": "slurm", "spec_path": str(spec_path), "spec": {**spec, "name": f"run-{r:05d}"},
                         "workdir": str(spec_dir / "work"), "reason": "stage train failed" if kind == 4 else None,
                         "created_at": at, "updated_at": at + timedelta(hours=2)})
        current = {0: 3, 1: 3, 2: 1, 3: 1, 4: 1, 5: 0}[kind]  # index of the stage in progress (3: all done)
        for position, name in enumerate(STAGES):
            stage_id += 1
            if position < current:
                stage_state = "succeeded"
            elif position == current:
                stage_state = {2: "running", 3: "running", 4: "failed", 5: "pending"}[kind]
            else:
                stage_state = "pending"
            stage_rows.append({"id": stage_id, "run_id": r, "position": position, "name": name, "kind": "script",
                               "state": stage_state, "budget_start": 1, "updated_at": at})
            attempts = 0 if stage_state == "pending" else (2 if name == "train" else 1)
            for number in range(1, attempts + 1):
                attempt_id += 1
                last = number == attempts
                state = ("succeeded" if stage_state == "succeeded" or not last else
                         {"running": "running" if kind == 2 else "queued", "failed": "failed"}[stage_state])
                started = None if state == "queued" else at + timedelta(minutes=number)
                attempt_rows.append({
                    "id": attempt_id, "stage_id": stage_id, "number": number, "tag": f"sv-{r:08x}-{name}-{number}",
                    "state": state, "backend": "slurm", "job_id": str(1000 + attempt_id),
                    "log_path": str(spec_dir / "work" / f"{name}-{attempt_id}.log"),
                    "submitted_at": at, "started_at": started,
                    "ended_at": None if state in ("running", "queued") else at + timedelta(minutes=30 * number),
                    "exit_code": 1 if state == "failed" else (0 if state == "succeeded" else None),
                    "nodes": None if started is None else "gpu[01-04]",
                    "reason": "Priority" if state == "queued" else None,
                    "progress_step": 400 * number if name == "train" else None,
                    "progress_total": 1000 if name == "train" else None,
                    # What the progress columns (ETA from the attempt's own rate, last loss) are computed from.
                    **({"first_step": 400 * (number - 1), "first_step_at": started + timedelta(minutes=2),
                        "progress_at": started + timedelta(minutes=20), "last_output_at": started
                        + timedelta(minutes=20), "loss": 1.25 + number} if name == "train" and started else {}),
                })
        for e in range(events_per_run):
            # A failed run's training was ended by a hang: the node-hours count its time hung.
            stalled = kind == 4 and e == 0
            event_rows.append({"run_id": r, "at": at + timedelta(seconds=e), "kind": "stalled" if stalled else
                               "submitted", "stage": "train" if stalled else STAGES[e % 3], "attempt": 1,
                               "message": f"event {e} of run-{r:05d}", "data": {}})
    with sessions.begin() as session:
        for table, rows in ((Run, run_rows), (Stage, stage_rows), (Attempt, attempt_rows), (Event, event_rows)):
            for start in range(0, len(rows), 20_000):
                session.execute(insert(table), rows[start:start + 20_000])
    if settle:
        from supervisor.store.settlement import settle_costs

        settle_costs(sessions, limit=None)


def measure(result: Result, cwd: Path, runs: int, baseline: list[str], argv_for: Any = None) -> Result:
    for i in range(runs + 1):  # the first pair is the warm-up
        argv = argv_for(i) if argv_for else result.argv
        a = run_once(argv, cwd)
        b = run_once(baseline, cwd)
        if i:
            result.samples.append(a)
            result.baseline.append(b)
    return result


def import_cpu(code: str, runs: int) -> float:
    """Median CPU seconds of a fresh interpreter running ``code`` (what importing it costs a command)."""
    return statistics.median(run_once([sys.executable, "-c", code], Path.cwd()).cpu for _ in range(runs))


def breakdown(big: Path, runs: int) -> list[tuple[str, float]]:
    """Where `status` on the large home and `submit` spend their time: the parts, each timed on its own."""
    import sqlite3

    from supervisor.app import render
    from supervisor.domain import accounting
    from supervisor.store.readmodels import rows, views
    from supervisor.store.readmodels.filereader import FileReader

    def timed(work: Any) -> float:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    conn = sqlite3.connect(f"file:{big / rows.DB_FILE}?mode=ro", uri=True)
    reader = FileReader.open(big)
    if reader is None:
        sys.exit(f"{big}: the plain queries cannot read this database")
    status = reader.status()
    now = datetime.now(UTC)
    attempts = [(kind, rows.cost_row(columns)) for _, _, kind, *columns in conn.execute(rows.ALL_ATTEMPTS_SQL)]
    facts = [rows.accounting_facts(a, kind, hung=False) for kind, a in attempts]
    return [
        ("start: python -c 'import supervisor.app.cli' (CPU)", import_cpu("import supervisor.app.cli", runs)),
        ("status: STATUS_SQL, fetched", timed(lambda: conn.execute(rows.STATUS_SQL, ("succeeded",)).fetchall())),
        ("status: ALL_ATTEMPTS_SQL, fetched", timed(lambda: conn.execute(rows.ALL_ATTEMPTS_SQL).fetchall())),
        ("status: STALLED_SQL, fetched", timed(lambda: conn.execute(rows.STALLED_SQL, ("stalled",)).fetchall())),
        ("status: node_hours_by_run (its SQL and the accounting)",
         timed(lambda: views.node_hours_by_run(conn.execute, now))),
        (f"status: of which ALL_ATTEMPTS_SQL read into {len(attempts)} CostRows",
         timed(lambda: [rows.cost_row(columns) for _, _, _, *columns in conn.execute(rows.ALL_ATTEMPTS_SQL)])),
        ("status: of which accounting_facts (domain AttemptFacts)",
         timed(lambda: [rows.accounting_facts(a, kind, hung=False) for kind, a in attempts])),
        ("status: of which accounting.cost", timed(lambda: [accounting.cost(f, now) for f in facts])),
        ("status: FileReader.status, all of it", timed(reader.status)),
        ("status --json: json.dumps(indent=2)", timed(lambda: json.dumps(status, indent=2, default=str))),
        ("status: render.status_lines(width=80)", timed(lambda: render.status_lines(status, 80))),
        ("submit: python -c 'import sqlalchemy.orm, supervisor.store.models' (CPU)",
         import_cpu("import sqlalchemy.orm, supervisor.store.models", runs)),
        ("submit: python -c 'import supervisor.domain.spec' (CPU)", import_cpu("import supervisor.domain.spec", runs)),
        ("submit: python -c 'import supervisor.app.service' (CPU)", import_cpu("import supervisor.app.service", runs)),
    ]


def table(results: list[Result]) -> str:
    head = ("command", "wall min", "median", "max", "cpu median", "squeue median", "x squeue", "goal")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in results:
        walls = r.walls()
        goal = "" if r.goal_s is None else (f"<= {r.goal_s:.2f} s "
                                            + ("met" if statistics.median(walls) <= r.goal_s else "MISSED"))
        lines.append(" | ".join((
            r.label, f"{min(walls):.3f}", f"{statistics.median(walls):.3f}", f"{max(walls):.3f}",
            f"{statistics.median(s.cpu for s in r.samples):.3f}",
            f"{statistics.median(s.wall for s in r.baseline):.3f}", f"{statistics.median(r.ratios()):.1f}", goal)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="counted runs of each command (after one warm-up)")
    parser.add_argument("--big-runs", type=int, default=10_000, help="runs in the large home (0: skip it)")
    parser.add_argument("--events-per-run", type=int, default=20, help="events of each run in the large home")
    parser.add_argument("--json", type=Path, help="also write every sample here")
    parser.add_argument("--unsettled", action="store_true",
                        help="leave the large home's ended attempts unsettled (a home from before migration 0009)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the parts of `status` on the large home, and what `submit` imports")
    args = parser.parse_args()

    exe = str(Path(sys.executable).with_name("supervisor"))
    squeue = shutil.which("squeue")
    if squeue is None:
        sys.exit("squeue not found: the comparison needs the SLURM clients")
    baseline = [squeue]
    work = Path(tempfile.mkdtemp(prefix="cli-latency-"))
    empty, hundred, big = work / "empty", work / "home-100", work / "home-big"
    specs = work / "specs"
    empty.mkdir()
    fill_home(hundred, 100, 20, specs)
    started = time.perf_counter()
    if args.big_runs:
        fill_home(big, args.big_runs, args.events_per_run, specs, settle=not args.unsettled)
    filled_s = time.perf_counter() - started

    def sv(home: Path, *rest: str) -> list[str]:
        return [exe, "--home", str(home), *rest]

    submitted = iter(range(10**6))

    def submit_into(home: Path) -> Any:
        return lambda _i: sv(home, "submit", str(write_spec(specs, f"new-{next(submitted):04d}")))

    load_before = os.getloadavg()
    plan: list[tuple[Result, Any]] = [
        (Result("supervisor --help", [exe, "--help"], 0.25), None),
        (Result("status (empty home)", sv(empty, "status"), 0.25), None),
        (Result("status --json (empty home)", sv(empty, "status", "--json"), 0.25), None),
        (Result("submit (empty home)", [], 0.25), submit_into(empty)),
        (Result("status (100 runs)", sv(hundred, "status"), 0.25), None),
        (Result("status --json (100 runs)", sv(hundred, "status", "--json"), 0.25), None),
        (Result("show (100 runs)", sv(hundred, "show", "run-00050"), 0.25), None),
        (Result("show --json (100 runs)", sv(hundred, "show", "run-00050", "--json"), 0.25), None),
        (Result("submit (100 runs)", [], 0.25), submit_into(hundred)),
    ]
    if args.big_runs:
        size = f"{args.big_runs} runs / {args.big_runs * args.events_per_run} events"
        plan += [(Result(f"status ({size})", sv(big, "status"), 0.3), None),
                 (Result(f"status --json ({size})", sv(big, "status", "--json"), 0.3), None),
                 (Result(f"show ({size})", sv(big, "show", f"run-{args.big_runs // 2:05d}"), 0.25), None)]
    results = [measure(r, work, args.runs, baseline, argv_for) for r, argv_for in plan]
    load_after = os.getloadavg()

    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
          f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} before, "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} after")
    print(f"# {args.runs} runs each after one warm-up, each paired with `{squeue}`; seconds; "
          f"large home filled in {filled_s:.1f} s")
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(table(results))
    if args.breakdown and args.big_runs:
        print(f"\n# the parts, each timed on its own ({args.runs} runs, median seconds)")
        for label, seconds in breakdown(big, args.runs):
            print(f"{label} | {seconds:.3f}")
    failed = [r.label for r in results if any(s.code != 0 for s in r.samples)]
    if failed:
        print(f"# non-zero exit: {', '.join(failed)}")
    if args.json:
        args.json.write_text(json.dumps({
            "load_before": load_before, "load_after": load_after,
            "results": [{"label": r.label, "argv": r.argv, "goal_s": r.goal_s,
                         "samples": [vars(s) for s in r.samples], "squeue": [vars(s) for s in r.baseline]}
                        for r in results]}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Crash safety: a daemon killed with SIGKILL at random moments, and a controller outage, change nothing.

The kill test runs a multi-stage pipeline (some stages fail once, so retries happen too) and kills the
daemon over and over, restarting it each time. Afterwards every attempt must have exactly one job on
the cluster, that job must be the attempt's recorded one, and it must have run exactly once. The kill
delays come from a seeded generator; the seed is printed and can be set with SUPERVISOR_CRASH_SEED to
replay a failure's schedule (the cluster's own timing still varies).

The outage test stops slurmctld (never the whole cluster: others share it) for a minute while a job
runs and a submission falls due, then starts it again.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from supervisor.app.service import Supervisor
from supervisor.app.submit import process_with_tag_alive
from supervisor.domain import core
from supervisor.domain.errors import ClusterError
from supervisor.domain.types import JobInfo, JobPhase, RunState, SubmitRequest

from fakes import ManualClock, RecordingCluster
from harness import TERMINAL, Harness, slurm_jobs_by_name
from slurm_fixtures import controller_stopped, require_slurm

SEED = int(os.environ.get("SUPERVISOR_CRASH_SEED", "20260611"))
KILLS = 20
CONCURRENT_RUNS = 2
# Stage name -> whether its first attempt fails (exit 1), so the stage needs a retry.
STAGES = {"prepare": False, "train": True, "eval": False, "merge": True, "push": False}
KILL_PHASE_TIMEOUT_S = 240.0
FINISH_TIMEOUT_S = 240.0
OUTAGE_S = 60.0


# ---- helpers -------------------------------------------------------------------------------------


def _children(pid: int) -> list[str]:
    """Command lines of ``pid``'s child processes (what the daemon is waiting on right now)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
            if ppid != pid:
                continue
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        found.append(cmdline)
    return found


def _local_launch_pending(cmdline: str) -> bool:
    """A local backend wrapper that has not yet recorded its job's start (submit is waiting on it)."""
    if "wrapper_main" not in cmdline:
        return False
    try:
        spec = json.loads(cmdline[cmdline.index("{"):])
    except ValueError:
        return True
    return not Path(spec["record"]).exists()


def _phase(children: list[str], log_tail: str) -> str:
    """Where a kill landed, judged from the daemon's children and its last log line."""
    programs = [{Path(word).name for word in cmd.split()} for cmd in children]
    if any("sbatch" in p for p in programs) or any(_local_launch_pending(cmd) for cmd in children):
        return "mid-submit"
    if any(p & {"squeue", "scontrol"} for p in programs):
        return "mid-poll/reconcile"
    last = ""
    for line in reversed(log_tail.splitlines()):
        try:
            last = str(json.loads(line).get("event", ""))
        except ValueError:
            continue
        break
    return f"after {last or 'start-up'}"


def _log_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            events.append(item)
    return events


def _pipeline(h: Harness, name: str, backend: str) -> dict[str, Any]:
    """Stages of short sleeps; each job appends ``<tag> <slurm job id>`` to ran.txt when it runs."""
    ran = h.root / "ran.txt"
    stages = []
    for stage, fails_once in STAGES.items():
        fail = 'if [ "$SUPERVISOR_ATTEMPT" = 1 ]; then echo "failing once"; exit 1; fi\n' if fails_once else ""
        script = h.script(f"{name}-{stage}.sbatch", f"""
#SBATCH --time=00:05:00
echo "$SUPERVISOR_TAG ${{SLURM_JOB_ID:-}}" >> {ran}
sleep 1
{fail}echo done
""")
        stages.append({"name": stage, "script": str(script), "max_attempts": 3, "retry_backoff": "1s"})
    return {"name": name, "backend": backend, "workdir": str(h.root / name), "stages": stages}


def _slow_clients(root: Path) -> dict[str, str]:
    """A slow controller: the real SLURM clients behind a random delay.

    sbatch takes up to ~1.5 s and the job appears in the middle of that; squeue and scontrol take up
    to ~0.4 s. That widens the windows a kill must hit: after the intent is written but before the
    job exists, after the job exists but before the daemon has recorded its id, and during a poll.
    """
    shim = root / "slowbin"
    shim.mkdir()
    for client, before, after in (("sbatch", 8, 8), ("squeue", 4, 0), ("scontrol", 4, 0)):
        real = shutil.which(client)
        assert real is not None, f"{client} is not installed"
        path = shim / client
        path.write_text(f"""#!/bin/bash
sleep "0.$((RANDOM % {before}))"
{real} "$@"
rc=$?
sleep "0.$((RANDOM % {after or 1}))"
exit $rc
""")
        path.chmod(0o755)
    return {"PATH": f"{shim}:{os.environ.get('PATH', '')}"}


def _active(h: Harness) -> list[str]:
    return [r["name"] for r in h.status() if r["state"] not in TERMINAL]


def _cancel_leftovers(prefix: str) -> None:
    """Jobs of a failed test must not hold the shared node's CPUs."""
    try:
        jobs = slurm_jobs_by_name()
    except (subprocess.SubprocessError, OSError):
        return
    ids = [i for name, ids in jobs.items() if name.startswith(prefix) for i in ids]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)


def _check_runs(h: Harness, names: Collection[str], backend: str, cluster_jobs: Mapping[str, set[str]]) -> int:
    """Every invariant the crashes must not break. Returns the number of attempts checked."""
    ran: dict[str, list[str]] = {}
    for line in (h.root / "ran.txt").read_text().splitlines():
        tag, _, job_id = line.partition(" ")
        ran.setdefault(tag, []).append(job_id.strip())
    local_records: dict[str, list[str]] = {}
    if backend == "local":
        for path in (h.home / "local-jobs").glob("L*.json"):
            record = json.loads(path.read_text())
            local_records.setdefault(record["tag"], []).append(record["id"])
    checked = 0
    for name in names:
        data = h.show(name)
        assert data["state"] == "succeeded", f"{name}: {data['state']}\n{json.dumps(data, indent=1)}"
        submitted = Counter((e["stage"], e["attempt"]) for e in data["events"] if e["kind"] == "submitted")
        kinds = Counter(e["kind"] for e in data["events"])
        assert kinds["succeeded"] == 1 and data["events"][-1]["kind"] == "succeeded", name
        assert kinds["stage_succeeded"] == len(STAGES), kinds
        assert kinds["resubmitted"] == sum(STAGES.values()), kinds
        for stage in data["stages"]:
            fails_once = STAGES[stage["name"]]
            attempts = stage["attempts"]
            where = f"{name}/{stage['name']}: {attempts}"
            assert stage["state"] == "succeeded", where
            # No attempt lost, none duplicated: exactly the planned ones, numbered without gaps.
            assert [a["number"] for a in attempts] == ([1, 2] if fails_once else [1]), where
            expected = (["failed", "succeeded"] if fails_once else ["succeeded"])
            assert [a["state"] for a in attempts] == expected, where
            assert [a["exit_code"] for a in attempts] == ([1, 0] if fails_once else [0]), where
            for a in attempts:
                key = (stage["name"], a["number"])
                assert a["job_id"], where
                assert submitted[key] == 1, f"{where}: {submitted[key]} submitted events"
                assert a["log"] and a["job_id"] in Path(a["log"]).name and Path(a["log"]).exists(), where
                prefix = f"{name}.{stage['name']}.{a['number']}."
                tags = [t for t in ran if t.startswith(prefix)]
                # The job ran exactly once: a second job for the attempt would have run too.
                assert len(tags) == 1 and len(ran[tags[0]]) == 1, f"{where}: ran {[(t, ran[t]) for t in tags]}"
                if backend == "slurm":
                    names_ = [t for t in cluster_jobs if t.startswith(prefix)]
                    assert len(names_) == 1, f"{where}: job names on the cluster {names_}"
                    assert cluster_jobs[names_[0]] == {a["job_id"]}, f"{where}: jobs {cluster_jobs[names_[0]]}"
                    assert ran[tags[0]] == [a["job_id"]], where
                else:
                    assert local_records.get(tags[0]) == [a["job_id"]], f"{where}: records {local_records.get(tags[0])}"
                checked += 1
    if backend == "slurm":
        ours = [t for t in cluster_jobs if any(t.startswith(f"{n}.") for n in names)]
        assert len(ours) == checked, f"jobs for no attempt: {sorted(ours)}"
    else:
        ours = [t for t in local_records if any(t.startswith(f"{n}.") for n in names)]
        assert len(ours) == checked, f"local jobs for no attempt: {sorted(ours)}"
    return checked


@pytest.fixture(params=[pytest.param("slurm", marks=pytest.mark.slurm), "local"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "slurm":
        require_slurm()
    return str(request.param)


# ---- kill -9 at random moments -------------------------------------------------------------------


def test_daemon_killed_at_random_moments_leaves_one_job_per_attempt(tmp_path: Path, backend: str) -> None:
    rng = random.Random(SEED)
    print(f"crash test: backend={backend} seed={SEED} kills={KILLS} (replay: SUPERVISOR_CRASH_SEED={SEED})")
    h = Harness(tmp_path, _slow_clients(tmp_path) if backend == "slurm" else None)
    prefix = f"crash{secrets.token_hex(3)}"
    names: list[str] = []
    cluster_jobs: dict[str, set[str]] = {}

    def snapshot() -> None:
        # Ended jobs leave the controller after MinJobAge: collect them while they are still known.
        if backend == "slurm":
            for job_name, ids in slurm_jobs_by_name().items():
                if job_name.startswith(prefix):
                    cluster_jobs.setdefault(job_name, set()).update(ids)

    phases: Counter[str] = Counter()
    started = time.monotonic()
    try:
        for i in range(KILLS):
            active = _active(h)
            while len(active) < CONCURRENT_RUNS:
                names.append(h.submit(_pipeline(h, f"{prefix}-{len(names)}", backend)))
                active.append(names[-1])
            offset = h.daemon_log.stat().st_size if h.daemon_log.exists() else 0
            daemon = h.start_daemon(poll="0.5s")
            delay = rng.uniform(0.3, 2.5)
            time.sleep(delay)
            children = _children(daemon.pid)
            daemon.kill()
            daemon.wait()
            h.daemon = None
            with h.daemon_log.open(errors="replace") as fh:
                fh.seek(offset)
                phase = _phase(children, fh.read())
            phases[phase] += 1
            print(f"kill {i + 1:2d}: after {delay:.2f}s, {phase}")
            snapshot()
            assert time.monotonic() - started < KILL_PHASE_TIMEOUT_S, "kill phase took too long"
        kill_phase = time.monotonic() - started
        h.start_daemon(poll="0.5s")
        for name in names:
            h.wait_state(name, sorted(TERMINAL), timeout=FINISH_TIMEOUT_S)
        assert h.stop_daemon() == 0
        snapshot()
        checked = _check_runs(h, names, backend, cluster_jobs)
        log_events = Counter(str(e.get("event")) for e in _log_events(h.daemon_log))
        print(f"{KILLS} kills over {len(names)} runs, {checked} attempts checked; kill phase {kill_phase:.0f}s, "
              f"total {time.monotonic() - started:.0f}s")
        print(f"kill phases: {dict(phases)}; adopted after a crash: {log_events['adopted']}")
    finally:
        h.close()
        if backend == "slurm":
            _cancel_leftovers(prefix)


# ---- slurmctld down for a minute -----------------------------------------------------------------


@pytest.mark.slurm
def test_controller_outage_is_unknown_not_failed(tmp_path: Path) -> None:
    require_slurm()
    h = Harness(tmp_path)
    prefix = f"outage{secrets.token_hex(3)}"
    first = h.script("first.sbatch", "#SBATCH --time=00:05:00\necho first; sleep 20; echo first done\n")
    quick = h.script("quick.sbatch", "#SBATCH --time=00:05:00\necho quick; sleep 1\n")
    long_run = f"{prefix}-a"
    late_run = f"{prefix}-b"
    try:
        h.submit({"name": long_run, "backend": "slurm", "workdir": str(tmp_path / "a"),
                  "stages": [{"name": "first", "script": str(first)},
                             {"name": "second", "script": str(quick)}]})
        h.start_daemon(poll="1s")
        h.wait_for(lambda: [a["state"] for a in h.attempts(long_run, "first")] == ["running"], 120,
                   "the first stage's job running")
        first_job = h.attempts(long_run, "first")[0]["job_id"]
        with controller_stopped():
            outage_started = time.monotonic()
            # A submission falls due while the controller is away: it must wait, not fail.
            h.submit({"name": late_run, "backend": "slurm", "workdir": str(tmp_path / "b"),
                      "stages": [{"name": "only", "script": str(quick)}]})
            while time.monotonic() - outage_started < OUTAGE_S:
                assert h.daemon is not None and h.daemon.poll() is None, h.daemon_log.read_text()[-3000:]
                for name in (long_run, late_run):
                    data = h.show(name)
                    assert data["state"] in ("pending", "running"), data
                    states = [a["state"] for s in data["stages"] for a in s["attempts"]]
                    assert "failed" not in states, data
                time.sleep(3)
        for name in (long_run, late_run):
            h.wait_state(name, sorted(TERMINAL), timeout=240)
        assert h.daemon is not None and h.daemon.poll() is None, "the daemon must outlive the outage"
        assert h.stop_daemon() == 0
        for name in (long_run, late_run):
            data = h.show(name)
            assert data["state"] == "succeeded", data
            for stage in data["stages"]:
                assert [a["state"] for a in stage["attempts"]] == ["succeeded"], data
            submitted = Counter((e["stage"], e["attempt"]) for e in data["events"] if e["kind"] == "submitted")
            assert all(n == 1 for n in submitted.values()) and len(submitted) == len(data["stages"]), data["events"]
        # The job that ran through the outage was followed, not resubmitted.
        assert h.attempts(long_run, "first")[0]["job_id"] == first_job
        events = _log_events(h.daemon_log)
        # Polls and tag lookups share one backoff: their failures count up together.
        failures = [e["failures"] for e in events if e.get("event") in ("poll_failed", "reconcile_unknown")]
        assert failures and failures[0] == 1 and max(failures) >= 2, failures
        assert all(b == a + 1 or b == 1 for a, b in itertools.pairwise(failures)), failures
        assert any(e.get("event") == "submit_unknown" for e in events)
        print(f"unanswered queries during the {OUTAGE_S:.0f}s outage: {len(failures)} (backing off); "
              f"{time.monotonic() - outage_started:.0f}s from the outage's start to both runs done")
    finally:
        h.close()
        _cancel_leftovers(prefix)


# ---- a launcher that finishes while reconciliation asks the cluster ------------------------------


class _RacingCluster(RecordingCluster):
    """A cluster whose submit never answers, and where the job appears just after the lookup.

    Models an sbatch left running by a killed daemon that creates the job (and exits) while the
    restarted daemon's reconciliation is asking the controller: the job is not in the answer, and
    the launcher is gone by the time the answer arrives.
    """

    def __init__(self) -> None:
        super().__init__()
        self.launcher: subprocess.Popen[bytes] | None = None
        self.found: dict[str, JobInfo] = {}
        self.down = False  # the controller does not answer queries
        self.lookups = 0

    def submit(self, request: SubmitRequest) -> str:
        self.submitted.append(request.tag)
        raise ClusterError("sbatch did not answer", permanent=False)

    def find_by_tag(self, tags: Collection[str]) -> dict[str, JobInfo]:
        self.lookups += 1
        if self.down:
            raise ClusterError("squeue: Unable to contact slurm controller (connect failure)", permanent=False)
        answer = {t: self.found[t] for t in tags if t in self.found}
        if self.launcher is not None:
            self.launcher.send_signal(signal.SIGKILL)
            self.launcher.wait()
            self.launcher = None
        return answer


@pytest.fixture
def racing(tmp_path: Path) -> Iterator[tuple[Supervisor, _RacingCluster, str]]:
    cluster = _RacingCluster()
    sv = Supervisor(tmp_path / "home", clusters={"slurm": cluster}, clock=ManualClock(datetime.now(UTC)))
    script = tmp_path / "s.sbatch"
    script.write_text("#!/bin/bash\ntrue\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: r\nbackend: slurm\nworkdir: {tmp_path / 'w'}\nstages:\n  - name: s\n    script: {script}\n")
    sv.register(spec, "slurm")
    sv.apply(1, RunState.PENDING, [core.SetRun(RunState.RUNNING), core.Submit("s", 1)], {})
    assert len(cluster.submitted) == 1
    try:
        yield sv, cluster, cluster.submitted[0]
    finally:
        if cluster.launcher is not None:
            cluster.launcher.kill()
            cluster.launcher.wait()


def test_reconcile_does_not_resubmit_while_a_launcher_may_still_create_the_job(
    racing: tuple[Supervisor, _RacingCluster, str],
) -> None:
    sv, cluster, tag = racing
    cluster.launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", tag])
    deadline = time.monotonic() + 30
    while not process_with_tag_alive(tag):  # a just-started process may show an empty cmdline for a moment
        assert time.monotonic() < deadline, "the launcher never showed its command line"
        time.sleep(0.01)
    sv.reconcile_submitting()
    assert cluster.submitted == [tag], "submitted again although the launcher was alive at the lookup"
    assert sv.show("r")["stages"][0]["attempts"][0]["state"] == "submitting"
    # Next pass: the launcher is gone and the job is on the cluster: adopted, never submitted twice.
    cluster.found[tag] = JobInfo(job_id="77", name=tag, phase=JobPhase.PENDING, raw_state="PENDING")
    sv.reconcile_submitting()
    assert cluster.submitted == [tag]
    data = sv.show("r")
    attempt = data["stages"][0]["attempts"][0]
    assert (attempt["state"], attempt["job_id"]) == ("queued", "77")
    # An adopted job is as submitted as any other: exactly one `submitted` event for the attempt.
    assert [(e["stage"], e["attempt"]) for e in data["events"] if e["kind"] == "submitted"] == [("s", 1)]


def test_reconcile_resubmits_when_no_launcher_and_no_job(racing: tuple[Supervisor, _RacingCluster, str]) -> None:
    sv, cluster, tag = racing
    sv.reconcile_submitting()
    assert cluster.submitted == [tag, tag]


def test_reconcile_backs_off_while_the_controller_does_not_answer(
    racing: tuple[Supervisor, _RacingCluster, str],
) -> None:
    sv, cluster, tag = racing
    clock = sv.clock
    assert isinstance(clock, ManualClock)
    cluster.down = True
    sv.reconcile_submitting()
    assert cluster.lookups == 1
    lookups = [cluster.lookups]
    for _ in range(40):  # 40 one-second ticks: 5 s, 10 s, 20 s between lookups, not one per tick
        clock.advance(1)
        sv.reconcile_submitting()
        lookups.append(cluster.lookups)
    assert lookups.index(2) == 5 and lookups.index(3) == 15 and lookups.index(4) == 35, lookups
    assert cluster.submitted == [tag] and sv.show("r")["stages"][0]["attempts"][0]["state"] == "submitting"
    # Back: the lookup runs once the backoff is over, and the attempt that never reached it is submitted.
    cluster.down = False
    clock.advance(40)
    sv.reconcile_submitting()
    assert cluster.submitted == [tag, tag]

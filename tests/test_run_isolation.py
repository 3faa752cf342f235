"""One run never stops the supervision of the others, and the user's commands are safe to repeat."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from sqlalchemy import select

from supervisor.app.service import Supervisor
from supervisor.store.models import Event, Run

from harness import SUPERVISOR, Harness
from notify_fixtures import LoopbackReceiver, receiver

__all__ = ["receiver"]


def _spec(harness: Harness, name: str, script: Path) -> Path:
    return harness.write_spec({"name": name, "backend": "local", "workdir": str(harness.root / name),
                               "stages": [{"name": "s", "script": str(script), "retry_backoff": 0}]},
                              name=f"{name}.yaml")


def test_a_run_that_breaks_its_tick_needs_attention_and_the_others_go_on(harness: Harness) -> None:
    quick = harness.script("quick.sbatch", "echo done\n")
    sv = Supervisor(harness.home)
    sv.register(_spec(harness, "bad", quick), "local")
    sv.register(_spec(harness, "good", quick), "local")
    # A spec stored before validation refused it (an environment name the operating system rejects when
    # the job starts): whatever slips through fails that run alone.
    with sv.sessions.begin() as session:
        bad = session.scalars(select(Run).where(Run.name == "bad")).one()
        spec = json.loads(json.dumps(bad.spec))
        spec["stages"][0]["env"] = {"A=B": "1"}
        bad.spec = spec

    for _ in range(200):
        sv.tick()
        states = {row["name"]: row["state"] for row in sv.status()}
        if states["good"] == "succeeded" and states["bad"] == "needs_attention":
            break
    assert states == {"bad": "needs_attention", "good": "succeeded"}
    shown = sv.show("bad")
    assert "POSIX name" in (shown["reason"] or "")
    sv.tick()  # set aside: a later pass neither retries it nor records the failure again
    with sv.sessions() as session:
        kinds = [e.kind for e in session.scalars(select(Event).where(Event.run_id == bad.id))]
    assert kinds.count("needs_attention") == 1
    # The user's way out stays open: the broken run can still be cancelled.
    sv.commands.cancel_run("bad")
    assert sv.show("bad")["state"] == "cancelled"


def test_retry_of_a_cancelled_run_submits_a_new_attempt(harness: Harness) -> None:
    job = harness.script("job.sbatch", 'if [[ $SUPERVISOR_ATTEMPT == 1 ]]; then sleep 300; fi\necho ok\n')
    harness.cli("submit", str(_spec(harness, "rc", job)))
    harness.start_daemon(poll="0.5s")
    harness.wait_for(lambda: [a["state"] for a in harness.attempts("rc", "s")] == ["running"], 60,
                     "the first attempt to run")
    harness.cli("cancel", "rc")
    harness.wait_state("rc", "cancelled", timeout=60)
    assert harness.cli("retry", "rc").out.strip() == "retrying rc"
    final = harness.wait_state("rc", ["succeeded", "failed"], timeout=90)
    assert final["state"] == "succeeded"
    assert [a["state"] for a in harness.attempts("rc", "s")] == ["cancelled", "succeeded"]


def test_pause_and_resume_are_safe_to_repeat(harness: Harness) -> None:
    job = harness.script("job.sbatch", "sleep 300\n")
    harness.cli("submit", str(_spec(harness, "pp", job)))
    assert harness.cli("pause", "pp").out.strip() == "paused pp"
    again = harness.cli("pause", "pp", check=False)
    assert (again.code, again.out.strip()) == (0, "pp is already paused")
    assert harness.cli("resume", "pp").out.strip() == "resumed pp"
    again = harness.cli("resume", "pp", check=False)
    assert again.code == 0 and "nothing to resume" in again.out
    harness.cli("cancel", "pp")
    refused = harness.cli("pause", "pp", check=False)
    assert refused.code == 2 and "cancelled" in refused.err


def test_exit_when_idle_delivers_the_last_notifications_first(harness: Harness, receiver: LoopbackReceiver) -> None:
    # The endpoint is busy for a while: the first deliveries are refused with a Retry-After.
    receiver.script = [(429, {"Retry-After": "2"})] * 3
    quick = harness.script("quick.sbatch", "echo done\n")
    spec = {"name": "idle", "backend": "local", "workdir": str(harness.root / "idle"),
            "stages": [{"name": "s", "script": str(quick)}],
            "notify": [{"webhook": {"url": receiver.url + "/hook"}, "on": ["succeeded"]}]}
    harness.cli("submit", str(harness.write_spec(spec)))
    done = subprocess.run([*SUPERVISOR, "daemon", "--poll", "0.5s", "--exit-when-idle"], env=harness.env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    assert [r.json()["kind"] for r in receiver.accepted] == ["succeeded"]
    assert harness.show("idle")["notifications"] == []

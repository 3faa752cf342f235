"""`show`'s per-attempt node-hours and `supervisor report`: real SQLite, the real CLI as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from supervisor.app import report as reporting
from supervisor.app.service import Supervisor
from supervisor.domain.accounting import SchedulerUsage
from supervisor.store import readmodels
from supervisor.store.models import Attempt, Event, Run, Stage

from fakes import ManualClock
from readmodel_fixtures import attempt_row, two_stage_spec

T0 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=1)
CHECKPOINT_AT = T0 + timedelta(hours=1, minutes=40)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _attempt(stage: Stage, number: int, state: str, **extra: Any) -> Attempt:
    return attempt_row(stage, number, state, submitted_at=extra.pop("submitted_at", T0), job_prefix="9", **extra)


def _home(tmp_path: Path, log: Path | None = None) -> tuple[Path, Supervisor]:
    """Run "llama": prep succeeded on one node; train (counted in steps) failed to start once, hung once
    after a checkpoint, then succeeded. Run "tiny": one script attempt that failed on its exit code."""
    home = tmp_path / "home"
    sv = Supervisor(home, clock=ManualClock(T0))
    for name in ("llama", "tiny"):
        sv.register(two_stage_spec(tmp_path, name), "local")
    with sv.sessions.begin() as session:
        runs = {r.name: r for r in session.query(Run)}
        prep, train = runs["llama"].stages
        train.kind = "train"  # the report reads the kind: a train stage's startup is judged by its steps
        prep.state, train.state, runs["llama"].state = "succeeded", "succeeded", "succeeded"
        session.add_all([
            _attempt(prep, 1, "succeeded", started_at=at(1), ended_at=at(31), nodes="cpu01", exit_code=0),
            # NVCC timeout during startup: never reached a step.
            _attempt(train, 1, "cancelled", submitted_at=at(31), started_at=at(32), ended_at=at(62),
                     nodes="gpu[01-04]", cause="nvcc_timeout", outcome="resubmit", last_output_at=at(40)),
            # Trained, saved a checkpoint at 1:40, went quiet at 1:50, the stall was detected and it ended at 2:12.
            _attempt(train, 2, "cancelled", submitted_at=at(63), started_at=at(65), ended_at=at(132),
                     nodes="gpu[01-04]", cause="stall_timeout", outcome="resubmit", first_step_at=at(70),
                     last_output_at=at(110), log_path=str(log) if log else None),
            _attempt(train, 3, "succeeded", submitted_at=at(133), started_at=at(135), ended_at=at(255),
                     nodes="gpu[01-04]", exit_code=0, first_step_at=at(140), work_done=True),
            Event(run_id=runs["llama"].id, at=at(131), kind="stalled", stage="train", attempt=2,
                  message="no log output for 1260s: hang", data={}),
        ])
        (tiny, _) = runs["tiny"].stages
        session.add(_attempt(tiny, 1, "failed", started_at=at(0), ended_at=at(6), nodes="cpu02", exit_code=3))
    return home, sv


def _checkpoints(place: readmodels.RunPlace, stage: str) -> Sequence[datetime]:
    # One checkpoint inside train attempt 2, one long before any attempt (it must not count).
    return [T0 - timedelta(days=3), CHECKPOINT_AT] if (place.name, stage) == ("llama", "train") else []


def _figures(backend: str, job_ids: Sequence[str]) -> dict[str, SchedulerUsage]:
    # The scheduler measured train attempt 3 itself: 7000 s on 4 nodes (not the 7200 s the rows say).
    return {job_id: SchedulerUsage(7000, 4) for job_id in job_ids if job_id.endswith("3")}


def _report(home: Path, **options: Any) -> dict[str, Any]:
    reader = readmodels.FileReader.open(home)
    assert reader is not None
    return reader.report(now=NOW, checkpoints=_checkpoints, figures=_figures, **options)


def test_show_gives_each_attempt_its_node_hours_and_what_was_wasted_for_what(tmp_path: Path) -> None:
    home, sv = _home(tmp_path)
    shown = {s["name"]: s["attempts"] for s in sv.show("llama")["stages"]}
    assert [(a["node_hours"], a["wasted_node_hours"], a["waste_cause"]) for a in shown["train"]] == [
        (2.0, 2.0, "startup"),
        # No checkpoint times in `show`: waste runs from the first step (62 of 67 minutes, 4 nodes).
        (4.47, 4.13, "hang/stall_timeout"),
        (8.0, 0.0, None)]
    assert shown["prep"][0]["node_hours"] == 0.5
    reader = readmodels.FileReader.open(home)
    assert reader is not None
    assert reader.show("llama") == sv.show("llama")


def test_report_splits_every_attempt_into_used_and_wasted_with_its_cause(tmp_path: Path) -> None:
    home, _ = _home(tmp_path)
    data = _report(home)
    llama = next(r for r in data["runs"] if r["name"] == "llama")
    train = next(s for s in llama["stages"] if s["name"] == "train")
    a1, a2, a3 = train["attempts"]
    assert (a1["wasted_node_seconds"], a1["waste_cause"]) == (4 * 30 * 60, "startup")
    # From the checkpoint at 1:40 to the end at 2:12 is wasted; of it, 1:50 -> 2:12 was hung.
    assert (a2["wasted_node_seconds"], a2["hung_node_hours"], a2["waste_cause"]) == (
        4 * 32 * 60, round(4 * 22 / 60, 2), "hang/stall_timeout")
    assert (a3["node_seconds"], a3["measured_by"], a1["measured_by"]) == (28000, "scheduler", "recorded")
    for scope in (data, llama, train):
        assert scope["used_node_seconds"] + scope["wasted_node_seconds"] == scope["node_seconds"]
    every = [a for r in data["runs"] for s in r["stages"] for a in s["attempts"]]
    assert data["node_seconds"] == sum(a["node_seconds"] for a in every) == 1800 + 7200 + 16080 + 28000 + 360
    assert {c["cause"]: c["node_seconds"] for c in data["waste_by_cause"]} == {
        "startup": 7200, "hang/stall_timeout": 7680, "exit 3": 360}
    assert [(f["signature"], f["attempts"], f["runs"]) for f in data["failures_by_signature"]] == [
        ("exit 3", 1, ["tiny"]), ("nvcc_timeout", 1, ["llama"]), ("stall_timeout", 1, ["llama"])]
    assert data["detection"] == {"hung_node_hours": round(4 * 22 / 60, 2), "hung_node_seconds": 4 * 22 * 60,
                                 "hangs": 1}
    # Wall time from the first submission (0:31) to the end of the last attempt (4:15); ran 30+67+120 min.
    assert (train["wall_s"], train["run_s"]) == ((255 - 31) * 60, (30 + 67 + 120) * 60)


def test_report_since_leaves_out_runs_not_active_since(tmp_path: Path) -> None:
    home, sv = _home(tmp_path)
    with sv.sessions.begin() as session:
        session.query(Run).filter(Run.name == "tiny").one().updated_at = T0 - timedelta(days=30)
    names = [r["name"] for r in _report(home, since=T0 - timedelta(days=1))["runs"]]
    assert names == ["llama"]


def test_report_through_the_session_is_the_file_readers(tmp_path: Path) -> None:
    home, sv = _home(tmp_path)
    with sv.sessions() as session:
        through_session = readmodels.report(session, now=NOW, checkpoints=_checkpoints, figures=_figures)
    assert through_session == _report(home)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor", "--home", str(home), "report", *args],
                          capture_output=True, text=True)


def test_the_report_command_prints_json_tables_and_writes_the_page(tmp_path: Path) -> None:
    home, _ = _home(tmp_path)
    proc = _cli(home, "--json", "--since", "2026-11-01")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["since"] == "2026-11-01T00:00:00+00:00"
    assert data["used_node_seconds"] + data["wasted_node_seconds"] == data["node_seconds"] > 0
    table = _cli(home)
    assert table.returncode == 0 and "wasted node-hours by cause" in table.stdout and "nvcc_timeout" in table.stdout
    page = tmp_path / "out" / "report.html"
    page.parent.mkdir()
    written = _cli(home, "--html", str(page))
    assert (written.returncode, written.stderr) == (0, f"wrote {page}\n")
    text = page.read_text()
    assert "id='gantt-0'" in text and "id='waste-by-cause'" in text
    assert "http://" not in text and "https://" not in text  # nothing to fetch when opened


@pytest.mark.parametrize(("args", "expected"), [
    (["--since", "last tuesday"], "error: --since 'last tuesday': not a date (expected 2026-12-01 or "
                                  "2026-12-01T08:00)\n"),
    (["--html", "/nonexistent-dir/r.html"], "error: --html /nonexistent-dir/r.html: No such file or directory\n"),
])
def test_a_bad_option_is_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    home, _ = _home(tmp_path)
    proc = _cli(home, *args)
    assert (proc.returncode, proc.stderr) == (2, expected)


LOG = """\
{'loss': '2.5', 'grad_norm': '1.0', 'learning_rate': '1e-05', 'epoch': '0.1'}
 10%|█         | 10/100 [00:10<01:30,  1.00s/it]{'loss': '2.1', 'grad_norm': '0.9', 'epoch': '0.2'}
{'loss': 'nan', 'epoch': '0.25'}
{'loss': 1.7, 'epoch': 0.3}
{'train_runtime': '12.0', 'train_loss': '2.0', 'epoch': '0.3'}
"""


def test_loss_curves_come_from_the_attempts_logs(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text(LOG)
    assert reporting.loss_curve(str(log)) == [(0.1, 2.5), (0.2, 2.1), (0.3, 1.7)]
    assert reporting.loss_curve(str(tmp_path / "gone.log")) == []


def test_a_long_loss_curve_is_thinned_but_keeps_its_last_point(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("".join(f"{{'loss': {3 - i / 1000}, 'epoch': {i / 1000}}}\n" for i in range(3001)))
    curve = reporting.loss_curve(str(log))
    assert len(curve) <= reporting.MAX_CURVE_POINTS + 1
    assert curve[0] == (0.0, 3.0) and curve[-1] == (3.0, 0.0)


def test_the_page_escapes_names_from_outside(tmp_path: Path) -> None:
    home, _ = _home(tmp_path)
    data = _report(home)
    data["runs"][0]["stages"][1]["attempts"][0]["waste_cause"] = "<script>alert(1)</script>"
    text = reporting.render_html(data, {})
    assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)" in text

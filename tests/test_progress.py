"""Progress from training logs, the attempt's own step rate, and what `status`, `show`, `logs` and `plot` give."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from supervisor.domain import core
from supervisor.domain.core import AttemptView, Observation, RunView, StageView
from supervisor.domain.eta import eta, run_finish, step_rate, typical
from supervisor.domain.types import AttemptState, JobInfo, JobPhase, Progress, RunState, StageState
from supervisor.logs.follow import LogCursor, LogWatcher
from supervisor.logs.progress import MetricPoint, metric_series, thinned, training_loss

FIXTURES = Path(__file__).parent / "fixtures" / "logs"
T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


# ---- the metric series of a log --------------------------------------------------------------------------


def test_the_real_resumed_axolotl_log_gives_each_loss_at_its_step() -> None:
    # axolotl 0.19 resumed at step 10 of 20 (max_steps 20, 32 steps an epoch): five dicts reach the log
    # before the bar line of their steps, so the step comes from the epoch the dict names.
    points = metric_series((FIXTURES / "axolotl_real_train.log").read_bytes())
    assert [p.step for p in points] == list(range(11, 21))
    assert (points[0].loss, points[-1].loss) == (5.216, 4.502)
    assert points[0].learning_rate == 0.001 and points[0].grad_norm == 2.383 and points[-1].epoch == 0.625


def test_an_older_log_with_bare_numbers_and_a_nan_loss() -> None:
    text = (" 10%|#         | 1/10 [00:01<00:09,  1.00it/s]\r"
            "{'loss': 2.5, 'learning_rate': 1e-05, 'epoch': 0.1}\n"
            " 20%|##        | 2/10 [00:02<00:08,  1.00it/s]\r"
            "{'loss': nan, 'learning_rate': 2e-05, 'epoch': 0.2}\n"
            " 30%|###       | 3/10 [00:03<00:07,  1.00it/s]\r"
            "{'eval_loss': 2.0, 'epoch': 0.3}\n"  # an eval dict: no training loss
            "{'train_runtime': 12.5, 'train_loss': 2.4, 'epoch': 0.3}\n"
            "Training Completed!!! Saving pre-trained model to ./out\n")
    points = metric_series(text.encode())
    assert [(p.step, p.loss, p.learning_rate) for p in points] == [(1, 2.5, 1e-05), (2, None, 2e-05)]


def test_an_evaluation_bar_does_not_move_the_step() -> None:
    text = (" 50%|#####     | 50/100 [00:50<00:50,  1.00it/s]\n"
            "100%|##########| 8/8 [00:01<00:00,  8.00it/s]\n"  # eval, 8 batches
            "{'loss': 1.5, 'epoch': 1.0}\n")
    (point,) = metric_series(text.encode())
    assert point.step == 50


def test_the_series_is_thinned_evenly_keeping_both_ends() -> None:
    points = [MetricPoint(step=i, loss=float(i)) for i in range(1000)]
    kept = thinned(points, 5)
    assert [p.step for p in kept] == [0, 250, 500, 749, 999]
    assert thinned(points[:3], 5) == points[:3]


def test_training_loss_is_only_a_finite_loss() -> None:
    assert training_loss({"loss": 1.25, "epoch": 0.5}) == 1.25
    assert training_loss({"loss": float("inf")}) is None
    assert training_loss({"eval_loss": 1.0}) is None
    assert training_loss(None) is None


def test_the_watcher_reports_the_last_training_loss_it_read(tmp_path: Path) -> None:
    from supervisor.domain.types import StageKind
    from supervisor.stages import kind_for

    log = tmp_path / "train.log"
    log.write_text("{'loss': '3.5', 'epoch': '0.1'}\n{'loss': '3.25', 'epoch': '0.2'}\n{'eval_loss': '2.0'}\n")
    watcher = LogWatcher()
    seen = watcher.read(watcher.catalogue("r", []), LogCursor(str(log), None, None),
                        kind_for(StageKind.TRAIN).progress)
    assert seen.loss == 3.25


# ---- the attempt's own rate ----------------------------------------------------------------------------


def test_the_rate_counts_from_the_attempts_first_step_not_from_zero_or_the_start() -> None:
    # Resumed at step 600 of 1000; first step seen at 09:10 (after 10 min of startup), step 700 at 09:20.
    rate = step_rate(600, T0 + timedelta(minutes=10), 700, T0 + timedelta(minutes=20))
    assert rate == pytest.approx(100 / 600)
    assert eta(700, 1000, rate, T0 + timedelta(minutes=20)) == T0 + timedelta(minutes=50)


def test_no_rate_until_two_steps_were_seen_apart() -> None:
    assert step_rate(600, T0, 600, T0 + timedelta(minutes=5)) is None
    assert step_rate(None, None, 10, T0) is None
    assert eta(10, 100, None, T0) is None


def _run(attempt: AttemptView) -> RunView:
    stage = StageView(name="train", state=StageState.RUNNING, max_attempts=3, attempts=(attempt,))
    return RunView("r", RunState.RUNNING, (stage,))


def _changes(attempt: AttemptView, progress: Progress, loss: float | None = None) -> core.AttemptChanges:
    job = JobInfo(job_id="7", name="t", phase=JobPhase.RUNNING, nodes="n1", raw_state="RUNNING")
    actions = core.observe(_run(attempt), {("train", 1): Observation(job=job, progress=progress, loss=loss)},
                           T0 + timedelta(minutes=3))
    updates = [a.changes for a in actions if isinstance(a, core.UpdateAttempt)]
    return updates[0] if updates else core.AttemptChanges()


def test_the_first_step_an_attempt_shows_is_where_its_rate_counts_from() -> None:
    running = AttemptView(number=1, state=AttemptState.RUNNING, job_id="7", started_at=T0, nodes="n1")
    changes = _changes(running, Progress(step=600, total=1000), loss=1.5)
    assert (changes.first_step, changes.first_step_at, changes.progress_step) == (600, T0 + timedelta(minutes=3), 600)
    assert changes.loss == 1.5 and changes.progress_at == T0 + timedelta(minutes=3)
    later = AttemptView(number=1, state=AttemptState.RUNNING, job_id="7", started_at=T0, nodes="n1",
                        first_step_at=T0, progress_total=1000)
    again = _changes(later, Progress(step=650, total=1000))
    assert again.first_step is None and again.first_step_at is None and again.progress_step == 650


def test_an_evaluation_bar_does_not_replace_the_training_bar() -> None:
    following = AttemptView(number=1, state=AttemptState.RUNNING, job_id="7", started_at=T0, nodes="n1",
                            first_step_at=T0, progress_total=1000)
    assert _changes(following, Progress(step=3, total=8)).progress_step is None
    assert _changes(following, Progress(step=4)).progress_step is None


# ---- status, show, logs, plot on a home --------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A run whose train stage failed once at step 12 and runs again from step 10 (the real resumed log)."""
    from sqlalchemy import select

    from supervisor.app.service import Supervisor
    from supervisor.store.models import Run, Stage

    from fakes import ManualClock
    from readmodel_fixtures import attempt_row

    (tmp_path / "train.sh").write_text("#!/bin/bash\ntrue\n")
    spec = tmp_path / "r.yaml"
    spec.write_text(json.dumps({"name": "r", "backend": "local", "workdir": "work",
                                "stages": [{"name": "train", "script": "train.sh"}]}))
    home = tmp_path / "home"
    sv = Supervisor(home, clock=ManualClock(T0))
    sv.register(spec, "local")
    first_log = tmp_path / "first.log"
    first_log.write_text(" 50%|#####     | 10/20 [00:10<00:10,  1.00it/s]\n"
                         "{'loss': '5.9', 'learning_rate': '0.001', 'epoch': '0.3125'}\n"
                         " 60%|######    | 12/20 [00:12<00:08,  1.00it/s]\n"
                         "{'loss': '5.5', 'learning_rate': '0.001', 'epoch': '0.375'}\n"
                         "NCCL error: remote process exited\n")
    now = datetime.now(UTC)
    with sv.sessions.begin() as session:
        run = session.scalars(select(Run)).one()
        run.state = RunState.RUNNING.value
        stage = session.scalars(select(Stage)).one()
        stage.state = StageState.RUNNING.value
        session.add(attempt_row(stage, 1, "failed", submitted_at=T0, started_at=T0, ended_at=T0 + timedelta(hours=1),
                                nodes="n[1-2]", cause="nccl_error", outcome="resubmit", log_path=str(first_log),
                                progress_step=12, progress_total=20))
        session.add(attempt_row(stage, 2, "running", submitted_at=now - timedelta(minutes=30),
                                started_at=now - timedelta(minutes=30), nodes="n[1-2]",
                                log_path=str(FIXTURES / "axolotl_real_train.log"), first_step=10,
                                first_step_at=now - timedelta(minutes=20), progress_step=15, progress_total=20,
                                progress_at=now - timedelta(minutes=10), loss=4.863))
    return home


def _cli(home: Path, *args: str) -> tuple[int, str, str]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "supervisor", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=120, check=False)
    return done.returncode, done.stdout, done.stderr


def test_status_gives_fraction_eta_loss_and_node_hours(home: Path) -> None:
    code, stdout, stderr = _cli(home, "status", "--json")
    assert code == 0, stderr
    (row,) = json.loads(stdout)
    assert row["progress"] == {"step": 15, "total": 20, "fraction": 0.75}
    assert row["loss"] == 4.863
    # 5 steps in 10 minutes, 5 to go: 10 minutes after the step was seen, i.e. about now.
    finish = datetime.fromisoformat(row["eta"])
    assert finish.tzinfo is not None and abs((finish - datetime.now(UTC)).total_seconds()) < 120
    # Attempt 1: 2 nodes x 1 h, all wasted (no checkpoint known); attempt 2: 2 nodes x 30 min so far, live.
    assert row["node_hours"]["wasted"] == 2.0
    assert row["node_hours"]["used"] == pytest.approx(1.0, abs=0.05)


def test_show_summarises_the_progress_of_each_attempt(home: Path) -> None:
    code, stdout, stderr = _cli(home, "show", "r", "--json")
    assert code == 0, stderr
    first, second = json.loads(stdout)["stages"][0]["attempts"]
    assert first["progress_summary"]["step"] == 12 and first["progress_summary"]["eta"] is None  # it ended
    summary = second["progress_summary"]
    assert (summary["first_step"], summary["step"], summary["total"], summary["loss"]) == (10, 15, 20, 4.863)
    assert summary["steps_per_s"] == pytest.approx(5 / 600, rel=1e-3)


def test_logs_prints_the_newest_attempts_log_or_the_one_asked_for(home: Path) -> None:
    code, stdout, _ = _cli(home, "logs", "r")
    assert code == 0 and stdout == (FIXTURES / "axolotl_real_train.log").read_text()
    code, stdout, _ = _cli(home, "logs", "r", "--attempt", "1")
    assert code == 0 and stdout.endswith("NCCL error: remote process exited\n")
    code, _, stderr = _cli(home, "logs", "r", "--attempt", "7")
    assert code == 2 and "has no attempt 7 (attempts: 1, 2)" in stderr
    code, _, stderr = _cli(home, "logs", "r", "--stage", "merge")
    assert code == 2 and "has no stage 'merge'" in stderr


def test_plot_json_gives_each_attempts_points_and_how_it_ended(home: Path) -> None:
    code, stdout, stderr = _cli(home, "plot", "r", "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    first, second = data["attempts"]
    assert [p["step"] for p in first["points"]] == [10, 12] and first["cause"] == "nccl_error"
    assert [p["step"] for p in second["points"]] == list(range(11, 21))


def test_plot_in_the_terminal_marks_where_the_resubmission_began(home: Path) -> None:
    code, stdout, stderr = _cli(home, "plot", "r")
    assert code == 0, stderr
    assert "attempt 2 after nccl_error" in stdout
    assert "step" in stdout and "\x1b[" not in stdout  # no colour when not a terminal


def test_plot_png_is_an_image_of_the_size_asked(home: Path, tmp_path: Path) -> None:
    png = tmp_path / "loss.png"
    code, _, stderr = _cli(home, "plot", "r", "--png", str(png))
    assert code == 0, stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1000, 600)
    # Not a blank canvas: a plot has many colours (lines, text, the marker); count a sample of the pixels.
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png)).reshape(-1, 4)[::97]
    assert len({tuple(p) for p in pixels.round(2).tolist()}) > 5


# ---- when the whole run is done: the current stage, then the stages to come as long as they took before ----


def test_the_run_finishes_after_its_stage_eta_and_the_typical_length_of_the_stages_to_come() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert (typical([600, 1200, 900]), typical([100, 300])) == (900, 200)
    expected = {"merge": 900.0, "transfer": 200.0}
    stage_eta = now + timedelta(hours=2)
    assert run_finish(now, stage_eta=stage_eta, running=("train", now - timedelta(hours=1)),
                      to_come=["merge", "transfer"], expected=expected) == stage_eta + timedelta(seconds=1100)
    # A merge running for 10 min without a bar: submitted plus its typical 15 min, then the transfer.
    assert run_finish(now, stage_eta=None, running=("merge", now - timedelta(minutes=10)), to_come=["transfer"],
                      expected=expected) == now + timedelta(minutes=5, seconds=200)
    # Past its typical length: it ends no sooner than now.
    assert run_finish(now, stage_eta=None, running=("merge", now - timedelta(hours=1)), to_come=[],
                      expected=expected) == now
    assert run_finish(now, stage_eta=None, running=None, to_come=["merge"], expected=expected) == \
        now + timedelta(seconds=900)
    # No figure for a stage still to come (no run got that far yet), or none for the current one: no ETA.
    assert run_finish(now, stage_eta=stage_eta, running=("train", now), to_come=["merge", "rsync"],
                      expected=expected) is None
    assert run_finish(now, stage_eta=None, running=("train", now), to_come=[], expected=expected) is None
    assert typical([]) is None


def test_status_gives_the_run_eta_from_the_stages_that_succeeded_before(tmp_path: Path) -> None:
    import yaml

    from supervisor.app.service import Supervisor
    from supervisor.store.models import Attempt, Run

    stages = [{"name": "train", "command": ["true"]}, {"name": "after", "command": ["true"]}]
    from fakes import ManualClock

    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    sv = Supervisor(tmp_path / "home", clock=ManualClock(now))
    for name in ("old", "new"):
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(yaml.safe_dump({"name": name, "backend": "local", "workdir": str(tmp_path / name),
                                        "stages": stages}))
        sv.register(spec, "local")
    start = now - timedelta(hours=3)
    with sv.sessions.begin() as session:
        old = session.query(Run).filter_by(name="old").one()
        old.state = "succeeded"
        for stage, minutes in zip(old.stages, (60, 30), strict=True):
            stage.state = "succeeded"
            session.add(Attempt(stage_id=stage.id, number=1, tag=f"old-{stage.name}", backend="local",
                                state="succeeded", submitted_at=start, ended_at=start + timedelta(minutes=minutes)))
        new = session.query(Run).filter_by(name="new").one()
        new.state, new.stages[0].state = "running", "running"
        session.add(Attempt(stage_id=new.stages[0].id, number=1, tag="new-train", backend="local", state="running",
                            submitted_at=now - timedelta(minutes=20)))
    rows = {r["name"]: r for r in sv.status()}
    # 60 min typical for its stage, 20 gone: 40 left, then 30 for the stage after.
    assert datetime.fromisoformat(rows["new"]["run_eta"]) == now + timedelta(minutes=70)
    assert rows["old"]["run_eta"] is None

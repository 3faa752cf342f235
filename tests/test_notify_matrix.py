"""Matrix delivery against a real Synapse on loopback (tests/synapse_server.py)."""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from supervisor.notify import build_channels
from supervisor.notify.matrix import CONTENT_KEY
from supervisor.notify.outbox import DeliveryPolicy, deliver, send_test
from supervisor.notify.queue import undelivered
from supervisor.store.models import ChannelState

from fakes import ManualClock
from notify_fixtures import (
    MatrixUser,
    add_event,
    clock,
    db,
    deliver_until_drained,
    make_run,
    matrix_user,
    open_test_db,
    synapse,
)

__all__ = ["clock", "db", "matrix_user", "synapse"]  # fixtures, re-exported for pytest

pytestmark = pytest.mark.synapse

REPO = Path(__file__).resolve().parent.parent
POLICY = DeliveryPolicy(base_delay_s=5.0, max_delay_s=60.0, coalesce_window_s=60.0)


def matrix_spec(user: MatrixUser, room: str) -> dict[str, Any]:
    return {"matrix": {"homeserver": user.server.url, "room_id": room, "access_token_env": "MATRIX_TOKEN"}}


def ours(user: MatrixUser, room: str) -> list[dict[str, Any]]:
    return [m for m in user.messages(room) if CONTENT_KEY in m["content"]]


def events_of(messages: list[dict[str, Any]], run: str) -> list[int]:
    out: list[int] = []
    for m in messages:
        if m["content"][CONTENT_KEY]["run"] == run:
            out.extend(m["content"][CONTENT_KEY]["events"])
    return out


def test_messages_arrive_in_order_threaded_per_run(
    db: sessionmaker[Session], clock: ManualClock, matrix_user: MatrixUser
) -> None:
    room = matrix_user.new_room()
    spec = matrix_spec(matrix_user, room)
    env = {"MATRIX_TOKEN": matrix_user.token}
    runs = {name: make_run(db, name, [spec], clock) for name in ("llama-a", "llama-b")}
    channels = {rid: build_channels([spec], env) for rid in runs.values()}
    expected: dict[str, list[int]] = {name: [] for name in runs}
    for kind in ("crashed", "resubmitted", "stalled", "stage_succeeded", "succeeded"):
        for name, rid in runs.items():
            expected[name].append(add_event(db, rid, kind, clock, data={"job_id": "9", "log_line": "<b>x</b>"}))
        clock.advance(120)
    deliver(db, channels, clock, policy=POLICY)

    got = ours(matrix_user, room)
    assert len(got) == 10
    for name, rid in runs.items():
        mine = [m for m in got if m["content"][CONTENT_KEY]["run"] == name]
        assert events_of(mine, name) == expected[name]
        root, *replies = mine
        assert "m.relates_to" not in root["content"]
        for m in replies:
            rel = m["content"]["m.relates_to"]
            assert rel["rel_type"] == "m.thread" and rel["event_id"] == root["event_id"]
        assert all(m["content"]["format"] == "org.matrix.custom.html" for m in mine)
        assert "&lt;b&gt;x&lt;/b&gt;" in mine[0]["content"]["formatted_body"]  # log line escaped
        assert mine[0]["content"]["msgtype"] == "m.notice" and name in mine[0]["content"]["body"]
        with db() as s:
            state = s.scalars(select(ChannelState).where(ChannelState.run_id == rid)).one()
            assert state.data == {"thread_root": root["event_id"]}


def test_outage_every_notification_arrives_once_in_order(
    db: sessionmaker[Session], clock: ManualClock, matrix_user: MatrixUser
) -> None:
    room = matrix_user.new_room()
    spec = matrix_spec(matrix_user, room)
    run_id = make_run(db, "llama-outage", [spec], clock)
    channels = {run_id: build_channels([spec], {"MATRIX_TOKEN": matrix_user.token})}
    server = matrix_user.server
    server.stop()
    try:
        kinds = ["crashed"] + ["resubmitted"] * 6 + ["stalled", "crashed", "resubmitted", "failed", "crashed"]
        ids = []
        for kind in kinds:
            ids.append(add_event(db, run_id, kind, clock))
            clock.advance(5)
            deliver(db, channels, clock, policy=POLICY)
        pending = undelivered(db(), run_id)
        assert len(pending) == len(kinds)
        assert pending[0]["tries"] >= 2 and "ConnectError" in pending[0]["last_error"]
    finally:
        server.start()
    deliver_until_drained(db, lambda: deliver(db, channels, clock, policy=POLICY), clock)

    got = ours(matrix_user, room)
    assert events_of(got, "llama-outage") == ids  # each once, in order
    counts = [m["content"][CONTENT_KEY]["count"] for m in got]
    assert counts == [1, 6, 1, 1, 1, 1, 1]  # the resubmission burst became one message
    assert undelivered(db(), run_id) == []


class Worker:
    """``python tests/notify_fixtures.py deliver-loop`` as a child process, its stdout in a queue."""

    def __init__(self, home: Path, run_id: int, token: str) -> None:
        env = {
            **os.environ,
            "RUN_ID": str(run_id),
            "MATRIX_TOKEN": token,
            "PAUSE_AFTER_SEND_S": "0.15",
            "PYTHONPATH": str(REPO),
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "notify_fixtures.py"), "deliver-loop", str(home)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(("SENT ", "IDLE")):  # structlog's own lines go to stdout too
                self.lines.put(line.strip())
        self.lines.put(None)

    def next_line(self, timeout: float = 120.0) -> str | None:
        return self.lines.get(timeout=timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def test_sigkill_mid_send_never_duplicates(tmp_path: Path, clock: ManualClock, matrix_user: MatrixUser) -> None:
    home = tmp_path / "home"
    db = open_test_db(home)
    room = matrix_user.new_room()
    run_id = make_run(db, "llama-kill", [matrix_spec(matrix_user, room)], clock)
    ids = []
    for i in range(24):
        ids.append(add_event(db, run_id, ("crashed", "resubmitted", "stalled")[i % 3], clock))
        clock.advance(1)

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kills_after_send = kills_random = 0
    finished = False
    for round_ in range(80):
        worker = Worker(home, run_id, matrix_user.token)
        if round_ < 6 or rng.random() < 0.5:
            # The dangerous moment: the homeserver has the n-th message, the DB does not know yet
            # (the ones before it were recorded, so the queue moves on between kills).
            for _ in range(rng.randint(1, 4)):
                line = worker.next_line()
                if line is None or line == "IDLE":
                    finished = True
                    break
                assert line.startswith("SENT ")
            if finished:
                worker.proc.wait()
                break
            worker.kill()
            kills_after_send += 1
        else:
            deadline = time.monotonic() + rng.uniform(0.2, 3.0)
            while (left := deadline - time.monotonic()) > 0:
                try:
                    line = worker.lines.get(timeout=left)
                except queue.Empty:
                    break
                if line is None or line == "IDLE":
                    finished = True
                    break
            if finished:
                worker.proc.wait()
                break
            worker.kill()
            kills_random += 1
    assert finished, f"deliverer never finished (seed {seed})"

    assert kills_after_send >= 6, f"seed {seed}"
    got = events_of(ours(matrix_user, room), "llama-kill")
    assert got == ids, f"seed {seed}: duplicates or gaps in the room"
    assert undelivered(db(), run_id) == []


def test_send_test_posts_outside_threads(matrix_user: MatrixUser, clock: ManualClock) -> None:
    room = matrix_user.new_room()
    channels = build_channels([matrix_spec(matrix_user, room)], {"MATRIX_TOKEN": matrix_user.token})
    assert send_test("llama-t", channels, clock) == {"0:matrix": None}
    [msg] = ours(matrix_user, room)
    assert msg["content"][CONTENT_KEY]["kind"] == "test" and "m.relates_to" not in msg["content"]

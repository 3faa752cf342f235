"""Shared fixtures and helpers for the notification tests.

Import in a test module with ``from notify_fixtures import ...`` (pytest puts ``tests/`` on
sys.path). Also runnable as a script: ``python tests/notify_fixtures.py deliver-loop DB_HOME`` is the
sending process the SIGKILL test kills and restarts.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from supervisor.notify.queue import enqueue
from supervisor.store.db import open_database
from supervisor.store.models import Event, OutboxEntry, Run

from fakes import ManualClock


def open_test_db(home: Path) -> sessionmaker[Session]:
    """The project's SQLite, migrated by Alembic as in production: a schema the ORM alone would create
    could differ from what the migrations build (defaults, indexes, constraints) without a test noticing."""
    return open_database(home)


@pytest.fixture
def db(tmp_path: Path) -> sessionmaker[Session]:
    return open_test_db(tmp_path / "home")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make_run(
    session_factory: sessionmaker[Session], name: str, notify: Sequence[Mapping[str, Any]], clock: ManualClock
) -> int:
    with session_factory() as s, s.begin():
        extra: dict[str, Any] = {"uid": secrets.token_hex(4)} if hasattr(Run, "uid") else {}
        run = Run(
            name=name,
            **extra,
            state="running",
            backend="local",
            spec_path=f"/specs/{name}.yaml",
            spec={"name": name, "notify": list(notify)},
            workdir=f"/runs/{name}",
            created_at=clock.now(),
            updated_at=clock.now(),
        )
        s.add(run)
        s.flush()
        return run.id


def add_event(
    session_factory: sessionmaker[Session],
    run_id: int,
    kind: str,
    clock: ManualClock,
    *,
    stage: str | None = "train",
    attempt: int | None = 1,
    message: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> int:
    """What the core does: an Event row and its outbox entries in one transaction."""
    with session_factory() as s, s.begin():
        run = s.get(Run, run_id)
        assert run is not None
        event = Event(
            run_id=run_id,
            at=clock.now(),
            kind=kind,
            stage=stage,
            attempt=attempt,
            message=message or f"{kind} happened",
            data=dict(data or {"job_id": "4242", "log_line": "NCCL error", "node_hours": 12.5}),
        )
        s.add(event)
        s.flush()
        enqueue(s, run, event, run.spec["notify"])
        return event.id


# -- loopback HTTP receiver ------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class LoopbackReceiver:
    """An http.server on 127.0.0.1 in a thread. ``script`` decides each answer, in order.

    A script item is an HTTP status, ``(status, headers)``, or ``"close"`` (drop the connection
    without answering). When the script is exhausted every request gets 200. Only 2xx answers are
    recorded in ``accepted``; ``requests`` holds everything that arrived.
    """

    script: list[Any] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    accepted: list[Received] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> LoopbackReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                got = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver._lock:
                    receiver.requests.append(got)
                    action: Any = receiver.script.pop(0) if receiver.script else 200
                if action == "close":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, headers = action if isinstance(action, tuple) else (action, {})
                # Error bodies echo the request target and credentials, as careless servers do: the
                # supervisor must not copy them into its logs or DB.
                auth = self.headers.get("Authorization", "")
                ok = 200 <= status < 300
                payload = b'{"event_id": "$e"}' if ok else f"error {status} for {self.path} {auth}".encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                if 200 <= status < 300:
                    with receiver._lock:
                        receiver.accepted.append(got)

            do_PUT = do_POST

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[LoopbackReceiver]:
    r = LoopbackReceiver().start()
    yield r
    r.stop()


def deliver_until_drained(
    session_factory: sessionmaker[Session],
    run_deliver: Callable[[], Any],
    clock: ManualClock,
    *,
    step_s: float = 60.0,
    rounds: int = 500,
) -> int:
    """Call deliver repeatedly, moving the clock, until no entry is pending. Returns the rounds."""
    for i in range(rounds):
        run_deliver()
        with session_factory() as s:
            if not s.scalars(select(OutboxEntry.id).where(OutboxEntry.state == "pending")).first():
                return i
        clock.advance(step_s)
    raise AssertionError("outbox did not drain")


# -- Synapse ---------------------------------------------------------------------------------


@dataclass
class MatrixUser:
    server: Any  # synapse_server.SynapseServer
    token: str

    def new_room(self) -> str:
        return str(self.server.create_room(self.token))

    def messages(self, room_id: str) -> list[dict[str, Any]]:
        return list(self.server.messages(self.token, room_id))


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from synapse_server import SynapseServer, SynapseUnavailable, install

    try:
        install()
    except (SynapseUnavailable, OSError) as exc:
        # In CI the Matrix tests must run against a real Synapse: a failed install is a failure there.
        if os.environ.get("CI") == "true":
            pytest.fail(f"Synapse could not be installed: {exc}")
        pytest.skip(f"Synapse not available: {exc}")
    server = SynapseServer(tmp_path_factory.mktemp("synapse"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def matrix_user(synapse: Any) -> MatrixUser:
    # A fresh user per test: its own token, so txnIds of different tests can never collide.
    name = f"bot{time.monotonic_ns()}"
    return MatrixUser(synapse, synapse.register(name, "password-" + name))


# -- the sending process for the SIGKILL test -------------------------------------------------


def _deliver_loop(home: Path) -> int:
    """Deliver until the outbox is empty. Prints ``SENT <id>`` right after the server accepted a
    message and then lingers before the DB is updated, so the test can kill it exactly there."""
    from supervisor.domain.ports import StatefulChannel
    from supervisor.notify.config import build_channels
    from supervisor.notify.outbox import DeliveryPolicy, deliver

    pause = float(os.environ.get("PAUSE_AFTER_SEND_S", "0.2"))
    session_factory = open_test_db(home)
    run_id = int(os.environ["RUN_ID"])
    with session_factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        inner = build_channels(run.spec["notify"])

    class Lingering:
        def __init__(self, channel: Any) -> None:
            self.kind = channel.kind
            self.inner = channel

        def send(self, message: Mapping[str, Any], *, idempotency_key: str) -> None:
            raise AssertionError("the test channel is stateful")

        def close(self) -> None:
            self.inner.close()

        def send_with_state(
            self, message: Mapping[str, Any], *, idempotency_key: str, state: Mapping[str, Any]
        ) -> dict[str, Any] | None:
            key = idempotency_key
            new: dict[str, Any] | None = self.inner.send_with_state(message, idempotency_key=key, state=state)
            print(f"SENT {idempotency_key}", flush=True)
            time.sleep(pause)
            return new

    channels = {k: Lingering(c) for k, c in inner.items()}
    assert all(isinstance(c, StatefulChannel) for c in channels.values())
    clock = ManualClock(datetime.now(UTC))
    policy = DeliveryPolicy(base_delay_s=0.0, coalesce_window_s=0.0)
    while True:
        clock.t = datetime.now(UTC)
        report = deliver(session_factory, {run_id: channels}, clock, policy=policy)
        if not report.messages and not report.retrying:
            print("IDLE", flush=True)
            return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "deliver-loop":
        sys.exit(_deliver_loop(Path(sys.argv[2])))
    sys.exit(2)

"""Slack and generic webhooks against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from supervisor.domain.ports import Channel
from supervisor.notify import build_channels
from supervisor.notify.outbox import DeliveryPolicy, deliver, send_test
from supervisor.notify.queue import idempotency_key, undelivered
from supervisor.store.models import OutboxEntry

from fakes import DiesAfterSend, Interrupted, ManualClock
from notify_fixtures import (
    LoopbackReceiver,
    add_event,
    clock,
    db,
    deliver_until_drained,
    make_run,
    receiver,
)

__all__ = ["clock", "db", "receiver"]  # fixtures, re-exported for pytest

SECRET = "hmac-key-7c1f0e9a"
POLICY = DeliveryPolicy(base_delay_s=10.0, max_delay_s=600.0, coalesce_window_s=60.0)


def webhook_spec(url: str) -> dict[str, Any]:
    return {"webhook": {"url": f"{url}/hook", "secret_env": "HOOK_SECRET"}}


def slack_spec() -> dict[str, Any]:
    return {"slack": {"webhook_url_env": "SLACK_URL"}}


def env_for(receiver: LoopbackReceiver) -> dict[str, str]:
    return {"HOOK_SECRET": SECRET, "SLACK_URL": f"{receiver.url}/services/T0/B0/slacktoken123"}


def setup(
    db: sessionmaker[Session], clock: ManualClock, receiver: LoopbackReceiver, spec: dict[str, Any]
) -> tuple[int, dict[int, dict[str, Channel]]]:
    run_id = make_run(db, "llama-sft", [spec], clock)
    return run_id, {run_id: build_channels([spec], env_for(receiver))}


def run_deliver(db: sessionmaker[Session], channels: Any, clock: ManualClock) -> Any:
    return lambda: deliver(db, channels, clock, policy=POLICY)


def event_ids(received: list[Any]) -> list[Any]:
    out: list[Any] = []
    for r in received:
        body = r.json()
        if "events" in body:  # generic webhook
            out.extend(e["id"] for e in body["events"])
        else:  # Slack: the idempotency key in the context block names the outbox entry
            out.append(body["blocks"][-1]["elements"][0]["text"].split()[-1])
    return out


def test_webhook_payload_shape_signature_and_key(
    db: sessionmaker[Session], clock: ManualClock, receiver: LoopbackReceiver
) -> None:
    run_id, channels = setup(db, clock, receiver, webhook_spec(receiver.url))
    ids = []
    for kind in ("crashed", "resubmitted", "stage_succeeded", "succeeded"):
        ids.append(
            add_event(db, run_id, kind, clock, data={"job_id": "77", "progress_step": 450, "progress_total": 1000})
        )
        clock.advance(300)
    add_event(db, run_id, "progress", clock)  # not in the default `on` list: no entry
    deliver(db, channels, clock, policy=POLICY)

    assert len(receiver.accepted) == 4
    for got, event_id in zip(receiver.accepted, ids, strict=True):
        expected = "sha256=" + hmac.new(SECRET.encode(), got.body, hashlib.sha256).hexdigest()
        assert got.headers["x-signature-256"] == expected
        body = got.json()
        assert body["schema"] == "slurm-llm-supervisor.notification"
        assert body["schema_version"] == 1
        assert got.headers["idempotency-key"] == body["id"]
        assert got.headers["content-type"] == "application/json"
        assert body["run"] == "llama-sft" and body["stage"] == "train" and body["job_id"] == "77"
        assert body["progress"] == {"step": 450, "total": 1000, "percent": 45.0}
        assert [e["id"] for e in body["events"]] == [event_id]
        assert body["count"] == 1
    assert [r.json()["kind"] for r in receiver.accepted] == [
        "crashed",
        "resubmitted",
        "stage_succeeded",
        "succeeded",
    ]
    assert undelivered(db(), run_id) == []


def test_slack_block_kit_message(db: sessionmaker[Session], clock: ManualClock, receiver: LoopbackReceiver) -> None:
    run_id, channels = setup(db, clock, receiver, slack_spec())
    add_event(
        db,
        run_id,
        "crashed",
        clock,
        attempt=3,
        data={
            "job_id": "123456",
            "log_line": "[rank0]: Watchdog caught collective operation timeout: WorkNCCL(SeqNum=264290)",
            "progress_step": 900,
            "progress_total": 1000,
            "eta_s": 5400,
            "node_hours": 96.25,
        },
    )
    deliver(db, channels, clock, policy=POLICY)
    assert len(receiver.accepted) == 1
    got = receiver.accepted[0]
    assert got.path == "/services/T0/B0/slacktoken123"
    body = got.json()
    assert "crashed" in body["text"]
    header, fields = body["blocks"][0], body["blocks"][1]
    assert header["type"] == "header" and header["text"]["text"] == "llama-sft / train: crashed (attempt 3)"
    shown = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in fields["fields"]}
    assert shown == {
        "*Run*": "llama-sft",
        "*Stage*": "train",
        "*Attempt*": "3",
        "*Job*": "123456",
        "*Progress*": "step 900/1000 (90.0%)",
        "*ETA*": "1h 30m",
        "*Node-hours*": "96.2",
    }
    texts = [b["text"]["text"] for b in body["blocks"] if b["type"] == "section" and "text" in b]
    assert any(t.startswith("```") and "Watchdog caught collective" in t for t in texts)


@pytest.mark.parametrize("kind", ["webhook", "slack"])
def test_outage_then_recovery_each_arrives_once_in_order(
    db: sessionmaker[Session], clock: ManualClock, receiver: LoopbackReceiver, kind: str
) -> None:
    spec = webhook_spec(receiver.url) if kind == "webhook" else slack_spec()
    run_id, channels = setup(db, clock, receiver, spec)
    # The receiver is down: 503s and dropped connections ...
    receiver.script = [503, "close"] * 100
    kinds = ["crashed", "resubmitted", "stalled", "crashed", "resubmitted", "failed"] * 2
    ids = []
    for k in kinds:
        ids.append(add_event(db, run_id, k, clock))
        clock.advance(90)  # beyond the coalescing window: every event is its own message
        deliver(db, channels, clock, policy=POLICY)

    # Order is kept: the head is retried and nothing behind it went out.
    assert receiver.accepted == []
    pending = undelivered(db(), run_id)
    assert [p["id"] for p in pending] == sorted(p["id"] for p in pending)
    assert pending[0]["tries"] >= 1 and pending[0]["last_error"]
    assert all(p["tries"] == 0 for p in pending[1:])

    # ... and when it comes back it first asks to slow down.
    receiver.script = [(429, {"Retry-After": "120"})]
    deliver_until_drained(db, run_deliver(db, channels, clock), clock)
    assert len(receiver.requests) > len(receiver.accepted)  # the outage really refused some
    if kind == "webhook":
        assert event_ids(receiver.accepted) == ids
        keys = [r.headers["idempotency-key"] for r in receiver.accepted]
        assert len(set(keys)) == len(keys)
    else:
        with db() as s:
            entries = s.scalars(select(OutboxEntry).order_by(OutboxEntry.id)).all()
            assert [e.event_id for e in entries] == ids
            assert event_ids(receiver.accepted) == [idempotency_key(e) for e in entries]
    assert undelivered(db(), run_id) == []


def test_retry_after_is_honoured(db: sessionmaker[Session], clock: ManualClock, receiver: LoopbackReceiver) -> None:
    run_id, channels = setup(db, clock, receiver, webhook_spec(receiver.url))
    receiver.script = [(429, {"Retry-After": "120"})]
    add_event(db, run_id, "crashed", clock)
    deliver(db, channels, clock, policy=POLICY)
    [entry] = undelivered(db(), run_id)
    assert entry["state"] == "pending" and "429" in entry["last_error"]
    assert entry["next_try_at"] == (clock.now() + timedelta(seconds=120)).isoformat()
    clock.advance(119)
    deliver(db, channels, clock, policy=POLICY)
    assert len(receiver.requests) == 1
    clock.advance(1)
    deliver(db, channels, clock, policy=POLICY)
    assert len(receiver.accepted) == 1


def test_bad_request_is_permanent_and_shown(
    db: sessionmaker[Session], clock: ManualClock, receiver: LoopbackReceiver
) -> None:
    run_id, channels = setup(db, clock, receiver, webhook_spec(receiver.url))
    receiver.script = [400]
    first = add_event(db, run_id, "crashed", clock)
    clock.advance(120)
    second = add_event(db, run_id, "failed", clock)
    for _ in range(5):
        deliver(db, channels, clock, policy=POLICY)
        clock.advance(3600)
    assert len(receiver.requests) == 2  # the 400 was tried once, not for ever
    assert event_ids(receiver.accepted) == [second]
    [failed] = undelivered(db(), run_id)
    assert failed["state"] == "failed" and failed["tries"] == 1 and failed["kind"] == "crashed"
    assert "HTTP 400" in failed["last_error"] and failed["next_try_at"] is None
    with db() as s:
        assert s.scalars(select(OutboxEntry.event_id).where(OutboxEntry.state == "failed")).all() == [first]


def test_burst_is_coalesced_and_every_event_counted_once(
    db: sessionmaker[Session], clock: ManualClock, receiver: LoopbackReceiver
) -> None:
    run_id, channels = setup(db, clock, receiver, webhook_spec(receiver.url))
    ids = []
    for _ in range(20):  # 20 resubmissions in a minute, the sender ticking after each
        ids.append(add_event(db, run_id, "resubmitted", clock))
        deliver(db, channels, clock, policy=POLICY)
        clock.advance(3)
    assert len(receiver.accepted) == 1  # the first goes out at once, the rest wait for the window
    clock.advance(60)
    deliver(db, channels, clock, policy=POLICY)
    assert [r.json()["count"] for r in receiver.accepted] == [1, 19]
    assert event_ids(receiver.accepted) == ids
    merged = receiver.accepted[1].json()
    assert merged["title"].endswith("×19") and len(merged["items"]) == 19
    assert undelivered(db(), run_id) == []


def test_backlog_after_outage_is_coalesced_per_consecutive_kind(
    db: sessionmaker[Session], clock: ManualClock, receiver: LoopbackReceiver
) -> None:
    run_id, channels = setup(db, clock, receiver, webhook_spec(receiver.url))
    receiver.script = [503]
    kinds = ["crashed"] + ["resubmitted"] * 5 + ["crashed", "resubmitted"]
    ids = [add_event(db, run_id, k, clock) for k in kinds]
    deliver_until_drained(db, run_deliver(db, channels, clock), clock)
    bodies = [r.json() for r in receiver.accepted]
    assert [(b["kind"], b["count"]) for b in bodies] == [
        ("crashed", 1),
        ("resubmitted", 5),
        ("crashed", 1),
        ("resubmitted", 1),
    ]
    assert event_ids(receiver.accepted) == ids


def test_interrupted_send_is_resent_with_the_same_key(
    db: sessionmaker[Session], clock: ManualClock, receiver: LoopbackReceiver
) -> None:
    spec = webhook_spec(receiver.url)
    run_id = make_run(db, "llama-sft", [spec], clock)
    [inner] = build_channels([spec], env_for(receiver)).values()
    channel = DiesAfterSend(inner)
    add_event(db, run_id, "crashed", clock)
    with pytest.raises(Interrupted):
        deliver(db, {run_id: {"0:webhook": channel}}, clock, policy=POLICY)
    deliver(db, {run_id: {"0:webhook": channel}}, clock, policy=POLICY)
    assert len(receiver.accepted) == 2
    first, second = receiver.accepted
    assert first.body == second.body
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert undelivered(db(), run_id) == []


def test_send_test_reports_per_channel(
    db: sessionmaker[Session], clock: ManualClock, receiver: LoopbackReceiver
) -> None:
    specs = [webhook_spec(receiver.url), slack_spec()]
    receiver.script = [200, 404]
    channels = build_channels(specs, env_for(receiver))
    results = send_test("llama-sft", channels, clock)
    assert results["0:webhook"] is None
    assert results["1:slack"] is not None and "HTTP 404" in results["1:slack"]
    assert receiver.accepted[0].json()["kind"] == "test"

"""No secret value in logs, exception texts, tracebacks, reprs or database rows."""

from __future__ import annotations

import socket
import traceback
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from supervisor.domain.errors import NotifyConfigError, NotifyError
from supervisor.notify import NotifyChannelSpec, build_channels
from supervisor.notify.outbox import DeliveryPolicy, deliver, send_test
from supervisor.notify.queue import undelivered

from fakes import ManualClock
from notify_fixtures import LoopbackReceiver, add_event, clock, db, make_run, receiver

__all__ = ["clock", "db", "receiver"]  # fixtures, re-exported for pytest

SLACK_TOKEN = "T0SECRET/B0SECRET/xoxbSlackSecretValue42"
MATRIX_TOKEN = "syt_matrixSecretToken_8f3a9b"
HOOK_SECRET = "whsec_hmacSecretValue_77"
HOOK_PATH_TOKEN = "hookPathSecret_5e5e5e"
SECRETS = (SLACK_TOKEN, "xoxbSlackSecretValue42", MATRIX_TOKEN, HOOK_SECRET, HOOK_PATH_TOKEN)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nobody listens once the socket is closed


def assert_clean(where: str, blob: str) -> None:
    for secret in SECRETS:
        assert secret not in blob, f"secret leaked into {where}"


def specs(receiver_url: str) -> list[dict[str, Any]]:
    return [
        {"slack": {"webhook_url_env": "SLACK_URL"}},
        {"matrix": {"homeserver": receiver_url, "room_id": "!room:example.org", "access_token_env": "MX"}},
        {"webhook": {"url_env": "HOOK_URL", "secret_env": "HOOK_SECRET"}},
        # The same Slack channel on a port nobody listens on: connection errors quote the URL.
        {"slack": {"webhook_url_env": "SLACK_DOWN"}},
    ]


def env(receiver_url: str) -> dict[str, str]:
    return {
        "SLACK_URL": f"{receiver_url}/services/{SLACK_TOKEN}",
        "SLACK_DOWN": f"http://127.0.0.1:{closed_port()}/services/{SLACK_TOKEN}",
        "MX": MATRIX_TOKEN,
        "HOOK_URL": f"{receiver_url}/in/{HOOK_PATH_TOKEN}?token={HOOK_PATH_TOKEN}",
        "HOOK_SECRET": HOOK_SECRET,
    }


def test_nothing_leaks_on_errors(db: sessionmaker[Session], clock: ManualClock, receiver: LoopbackReceiver) -> None:
    notify = specs(receiver.url)
    run_id = make_run(db, "llama-sec", notify, clock)
    channels = build_channels(notify, env(receiver.url))
    # Errors whose bodies echo the request path and the Authorization header back.
    receiver.script = [500, 401, 503, 400, 400, 500]
    with structlog.testing.capture_logs() as logs:
        for kind in ("crashed", "failed"):
            add_event(db, run_id, kind, clock, data={"job_id": "1", "log_line": "boom"})
            clock.advance(120)
        for _ in range(4):
            deliver(db, {run_id: channels}, clock, policy=DeliveryPolicy(base_delay_s=1.0))
            clock.advance(600)
        results = send_test("llama-sec", channels, clock)

    assert receiver.requests, "the errors under test were never provoked"
    assert any(e["state"] == "failed" for e in undelivered(db(), run_id))
    assert_clean("logs", repr(logs))
    assert_clean("send_test results", repr(results))
    assert any(r for r in results.values()), "expected at least one failing channel"
    assert_clean("undelivered()", repr(undelivered(db(), run_id)))
    assert_clean("channel reprs", repr(channels))
    errors = [e["last_error"] for e in undelivered(db(), run_id) if e["last_error"]]
    assert any("ConnectError" in e for e in errors) and any("HTTP 4" in e for e in errors)
    with db() as s:
        for table in ("runs", "events", "outbox", "channel_state"):
            rows = s.execute(text(f"SELECT * FROM {table}")).all()  # table names are fixed literals
            assert_clean(f"table {table}", repr(rows))


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_exceptions_and_tracebacks_are_clean(receiver: LoopbackReceiver, index: int) -> None:
    receiver.script = [401] * 3
    channel = list(build_channels(specs(receiver.url), env(receiver.url)).values())[index]
    message = {"kind": "crashed", "title": "t", "run": "r", "events": []}
    with pytest.raises(NotifyError) as info:
        channel.send(message, idempotency_key="k1")
    assert_clean("exception text", str(info.value))
    assert_clean("traceback", "".join(traceback.format_exception(info.value)))
    # The httpx exception (its text holds the URL) is not chained in.
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_config_errors_name_the_variable_not_the_value(tmp_path: Path) -> None:
    spec = {"matrix": {"homeserver": "https://m.org", "room_id": "!r:m.org", "access_token_env": "MX_TOKEN"}}
    with pytest.raises(NotifyConfigError, match="MX_TOKEN") as info:
        build_channels([spec], {})
    assert "notify[0].matrix" in str(info.value)

    token_file = tmp_path / "token"
    token_file.write_text(MATRIX_TOKEN + "\n")
    from_file = {"matrix": {**spec["matrix"], "access_token_file": str(token_file)}}
    del from_file["matrix"]["access_token_env"]
    [channel] = build_channels([from_file], {}).values()
    assert MATRIX_TOKEN not in repr(channel)
    missing = {"webhook": {"url": "https://h.example/x", "secret_file": str(tmp_path / "nope")}}
    with pytest.raises(NotifyConfigError, match="nope"):
        build_channels([missing], {})

    # A secret pasted where its variable name belongs is refused without being echoed.
    with pytest.raises(ValidationError) as bad:
        NotifyChannelSpec.model_validate({"slack": {"webhook_url_env": f"https://hooks.slack.com/{SLACK_TOKEN}"}})
    assert_clean("validation error", str(bad.value))


def test_spec_validation_rules() -> None:
    import yaml

    doc = yaml.safe_load(
        """
        - slack: {webhook_url_env: SLACK_WEBHOOK_URL}
          on: [crashed, succeeded]
        - matrix: {homeserver: https://matrix.example.org, room_id: "!abc:example.org", access_token_env: MX}
        - webhook: {url: https://hooks.example.org/x, secret_env: HOOK_SECRET}
        """
    )
    parsed = [NotifyChannelSpec.model_validate(d) for d in doc]
    assert parsed[0].on == ("crashed", "succeeded")  # YAML 1.1 reads `on:` as True; handled
    assert "retries_exhausted" in parsed[1].on and parsed[2].kind == "webhook"
    cases: list[dict[str, Any]] = [
        {"slack": {}},  # no secret source
        {"slack": {"webhook_url_env": "A", "webhook_url_file": "/x"}},  # both
        {"slack": {"webhook_url_env": "A"}, "webhook": {"url": "https://x.org"}},  # two channels
        {"slack": {"webhook_url_env": "A", "webhook_url": "https://x"}},  # extra key
        {"slack": {"webhook_url_env": "A"}, "on": []},
        {"slack": {"webhook_url_env": "A"}, "on": ["Crashed!"]},
        {"webhook": {"url": "https://x.org", "url_env": "U"}},
    ]
    for bad in cases:
        with pytest.raises(ValidationError):
            NotifyChannelSpec.model_validate(bad)

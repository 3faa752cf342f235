"""Notifications wired into the real daemon: events of a real run reach a loopback Slack/webhook receiver."""

from __future__ import annotations

import hashlib
import hmac
import json

from harness import Harness
from notify_fixtures import LoopbackReceiver, receiver

__all__ = ["receiver"]

SECRET_PATH = "/services/T000/B000/slack-secret-path-0123456789"
HOOK_SECRET = "hook-secret-value-abcdef"


def test_run_events_are_delivered_signed_and_secret_free(harness: Harness, receiver: LoopbackReceiver) -> None:
    harness.env["SLACK_URL"] = receiver.url + SECRET_PATH
    harness.env["HOOK_SECRET"] = HOOK_SECRET
    failing = harness.script(
        "fail.sbatch", "echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate'\nsleep 60\n"
    )
    spec = {
        "name": "noisy",
        "backend": "local",
        "workdir": str(harness.root / "w"),
        "stages": [{"name": "train", "script": str(failing), "max_attempts": 2, "retry_backoff": 0}],
        "notify": [
            {"slack": {"webhook_url_env": "SLACK_URL"}},
            {"webhook": {"url": receiver.url + "/hook", "secret_env": "HOOK_SECRET"}, "on": ["failed"]},
        ],
    }
    harness.submit(spec)
    harness.start_daemon(poll="0.5s")
    harness.wait_state("noisy", "failed", timeout=90)
    harness.wait_for(lambda: any(r.path == "/hook" for r in receiver.accepted), 60, "the webhook delivery")
    harness.wait_for(lambda: sum(r.path == SECRET_PATH for r in receiver.accepted) >= 1, 60, "slack")

    hooks = [r for r in receiver.accepted if r.path == "/hook"]
    assert [h.json()["kind"] for h in hooks] == ["failed"]
    signature = hmac.new(HOOK_SECRET.encode(), hooks[0].body, hashlib.sha256).hexdigest()
    assert hooks[0].headers["x-signature-256"] == f"sha256={signature}"
    slack_text = json.dumps([r.json() for r in receiver.accepted if r.path == SECRET_PATH])
    assert "cuda_oom" in slack_text and "noisy" in slack_text

    harness.stop_daemon()
    shown = harness.cli("show", "noisy", "--json").out
    assert json.loads(shown)["notifications"] == []  # everything delivered
    tested = harness.cli("notify", "test", "noisy", "--json")
    assert [row["delivered"] for row in json.loads(tested.out)] == [True, True]
    everything = shown + tested.out + tested.err + harness.daemon_log.read_text()
    everything += (harness.home / "supervisor.db").read_bytes().decode(errors="replace")
    assert "slack-secret-path" not in everything and HOOK_SECRET not in everything


def test_notify_test_without_channels_is_exit_2(harness: Harness) -> None:
    harness.submit({"name": "quiet", "backend": "local", "stages": [{"name": "a", "command": ["true"]}]})
    result = harness.cli("notify", "test", "quiet", check=False)
    assert result.code == 2 and "no `notify:` channels" in result.err

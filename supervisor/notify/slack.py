"""Slack incoming webhook: one Block Kit message per notification.

Incoming webhooks have no idempotency key: a send interrupted after Slack accepted it but before the
outbox recorded it is posted again on restart (at-least-once). The key is shown in the message's
context line so a reader can tell a repeat from a new event.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from supervisor.notify._http import HttpSender, url_secrets
from supervisor.notify.render import facts, listed_items

_HEADER_MAX = 150  # Block Kit limit for a plain_text header
_TEXT_MAX = 2900  # section text is limited to 3000 characters

_EMOJI = {"error": ":red_circle:", "warning": ":warning:", "success": ":white_check_mark:", "info": ":bell:"}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _esc(text: str) -> str:
    # Slack mrkdwn needs only these three escaped.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def blocks(message: Mapping[str, Any], idempotency_key: str) -> dict[str, Any]:
    """The webhook payload: Block Kit blocks plus the ``text`` fallback used by notifications."""
    emoji = _EMOJI.get(str(message.get("severity")), ":bell:")
    title = str(message["title"])
    out: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(f"{title}", _HEADER_MAX)}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": f"*{label}*\n{_esc(value)}"} for label, value in facts(message)][
                :10
            ],  # Block Kit allows at most 10 fields
        },
    ]
    if message.get("message"):
        out.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(_esc(message["message"]), _TEXT_MAX)}})
    if message.get("log_line"):
        # Backticks inside a code block would end it early.
        line = str(message["log_line"]).replace("```", "'''")
        out.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(f"```{_esc(line)}```", _TEXT_MAX)}})
    items, more = listed_items(message)
    if items:
        text = "\n".join(f"• {_esc(i)}" for i in items) + (f"\n…and {more} more" if more else "")
        out.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(text, _TEXT_MAX)}})
    out.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"{emoji} {_esc(idempotency_key)}"}]})
    return {"text": _cut(f"{title}: {message.get('message') or ''}".rstrip(": "), _TEXT_MAX), "blocks": out}


class SlackChannel:
    kind = "slack"

    def __init__(self, webhook_url: str, *, timeout_s: float = 10.0, name: str = "slack") -> None:
        self.name = name
        self._url = webhook_url
        self._http = HttpSender("slack", url_secrets(webhook_url), timeout_s)

    def __repr__(self) -> str:  # the URL is the credential: never show it
        return f"SlackChannel(name={self.name!r})"

    def send(self, message: Mapping[str, Any], *, idempotency_key: str) -> None:
        body = json.dumps(blocks(message, idempotency_key), ensure_ascii=False).encode()
        self._http.request("POST", self._url, content=body, headers={"Content-Type": "application/json"})

    def scrub(self, text: str) -> str:
        """``text`` with this channel's secrets blanked (for error texts from elsewhere)."""
        return self._http.scrub(text)

    def close(self) -> None:
        self._http.close()

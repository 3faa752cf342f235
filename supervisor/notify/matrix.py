"""Matrix client-server API: ``PUT /rooms/{room}/send/m.room.message/{txnId}``.

A retry never duplicates a message because the homeserver deduplicates on (access token, txnId): the
txnId is the outbox entry's idempotency key and the token is the same configured one on every try
(logging in afresh would create a new device and defeat that).

Each run gets one thread: its first delivered message is the root, later ones carry
``m.relates_to: {rel_type: m.thread, event_id: <root>}``. The root's event id is kept in the outbox's
ChannelState for (run, channel) through :meth:`MatrixChannel.send_with_state`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from supervisor.domain.errors import NotifyError
from supervisor.notify._http import HttpSender
from supervisor.notify.render import facts, listed_items

# Namespaced key in the event content carrying the machine-readable notification (event ids etc.).
CONTENT_KEY = "io.github.slurm_llm_supervisor.notification"


def content(message: Mapping[str, Any], idempotency_key: str, thread_root: str | None) -> dict[str, Any]:
    """The ``m.room.message`` content: plain ``body`` and HTML ``formatted_body``."""
    plain: list[str] = [str(message["title"])]
    rich: list[str] = [f"<strong>{html.escape(str(message['title']))}</strong>"]
    if message.get("message"):
        plain.append(str(message["message"]))
        rich.append(html.escape(str(message["message"])))
    shown = facts(message)
    plain.append(" · ".join(f"{k}: {v}" for k, v in shown))
    rich.append(" · ".join(f"<b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in shown))
    if message.get("log_line"):
        plain.append(f"> {message['log_line']}")
        rich.append(f"<pre><code>{html.escape(str(message['log_line']))}</code></pre>")
    items, more = listed_items(message)
    if items:
        tail = [f"…and {more} more"] if more else []
        plain.extend(f"- {i}" for i in [*items, *tail])
        rich.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in [*items, *tail]) + "</ul>")
    body: dict[str, Any] = {
        # m.notice: clients and bridges treat it as a bot message (no auto-replies, quieter).
        "msgtype": "m.notice",
        "body": "\n".join(plain),
        "format": "org.matrix.custom.html",
        "formatted_body": "<br>".join(rich),
        CONTENT_KEY: {
            "version": message.get("version", 1),
            "kind": message.get("kind"),
            "run": message.get("run"),
            "count": message.get("count", 1),
            "events": [e.get("id") for e in message.get("events", [])],
            "idempotency_key": idempotency_key,
        },
    }
    if thread_root:
        body["m.relates_to"] = {
            "rel_type": "m.thread",
            "event_id": thread_root,
            # Clients without thread support show it as a reply to the root instead.
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": thread_root},
        }
    return body


class MatrixChannel:
    kind = "matrix"

    def __init__(
        self,
        homeserver: str,
        room_id: str,
        access_token: str,
        *,
        timeout_s: float = 10.0,
        threads: bool = True,
        name: str = "matrix",
    ) -> None:
        self.name = name
        self.room_id = room_id
        self.threads = threads
        self._base = homeserver.rstrip("/")
        self._token = access_token
        self._http = HttpSender("matrix", [access_token], timeout_s)

    def __repr__(self) -> str:
        return f"MatrixChannel(name={self.name!r}, room_id={self.room_id!r})"

    def _put(self, body: Mapping[str, Any], txn_id: str) -> str:
        url = (
            f"{self._base}/_matrix/client/v3/rooms/{quote(self.room_id, safe='')}"
            f"/send/m.room.message/{quote(txn_id, safe='')}"
        )
        response = self._http.request(
            "PUT",
            url,
            content=json.dumps(body, ensure_ascii=False).encode(),
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
            retry_after_from_body=True,
        )
        try:
            event_id = response.json()["event_id"]
        except (ValueError, KeyError, TypeError):
            event_id = None
        if not isinstance(event_id, str):
            # Accepted but unreadable: retrying with the same txnId is harmless and may fix it.
            raise NotifyError("matrix: answer without event_id", permanent=False)
        return event_id

    def send(self, message: Mapping[str, Any], *, idempotency_key: str) -> None:
        """Send outside any thread (used by ``notify test``)."""
        self._put(content(message, idempotency_key, None), idempotency_key)

    def send_with_state(
        self, message: Mapping[str, Any], *, idempotency_key: str, state: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Send into the run's thread; return the new ChannelState data when it changed."""
        root = state.get("thread_root") if self.threads else None
        event_id = self._put(content(message, idempotency_key, root), idempotency_key)
        if self.threads and not root:
            return {**state, "thread_root": event_id}
        return None

    def scrub(self, text: str) -> str:
        """``text`` with this channel's secrets blanked (for error texts from elsewhere)."""
        return self._http.scrub(text)

    def close(self) -> None:
        self._http.close()

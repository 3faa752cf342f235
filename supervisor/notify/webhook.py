"""Generic webhook: a versioned JSON document (docs/webhook-schema.md), optionally HMAC-signed."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from supervisor.notify._http import HttpSender, url_secrets

SCHEMA = "slurm-llm-supervisor.notification"
SCHEMA_VERSION = 1
USER_AGENT = "slurm-llm-supervisor-webhook/1"

_FIELDS = (
    "kind",
    "severity",
    "title",
    "run",
    "stage",
    "attempt",
    "job_id",
    "message",
    "log_line",
    "progress",
    "eta_s",
    "node_hours",
    "count",
    "events",
    "items",
)


def document(message: Mapping[str, Any], idempotency_key: str) -> dict[str, Any]:
    """The JSON body. Deterministic for a given entry, so a retry sends the same bytes and signature."""
    doc: dict[str, Any] = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "id": idempotency_key}
    for key in _FIELDS:
        doc[key] = message.get(key)
    doc["count"] = doc["count"] or 1
    doc["events"] = list(doc["events"] or [])
    doc["items"] = list(doc["items"] or [])
    return doc


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookChannel:
    kind = "webhook"

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        timeout_s: float = 10.0,
        name: str = "webhook",
        url_is_secret: bool = False,
    ) -> None:
        self.name = name
        self._url = url
        self._secret = secret
        secrets = ([secret] if secret else []) + (url_secrets(url) if url_is_secret else [])
        self._http = HttpSender("webhook", secrets, timeout_s)

    def __repr__(self) -> str:
        return f"WebhookChannel(name={self.name!r}, signed={self._secret is not None})"

    def send(self, message: Mapping[str, Any], *, idempotency_key: str) -> None:
        body = json.dumps(document(message, idempotency_key), ensure_ascii=False, sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Idempotency-Key": idempotency_key,
        }
        if self._secret is not None:
            headers["X-Signature-256"] = signature(self._secret, body)
        self._http.request("POST", self._url, content=body, headers=headers)

    def scrub(self, text: str) -> str:
        """``text`` with this channel's secrets blanked (for error texts from elsewhere)."""
        return self._http.scrub(text)

    def close(self) -> None:
        self._http.close()
